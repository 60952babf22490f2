"""The latent layout of the shapes world: which numbers choose which attribute, and how softly.

A latent is 3 tokens of 8 numbers, drawn from N(0, I)::

    token 0 "form"    [circle, square, triangle, star] logits | size | rotation | scale | background
    token 1 "colour"  [red, orange, yellow, green, cyan, blue, purple, grey] logits
    token 2 "place"   [left, center, right] logits | [top, middle, bottom] logits | x offset | y offset

A categorical attribute is the argmax of its logits (a binary one, size or background, is the sign
of its number). The argmax of independent standard normals is uniform, so random latents cover
every combination evenly (4 x 8 x 9 x 2 x 2 = 1152 of them) and the attributes are independent.

The renderer does not snap to the argmax: it mixes the classes with *leaky* soft weights,

    weights = (1 - LEAK) * softmax(logits / HARD_TEMPERATURE) + LEAK * softmax(logits / SOFT_TEMPERATURE)

The sharp part makes regions well separated (only a few percent of latents lie close enough to a
boundary to look like a blend); the small soft part keeps a useful gradient everywhere, so direct
optimisation of a latent against an image score can move from one class to another. The
remaining numbers are continuous nuisances (rotation, scale, a small offset) bounded by ``tanh``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from latentmap import LatentmapError, LatentSpace
from latentmap_shapes.vocabulary import COLOURS, COLUMNS, ROWS, SHAPES, VOCABULARY

TOKENS = 3
DIM = 8
SPACE = LatentSpace("shapes", DIM, (1,) * TOKENS)

HARD_TEMPERATURE = 0.02
SOFT_TEMPERATURE = 1.0
LEAK = 0.1

MAX_ROTATION = math.radians(10.0)
MAX_SCALE_CHANGE = 0.05
MAX_OFFSET = 0.04

# (token, first index, count) of each group of numbers.
SHAPE_LOGITS = (0, 0, len(SHAPES))
SIZE_NUMBER = (0, 4, 1)
ROTATION_NUMBER = (0, 5, 1)
SCALE_NUMBER = (0, 6, 1)
BACKGROUND_NUMBER = (0, 7, 1)
COLOUR_LOGITS = (1, 0, len(COLOURS))
COLUMN_LOGITS = (2, 0, len(COLUMNS))
ROW_LOGITS = (2, 3, len(ROWS))
OFFSET_NUMBERS = (2, 6, 2)

CATEGORICAL: dict[str, tuple[int, int, int]] = {
    "shape": SHAPE_LOGITS,
    "colour": COLOUR_LOGITS,
    "column": COLUMN_LOGITS,
    "row": ROW_LOGITS,
}
BINARY: dict[str, tuple[int, int, int]] = {"size": SIZE_NUMBER, "background": BACKGROUND_NUMBER}


def _group(latents: Tensor, where: tuple[int, int, int]) -> Tensor:
    token, start, count = where
    return latents[:, token, start:start + count]


def check_latents(latents: Tensor) -> None:
    """Raise a clear error unless ``latents`` is (B, 3, 8)."""
    if latents.ndim != 3 or latents.shape[1:] != (TOKENS, DIM):
        raise LatentmapError(f"shapes latents must have shape (B, {TOKENS}, {DIM}), got {tuple(latents.shape)}")


def soft_choice(logits: Tensor) -> Tensor:
    """Leaky soft one-hot weights (..., K) from logits (..., K): mostly the argmax, never quite."""
    return (1 - LEAK) * torch.softmax(logits / HARD_TEMPERATURE, dim=-1) + LEAK * torch.softmax(
        logits / SOFT_TEMPERATURE, dim=-1
    )


def soft_binary(number: Tensor) -> Tensor:
    """The weight of the second class of a binary attribute chosen by the sign of ``number``."""
    return soft_choice(torch.stack([torch.zeros_like(number), number], dim=-1))[..., 1]


@dataclass
class Scene:
    """Everything the renderer needs, per sample; the class weights are soft (rows sum to 1)."""

    shape: Tensor        # (B, 4)
    colour: Tensor       # (B, 8)
    column: Tensor       # (B, 3)
    row: Tensor          # (B, 3)
    large: Tensor        # (B,) weight of "large"
    light: Tensor        # (B,) weight of "light" background
    rotation: Tensor     # (B,) radians
    scale: Tensor        # (B,) multiplicative size jitter
    offset: Tensor       # (B, 2) jitter of the centre, in units of the half image width


def scene_from_latents(latents: Tensor) -> Scene:
    """Latents (B, 3, 8) -> the soft scene parameters the renderer draws."""
    check_latents(latents)
    return Scene(
        shape=soft_choice(_group(latents, SHAPE_LOGITS)),
        colour=soft_choice(_group(latents, COLOUR_LOGITS)),
        column=soft_choice(_group(latents, COLUMN_LOGITS)),
        row=soft_choice(_group(latents, ROW_LOGITS)),
        large=soft_binary(_group(latents, SIZE_NUMBER)[:, 0]),
        light=soft_binary(_group(latents, BACKGROUND_NUMBER)[:, 0]),
        rotation=MAX_ROTATION * torch.tanh(_group(latents, ROTATION_NUMBER)[:, 0]),
        scale=1.0 + MAX_SCALE_CHANGE * torch.tanh(_group(latents, SCALE_NUMBER)[:, 0]),
        offset=MAX_OFFSET * torch.tanh(_group(latents, OFFSET_NUMBERS)),
    )


def decode_attributes(latents: Tensor) -> dict[str, Tensor]:
    """The ground truth of what a latent renders: attribute -> class index (B,) (LongTensor).

    Keys and class order are those of :func:`latentmap_shapes.attribute_names`: ``shape``,
    ``colour``, ``position`` (3 * row + column, from the top left), ``size`` (0 small, 1 large) and
    ``background`` (0 dark, 1 light).
    """
    if latents.ndim == 2 and latents.shape[1] == TOKENS * DIM:
        latents = latents.reshape(-1, TOKENS, DIM)
    check_latents(latents)
    latents = latents.detach()
    column = _group(latents, COLUMN_LOGITS).argmax(-1)
    row = _group(latents, ROW_LOGITS).argmax(-1)
    return {
        "shape": _group(latents, SHAPE_LOGITS).argmax(-1),
        "colour": _group(latents, COLOUR_LOGITS).argmax(-1),
        "position": row * len(COLUMNS) + column,
        "size": (_group(latents, SIZE_NUMBER)[:, 0] > 0).long(),
        "background": (_group(latents, BACKGROUND_NUMBER)[:, 0] > 0).long(),
    }


def decision_margins(latents: Tensor) -> dict[str, Tensor]:
    """How far each attribute is from its nearest decision boundary (B,), in latent units.

    For logits: the gap between the largest and the second largest; for binary numbers: ``|x|``.
    Position takes the smaller of its row and column margins. Useful to tell a clear latent
    (margin well above HARD_TEMPERATURE) from one that renders as a blend of two classes.
    """
    check_latents(latents)
    latents = latents.detach()

    def gap(where: tuple[int, int, int]) -> Tensor:
        top2 = _group(latents, where).topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]

    return {
        "shape": gap(SHAPE_LOGITS),
        "colour": gap(COLOUR_LOGITS),
        "position": torch.minimum(gap(COLUMN_LOGITS), gap(ROW_LOGITS)),
        "size": _group(latents, SIZE_NUMBER)[:, 0].abs(),
        "background": _group(latents, BACKGROUND_NUMBER)[:, 0].abs(),
    }


def latents_with_attributes(
    attributes: dict[str, Tensor | int], n: int | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    """Random latents (B, 3, 8) that decode to the given attributes; unspecified ones stay random.

    Draws N(0, I) and, for each requested attribute, swaps the largest logit into the requested
    class (for binary attributes, sets the sign): exactly the normal distribution conditioned on
    that class. ``attributes`` maps names (as in :func:`decode_attributes`) to an int or a (B,)
    tensor of class indices; ``n`` is needed only when every value is an int.
    """
    unknown = sorted(set(attributes) - set(VOCABULARY))
    if unknown:
        raise LatentmapError(f"unknown shapes attribute {unknown[0]!r}; expected some of {', '.join(VOCABULARY)}")
    sizes = {int(v.shape[0]) for v in attributes.values() if isinstance(v, Tensor)}
    if n is None:
        if not sizes:
            raise LatentmapError("latents_with_attributes needs n when every attribute is a single int")
        n = sizes.pop()
    latents = torch.randn(n, TOKENS, DIM, generator=generator)
    for name, value in attributes.items():
        classes = torch.as_tensor(value, dtype=torch.long).expand(n).clone()
        if int(classes.min()) < 0 or int(classes.max()) >= len(VOCABULARY[name]):
            raise LatentmapError(f"shapes {name} index out of range 0..{len(VOCABULARY[name]) - 1}: {value}")
        if name == "position":
            _force_argmax(latents, ROW_LOGITS, classes // len(COLUMNS))
            _force_argmax(latents, COLUMN_LOGITS, classes % len(COLUMNS))
        elif name in BINARY:
            token, index, _ = BINARY[name]
            magnitude = latents[:, token, index].abs()
            latents[:, token, index] = torch.where(classes == 1, magnitude, -magnitude)
        else:
            _force_argmax(latents, CATEGORICAL[name], classes)
    return latents


def _force_argmax(latents: Tensor, where: tuple[int, int, int], classes: Tensor) -> None:
    """Swap, in place, each row's largest logit with the logit of its requested class."""
    token, start, count = where
    logits = latents[:, token, start:start + count]
    rows = torch.arange(logits.shape[0])
    top = logits.argmax(-1)
    top_values = logits[rows, top].clone()
    logits[rows, top] = logits[rows, classes]
    logits[rows, classes] = top_values
    latents[:, token, start:start + count] = logits
