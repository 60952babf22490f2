"""Images in and out: contact sheets keep each image's shape; folders given as image prompts skip summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentmap.config import plural
from latentmap.errors import LatentmapError
from latentmap.images import contact_sheet, image_files, save_png


def _red_box(sheet) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the red pixels of a sheet."""
    pixels = np.asarray(sheet)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    rows, cols = np.nonzero(red)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


@pytest.mark.parametrize(("height", "width"), [(32, 64), (64, 32), (40, 40)])
def test_contact_sheet_keeps_the_aspect_ratio_and_pads(height, width):
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, height, width)
    sheet = contact_sheet(torch.stack([red, red]), columns=2)
    assert sheet.size == (2 * 128, 128)  # square cells of the default size
    left, top, right, bottom = _red_box(sheet.crop((0, 0, 128, 128)))
    assert (right - left) / (bottom - top) == pytest.approx(width / height, rel=0.02)
    assert max(right - left, bottom - top) == 128
    assert (left + right) / 2 == pytest.approx(64, abs=1) and (top + bottom) / 2 == pytest.approx(64, abs=1)  # centred


def test_contact_sheet_fits_large_images_in_the_cell():
    wide = torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 100, 300)
    left, top, right, bottom = _red_box(contact_sheet(wide[None], cell=150))
    assert (right - left, bottom - top) == (150, 50)


def test_image_folders_skip_latentmaps_summaries_but_named_files_are_used(tmp_path):
    grey = torch.zeros(3, 4, 4)
    for name in ("rank-0.png", "rank-1.png", "sheet.png", "contact-sheet.png", "metrics.png"):
        save_png(grey, tmp_path / name)
    (tmp_path / "latents.safetensors").write_bytes(b"")
    assert [p.name for p in image_files([tmp_path])] == ["rank-0.png", "rank-1.png"]
    assert [p.name for p in image_files([tmp_path / "sheet.png"])] == ["sheet.png"]
    only_sheet = tmp_path / "only"
    save_png(grey, only_sheet / "sheet.png")
    with pytest.raises(LatentmapError, match="holds no images"):
        image_files([only_sheet])


def test_plural():
    assert [plural(n, "image") for n in (0, 1, 2, 1500)] == ["0 images", "1 image", "2 images", "1,500 images"]
    assert plural(1, "complete shard") == "1 complete shard" and plural(3, "index", "indices") == "3 indices"
