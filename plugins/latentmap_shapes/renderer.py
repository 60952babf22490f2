"""Draw a batch of scenes: one soft-edged shape on a plain background, in one vectorised pass.

The shape's signed distance (a blend of the four unit shapes' distances, weighted by the soft shape
choice) is turned into coverage with ``sigmoid(-distance / EDGE_SOFTNESS)`` measured in pixels,
which both anti-aliases the edge and makes the image differentiable in every scene parameter.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from latentmap_shapes.layout import Scene
from latentmap_shapes.sdf import shape_sdfs
from latentmap_shapes.vocabulary import BACKGROUND_RGB, COLOUR_RGB

RENDERER_VERSION = "shapes-renderer/1"

# Geometry in units of the half image width (the image spans [-1, 1] on both axes).
CELL_CENTRES = (-0.6, 0.0, 0.6)      # column (x) and row (y) centres of the 3x3 grid
SMALL_RADIUS = 0.17
LARGE_RADIUS = 0.28
EDGE_SOFTNESS = 0.5                  # pixels


def pixel_grid(resolution: int, device: torch.device | None = None) -> Tensor:
    """Pixel-centre coordinates (H, W, 2) as (x, y) in [-1, 1], y pointing down."""
    axis = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) * (2.0 / resolution) - 1.0
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([x, y], dim=-1)


def render(scene: Scene, resolution: int = 64) -> Tensor:
    """Scenes -> images (B, 3, resolution, resolution) in [-1, 1]."""
    device = scene.shape.device
    centres = torch.tensor(CELL_CENTRES, device=device)
    centre = torch.stack([scene.column @ centres, scene.row @ centres], dim=-1) + scene.offset      # (B, 2)
    radius = (SMALL_RADIUS + (LARGE_RADIUS - SMALL_RADIUS) * scene.large) * scene.scale               # (B,)

    # Pixel positions in each shape's unit frame: translate, rotate by -rotation, scale by 1/radius.
    rel = pixel_grid(resolution, device)[None] - centre[:, None, None, :]                           # (B, H, W, 2)
    cos, sin = torch.cos(scene.rotation)[:, None, None], torch.sin(scene.rotation)[:, None, None]
    unit = torch.stack([cos * rel[..., 0] + sin * rel[..., 1], -sin * rel[..., 0] + cos * rel[..., 1]], dim=-1)
    unit = unit / radius[:, None, None, None]

    distance = (shape_sdfs(unit) * scene.shape[:, None, None, :]).sum(-1)                           # (B, H, W)
    pixels_per_unit = radius * (resolution / 2.0)
    coverage = torch.sigmoid(-distance * pixels_per_unit[:, None, None] / EDGE_SOFTNESS)

    palette = torch.tensor(COLOUR_RGB, device=device)
    backgrounds = torch.tensor(BACKGROUND_RGB, device=device)
    fill = scene.colour @ palette                                                                    # (B, 3)
    light = scene.light[:, None]
    backdrop = (1 - light) * backgrounds[0] + light * backgrounds[1]                                 # (B, 3)
    coverage = rearrange(coverage, "b h w -> b 1 h w")
    image = backdrop[:, :, None, None] * (1 - coverage) + fill[:, :, None, None] * coverage
    return image * 2.0 - 1.0
