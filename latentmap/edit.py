"""Working in the generator's latent space: truncation, style mixing and edit directions.

These are the paper's section 5.2 tools. Latents come in two shapes: ``(B, tokens, dim)`` in the
space the prior generates, and ``(B, layers, dim)`` per style layer, which is what mixing and
layer-restricted edits act on (``space.expand`` turns the first into the second).

A *direction* is a latent-space offset: ``edited = latent + strength * direction``. latentmap
discovers one from two prompts as the difference between the means of the latents the prior
samples for each (paper, Appendix F), saves it as safetensors with the generator and space it was
made for, and also reads InterFaceGAN-style ``.npy``/``.pt`` files of shape (dim,), (1, dim) or
(layers, dim) -- without ever unpickling code (``allow_pickle=False`` / ``weights_only=True``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from latentmap.atomic import replace_atomically
from latentmap.config import plural
from latentmap.errors import LatentmapError
from latentmap.interfaces import Generator, LatentSpace

if TYPE_CHECKING:  # only for annotations: the pipeline module does not need this one
    from latentmap.pipeline import Pipeline, SamplerSettings

__all__ = [
    "Direction",
    "apply_direction",
    "discover_direction",
    "direction_from_latents",
    "load_direction",
    "parse_layers",
    "render_edits",
    "parse_strengths",
    "save_direction",
    "style_mix",
    "truncate",
]

DIRECTION_FORMAT = "latentmap-direction"
DIRECTION_VERSION = 1


# -- truncation and style mixing -----------------------------------------------------------------
def truncate(latents: Tensor, mean: Tensor, psi: float) -> Tensor:
    """Move latents toward ``mean`` (broadcast over the batch): ``mean + psi * (latents - mean)``.

    ``psi = 1`` leaves them unchanged, ``psi = 0`` gives the mean; the StyleGAN truncation trick
    trades diversity for fidelity (the paper uses it to remove artefacts).
    """
    mean = mean.to(device=latents.device, dtype=latents.dtype)
    return torch.lerp(mean.expand_as(latents), latents, float(psi))


def parse_layers(spec: str | None, layers: int) -> list[int]:
    """Parse a layer selection such as ``"8-17"``, ``"0-3,10"`` or ``"all"`` into sorted layer indices.

    Raises a one-line error naming the bad part when it is not a range of integers inside ``0..layers-1``.
    """
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(layers))
    chosen: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise LatentmapError(f"bad layer selection {spec!r}: {part.strip()!r} is not N or N-M")
        start = int(match.group(1))
        stop = int(match.group(2)) if match.group(2) is not None else start
        if start > stop or stop >= layers:
            raise LatentmapError(f"bad layer selection {spec!r}: {part.strip()!r} is outside 0-{layers - 1}")
        chosen.update(range(start, stop + 1))
    return sorted(chosen)


def parse_strengths(spec: str) -> list[float]:
    """Parse comma-separated edit strengths such as ``"-3,0,3"``; a non-number is a one-line error."""
    values = []
    for part in spec.split(","):
        try:
            value = float(part)
        except ValueError:
            raise LatentmapError(f"bad strengths {spec!r}: {part.strip()!r} is not a number") from None
        if not np.isfinite(value):
            raise LatentmapError(f"bad strengths {spec!r}: {part.strip()!r} is not a finite number")
        values.append(value)
    return values


def style_mix(per_layer: Tensor, other: Tensor, layers: list[int]) -> Tensor:
    """Take ``layers`` from ``other`` and the rest from ``per_layer`` (both (B, layers, dim)).

    With the generated latent as ``per_layer`` and random latents as ``other`` on the fine layers
    (e.g. 8-17 of 18) the prompt keeps the coarse structure and the random draw sets colours and
    lighting: the paper's way to add variety to one prompt's samples.
    """
    if per_layer.shape != other.shape:
        raise LatentmapError(f"style mixing needs equal shapes, got {tuple(per_layer.shape)} and {tuple(other.shape)}")
    mask = torch.zeros(per_layer.shape[1], dtype=torch.bool, device=per_layer.device)
    mask[layers] = True
    return torch.where(mask[None, :, None], other.to(per_layer.device), per_layer)


# -- directions ----------------------------------------------------------------------------------
@dataclass
class Direction:
    """An edit direction: ``vector`` of shape (rows, dim) with rows = 1, the space's tokens, or layers.

    ``generator`` and ``space`` say what it was made for (None for foreign files such as
    InterFaceGAN boundaries, which are only checked by shape); ``info`` holds the rest (prompts,
    sample count, source file).
    """

    vector: Tensor
    generator: dict[str, Any] | None = None
    space: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def check(self, generator: Generator) -> None:
        """Refuse (one line, naming which) a direction made for another generator or space, or of the wrong shape."""
        space = generator.space
        source = self.info.get("file", "direction")
        if self.generator is not None:
            current = generator.identity()
            name = current.get("name", generator.name)
            if self.generator.get("name") != name:
                raise LatentmapError(f"{source} was made for generator {self.generator.get('name')!r}, not {name!r}")
            for key in sorted(k for k in set(self.generator) & set(current) if "sha256" in k):
                if self.generator[key] != current[key]:
                    raise LatentmapError(
                        f"{source} was made for other {name!r} weights ({key} {str(self.generator[key])[:12]}..., "
                        f"these are {str(current[key])[:12]}...)"
                    )
        if self.space is not None and LatentSpace.from_dict(self.space) != space:
            raise LatentmapError(
                f"{source} was made for space {_describe_space(self.space)}, "
                f"but generator {generator.name!r} uses space {_describe_space(space.to_dict())}"
            )
        rows, dim = self.vector.shape
        if dim != space.dim or rows not in (1, space.tokens, space.layers):
            raise LatentmapError(
                f"{source} has shape {tuple(self.vector.shape)}; generator {generator.name!r} needs "
                f"(1, {space.dim}), ({space.tokens}, {space.dim}) or ({space.layers}, {space.dim})"
            )

    def per_layer(self, space: LatentSpace) -> Tensor:
        """The direction as (layers, dim): one row broadcast, tokens expanded, or already per layer."""
        rows = self.vector.shape[0]
        if rows == space.layers:
            return self.vector
        if rows == 1:
            return self.vector.expand(space.layers, -1)
        if rows == space.tokens:
            return space.expand(self.vector[None])[0]
        raise LatentmapError(f"direction with {rows} rows does not fit space {_describe_space(space.to_dict())}")


def _describe_space(space: dict[str, Any]) -> str:
    return f"{space.get('name')!r} (dim {space.get('dim')}, repeats {list(space.get('repeats', []))})"


def direction_from_latents(
    positive: Tensor,
    negative: Tensor,
    *,
    generator: Generator | None = None,
    info: dict[str, Any] | None = None,
) -> Direction:
    """Difference of means: mean(positive) - mean(negative), latents (N, rows, dim) -> Direction (rows, dim).

    Strength 1 therefore moves a latent by the full distance between the two groups' centres.
    """
    if positive.ndim != 3 or positive.shape[1:] != negative.shape[1:]:
        raise LatentmapError(
            f"direction needs two latent sets of the same shape (N, rows, dim), got "
            f"{tuple(positive.shape)} and {tuple(negative.shape)}"
        )
    vector = positive.float().mean(dim=0) - negative.float().mean(dim=0)
    details = {"positive_count": int(positive.shape[0]), "negative_count": int(negative.shape[0]), **(info or {})}
    return Direction(
        vector=vector.cpu(),
        generator=generator.identity() if generator is not None else None,
        space=generator.space.to_dict() if generator is not None else None,
        info=details,
    )


def _repeat_rows(cond: Tensor, count: int) -> Tensor:
    """``count`` conditions cycling through the rows of ``cond`` (one prompt, or a set of image embeddings)."""
    index = torch.arange(count, device=cond.device) % cond.shape[0]
    return cond[index]


def discover_direction(
    pipeline: "Pipeline",
    positive: str | Tensor,
    negative: str | Tensor,
    *,
    samples: int = 64,
    seed: int = 0,
    settings: "SamplerSettings | None" = None,
    labels: tuple[str, str] | None = None,
    progress: bool = False,
) -> Direction:
    """An edit direction from two prompts (or two sets of image embeddings, (N, D) tensors).

    Samples ``samples`` latents for each side with the prior, from the *same* noise (the same seed):
    the shared randomness cancels in the difference, so fewer samples give a steadier direction.
    ``progress`` shows the denoising steps of each side on stderr.
    """
    if samples < 1:
        raise LatentmapError(f"--samples must be at least 1, got {samples}")
    settings = settings or pipeline.defaults()
    sides = []
    for side in (positive, negative):
        if isinstance(side, str):
            if not side.strip():
                raise LatentmapError("directions need a non-empty positive and negative prompt")
            cond = pipeline.embed_prompts([side])
        else:
            cond = side.to(pipeline.device).float()
        sides.append(pipeline.sample_latents(_repeat_rows(cond, samples), settings, seed=seed, progress=progress,
                                             kind="text" if isinstance(side, str) else "image"))
    names = labels or tuple(s if isinstance(s, str) else plural(s.shape[0], "image") for s in (positive, negative))
    info = {"positive": names[0], "negative": names[1], "samples": samples, "seed": seed,
            "settings": settings.to_dict(), "checkpoint": pipeline.checkpoint}
    return direction_from_latents(sides[0], sides[1], generator=pipeline.generator, info=info)


def save_direction(path: str | os.PathLike, direction: Direction) -> Path:
    """Write a direction as one safetensors file; its metadata (JSON) records generator, space and info."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise LatentmapError(f"direction files are written as .safetensors, got {str(path)!r}")
    description = {
        "format": DIRECTION_FORMAT,
        "version": DIRECTION_VERSION,
        "generator": direction.generator,
        "space": direction.space,
        "info": {k: v for k, v in direction.info.items() if k != "file"},
    }
    tensors = {"direction": direction.vector.detach().float().contiguous().cpu()}
    metadata = {"latentmap": json.dumps(description)}
    return replace_atomically(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def load_direction(path: str | os.PathLike) -> Direction:
    """Read a direction: ours (.safetensors) or InterFaceGAN-style .npy / .pt holding one array.

    Never executes code from the file: numpy with ``allow_pickle=False``, torch with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"direction file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        direction = _load_safetensors_direction(path)
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise LatentmapError(f"direction file {str(path)!r} is not a plain numeric .npy array ({exc})") from None
        direction = Direction(vector=torch.from_numpy(np.asarray(array, dtype=np.float32)))
    elif suffix in (".pt", ".pth"):
        direction = Direction(vector=_load_torch_tensor(path))
    else:
        raise LatentmapError(f"direction file {str(path)!r}: expected .safetensors, .npy or .pt")
    vector = direction.vector.float()
    if vector.ndim == 1:
        vector = vector[None]
    if vector.ndim != 2:
        raise LatentmapError(f"direction file {str(path)!r} holds shape {tuple(direction.vector.shape)}; "
                             "expected (dim,), (1, dim) or (layers, dim)")
    direction.vector = vector
    direction.info["file"] = str(path)
    return direction


def _load_safetensors_direction(path: Path) -> Direction:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LatentmapError(f"direction file {str(path)!r} is not a readable safetensors file ({exc})") from None
    description = json.loads(metadata.get("latentmap", "{}"))
    if description.get("format") != DIRECTION_FORMAT or "direction" not in tensors:
        raise LatentmapError(f"{str(path)!r} is not a latentmap direction file (no {DIRECTION_FORMAT!r} metadata)")
    return Direction(
        vector=tensors["direction"],
        generator=description.get("generator"),
        space=description.get("space"),
        info=dict(description.get("info") or {}),
    )


def _load_torch_tensor(path: Path) -> Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise LatentmapError(f"direction file {str(path)!r} cannot be loaded safely as tensors ({exc})") from None
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if "direction" in tensors:
            obj = tensors["direction"]
        elif len(tensors) == 1:
            obj = next(iter(tensors.values()))
        else:
            raise LatentmapError(f"direction file {str(path)!r} holds {len(tensors)} tensors; expected one")
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, Tensor):
        raise LatentmapError(f"direction file {str(path)!r} holds a {type(obj).__name__}, not a tensor")
    return obj


def apply_direction(
    per_layer: Tensor,
    direction: Tensor,
    strengths: list[float],
    *,
    layers: list[int] | None = None,
) -> Tensor:
    """Edited latents (S, B, layers, dim): ``per_layer + s * direction`` on ``layers`` only, for each strength.

    ``direction`` is (layers, dim) (see ``Direction.per_layer``). Strength 0 returns the input exactly.
    """
    if per_layer.ndim != 3 or direction.shape != per_layer.shape[1:]:
        raise LatentmapError(
            f"cannot apply a direction of shape {tuple(direction.shape)} to latents of shape {tuple(per_layer.shape)}"
        )
    offset = direction.to(device=per_layer.device, dtype=per_layer.dtype).clone()
    if layers is not None:
        keep = torch.zeros(offset.shape[0], dtype=torch.bool, device=offset.device)
        keep[layers] = True
        offset = offset * keep[:, None]
    scales = torch.tensor(strengths, device=per_layer.device, dtype=per_layer.dtype)
    return per_layer[None] + scales[:, None, None, None] * offset[None, None]


def render_edits(
    generator: Generator,
    per_layer: Tensor,
    direction: Direction,
    strengths: list[float],
    *,
    layers: list[int] | None = None,
    progress: bool = False,
) -> Tensor:
    """Images (B, S, 3, H, W) on the CPU: each latent (B, layers, dim) edited at each strength.

    The direction is checked against the generator first (a direction for another generator or
    space is refused, naming which). ``progress`` shows a bar (one tick per latent) on stderr.
    """
    from tqdm.auto import tqdm

    direction.check(generator)
    edited = apply_direction(per_layer, direction.per_layer(generator.space), strengths, layers=layers)
    strips = []
    with torch.no_grad():
        for b in tqdm(range(per_layer.shape[0]), desc="edit", unit="latent", disable=not progress, leave=False):
            strips.append(generator.synthesize(edited[:, b].to(generator.device)).float().cpu())
    return torch.stack(strips)
