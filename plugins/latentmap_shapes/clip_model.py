"""The tiny shapes CLIP: open_clip's own ``CLIP`` class with a small custom configuration.

Vision tower: open_clip's ``ModifiedResNet`` (the convolutional CLIP tower with attention pooling)
at width 16 on 64x64 images; a tiny ViT learned colour only in the planning prototype, the conv
tower learns shape, position and size too. Text tower: a small causal transformer over the
word-level vocabulary of :mod:`latentmap_shapes.tokenizer`.

Weights are stored as ``shapes_clip.safetensors`` next to ``shapes_clip.json`` (the model
configuration, the vocabulary and how it was trained).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file, save_file
from torch import Tensor

from latentmap import LatentmapError
from latentmap_shapes.captions import caption_words
from latentmap_shapes.tokenizer import WordTokenizer

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = PACKAGE_DIR / "shapes_clip.safetensors"
IMAGE_SIZE = 64


def default_config() -> dict[str, Any]:
    """The architecture the shipped weights were trained with (all JSON-ready)."""
    return {
        "embed_dim": 64,
        "vision": {"layers": [1, 1, 1, 1], "width": 16, "head_width": 64, "image_size": IMAGE_SIZE},
        "text": {"context_length": 24, "width": 64, "heads": 4, "layers": 2},
        "words": caption_words(),
    }


def build_model(config: dict[str, Any]) -> tuple[CLIP, WordTokenizer]:
    """A freshly initialised open_clip ``CLIP`` and its tokenizer, from a configuration dict."""
    tokenizer = WordTokenizer(config["words"], config["text"]["context_length"])
    vision = CLIPVisionCfg(
        layers=tuple(config["vision"]["layers"]),
        width=config["vision"]["width"],
        head_width=config["vision"]["head_width"],
        image_size=config["vision"]["image_size"],
    )
    text = CLIPTextCfg(
        context_length=config["text"]["context_length"],
        vocab_size=tokenizer.vocab_size,
        width=config["text"]["width"],
        heads=config["text"]["heads"],
        layers=config["text"]["layers"],
        pool_type="argmax",
        pad_id=0,
    )
    return CLIP(embed_dim=config["embed_dim"], vision_cfg=vision, text_cfg=text), tokenizer


def config_path_for(weights: Path) -> Path:
    return weights.with_suffix(".json")


def save_weights(model: CLIP, config: dict[str, Any], weights: Path, *, half: bool = True) -> None:
    """Write ``weights`` (safetensors; float tensors in float16 when ``half``) and its JSON config."""
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        state[key] = value.half() if half and value.is_floating_point() else value
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weights), metadata={"format": "pt", "model": "shapes-clip"})
    config_path_for(weights).write_text(json.dumps(config, indent=2) + "\n")


def load_model(weights: Path = DEFAULT_WEIGHTS) -> tuple[CLIP, WordTokenizer, dict[str, Any]]:
    """Rebuild the model from ``weights`` and the JSON next to it; float32, eval mode."""
    weights = Path(weights)
    config_file = config_path_for(weights)
    if not weights.is_file():
        raise LatentmapError(
            f"shapes-clip weights not found at {weights}; train them with `python -m latentmap_shapes.train_clip`"
        )
    if not config_file.is_file():
        raise LatentmapError(f"shapes-clip config {config_file} (next to {weights.name}) is missing")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise LatentmapError(f"shapes-clip config {config_file} is not valid JSON: {exc}") from None
    for key in ("embed_dim", "vision", "text", "words"):
        if key not in config:
            raise LatentmapError(f"shapes-clip config {config_file} lacks key {key!r}")
    model, tokenizer = build_model(config)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        kind = "missing" if missing else "unexpected"
        raise LatentmapError(f"shapes-clip weights {weights} do not fit its config: {kind} tensor {first!r}")
    return model.eval(), tokenizer, config


def prepare_images(images: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Images (B, 3, H, W) in [-1, 1] at any size -> (B, 3, size, size), the model's input as trained."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise LatentmapError(f"shapes-clip expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] != (size, size):
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return images
