"""The shapes world: the renderer draws what the decoder says, latents cover it evenly, gradients flow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.path import Path as PolygonPath

import latentmap
from latentmap.errors import LatentmapError
from latentmap_shapes import (
    COLOURS, POSITIONS, SHAPES, attribute_names, decision_margins, decode_attributes, describe,
    latents_with_attributes,
)
from latentmap_shapes.generator import ShapesGenerator
from latentmap_shapes.layout import HARD_TEMPERATURE, scene_from_latents
from latentmap_shapes.renderer import CELL_CENTRES, LARGE_RADIUS, SMALL_RADIUS
from latentmap_shapes.sdf import STAR, SQUARE, TRIANGLE, polygon_sdf, shape_sdfs
from latentmap_shapes.vocabulary import BACKGROUND_RGB, COLOUR_RGB

RESOLUTION = 64
HALF = RESOLUTION / 2


@pytest.fixture(scope="module")
def world() -> ShapesGenerator:
    return ShapesGenerator()


@pytest.fixture(scope="module")
def rendered(world):
    """400 random latents, their images in [0, 1] as numpy, their decoded truth and margins."""
    latents = world.sample_latents(400, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        images = (world.synthesize(latents) + 1) / 2
    return latents, images.permute(0, 2, 3, 1).numpy(), decode_attributes(latents), decision_margins(latents)


# -- independent reference geometry (the documented unit shapes, rasterised by matplotlib) ----------
def _regular(sides: int, radius: float, first_angle: float) -> np.ndarray:
    angles = first_angle + np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.cos(angles), np.sin(angles)], -1) * radius


def _star(outer: float, inner: float) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    return np.stack([np.cos(angles), np.sin(angles)], -1) * np.tile([outer, inner], 5)[:, None]


REFERENCE_OUTLINES = {
    "square": _regular(4, 0.88 * np.sqrt(2), np.pi / 4),
    "triangle": _regular(3, 1.15, -np.pi / 2),
    "star": _star(1.15, 0.5),
}
REFERENCE_UNIT_AREAS = {"circle": np.pi, "square": 1.76**2, "triangle": 3 * np.sqrt(3) / 4 * 1.15**2,
                        "star": 5 * 1.15 * 0.5 * np.sin(np.pi / 5)}


def _reference_masks(centre: np.ndarray, radius: float, rotation: float) -> dict[str, np.ndarray]:
    """Hard masks (H, W) of each of the four shapes placed at centre/radius/rotation (pixel units)."""
    axis = np.arange(RESOLUTION) + 0.5
    x, y = np.meshgrid(axis, axis)
    dx, dy = x - centre[0], y - centre[1]
    c, s = np.cos(rotation), np.sin(rotation)
    unit = np.stack([c * dx + s * dy, -s * dx + c * dy], -1).reshape(-1, 2) / radius
    masks = {"circle": (np.linalg.norm(unit, axis=-1) < 1).reshape(RESOLUTION, RESOLUTION)}
    for name, outline in REFERENCE_OUTLINES.items():
        masks[name] = PolygonPath(outline).contains_points(unit).reshape(RESOLUTION, RESOLUTION)
    return masks


def _measure(image: np.ndarray) -> dict[str, object]:
    """Read a rendered image like a person would: background, fill colour, coverage, centroid, area."""
    background = np.median(image.reshape(-1, 3), axis=0)
    difference = np.abs(image - background).sum(-1)
    fill = image.reshape(-1, 3)[difference.argmax()]
    coverage = np.clip(difference / max(np.abs(fill - background).sum(), 1e-6), 0, 1)
    ys, xs = np.mgrid[0:RESOLUTION, 0:RESOLUTION] + 0.5
    area = coverage.sum()
    centroid = np.array([(coverage * xs).sum() / area, (coverage * ys).sum() / area])
    solid = image[coverage > 0.9].mean(0) if (coverage > 0.9).any() else fill
    return {"background": background, "colour": solid, "coverage": coverage, "centroid": centroid, "area": area}


def _nearest(value: np.ndarray, table) -> int:
    return int(np.argmin(np.linalg.norm(np.asarray(table) - value, axis=-1)))


def test_fast_sdf_equals_the_reference_polygon_distance():
    points = torch.rand(20000, 2) * 4 - 2
    fast = shape_sdfs(points)
    reference = torch.stack([polygon_sdf(points, v) for v in (SQUARE, TRIANGLE, STAR)], -1)
    assert torch.allclose(fast[:, 1:], reference, atol=1e-5)
    assert torch.allclose(fast[:, 0], points.norm(dim=-1) - 1, atol=1e-5)
    # and the reference agrees with matplotlib about inside/outside
    for index, name in enumerate(("square", "triangle", "star")):
        inside = PolygonPath(REFERENCE_OUTLINES[name]).contains_points(points.numpy())
        clear = reference[:, index].abs() > 1e-3
        assert np.array_equal((reference[:, index] < 0).numpy()[clear.numpy()], inside[clear.numpy()])


def test_renderer_draws_the_decoded_attributes(rendered):
    latents, images, truth, margins = rendered
    scene = scene_from_latents(latents)
    agree = {name: [] for name in ("shape", "colour", "position", "size", "background")}
    clear = torch.stack([m > 5 * HARD_TEMPERATURE for m in margins.values()]).all(0)
    for i in range(len(images)):
        seen = _measure(images[i])
        agree["background"].append(_nearest(seen["background"], BACKGROUND_RGB) == truth["background"][i])
        agree["colour"].append(_nearest(seen["colour"], COLOUR_RGB) == truth["colour"][i])
        cells = np.array([[(x + 1) * HALF, (y + 1) * HALF] for y in CELL_CENTRES for x in CELL_CENTRES])
        agree["position"].append(_nearest(seen["centroid"], cells) == truth["position"][i])
        shape = SHAPES[int(truth["shape"][i])]
        areas = [REFERENCE_UNIT_AREAS[shape] * (r * HALF) ** 2 for r in (SMALL_RADIUS, LARGE_RADIUS)]
        agree["size"].append(int(np.argmin([abs(seen["area"] - a) for a in areas])) == truth["size"][i])
        centre = (scene.column[i] @ torch.tensor(CELL_CENTRES), scene.row[i] @ torch.tensor(CELL_CENTRES))
        centre = (np.array([float(centre[0]), float(centre[1])]) + scene.offset[i].numpy() + 1) * HALF
        radius = float((SMALL_RADIUS + (LARGE_RADIUS - SMALL_RADIUS) * scene.large[i]) * scene.scale[i]) * HALF
        masks = _reference_masks(centre, radius, float(scene.rotation[i]))
        drawn = seen["coverage"] > 0.5
        iou = {name: (drawn & m).sum() / max((drawn | m).sum(), 1) for name, m in masks.items()}
        agree["shape"].append(max(iou, key=iou.get) == shape)
    for name, results in agree.items():
        results = torch.tensor(results)
        assert results[clear].all(), f"{name}: renderer and decoder disagree on clear latents {torch.nonzero(~results & clear).flatten().tolist()}"
        assert results.float().mean() > 0.97, f"{name}: only {results.float().mean():.3f} agree over all latents"


def test_random_latents_cover_every_combination_evenly(world):
    latents = world.sample_latents(300_000, generator=torch.Generator().manual_seed(3))
    truth = decode_attributes(latents)
    for name, classes in attribute_names().items():
        share = torch.bincount(truth[name], minlength=len(classes)).float() / len(latents)
        assert (share - 1 / len(classes)).abs().max() < 0.01, f"{name} shares {share.tolist()}"
    combination = (((truth["shape"] * 8 + truth["colour"]) * 9 + truth["position"]) * 2 + truth["size"]) * 2 \
        + truth["background"]
    counts = torch.bincount(combination, minlength=1152).float()
    expected = len(latents) / 1152
    assert counts.min() > 0.75 * expected and counts.max() < 1.25 * expected
    # well separated: few latents sit so close to a boundary that they render as a visible blend
    scene = scene_from_latents(latents[:20000])
    for name in ("shape", "colour", "column", "row"):
        blended = (getattr(scene, name).max(-1).values < 0.7).float().mean()
        assert blended < 0.04, f"{name}: {blended:.3f} of random latents render as a blend"


def test_gradients_flow_from_image_to_every_attribute(world):
    latents = world.sample_latents(8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    image = world.synthesize(latents)
    target = torch.rand_like(image)
    ((image - target) ** 2).mean().backward()
    grad = latents.grad.abs()
    assert torch.isfinite(latents.grad).all()
    # every number moves the image: shape/size/rotation/scale/background, colour logits, place
    assert (grad.amax(0) > 0).all(), grad.amax(0)


@pytest.mark.slow
def test_direct_optimisation_can_change_colour_and_shape():
    """The leaky soft choice lets pixel-space gradient descent switch classes (no snapping).

    Every ordered pair of different shapes, from a blue start to a red goal with the same position,
    size, background and nuisances: Adam on pixel MSE must reach the goal's colour and, for most
    pairs, its shape (a few pairs stop in a local minimum, e.g. a circle as a compromise).
    """
    pairs = torch.tensor([(a, b) for a in range(4) for b in range(4) if a != b])
    count = len(pairs)
    same = {"position": torch.full((count,), 4), "size": torch.ones(count, dtype=torch.long),
            "background": torch.zeros(count, dtype=torch.long)}
    goal = latents_with_attributes({**same, "colour": torch.zeros(count, dtype=torch.long), "shape": pairs[:, 1]},
                                   generator=torch.Generator().manual_seed(2))
    start = latents_with_attributes({**same, "colour": torch.full((count,), 5), "shape": pairs[:, 0]},
                                    generator=torch.Generator().manual_seed(1))
    start[:, 0, 4:] = goal[:, 0, 4:]   # size, rotation, scale, background
    start[:, 2] = goal[:, 2]           # place
    world = ShapesGenerator(resolution=32)   # the same scenes, a quarter of the pixels
    with torch.no_grad():
        target = world.synthesize(goal)
    latents = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([latents], lr=0.05)
    for _ in range(120):
        loss = ((world.synthesize(latents) - target) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    found = decode_attributes(latents)
    assert (found["colour"] == COLOURS.index("red")).float().mean() >= 0.9, found["colour"]
    assert (found["shape"] == pairs[:, 1]).float().mean() >= 0.6, found["shape"]


def test_sample_latents_is_deterministic_and_standard_normal(world):
    a = world.sample_latents(4096, generator=torch.Generator().manual_seed(11))
    b = world.sample_latents(4096, generator=torch.Generator().manual_seed(11))
    c = world.sample_latents(4096, generator=torch.Generator().manual_seed(12))
    assert a.shape == (4096, 3, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert abs(a.mean().item()) < 0.03 and abs(a.std().item() - 1) < 0.03
    assert torch.equal(world.mean_latent(), torch.zeros(3, 8))
    assert world.space.tokens == 3 and world.space.layers == 3
    assert world.synthesize(world.space.expand(a[:2])).shape == (2, 3, 64, 64)
    assert world.identity()["renderer"].startswith("shapes-renderer/")


def test_latents_with_attributes_decode_to_what_was_asked():
    asked = {"shape": torch.arange(24) % 4, "colour": torch.arange(24) % 8, "position": torch.arange(24) % 9,
             "size": torch.arange(24) % 2, "background": (torch.arange(24) // 2) % 2}
    found = decode_attributes(latents_with_attributes(asked, generator=torch.Generator().manual_seed(0)))
    for name, value in asked.items():
        assert torch.equal(found[name], value), name
    with pytest.raises(LatentmapError, match="'hue'"):
        latents_with_attributes({"hue": 1}, 2)


def test_describe_writes_canonical_captions():
    full = {"shape": "circle", "colour": "red", "size": "large", "position": "top left", "background": "dark"}
    assert describe(full) == "a large red circle in the top left on a dark background"
    assert describe(full, parts=("colour", "shape")) == "a red circle"
    assert describe({"colour": 1, "shape": 3}) == "an orange star"
    assert describe({"position": POSITIONS.index("center")}, parts=("position",)) == "a shape in the center"
    with pytest.raises(LatentmapError, match="'magenta'"):
        describe({"colour": "magenta"})


def test_generator_options_are_checked():
    small = latentmap.get_generator("shapes", resolution=32)
    assert small.synthesize(torch.zeros(1, 3, 8)).shape == (1, 3, 32, 32)
    assert small.registry_options == {"resolution": 32, "space": None}
    with pytest.raises(LatentmapError, match="option 'space' must be one of shapes; got 'w3'"):
        latentmap.get_generator("shapes", space="w3")
    with pytest.raises(LatentmapError, match=r"option 'resolution' must be >= 16, got 8"):
        latentmap.get_generator("shapes", resolution=8)
    with pytest.raises(LatentmapError, match=r"has no option 'resolutoin' \(did you mean 'resolution'\?\)"):
        latentmap.get_generator("shapes", resolutoin=32)
    with pytest.raises(LatentmapError, match=r"\(B, 3, 8\)"):
        ShapesGenerator().synthesize(torch.zeros(2, 1, 8))


def test_mean_latent_is_an_even_blend():
    scene = scene_from_latents(torch.zeros(1, 3, 8))
    assert math.isclose(float(scene.colour.max()), 1 / 8, rel_tol=1e-5)
    assert math.isclose(float(scene.large), 0.5, rel_tol=1e-5)


def test_read_prompt_inverts_describe_for_every_combination():
    from itertools import product

    from latentmap_shapes import VOCABULARY, read_prompt

    for combo in product(*(range(len(classes)) for classes in VOCABULARY.values())):
        truth = dict(zip(VOCABULARY, combo))
        assert read_prompt("A photograph of " + describe(truth)) == truth
    assert read_prompt("a big gray star in the centre on a black background") == {
        "size": 1, "colour": 7, "shape": 3, "position": 4, "background": 0}
    assert read_prompt("two stars at the top") == {"shape": 3, "position": 1}
    assert read_prompt("a person with glasses") == {}


def test_eval_attribute_accuracy_knows_the_shapes_truth(world):
    from latentmap.evaluate import AttributeWorld, attribute_accuracy

    assert isinstance(world, AttributeWorld)
    prompts = ["a red circle", "a blue star in the top left", "a person with glasses"]
    asked = [{"colour": 0, "shape": 0}, {"colour": 5, "shape": 3, "position": 0}, {}]
    rng = torch.Generator().manual_seed(3)
    matching = torch.stack([latents_with_attributes(a, 64, generator=rng) if a else world.sample_latents(64)
                            for a in asked])
    assert attribute_accuracy(world, prompts, matching) == {"colour": 1.0, "position": 1.0, "shape": 1.0, "all": 1.0}
    random = attribute_accuracy(world, prompts, world.sample_latents(3 * 64, generator=rng).view(3, 64, 3, 8))
    assert random["colour"] < 0.35 and random["all"] < 0.15  # chance: 1/8 and 1/32 or 1/288
