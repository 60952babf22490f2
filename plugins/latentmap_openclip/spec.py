"""Parsing encoder spec strings: the text after ``openclip:``.

Accepted forms::

    ViT-B-32/openai                      built-in architecture + pretrained tag (Hugging Face cache)
    ViT-B-32@/path/to/weights.safetensors built-in architecture + local weights (.safetensors, .pt, .bin)
    /path/to/config.json                 a custom model config (random weights unless weights= is given)
    /path/to/config.json@/path/to/w.pt   a custom model config + local weights
    hf-hub:org/repo                      an open_clip model published on the Hugging Face Hub

The ``weights=`` option is equivalent to ``@path`` and wins over it only if they agree; giving both with
different paths is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentmap import LatentmapError

DEFAULT_SPEC = "ViT-B-32/openai"
HF_HUB_SCHEMA = "hf-hub:"


@dataclass(frozen=True)
class EncoderSpec:
    """One parsed spec: exactly one of ``arch``, ``config_path`` or ``hf_hub`` is set."""

    text: str
    arch: str | None = None
    tag: str | None = None
    config_path: Path | None = None
    weights_path: Path | None = None
    hf_hub: str | None = None

    @property
    def label(self) -> str:
        """Short human name for messages: ``ViT-B-32/openai``, ``tiny.json`` ..."""
        if self.hf_hub:
            return HF_HUB_SCHEMA + self.hf_hub
        if self.config_path is not None:
            return str(self.config_path)
        return f"{self.arch}/{self.tag}" if self.tag else str(self.arch)


def parse_spec(spec: str | None, *, weights: str | Path | None = None) -> EncoderSpec:
    """Split ``spec`` (default ``ViT-B-32/openai``) into architecture/config, pretrained tag and weights file."""
    text = (spec or "").strip() or DEFAULT_SPEC
    option_weights = Path(weights).expanduser() if weights not in (None, "") else None

    if text.startswith(HF_HUB_SCHEMA):
        repo = text[len(HF_HUB_SCHEMA):].strip("/")
        if not repo or option_weights is not None:
            problem = "needs a repository id (hf-hub:org/name)" if not repo else "cannot be combined with weights="
            raise LatentmapError(f"encoder spec 'openclip:{text}' {problem}")
        return EncoderSpec(text=text, hf_hub=repo)

    model_part, at, weights_part = text.partition("@")
    if at and not weights_part.strip():
        raise LatentmapError(f"encoder spec 'openclip:{text}' has '@' but no weights path after it")
    spec_weights = Path(weights_part.strip()).expanduser() if at else None
    if spec_weights is not None and option_weights is not None and spec_weights != option_weights:
        raise LatentmapError(
            f"encoder spec 'openclip:{text}' names weights {spec_weights} but the weights= option names {option_weights}"
        )
    weights_path = spec_weights or option_weights
    model_part = model_part.strip()

    if _looks_like_config(model_part):
        return EncoderSpec(text=text, config_path=Path(model_part).expanduser(), weights_path=weights_path)

    arch, slash, tag = model_part.partition("/")
    if not arch:
        raise LatentmapError(f"encoder spec 'openclip:{text}' has no architecture (expected e.g. ViT-B-32/openai)")
    if slash and not tag:
        raise LatentmapError(f"encoder spec 'openclip:{text}' has '/' but no pretrained tag after it")
    if tag and weights_path is not None:
        raise LatentmapError(
            f"encoder spec 'openclip:{text}' gives both a pretrained tag ({tag!r}) and a weights file; use one"
        )
    return EncoderSpec(text=text, arch=arch, tag=tag or None, weights_path=weights_path)


def _looks_like_config(part: str) -> bool:
    """A JSON file name, or any path to an existing file, is a custom model config."""
    if part.lower().endswith(".json"):
        return True
    return ("/" in part or "\\" in part) and Path(part).expanduser().is_file()
