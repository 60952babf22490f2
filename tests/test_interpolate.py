"""Interpolation between two prompts in the condition space, with the same noise for every frame."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

import helpers_colour
from latentmap.cli import cli
from latentmap.errors import LatentmapError
from latentmap.pipeline import interpolate_conditions, load_pipeline


@pytest.fixture(scope="module")
def pipe():
    helpers_colour.ensure_registered()
    return load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")


def test_conditions_follow_the_great_circle_with_linear_length():
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    cond = interpolate_conditions(a, b, 5)
    assert torch.equal(cond[0], a) and torch.equal(cond[-1], b)
    torch.testing.assert_close(cond.norm(dim=1), torch.tensor([3.0, 2.5, 2.0, 1.5, 1.0]))
    angles = torch.rad2deg(torch.atan2(cond[:, 1], cond[:, 0]))
    torch.testing.assert_close(angles, torch.tensor([0.0, 22.5, 45.0, 67.5, 90.0]))
    # degenerate pairs (a zero embedding, opposite directions) are interpolated linearly
    torch.testing.assert_close(interpolate_conditions(torch.zeros(3), b, 3)[1], b / 2)
    torch.testing.assert_close(interpolate_conditions(b, -b, 3)[1], torch.zeros(3))


def test_ends_are_the_prompts_sampled_alone_and_colours_move_monotonically(pipe):
    settings = pipe.defaults()
    latents = pipe.interpolation_latents("red", "blue", frames=8, seed=3, settings=settings)
    assert latents.shape == (8, pipe.space.tokens, pipe.space.dim)
    alone_a = pipe.sample_latents(pipe.embed_prompts("red"), settings, seed=3)
    alone_b = pipe.sample_latents(pipe.embed_prompts("blue"), settings, seed=3)
    torch.testing.assert_close(latents[0], alone_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(latents[-1], alone_b[0], atol=1e-5, rtol=0)
    colours = pipe.render(latents).mean(dim=(2, 3))  # mean RGB per frame
    towards_b = colours @ (pipe.embed_prompts("blue")[0] - pipe.embed_prompts("red")[0])
    assert (towards_b.diff() > 0).all(), towards_b
    assert colours[0, 0] > colours[0, 2] and colours[-1, 2] > colours[-1, 0]  # red first, blue last


def test_the_api_returns_pillow_images(pipe):
    images = pipe.interpolate("red", "blue", frames=4, seed=0, steps=5)
    assert len(images) == 4 and all(isinstance(image, Image.Image) for image in images)
    with pytest.raises(LatentmapError, match="at least 2 frames"):
        pipe.interpolate("red", "blue", frames=1)


def test_the_command_writes_strip_gif_and_latents(pipe, tmp_path):
    out = tmp_path / "interp"
    result = CliRunner().invoke(cli, ["interpolate", "--checkpoint", str(helpers_colour.colour_checkpoint()), "red",
                                      "blue", "--frames", "6", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out / "interpolation.gif") as gif:
        assert gif.n_frames == 6 and gif.size[0] >= 128
    with Image.open(out / "strip.png") as strip:
        assert strip.width >= 6 * 128
    tensors = load_file(str(out / "latents.safetensors"))
    expected = pipe.interpolation_latents("red", "blue", frames=6, seed=3)
    torch.testing.assert_close(tensors["latents"], expected)
    assert tensors["per_layer"].shape == (6, pipe.space.layers, pipe.space.dim)
    info = json.loads((out / "interpolation.json").read_text())
    assert info["prompts"] == ["red", "blue"] and info["frames"] == 6 and info["seed"] == 3
    bad = CliRunner().invoke(cli, ["interpolate", "--checkpoint", str(helpers_colour.colour_checkpoint()), "red",
                                   "blue", "--frames", "1"])
    assert bad.exit_code == 2 and "--frames must be at least 2" in bad.output


def test_priors_without_a_noise_hook_get_the_same_frames_one_call_each(pipe):
    """Any prior: frames sampled one by one with the same seed equal the diffusion prior's one batched call."""
    import dataclasses

    from latentmap.interfaces import Prior

    class Delegate(Prior):  # not a DiffusionPrior: only the contract's sample(cond, settings, generator=)
        def loss(self, latents, cond, *, generator=None):
            raise NotImplementedError

        def sample(self, cond, settings=None, *, generator=None):
            return inner.sample(cond, settings, generator=generator)

    inner = pipe.prior
    other = dataclasses.replace(pipe, prior=Delegate(inner.shape))
    settings = pipe.defaults()
    torch.testing.assert_close(other.interpolation_latents("red", "blue", frames=5, seed=1, settings=settings),
                               pipe.interpolation_latents("red", "blue", frames=5, seed=1, settings=settings),
                               atol=1e-5, rtol=0)
