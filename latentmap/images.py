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

from latentmap.config import plural
from latentmap.errors import LatentmapError

__all__ = ["contact_sheet", "image_files", "load_image", "load_images", "save_png", "tensor_to_pil"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Summaries latentmap writes next to real images (sample's per-prompt sheet, build-data's contact sheet,
# train's metrics plot): a folder given as image prompts skips them; naming such a file still uses it.
SUMMARY_IMAGES = ("sheet.png", "contact-sheet.png", "metrics.png")
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


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files that ``paths`` (files or folders) name: a file as given; a folder's images in sorted
    order, without latentmap's summaries (:data:`SUMMARY_IMAGES`, e.g. a sample folder's ``sheet.png``)."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.name.lower() not in SUMMARY_IMAGES)
            if not found:
                raise LatentmapError(f"folder {str(entry)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}; "
                                     f"summaries such as {SUMMARY_IMAGES[0]} are not image prompts)")
            files.extend(found)
        else:
            files.append(entry)
    if not files:
        raise LatentmapError("no image files given")
    return files


def load_images(paths: Sequence[str | os.PathLike], *, size: int = 224) -> Tensor:
    """Image files (or folders of them, see :func:`image_files`) -> (N, 3, size, size) in [-1, 1]."""
    return torch.stack([load_image(f, size=size) for f in image_files(paths)])


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

    Every image is fitted, aspect ratio kept, in a square cell of ``cell`` pixels (small generators
    render tiny images that would leave no room for a caption) and centred on white: a wide landscape
    gets white bands above and below, never a squash. By default the cell is the image's longer side,
    at least 128 px.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise LatentmapError(f"contact sheet needs images of shape (N, 3, H, W) with N > 0, got {tuple(images.shape)}")
    count = images.shape[0]
    if captions is not None and len(captions) != count:
        raise LatentmapError(f"contact sheet has {plural(count, 'image')} but {plural(len(captions), 'caption')}")
    columns = columns or min(count, 8)
    rows = -(-count // columns)
    height, width = int(images.shape[-2]), int(images.shape[-1])
    side = cell or max(128, height, width)
    scale = side / max(height, width)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
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
        if tile.size != fitted:
            tile = tile.resize(fitted, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
        sheet.paste(tile, (x + (side - fitted[0]) // 2, y + (side - fitted[1]) // 2))
        if captions is not None:
            draw.text((x + CAPTION_PAD, y + side + CAPTION_PAD), captions[index], fill="black", font=font)
    return sheet
