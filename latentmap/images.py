"""Images in and out: tensors in [-1, 1] <-> PNG files, and captioned contact sheets.

Generators and encoders speak ``(B, 3, H, W)`` float tensors in [-1, 1]; users speak PNG files.
Everything here goes through Pillow so no other image library is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from latentmap.errors import LatentmapError

__all__ = ["contact_sheet", "load_image", "load_images", "save_png", "tensor_to_pil"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_PAD = 4


def tensor_to_pil(image: Tensor) -> Image.Image:
    """One image (3, H, W) in [-1, 1] -> an RGB Pillow image (values clamped, rounded to 8 bits)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise LatentmapError(f"expected one image of shape (3, H, W), got {tuple(image.shape)}")
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return Image.fromarray(rearrange(pixels, "c h w -> h w c").numpy(), mode="RGB")


def save_png(image: Tensor, path: str | os.PathLike) -> Path:
    """Write one image (3, H, W) in [-1, 1] as PNG, creating parent folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(image).save(path, format="PNG")
    return path


def load_image(path: str | os.PathLike | Image.Image, *, size: int | None = None) -> Tensor:
    """An image file (or a Pillow image) -> (3, H, W) float tensor in [-1, 1] (resized to ``size`` square if given)."""
    if isinstance(path, Image.Image):
        rgb = path.convert("RGB")
    else:
        path = Path(path)
        if not path.is_file():
            raise LatentmapError(f"image file {str(path)!r} does not exist")
        try:
            with Image.open(path) as opened:
                rgb = opened.convert("RGB")
        except OSError as exc:
            raise LatentmapError(f"cannot read image {str(path)!r}: {exc}") from exc
    if size is not None:
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    array = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
    return rearrange(array, "h w c -> c h w").float() / 127.5 - 1.0


def load_images(paths: Sequence[str | os.PathLike], *, size: int = 224) -> Tensor:
    """Image files (or folders of them) -> (N, 3, size, size) in [-1, 1], in sorted order per folder."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise LatentmapError(f"folder {str(entry)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        else:
            files.append(entry)
    if not files:
        raise LatentmapError("no image files given")
    return torch.stack([load_image(f, size=size) for f in files])


def _font(size: int) -> ImageFont.ImageFont:
    """A readable font: DejaVu Sans where the system has it (Pillow's built-in one nearly drops spaces)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size=size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def contact_sheet(
    images: Tensor,
    captions: Sequence[str] | None = None,
    *,
    columns: int | None = None,
    title: str | None = None,
    cell: int | None = None,
) -> Image.Image:
    """Tile images (N, 3, H, W) in a grid, each with an optional caption below, and a title on top.

    ``cell`` resizes every tile to that many pixels square (small generators render tiny images that
    would leave no room for a caption); by default tiles keep their size but are at least 128 px.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise LatentmapError(f"contact sheet needs images of shape (N, 3, H, W) with N > 0, got {tuple(images.shape)}")
    count = images.shape[0]
    if captions is not None and len(captions) != count:
        raise LatentmapError(f"contact sheet has {count} images but {len(captions)} captions")
    columns = columns or min(count, 8)
    rows = -(-count // columns)
    side = cell or max(128, int(images.shape[-1]))
    font_px = max(10, side // 12)
    font = _font(font_px)
    caption_h = font_px + 2 * CAPTION_PAD if captions is not None else 0
    title_h = font_px + 2 * CAPTION_PAD if title else 0
    sheet = Image.new("RGB", (columns * side, title_h + rows * (side + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((CAPTION_PAD, CAPTION_PAD), title, fill="black", font=font)
    for index in range(count):
        row, col = divmod(index, columns)
        x, y = col * side, title_h + row * (side + caption_h)
        tile = tensor_to_pil(images[index])
        if tile.size != (side, side):
            tile = tile.resize((side, side), Image.Resampling.NEAREST if tile.width < side else Image.Resampling.BICUBIC)
        sheet.paste(tile, (x, y))
        if captions is not None:
            draw.text((x + CAPTION_PAD, y + side + CAPTION_PAD), captions[index], fill="black", font=font)
    return sheet
