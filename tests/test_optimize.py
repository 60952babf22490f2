"""Direct CLIP optimisation of latents: it raises the score, from mean, random and prior starts."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import helpers_colour
import helpers_tiny
import latentmap
from latentmap.cli import cli
from latentmap.optimize import OptimizeSettings, initial_latents, optimize
from latentmap.pipeline import load_pipeline
from latentmap.sample import sample
from latentmap.scoring import image_text_scores



@pytest.fixture(scope="module")
def colour_world():
    helpers_colour.ensure_registered()
    return latentmap.get_generator("colour-test", space="w3"), latentmap.get_encoder("colour-test")


def _score(generator, encoder, latents, prompt):
    target = encoder.embed_text([prompt]).expand(latents.shape[0], -1)
    return image_text_scores(encoder, generator.synthesize(latents), target)


@pytest.mark.parametrize("init", ["mean", "random"])
def test_optimisation_raises_the_clip_score(colour_world, init):
    generator, encoder = colour_world
    start = initial_latents(generator, 4, init, seed=0)
    before = _score(generator, encoder, start, "magenta")
    result = optimize(generator, encoder, ["magenta"], settings=OptimizeSettings(steps=40, lr=0.1, init=init,
                      init_noise=0.3 if init == "mean" else 0.0), candidates=4, keep=2, seed=0, progress=False)
    assert result.scores.min().item() > 0.95
    assert result.scores.max().item() > before.max().item() + 0.1
    # the reported score is the score of the returned latents
    rescored = _score(generator, encoder, result.per_layer[0], "magenta")
    torch.testing.assert_close(rescored, result.scores[0], atol=1e-5, rtol=0)


def test_optimisation_on_the_tiny_random_world_per_layer():
    helpers_tiny.ensure_registered()
    generator = latentmap.get_generator("tiny-test")
    encoder = latentmap.get_encoder("tiny-test")
    start = initial_latents(generator, 2, "random", seed=1)
    before = _score(generator, encoder, start, "a tiny test")
    result = optimize(generator, encoder, ["a tiny test"], settings=OptimizeSettings(steps=30, lr=0.05, init="random",
                      per_layer=True), candidates=2, keep=2, seed=1, progress=False)
    assert result.per_layer.shape == (1, 2, 4, 8)
    assert result.scores.mean().item() > before.mean().item() + 0.05


def test_prior_initialised_optimisation_never_gets_worse(colour_world):
    helpers_colour.ensure_registered()
    pipeline = load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")
    settings = pipeline.settings(steps=10)
    baseline = sample(pipeline, ["cyan"], candidates=4, keep=4, settings=settings, seed=2, keep_images=False,
                      progress=False)
    refined = optimize(pipeline.generator, pipeline.encoder, ["cyan"], settings=OptimizeSettings(steps=5, lr=0.05,
                       init="prior"), candidates=4, keep=4, seed=2, pipeline=pipeline, sampler=settings,
                       progress=False)
    # same seed and settings: the starts are the prior's samples, and the best-so-far never drops
    assert refined.scores.mean().item() >= baseline.scores.mean().item() - 1e-6


def test_cli_optimize_writes_sample_outputs(colour_world, tmp_path):
    out = tmp_path / "opt"
    result = CliRunner().invoke(cli, ["optimize", "yellow", "--generator", "colour-test", "--generator-option",
                                      "space=w3", "--encoder", "colour-test", "--steps", "20", "--lr", "0.1",
                                      "--init", "random", "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert line["method"] == "optimize" and line["optimize_steps"] == 20 and line["score"] > 0.9
    assert (out / line["image"]).is_file()


def test_cli_optimize_bad_input(colour_world):
    runner = CliRunner()
    result = runner.invoke(cli, ["optimize", "red", "--generator", "colour-test", "--encoder", "colour-test",
                                 "--init", "prior"])
    assert result.exit_code == 2 and "--init prior needs --checkpoint" in result.output
    result = runner.invoke(cli, ["optimize", "--generator", "colour-test", "--encoder", "colour-test"])
    assert result.exit_code == 2 and "no prompts given" in result.output
    result = runner.invoke(cli, ["optimize", "red", "--generator", "colour-test"])
    assert result.exit_code == 2 and "--encoder" in result.output
