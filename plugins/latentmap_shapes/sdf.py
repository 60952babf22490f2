"""Signed distance functions of the four unit shapes, batched over any leading dimensions.

Distances are negative inside. Each shape is drawn in its own "unit" frame: centred on the origin,
with an extent of about 1 (the circle has radius 1), image axes (x to the right, y downward, so a
triangle "pointing up" has its apex at negative y). The renderer scales them to pixels.
The renderer uses a fast exact distance that folds each point into one symmetric sector;
:func:`polygon_sdf` (exact distance to the nearest edge with an even-odd inside test) is the slow
reference it is tested against, and works for any polygon.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def regular_polygon(sides: int, circumradius: float, *, rotation: float = -math.pi / 2) -> Tensor:
    """Vertices (sides, 2) of a regular polygon; the default rotation puts a vertex straight up."""
    angles = rotation + torch.arange(sides, dtype=torch.float64) * (2 * math.pi / sides)
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).mul(circumradius).float()


def star_polygon(points: int, outer: float, inner: float) -> Tensor:
    """Vertices (2 * points, 2) of a star alternating outer tips and inner notches, a tip straight up."""
    angles = -math.pi / 2 + torch.arange(2 * points, dtype=torch.float64) * (math.pi / points)
    radii = torch.tensor([outer, inner], dtype=torch.float64).repeat(points)
    return (torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1) * radii[:, None]).float()


# The unit shapes. Sizes are chosen so the four look about equally big at the same radius.
SQUARE_TIP = 0.88 * math.sqrt(2)   # half-side 0.88, axis-aligned
TRIANGLE_TIP = 1.15
STAR_TIP, STAR_NOTCH = 1.15, 0.5
SQUARE = regular_polygon(4, SQUARE_TIP, rotation=math.pi / 4)
TRIANGLE = regular_polygon(3, TRIANGLE_TIP)
STAR = star_polygon(5, outer=STAR_TIP, inner=STAR_NOTCH)
POLYGONS: dict[str, Tensor] = {"square": SQUARE, "triangle": TRIANGLE, "star": STAR}


def circle_sdf(points: Tensor) -> Tensor:
    """Unit circle: points (..., 2) -> signed distance (...)."""
    return _safe_norm(points) - 1.0


def polygon_sdf(points: Tensor, vertices: Tensor) -> Tensor:
    """Closed polygon (vertices (N, 2), any winding, may be concave): points (..., 2) -> signed distance (...).

    Distance to the nearest edge segment, negated where an even-odd ray cast says the point is
    inside. Differentiable in ``points`` (the sign only changes where the distance is zero).
    """
    vertices = vertices.to(device=points.device, dtype=points.dtype)
    start = vertices
    end = torch.roll(vertices, shifts=-1, dims=0)
    edge = end - start                                       # (N, 2)
    rel = points.unsqueeze(-2) - start                       # (..., N, 2)
    t = ((rel * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)
    distance = _safe_norm(rel - t.unsqueeze(-1) * edge).amin(dim=-1)

    px, py = points[..., 0:1], points[..., 1:2]              # (..., 1), broadcast over edges
    spans = (start[:, 1] > py) != (end[:, 1] > py)
    dy = torch.where(edge[:, 1] == 0, torch.ones_like(edge[:, 1]), edge[:, 1])
    x_cross = start[:, 0] + (py - start[:, 1]) * edge[:, 0] / dy
    crossings = (spans & (px < x_cross)).sum(dim=-1)
    inside = (crossings % 2) == 1
    return torch.where(inside, -distance, distance)


def symmetric_star_sdf(points: Tensor, points_count: int, tip: float, notch: float, first_tip_angle: float) -> Tensor:
    """Signed distance to a shape with ``points_count``-fold mirror symmetry, fast and exact.

    The shape alternates tips at radius ``tip`` and notches at radius ``notch`` halfway between
    them; a regular polygon is the case ``notch = tip * cos(pi / n)`` (notches on the edge
    midpoints), a star has a smaller notch. Each point is folded by symmetry into the half-sector
    between a tip and the next notch, where the boundary is the single segment tip -> notch.
    Same result as :func:`polygon_sdf` on the full outline, at a fraction of its cost.
    """
    sector = 2 * math.pi / points_count
    radius = _safe_norm(points)
    angle = torch.remainder(torch.atan2(points[..., 1], points[..., 0]) - first_tip_angle, sector)
    angle = torch.minimum(angle, sector - angle)                       # mirror into [0, sector / 2]
    folded = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    tip_point = torch.tensor([tip, 0.0], device=points.device, dtype=points.dtype)
    notch_point = torch.tensor(
        [notch * math.cos(sector / 2), notch * math.sin(sector / 2)], device=points.device, dtype=points.dtype
    )
    edge = notch_point - tip_point
    rel = folded - tip_point
    t = ((rel * edge).sum(-1) / (edge * edge).sum(-1)).clamp(0.0, 1.0)
    distance = _safe_norm(rel - t.unsqueeze(-1) * edge)
    # The origin lies inside; a point on the other side of the tip -> notch line is outside.
    side = edge[0] * rel[..., 1] - edge[1] * rel[..., 0]
    origin_side = edge[0] * (-tip_point[1]) - edge[1] * (-tip_point[0])
    inside = (side * origin_side) > 0
    return torch.where(inside, -distance, distance)


def shape_sdfs(points: Tensor) -> Tensor:
    """Signed distances to all four unit shapes in vocabulary order: (..., 2) -> (..., 4)."""
    return torch.stack(
        [
            circle_sdf(points),
            symmetric_star_sdf(points, 4, SQUARE_TIP, SQUARE_TIP * math.cos(math.pi / 4), math.pi / 4),
            symmetric_star_sdf(points, 3, TRIANGLE_TIP, TRIANGLE_TIP * math.cos(math.pi / 3), -math.pi / 2),
            symmetric_star_sdf(points, 5, STAR_TIP, STAR_NOTCH, -math.pi / 2),
        ],
        dim=-1,
    )


def _safe_norm(vectors: Tensor) -> Tensor:
    """Euclidean norm over the last axis with a finite gradient at zero."""
    return torch.sqrt((vectors * vectors).sum(-1) + 1e-12)
