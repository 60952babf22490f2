"""The Hugging Face Hub: priors named ``hf:owner/repo/path/file.safetensors[@revision]``, Hub files fetched
without minutes of retries, and a folder with a model card ready for ``hf upload``.

Files go through huggingface_hub's own cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), endpoint (``HF_ENDPOINT``) and offline switch (``HF_HUB_OFFLINE=1``,
or latentmap's own ``LATENTMAP_OFFLINE=1``), read when a file is asked for. A file already in the cache is used without asking the Hub. Otherwise one
HEAD request, without retries and with a short timeout (``LATENTMAP_HUB_TIMEOUT`` seconds, default
2.5), says whether the Hub can be reached and has the file; only then does ``hf_hub_download`` fetch
it. A machine without network gets one error line naming the file, its URL and the cache within
seconds, instead of huggingface_hub's retries (about a minute and a screen of log lines per file).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from latentmap.errors import LatentmapError
from latentmap.weights import downloads_disabled

__all__ = ["HubFileUnavailable", "HubRef", "fetch_hub_file", "hub_cache", "resolve_checkpoint", "save_for_hub"]

PREFIX = "hf:"
PROBE_TIMEOUT_S = 2.5


@dataclass(frozen=True)
class HubRef:
    """One file of a Hub model repository, as ``hf:owner/repo/path/in/repo.safetensors@revision`` names it."""

    repo_id: str
    filename: str
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> "HubRef":
        body = text[len(PREFIX):] if text.startswith(PREFIX) else text
        path, at, revision = body.rpartition("@") if "@" in body else (body, "", "")
        parts = path.strip("/").split("/", 2)
        if len(parts) < 3 or not all(parts) or (at and not revision):
            raise LatentmapError(
                f"{text!r} is not a Hub file: write hf:owner/repo/path/to/file.safetensors, optionally @revision "
                "(a branch, tag or commit)"
            )
        return cls(f"{parts[0]}/{parts[1]}", parts[2], revision or None)

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


class HubFileUnavailable(LatentmapError):
    """A Hub file that is neither in the cache nor downloadable now; ``unreachable`` when the Hub could not be reached."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def hub_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """huggingface_hub's cache folder, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``) or ``cache_dir``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    import huggingface_hub

    return Path(huggingface_hub.constants.HF_HUB_CACHE)


def _endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _offline() -> bool:
    import huggingface_hub

    return downloads_disabled() or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cached_file(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The first of ``filenames`` already in the Hugging Face cache (no network), or None."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    cache = hub_cache(cache_dir)
    for name in filenames:
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache),
                                                        local_files_only=True))
        except HFValidationError as exc:
            raise LatentmapError(f"{repo_id!r} is not a Hugging Face repository id: {_one_line(exc)}") from None
        except Exception:  # not in the cache (LocalEntryNotFoundError and the like): try the next name
            continue
    return None


def fetch_hub_file(repo_id: str, filenames: Sequence[str], *, revision: str | None = None,
                   cache_dir: str | os.PathLike | None = None, what: str | None = None, hint: str | None = None,
                   elsewhere: Callable[[], Path | None] | None = None) -> Path:
    """The first of ``filenames`` (alternatives, in order of preference) of Hub repo ``repo_id``: from the
    cache, else downloaded after one quick probe of the Hub; a one-line :class:`HubFileUnavailable` otherwise.

    ``what`` describes the file in messages and ``hint`` says how else to provide it; ``elsewhere``, asked
    after the cache and before the network, may return an equivalent local file (another tool's cache).
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    names = list(dict.fromkeys(filenames))
    cache = hub_cache(cache_dir)
    found = cached_file(repo_id, names, revision=revision, cache_dir=cache) or (elsewhere() if elsewhere else None)
    if found is not None:
        return found
    described = (f"{what or names[0]} ({' or '.join(names)} of Hugging Face repo {repo_id}, "
                 f"revision {revision or 'main'}) is not in the Hugging Face cache {cache}")
    hint = hint or (f"with network access run `hf download {repo_id} {names[0]}"
                    + (f" --revision {revision}" if revision else "") + "`, or set HF_HUB_CACHE to a cache that holds it")
    if _offline():
        url = huggingface_hub.hf_hub_url(repo_id, names[0], revision=revision, endpoint=_endpoint())
        raise HubFileUnavailable(f"{described} and downloads are disabled (HF_HUB_OFFLINE/LATENTMAP_OFFLINE), "
                                 f"so {url} is not fetched; {hint}")
    for name in names:
        url = huggingface_hub.hf_hub_url(repo_id, name, revision=revision, endpoint=_endpoint())
        try:
            _probe(url)
        except RemoteEntryNotFoundError:
            continue  # this name is not in the repository: try the next one
        except HfHubHTTPError as exc:  # no such repo or revision, gated, server error
            raise HubFileUnavailable(f"{described} and {url} answered: {_one_line(exc)}; {hint}") from None
        except Exception as exc:  # no route, DNS, refused, timeout, proxy, TLS: the first one ends the attempt
            raise HubFileUnavailable(f"{described} and the Hub cannot be reached ({type(exc).__name__}: "
                                     f"{_one_line(exc)}) to download {url}; {hint}", unreachable=True) from None
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache),
                                                        endpoint=_endpoint()))
        except Exception as exc:  # the connection broke while downloading, the disk is full ...
            raise HubFileUnavailable(f"{described} and downloading {url} failed ({type(exc).__name__}: "
                                     f"{_one_line(exc)}); {hint}") from None
    url = huggingface_hub.hf_hub_url(repo_id, names[0], revision=revision, endpoint=_endpoint())
    raise HubFileUnavailable(f"{described} and the Hub does not have it either ({url} not found); {hint}")


def _probe(url: str) -> None:
    """One HEAD request for ``url``, no retries: raises what huggingface_hub raises when it fails."""
    import huggingface_hub

    timeout = float(os.environ.get("LATENTMAP_HUB_TIMEOUT") or PROBE_TIMEOUT_S)
    huggingface_hub.get_hf_file_metadata(url, timeout=timeout, endpoint=_endpoint())


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """A local prior checkpoint for a path or an ``hf:owner/repo/file.safetensors[@revision]`` reference."""
    text = os.fspath(checkpoint)
    if not text.startswith(PREFIX):
        path = Path(text)
        if not path.is_file():
            raise LatentmapError(f"checkpoint {text!r} does not exist")
        return path
    ref = HubRef.parse(text)
    return fetch_hub_file(ref.repo_id, [ref.filename], revision=ref.revision, what=f"prior checkpoint {ref}")


# ------------------------------------------------------------------------------------------- export


def save_for_hub(checkpoint: str | os.PathLike, folder: str | os.PathLike, *,
                 eval_report: str | os.PathLike | dict[str, Any] | None = None, repo_id: str | None = None) -> Path:
    """Write ``folder`` for a Hub model repository: the checkpoint and a README.md model card; returns the card.

    The card states the generator, encoder, latent space, prior (name, shape, options), the training
    recipe and the evaluation figures found: validation scores stored in the checkpoint and an
    ``latentmap eval --report`` JSON given as ``eval_report``. ``repo_id`` fills the usage examples.
    Uploading is left to ``hf upload OWNER/REPO FOLDER``.
    """
    from latentmap.checkpoint import read_metadata

    source = resolve_checkpoint(checkpoint)
    metadata = read_metadata(source)
    report = _read_report(eval_report, metadata) if eval_report is not None else None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    target = out / source.name
    if not target.exists() or not target.samefile(source):
        shutil.copyfile(source, target)
    card = out / "README.md"
    card.write_text(model_card(metadata, filename=source.name, report=report, repo_id=repo_id), encoding="utf-8")
    return card


def _read_report(report: str | os.PathLike | dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(report, dict):
        try:
            report = json.loads(Path(report).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LatentmapError(f"eval report {str(report)!r} is not a readable JSON file ({_one_line(exc)})") from None
    if not isinstance(report, dict) or "clip_score" not in report:
        raise LatentmapError("the eval report is not what `latentmap eval --report` writes (it has no clip_score)")
    for key in ("generator", "encoder"):
        made_with = (report.get(key) or {}).get("name")
        stored = (metadata.get(key) or {}).get("name")
        if made_with and stored and made_with != stored:
            raise LatentmapError(f"the eval report was made with {key} {made_with!r}, the checkpoint uses {stored!r}")
    return report


def model_card(metadata: dict[str, Any], *, filename: str, report: dict[str, Any] | None = None,
               repo_id: str | None = None) -> str:
    """README.md text for a prior checkpoint's Hub repository (YAML front matter, then Markdown)."""
    import yaml

    generator, encoder = metadata.get("generator") or {}, metadata.get("encoder") or {}
    prior, space = metadata.get("prior") or {}, metadata.get("space") or generator.get("space") or {}
    shape = prior.get("shape") or {}
    repo = repo_id or "OWNER/REPO"
    tags = ["latentmap", "text-to-image", "diffusion-prior", str(generator.get("name", "generator"))]
    lines = ["---", "library_name: latentmap", "pipeline_tag: text-to-image", "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {Path(filename).stem}: a latentmap prior for `{generator.get('name')}`", "",
             f"A `{prior.get('name')}` prior that maps `{encoder.get('name')}` embeddings to latents of the "
             f"`{generator.get('name')}` generator, trained with latentmap (text-to-image for a pretrained "
             "generator through a prior over its latents).", "",
             "| | |", "|---|---|",
             f"| file | `{filename}` |",
             f"| generator | `{generator.get('name')}`{_options(generator)} |",
             f"| encoder | `{encoder.get('name')}`{_options(encoder)} |",
             f"| latent space | `{space.get('name')}`: {shape.get('tokens')} token(s) of {space.get('dim')}, "
             f"repeated {space.get('repeats')} over the style layers |",
             f"| prior | `{prior.get('name')}`{_options(prior)} |",
             f"| conditions | {shape.get('cond_dim')}-d raw encoder embeddings |"]
    for label, identity in (("generator", generator), ("encoder", encoder)):
        if identity.get("weights_sha256"):
            lines.append(f"| {label} weights SHA-256 | `{identity['weights_sha256']}` |")
    if metadata.get("step") is not None:
        lines.append(f"| training steps | {metadata['step']} |")
    lines += ["", "## Use", "", "```python", "import latentmap", "",
              f'pipe = latentmap.load_pipeline("hf:{repo}/{filename}")',
              'pipe("a prompt", n=4, seed=0).images[0].save("sample.png")', "```", "",
              "```", f'latentmap sample --checkpoint hf:{repo}/{filename} "a prompt"', "```", "",
              "The generator's and encoder's weights are not in this repository: latentmap finds them as their "
              "plugins do (a cache, a download, or a local file given with `--generator-option`/`--encoder-option`).", ""]
    lines += _evaluation(metadata.get("scores"), report)
    recipe = metadata.get("recipe")
    if recipe:
        lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Upload", "", f"This folder was written by `latentmap export-hub`; upload it with "
              f"`hf upload {repo} .` (`huggingface-cli upload` in older huggingface_hub).", ""]
    return "\n".join(lines)


def _options(identity: dict[str, Any]) -> str:
    options = identity.get("options") or {}
    return (" with " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items()))) if options else ""


def _evaluation(scores: Any, report: dict[str, Any] | None) -> list[str]:
    if not scores and report is None:
        return ["## Evaluation", "", "No evaluation figures were given (`latentmap export-hub --eval REPORT.json` "
                "adds those of `latentmap eval --report`).", ""]
    lines = ["## Evaluation", ""]
    if isinstance(scores, dict) and scores:
        lines += ["Validation during training (the best checkpoint's):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(scores.items())]
        lines.append("")
    if report is not None:
        rows = [("prompts", report.get("prompts")), ("prompts file", report.get("prompts_file")),
                ("prefix", report.get("prefix")), ("candidates", report.get("candidates")),
                ("CLIP score (no re-ranking)", report.get("clip_score")),
                (f"CLIP score (best of {report.get('candidates')})", report.get("clip_score_reranked")),
                ("seconds per prompt", report.get("seconds_per_prompt")), ("device", report.get("device")),
                ("sampling settings", report.get("settings"))]
        for key in ("attribute_accuracy", "attribute_accuracy_reranked"):
            rows += [(f"{key.replace('_', ' ')}: {name}", value) for name, value in (report.get(key) or {}).items()]
        lines += ["`latentmap eval` (the paper's Table-1 protocol):", "", "| | |", "|---|---|"]
        lines += [f"| {label} | {_cell(value)} |" for label, value in rows if value is not None]
        lines.append("")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`"
    return str(value)
