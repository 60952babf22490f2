"""Building a frozen open_clip model, its tokenizer and its preprocessing settings from a parsed spec.

Three sources of architecture: open_clip's built-in configs (``ViT-B-32``), a JSON config file, or an
``hf-hub:`` repository. Three sources of weights: a pretrained tag (through the Hugging Face cache, OpenAI's
own file where the ``clip`` package keeps it for ``openai`` tags, or open_clip's URL for the few tags
without a Hub copy), a local file (safetensors, ``torch.load(weights_only=True)``, or a TorchScript archive
read tensor by tensor, so a checkpoint can never run code), or none (random, seeded; for tests and
experiments with custom configs only). A download that cannot happen fails at the first connection error,
in one line (``latentmap.fetch_hub_file``).
"""

from __future__ import annotations

import difflib
import io
import json
import os
import pickle
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from torch import nn

from latentmap import LatentmapError, fetch_hub_file, resolve_weights, sha256_file
from latentmap_openclip.spec import EncoderSpec

HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PREPROCESS_KEYS_FROM_TAG = ("mean", "std", "interpolation", "resize_mode", "fill_color")

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass
class LoadedModel:
    """An open_clip model (frozen, eval, on CPU in float32) and what is needed to use and identify it."""

    model: nn.Module
    tokenizer: Tokenizer
    preprocess_cfg: dict[str, Any]
    weights_file: Path | None = None
    weights_source: str = ""
    extra_identity: dict[str, Any] = field(default_factory=dict)


def load_model(spec: EncoderSpec, *, cache_dir: str | None = None, quick_gelu: bool | None = None, seed: int = 0) -> LoadedModel:
    """Build the model ``spec`` describes; every failure is one ``LatentmapError`` line."""
    if spec.hf_hub:
        loaded = _load_hf_hub(spec, cache_dir=cache_dir, quick_gelu=quick_gelu, seed=seed)
    elif spec.config_path is not None:
        loaded = _load_config_file(spec, quick_gelu=quick_gelu, seed=seed)
    else:
        loaded = _load_builtin(spec, cache_dir=cache_dir, quick_gelu=quick_gelu)
    loaded.model.eval().requires_grad_(False)
    return loaded


# ---------------------------------------------------------------------------------------------- built-in


def _load_builtin(spec: EncoderSpec, *, cache_dir: str | None, quick_gelu: bool | None) -> LoadedModel:
    arch = _check_arch(spec.arch or "", spec.text)
    force_preprocess: dict[str, Any] = {}
    if spec.tag:
        tag_cfg = get_pretrained_cfg(arch, spec.tag)
        if not tag_cfg:
            tags = list_pretrained_tags_by_model(arch)
            close = difflib.get_close_matches(spec.tag, tags, n=3, cutoff=0.4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise LatentmapError(
                f"open_clip has no pretrained tag {spec.tag!r} for {arch}: {hint}known tags: {', '.join(tags) or 'none'}"
            )
        weights_file = pretrained_file(arch, spec.tag, tag_cfg, cache_dir=cache_dir)
        if quick_gelu is None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        force_preprocess = {k: tag_cfg[k] for k in PREPROCESS_KEYS_FROM_TAG if k in tag_cfg}
        source = f"tag:{spec.tag}"
    elif spec.weights_path is not None:
        weights_file = _local_weights(spec)
        source = "file"
    else:
        tags = list_pretrained_tags_by_model(arch)
        example = f"openclip:{arch}/{tags[0]}" if tags else f"openclip:{arch}@/path/to/weights.safetensors"
        raise LatentmapError(
            f"encoder spec 'openclip:{spec.text}' names no weights: use a pretrained tag ({example}; tags: "
            f"{', '.join(tags) or 'none'}) or a local file (openclip:{arch}@/path/to/weights.safetensors)"
        )
    scripted = is_script_archive(weights_file)  # OpenAI's own format: open_clip would refuse or unpickle it
    try:
        model = open_clip.create_model(
            arch, pretrained=None if scripted else str(weights_file), force_quick_gelu=bool(quick_gelu),
            force_preprocess_cfg=force_preprocess or None, weights_only=True, device="cpu",
        )
        if scripted:
            load_weights(model, weights_file)
    except Exception as exc:  # open_clip raises RuntimeError/KeyError/... for shape or key mismatches
        raise LatentmapError(f"cannot load weights {weights_file} into open_clip {arch}: {_load_failure(exc)}") from None
    return LoadedModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess_cfg=dict(open_clip.get_model_preprocess_cfg(model)),
        weights_file=weights_file,
        weights_source=source,
        extra_identity={"arch": arch, "pretrained": spec.tag, "quick_gelu": bool(quick_gelu)},
    )


def _check_arch(arch: str, spec_text: str) -> str:
    """The open_clip architecture name (``/`` in names is not allowed here), or an error listing close matches."""
    known = open_clip.list_models()
    if arch in known:
        return arch
    lowered = {name.lower(): name for name in known}
    if arch.lower() in lowered:
        return lowered[arch.lower()]
    close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"see open_clip.list_models() for the {len(known)} known ones"
    raise LatentmapError(f"unknown open_clip architecture {arch!r} in encoder spec 'openclip:{spec_text}'; {hint}")


def pretrained_file(arch: str, tag: str, tag_cfg: dict[str, Any], *, cache_dir: str | None = None) -> Path:
    """Local path of the weights for ``arch/tag``: the Hugging Face cache, OpenAI's file in the ``clip``
    package's cache (``openai`` tags), else a download from the Hub (or open_clip's URL for tags without a Hub copy)."""
    if tag_cfg.get("file"):
        return Path(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    url = tag_cfg.get("url", "")
    label = f"{arch}/{tag}"
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" -> default file names, "org/repo/file.bin" -> that file
        return _hf_weights(repo_id, [filename] if filename else list(HF_WEIGHT_NAMES), label=label, arch=arch,
                           cache_dir=cache_dir, openai_url=url)
    if not url:
        raise LatentmapError(f"open_clip lists no download location for {label}")
    return openai_clip_file(url) or resolve_weights(
        f"openclip-{arch}-{tag}", filename=os.path.basename(url), url=url, sha256=_openai_digest(url),
    )


def _openai_digest(url: str) -> str | None:
    """The SHA-256 an OpenAI download URL carries (``.../models/<sha256>/ViT-B-32.pt``), if it has one."""
    digest = url.rstrip("/").split("/")[-2] if "openaipublic" in url else ""
    return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None


def clip_cache_folders() -> list[Path]:
    """Where OpenAI's ``clip`` package keeps its downloads: ``~/.cache/clip`` (and ``$XDG_CACHE_HOME/clip``)."""
    folders = [Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "clip"] if os.environ.get("XDG_CACHE_HOME") else []
    return list(dict.fromkeys([*folders, Path.home() / ".cache" / "clip"]))


def openai_clip_file(url: str) -> Path | None:
    """OpenAI's own weights file for ``url`` (``.../ViT-B-32.pt``) if the ``clip`` package (or clip2latent)
    already downloaded it; checked against the SHA-256 its URL carries. None when it is not there."""
    if "openaipublic" not in url:
        return None
    sha256 = _openai_digest(url)
    for folder in clip_cache_folders():
        file = folder / os.path.basename(url)
        if not file.is_file():
            continue
        actual = sha256_file(file)
        if sha256 and actual != sha256:
            raise LatentmapError(
                f"{file} (OpenAI's CLIP file, in the clip package's cache) has SHA-256 {actual}, not the {sha256} of "
                f"{url}: an interrupted download? delete it, or replace it with a complete copy"
            )
        return file
    return None


def _safetensors_first(filenames: list[str]) -> list[str]:
    """The file names to ask the Hub for: a safetensors copy first (it loads without unpickling anything)."""
    candidates: list[str] = []
    for name in filenames:
        if name == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif name.endswith((".bin", ".pth")):
            candidates.append(name[:-4] + ".safetensors")
        candidates.append(name)
    return list(dict.fromkeys(candidates))


def _hf_weights(repo_id: str, filenames: list[str], *, label: str, arch: str, cache_dir: str | None,
                openai_url: str = "") -> Path:
    """The first of ``filenames`` (safetensors alternatives first) in the Hugging Face cache, else OpenAI's file
    for ``openai_url`` in the clip package's cache, else downloaded; one error line otherwise."""
    clip_hint = ""
    if "openaipublic" in openai_url:
        clip_hint = (f", or put OpenAI's {os.path.basename(openai_url)} ({openai_url}) in "
                     f"{clip_cache_folders()[-1]} (the clip package's cache)")
    hint = (f"download the file from that URL and give it as openclip:{arch}@/path/to/weights.safetensors "
            f"(or the weights= option){clip_hint}, or run once with network access to fill the cache")
    return fetch_hub_file(repo_id, _safetensors_first(filenames), cache_dir=cache_dir,
                          what=f"open_clip weights for {label}", hint=hint, elsewhere=lambda: openai_clip_file(openai_url))


def _local_weights(spec: EncoderSpec) -> Path:
    assert spec.weights_path is not None
    return resolve_weights(f"openclip:{spec.label}", filename=spec.weights_path.name, path=spec.weights_path)


# ------------------------------------------------------------------------------------- custom configs


def _load_config_file(spec: EncoderSpec, *, quick_gelu: bool | None, seed: int) -> LoadedModel:
    assert spec.config_path is not None
    path = spec.config_path
    if not path.is_file():
        raise LatentmapError(f"open_clip model config {path} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatentmapError(f"open_clip model config {path} is not valid JSON: {_one_line(exc)}") from None
    model_cfg, preprocess = _split_config(document, str(path))
    weights_file = _local_weights(spec) if spec.weights_path is not None else None
    loaded = build_from_config(model_cfg, preprocess, weights_file=weights_file, quick_gelu=quick_gelu, seed=seed,
                               where=str(path))
    loaded.extra_identity["config"] = model_cfg
    return loaded


def _split_config(document: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Accept open_clip's model config (embed_dim, vision_cfg, text_cfg) or its hub form {model_cfg, preprocess_cfg}."""
    if isinstance(document, dict) and "model_cfg" in document:
        model_cfg, preprocess = document["model_cfg"], document.get("preprocess_cfg", {})
    else:
        model_cfg, preprocess = document, {}
    if not isinstance(model_cfg, dict):
        raise LatentmapError(f"open_clip model config {where} must be a JSON object")
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise LatentmapError(f"open_clip model config {where} lacks key(s) {', '.join(missing)} (needs embed_dim, vision_cfg, text_cfg)")
    return model_cfg, dict(preprocess or {})


def build_from_config(
    model_cfg: dict[str, Any],
    preprocess: dict[str, Any],
    *,
    weights_file: Path | None,
    quick_gelu: bool | None = None,
    seed: int = 0,
    where: str = "config",
    tokenizer_source: str | None = None,
) -> LoadedModel:
    """Instantiate open_clip's CLIP/CustomTextCLIP from a config dict; random (seeded) unless ``weights_file``."""
    cfg = json.loads(json.dumps(model_cfg))  # deep copy, JSON types only
    if "multimodal_cfg" in cfg:
        raise LatentmapError(f"open_clip model config {where} is a CoCa model (multimodal_cfg), which is not supported")
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # never fetch ImageNet weights behind the user's back
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom_text = bool(cfg.pop("custom_text", False)) or "hf_model_name" in text_cfg
    if quick_gelu is not None:
        cfg["quick_gelu"] = bool(quick_gelu)
    model_class = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    try:
        with _seeded(seed):
            model = model_class(**cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise LatentmapError(f"cannot build an open_clip model from {where}: {_one_line(exc)}") from None
    if weights_file is not None:
        try:
            load_weights(model, weights_file)
        except Exception as exc:
            raise LatentmapError(f"cannot load weights {weights_file} into the model of {where}: {_load_failure(exc)}") from None
    final_preprocess = merge_preprocess_dict(PreprocessCfg(), preprocess)
    final_preprocess["size"] = model.visual.image_size
    open_clip.set_model_preprocess_cfg(model, final_preprocess)
    return LoadedModel(
        model=model,
        tokenizer=_tokenizer_for(text_cfg, tokenizer_source),
        preprocess_cfg=final_preprocess,
        weights_file=weights_file,
        weights_source="file" if weights_file is not None else f"random(seed={seed})",
        extra_identity={"quick_gelu": bool(cfg.get("quick_gelu", False))},
    )


def _tokenizer_for(text_cfg: dict[str, Any], tokenizer_source: str | None) -> Tokenizer:
    context_length = int(text_cfg.get("context_length", 77))
    hf_name = text_cfg.get("hf_tokenizer_name")
    if hf_name:
        return open_clip.tokenizer.HFTokenizer(tokenizer_source or hf_name, context_length=context_length,
                                               tokenizer_mode=text_cfg.get("tokenizer_mode"))
    return open_clip.SimpleTokenizer(context_length=context_length, **(text_cfg.get("tokenizer_kwargs") or {}))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic random initialisation without disturbing the caller's CPU random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------- hf-hub


def _load_hf_hub(spec: EncoderSpec, *, cache_dir: str | None, quick_gelu: bool | None, seed: int) -> LoadedModel:
    repo_id = spec.hf_hub or ""
    config_path = fetch_hub_file(repo_id, ["open_clip_config.json"], cache_dir=cache_dir,
                                 what=f"open_clip config of hf-hub:{repo_id}",
                                 hint="run once with network access, or download the repository and use "
                                      "openclip:/path/to/open_clip_config.json@/path/to/weights")
    document = json.loads(Path(config_path).read_text(encoding="utf-8"))
    model_cfg, preprocess = _split_config(document, f"hf-hub:{repo_id}")
    weights_file = _hf_weights(repo_id, list(HF_WEIGHT_NAMES), label=f"hf-hub:{repo_id}", arch="ARCH", cache_dir=cache_dir)
    loaded = build_from_config(model_cfg, preprocess, weights_file=weights_file, quick_gelu=quick_gelu, seed=seed,
                               where=f"hf-hub:{repo_id}")
    loaded.weights_source = f"hf-hub:{repo_id}"
    return loaded


# ------------------------------------------------------------------------------------- weight files


def load_weights(model: nn.Module, weights_file: Path) -> None:
    """Load a weights file into ``model`` (strict) without running code from it: safetensors or a torch
    file through open_clip with ``weights_only=True``, a TorchScript archive through :func:`script_archive_tensors`."""
    if not is_script_archive(weights_file):
        open_clip.load_checkpoint(model, str(weights_file), strict=True, weights_only=True)
        return
    tensors = script_archive_tensors(weights_file)
    expected = list(model.state_dict())
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise KeyError(f"the TorchScript archive has no tensor {missing[0]!r} ({len(missing)} of {len(expected)} missing)")
    model.load_state_dict({name: tensors[name] for name in expected}, strict=True)  # extras (attn_mask ...) are not weights


def is_script_archive(path: Path) -> bool:
    """True for a TorchScript archive (OpenAI's CLIP files): a zip with code and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for every TorchScript class while an archive is read: it keeps the attributes, nothing runs."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _same(value: Any, *_: Any) -> Any:
    return value


class _ScriptArchiveUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` allowing only tensors, plain containers and stand-ins
    for the archive's own classes: no function or class of the running program can be reached."""

    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("collections", "OrderedDict"): dict,
               **{("torch.jit._pickle", name): _same for name in (
                   "build_intlist", "build_doublelist", "build_boollist", "build_tensorlist", "restore_type_tag")}}

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(prefix + "data.pkl")))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a TorchScript weights archive")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"unexpected record {pid!r} in a TorchScript weights archive")
        key = str(pid[2])
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            self.storages[key] = torch.frombuffer(raw, dtype=pid[1]) if raw else torch.empty(0, dtype=pid[1])
        return self.storages[key]


def script_archive_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the modules in a TorchScript archive, by dotted name (``visual.conv1.weight``),
    read without loading the archive's code (``torch.jit.load`` would compile and run it)."""
    with zipfile.ZipFile(path) as archive:
        prefixes = [name[: -len("data.pkl")] for name in archive.namelist()
                    if name.endswith("/data.pkl") and name.count("/") == 1]
        if not prefixes:
            raise pickle.UnpicklingError("the archive has no data.pkl")
        root = _ScriptArchiveUnpickler(archive, prefixes[0]).load()
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, prefix: str) -> None:
        for name, value in getattr(node, "attributes", {}).items():
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{name}.")

    walk(root, "")
    return tensors


def _load_failure(exc: BaseException) -> str:
    """Why a weights file did not load, in a few words (a refused pickle gets its own explanation)."""
    if isinstance(exc, pickle.UnpicklingError):
        return ("it holds pickled objects other than tensors, and latentmap never runs code from a checkpoint "
                "(torch.load weights_only=True); convert it to .safetensors with a trusted tool")
    return _one_line(exc)


def _one_line(exc: BaseException | None, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) if exc is not None else "unknown error"
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
