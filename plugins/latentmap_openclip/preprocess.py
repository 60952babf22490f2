"""Differentiable image preprocessing: generator output in [-1, 1] -> the encoder's normalised input.

``OpenClipPreprocess`` reproduces, on tensors and with autograd, what open_clip's inference transform
does to a PIL picture: resize (shortest side by default, bicubic, anti-aliased as PIL does), centre crop
(or pad), then the model's mean/std. Pixels are clamped to the displayable range before and after the
resize, as saving a PNG and PIL's 8-bit resize would; quantisation to 8 bits is not reproduced.

``Clip2LatentPreprocess`` reproduces clip2latent's embedder: an "area" (box-average) resize that squashes
to the model size, then the CLIP mean/std applied twice with a clamp to [0, 1] in between. Use it only to
match conditions of priors trained by clip2latent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from latentmap import LatentmapError

RESIZE_MODES = ("shortest", "longest", "squash")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = (int(s) for s in size)
    return height, width


def _channel_stats(values: float | Sequence[float], key: str) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    stats = tuple(float(v) for v in values)
    if len(stats) != 3:
        raise LatentmapError(f"preprocess {key} must have 3 values (one per RGB channel), got {list(stats)}")
    return stats  # type: ignore[return-value]


def check_images(images: Tensor) -> None:
    """Raise a clear error unless ``images`` is a float tensor (B, 3, H, W)."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise LatentmapError(f"embed_image expects images of shape (B, 3, H, W) in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise LatentmapError(f"embed_image expects float images in [-1, 1], got dtype {images.dtype}")


@dataclass(frozen=True)
class OpenClipPreprocess:
    """open_clip's inference transform for tensors; built from a model's ``preprocess_cfg``."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: float = 0.0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "OpenClipPreprocess":
        """From open_clip's preprocess dict (size, mean, std, interpolation, resize_mode, fill_color)."""
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation == "random":  # a training-time setting; open_clip's inference path uses bicubic
            interpolation = "bicubic"
        resize_mode = cfg.get("resize_mode") or "shortest"
        if interpolation not in ("bicubic", "bilinear"):
            raise LatentmapError(f"preprocess interpolation {interpolation!r} is not supported (bicubic, bilinear)")
        if resize_mode not in RESIZE_MODES:
            raise LatentmapError(f"preprocess resize_mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        return cls(
            size=_pair(cfg.get("size", 224)),
            mean=_channel_stats(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)), "mean"),
            std=_channel_stats(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), "std"),
            interpolation=interpolation,
            resize_mode=resize_mode,
            fill_color=float(cfg.get("fill_color", 0)) / 255.0,
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) the picture is resized to before cropping/padding, as open_clip computes it."""
        target_h, target_w = self.size
        if self.resize_mode == "squash":
            return target_h, target_w
        if self.resize_mode == "shortest" and target_h == target_w:
            # torchvision Resize(int): the short side becomes the size, the long side is scaled and floored.
            short, long = min(height, width), max(height, width)
            new_short, new_long = target_h, int(target_h * long / short)
            return (new_short, new_long) if height <= width else (new_long, new_short)
        ratio_h, ratio_w = height / target_h, width / target_w
        ratio = max(ratio_h, ratio_w) if self.resize_mode == "longest" else min(ratio_h, ratio_w)
        return round(height / ratio), round(width / ratio)

    def __call__(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, size) normalised; differentiable."""
        check_images(images)
        pixels = (images.clamp(-1.0, 1.0) + 1.0) / 2.0
        new_h, new_w = self.resized_size(pixels.shape[-2], pixels.shape[-1])
        if (new_h, new_w) != tuple(pixels.shape[-2:]):
            pixels = F.interpolate(pixels, size=(new_h, new_w), mode=self.interpolation, align_corners=False,
                                   antialias=True).clamp(0.0, 1.0)
        pixels = center_crop_or_pad(pixels, self.size, fill=self.fill_color)
        return normalize(pixels, self.mean, self.std)


@dataclass(frozen=True)
class Clip2LatentPreprocess:
    """clip2latent's embedder: area resize (squash) to the model size, CLIP mean/std, clamp to [0, 1], mean/std again.

    ``presize`` first area-resizes to a square of that side, as clip2latent's dataset generator did
    (256) before handing images to its embedder.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    presize: int | None = None

    def __call__(self, images: Tensor) -> Tensor:
        check_images(images)
        pixels = images
        if self.presize:
            pixels = F.interpolate(pixels, size=(self.presize, self.presize), mode="area")
        pixels = F.interpolate(pixels, size=self.size, mode="area")
        once = normalize(pixels * 0.5 + 0.5, self.mean, self.std).clamp(0.0, 1.0)
        return normalize(once, self.mean, self.std)


def normalize(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(pixels - mean) / std per channel, for (B, 3, H, W)."""
    mean_t = rearrange(torch.tensor(mean, dtype=pixels.dtype, device=pixels.device), "c -> 1 c 1 1")
    std_t = rearrange(torch.tensor(std, dtype=pixels.dtype, device=pixels.device), "c -> 1 c 1 1")
    return (pixels - mean_t) / std_t


def center_crop_or_pad(pixels: Tensor, size: tuple[int, int], *, fill: float = 0.0) -> Tensor:
    """Centre-crop (B, C, H, W) to ``size``, padding with ``fill`` first where it is smaller (torchvision's rounding)."""
    crop_h, crop_w = size
    height, width = pixels.shape[-2:]
    if crop_h > height or crop_w > width:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        pixels = F.pad(pixels, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        height, width = pixels.shape[-2:]
    top = int(round((height - crop_h) / 2.0))
    left = int(round((width - crop_w) / 2.0))
    return pixels[..., top : top + crop_h, left : left + crop_w]
