"""The files behind the page's download buttons: the shown images as PNGs in a zip, the latents as safetensors.

Never pickle: the latents file holds plain tensors and one JSON string of metadata, and
``latentmap edit --latents FILE`` reads it (``per_layer`` is what was rendered, edit included).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from latentmap.sample import slugify

__all__ = ["download_stem", "write_images_zip", "write_latents"]


def write_images_zip(path: Path, images: Sequence[Any], scores: Sequence[float], info: dict[str, Any]) -> Path:
    """``path``: a zip of ``01-score.png`` ... (best first) and ``info.json`` (prompt, seed, settings, scores)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for rank, (image, score) in enumerate(zip(images, scores), start=1):
            buffer = BytesIO()
            image.save(buffer, format="PNG")
            archive.writestr(f"{rank:02d}-{score:.3f}.png", buffer.getvalue())
        archive.writestr("info.json", json.dumps({**info, "scores": [round(s, 6) for s in scores]}, indent=2) + "\n")
    return path


def write_latents(path: Path, latents: Tensor, per_layer: Tensor, scores: Sequence[float],
                  info: dict[str, Any]) -> Path:
    """``path``: safetensors with ``latents`` (N, tokens, dim), ``per_layer`` (N, layers, dim, as rendered)
    and ``scores`` (N,); ``info`` as JSON in the metadata key ``latentmap``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "latents": latents.detach().float().cpu().contiguous(),
        "per_layer": per_layer.detach().float().cpu().contiguous(),
        "scores": torch.tensor(list(scores), dtype=torch.float32),
    }
    save_file(tensors, str(path), metadata={"latentmap": json.dumps(info)})
    return path


def download_stem(label: str, seed: int, strength: float) -> str:
    """File name stem for a session's downloads: ``a-blue-star-seed0`` (``-edit+1.5`` when edited)."""
    stem = f"{slugify(label)}-seed{seed}"
    return stem if strength == 0 else f"{stem}-edit{strength:+g}"
