"""The shapes world: a small, complete world for latentmap whose every image's truth is known.

- generator ``shapes``: 3 x 8 standard-normal latents -> 64x64 images of one soft-edged shape
  (4 shapes, 8 colours, 3x3 positions, 2 sizes, 2 backgrounds), differentiable;
- encoder ``shapes-clip``: a tiny CLIP (open_clip's classes) trained on that world, shipped as
  safetensors, so text-to-image works with no download and no GPU.

Also useful to evaluations: :func:`attribute_names`, :func:`decode_attributes` (latent -> truth),
:func:`latents_with_attributes` (truth -> random latent), :func:`describe` (truth -> caption), :func:`read_prompt` (prompt -> the truth it asks for).
See docs/shapes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latentmap import hookimpl, option
from latentmap_shapes.vocabulary import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    VOCABULARY,
    attribute_names,
    class_index,
)

DEFAULT_RESOLUTION = 64
MIN_RESOLUTION, MAX_RESOLUTION = 16, 1024

# The world's other modules need torch: their names are imported on first use, so loading the plugin
# (``latentmap --help`` lists plugins' commands) stays light.
_LAZY = {
    "describe": "captions", "describe_batch": "captions", "read_prompt": "reading",
    "ShapesGenerator": "generator",
    "SPACE": "layout", "decision_margins": "layout", "decode_attributes": "layout", "latents_with_attributes": "layout",
    "RENDERER_VERSION": "renderer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"latentmap_shapes.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'latentmap_shapes' has no attribute {name!r}")


def _space_names() -> tuple[str, ...]:
    from latentmap_shapes.layout import SPACE

    return (SPACE.name,)


__all__ = [
    "BACKGROUNDS", "COLOURS", "POSITIONS", "RENDERER_VERSION", "SHAPES", "SIZES", "SPACE", "VOCABULARY",
    "ShapesClipOptions", "ShapesGeneratorOptions",
    "attribute_names", "class_index", "decision_margins", "decode_attributes", "describe", "describe_batch",
    "latents_with_attributes", "make_encoder", "make_generator", "read_prompt",
]


@dataclass
class ShapesGeneratorOptions:
    """Options of the ``shapes`` generator."""

    resolution: int = option(DEFAULT_RESOLUTION, min=MIN_RESOLUTION, max=MAX_RESOLUTION, help="image size in pixels")
    space: str | None = option(None, choices=_space_names,
                               help="its one latent space (3 tokens x 8, one token per layer)")


@dataclass
class ShapesClipOptions:
    """Options of the ``shapes-clip`` encoder."""

    weights: str | None = option(None, identity=False,
                                 help="a retrained shapes_clip.safetensors (JSON config next to it), same as 'shapes-clip:PATH'")
    device: str = option("cpu", placement=True, help="cpu or cuda")


def make_generator(options: ShapesGeneratorOptions) -> Any:
    """The ``shapes`` generator; its only latent space is ``shapes`` (3 tokens x 8)."""
    from latentmap_shapes.generator import ShapesGenerator

    return ShapesGenerator(resolution=options.resolution)


def make_encoder(spec: str, options: ShapesClipOptions) -> Any:
    """The ``shapes-clip`` encoder; ``spec`` (after ``shapes-clip:``) or ``weights`` may name a retrained file."""
    from latentmap_shapes.encoder import ShapesClipEncoder

    return ShapesClipEncoder(options.weights or spec or None, device=options.device)


@hookimpl
def register_generators(register) -> None:
    register(
        "shapes",
        make_generator,
        description="procedural 64x64 shapes (4 shapes, 8 colours, 3x3 positions, 2 sizes, 2 backgrounds); "
                    "ground truth known",
        options=ShapesGeneratorOptions,
    )


@hookimpl
def register_encoders(register) -> None:
    register(
        "shapes-clip",
        make_encoder,
        description="tiny CLIP trained on the shapes world (shipped, 64-d embeddings); "
                    "'shapes-clip:PATH' loads retrained weights",
        options=ShapesClipOptions,
    )
