"""Building a frozen open_clip model, its tokenizer and its preprocessing settings from a parsed spec.

Three sources of architecture: open_clip's built-in configs (``ViT-B-32``), a JSON config file, or an
``hf-hub:`` repository. Three sources of weights: a pretrained tag (through the Hugging Face cache, or
open_clip's URL for the few tags without a Hub copy), a local file (loaded with ``weights_only=True`` or
safetensors, so a checkpoint can never run code), or none (random, seeded; for tests and experiments
with custom configs only).
"""

from __future__ import annotations

import difflib
import json
import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import huggingface_hub
import open_clip
import torch
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transform import PreprocessCfg, merge_preprocess_dict
from torch import nn

from latentmap import LatentmapError, downloads_disabled, resolve_weights
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
    try:
        model = open_clip.create_model(
            arch, pretrained=str(weights_file), force_quick_gelu=bool(quick_gelu),
            force_preprocess_cfg=force_preprocess or None, weights_only=True, device="cpu",
        )
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
    """Local path of the weights for ``arch/tag``: the Hugging Face cache (downloading unless offline) or open_clip's URL."""
    if tag_cfg.get("file"):
        return Path(tag_cfg["file"])
    hub = tag_cfg.get("hf_hub", "")
    label = f"{arch}/{tag}"
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" -> default file names, "org/repo/file.bin" -> that file
        return _hf_weights(repo_id, [filename] if filename else list(HF_WEIGHT_NAMES), label=label, arch=arch,
                           cache_dir=cache_dir)
    url = tag_cfg.get("url", "")
    if not url:
        raise LatentmapError(f"open_clip lists no download location for {label}")
    digest = url.rstrip("/").split("/")[-2] if "openaipublic" in url else ""
    return resolve_weights(
        f"openclip-{arch}-{tag}", filename=os.path.basename(url), url=url,
        sha256=digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None,
    )


def _hf_weights(repo_id: str, filenames: list[str], *, label: str, arch: str, cache_dir: str | None) -> Path:
    """First of ``filenames`` (safetensors alternatives tried first) found in / downloadable to the HF cache."""
    offline = downloads_disabled()
    candidates: list[str] = []
    for name in filenames:  # prefer a safetensors copy: it loads without unpickling anything
        if name == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif name.endswith((".bin", ".pth")):
            candidates.append(name[:-4] + ".safetensors")
        candidates.append(name)
    last_error: Exception | None = None
    for candidate in dict.fromkeys(candidates):
        try:
            return Path(huggingface_hub.hf_hub_download(repo_id, candidate, cache_dir=cache_dir, local_files_only=offline))
        except Exception as exc:  # not cached, not on the Hub, or no network: try the next name
            last_error = exc
    cache = cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    why = "downloads are disabled (LATENTMAP_OFFLINE/HF_HUB_OFFLINE)" if offline else f"the download failed ({_one_line(last_error)})"
    raise LatentmapError(
        f"open_clip weights for {label} (Hugging Face repo {repo_id}) are not in the cache {cache} and {why}; "
        f"run once with network access to fill the cache, or give a local file: "
        f"openclip:{arch}@/path/to/weights.safetensors (or the weights= option)"
    )


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
            open_clip.load_checkpoint(model, str(weights_file), strict=True, weights_only=True)
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
    offline = downloads_disabled()
    try:
        config_path = huggingface_hub.hf_hub_download(repo_id, "open_clip_config.json", cache_dir=cache_dir,
                                                      local_files_only=offline)
    except Exception as exc:
        why = "downloads are disabled (LATENTMAP_OFFLINE/HF_HUB_OFFLINE)" if offline else _one_line(exc)
        raise LatentmapError(
            f"open_clip config for hf-hub:{repo_id} is not in the Hugging Face cache and {why}; run once with network "
            "access, or download the repository and use openclip:/path/to/open_clip_config.json@/path/to/weights"
        ) from None
    document = json.loads(Path(config_path).read_text(encoding="utf-8"))
    model_cfg, preprocess = _split_config(document, f"hf-hub:{repo_id}")
    weights_file = _hf_weights(repo_id, list(HF_WEIGHT_NAMES), label=f"hf-hub:{repo_id}", arch="ARCH", cache_dir=cache_dir)
    loaded = build_from_config(model_cfg, preprocess, weights_file=weights_file, quick_gelu=quick_gelu, seed=seed,
                               where=f"hf-hub:{repo_id}")
    loaded.weights_source = f"hf-hub:{repo_id}"
    return loaded


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
