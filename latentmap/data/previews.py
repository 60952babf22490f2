"""Small image previews of a dataset, so a user can see what it holds (``--save-images``).

Per shard, a grid of thumbnails of its first images (``previews/shard-00000.png``); per dataset,
``contact-sheet.png`` of the first images of shard 0. Images are never used for training; they are
written next to the shards, outside their checksums.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.atomic import write_atomic
from latentmap.images import contact_sheet

PREVIEW_FOLDER = "previews"
CONTACT_SHEET = "contact-sheet.png"
PREVIEW_COUNT = 64
THUMBNAIL_SIZE = 64


def thumbnails(images: Tensor, size: int = THUMBNAIL_SIZE) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> CPU float32 thumbnails at most ``size`` pixels square."""
    images = images.detach().float()
    if images.shape[-1] > size:
        images = F.interpolate(images, size=(size, size), mode="area")
    return images.cpu()


def _save_png(image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def save_shard_preview(root: Path, shard_file: str, images: Tensor) -> Path:
    """Write ``previews/<shard>.png``, a grid of the shard's first images."""
    folder = root / PREVIEW_FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / (Path(shard_file).stem + ".png")
    _save_png(contact_sheet(images, columns=8, cell=THUMBNAIL_SIZE), path)
    return path


def save_contact_sheet(root: Path, images: Tensor, title: str) -> Path:
    """Write ``contact-sheet.png``: the dataset's first images with a title line."""
    path = root / CONTACT_SHEET
    sheet = contact_sheet(images[:PREVIEW_COUNT], columns=8, cell=max(96, min(int(images.shape[-1]), 128)), title=title)
    _save_png(sheet, path)
    return path


@torch.inference_mode()
def render_first(generator, latents: Tensor, count: int = PREVIEW_COUNT) -> Tensor:
    """Thumbnails of the first ``count`` stored latents, re-synthesised (for the contact sheet)."""
    chosen = latents[:count].to(device=generator.device, dtype=torch.float32)
    return thumbnails(generator.synthesize(chosen), size=128)
