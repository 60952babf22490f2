"""Training end to end on a tiny real dataset: the loss falls, the prior beats an untrained one,
the shipped files hold the EMA weights, divergence stops cleanly, and the CLI guards runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers_train import build_tiny_dataset, one_thread, tiny_recipe

import helpers_tiny
from latentmap.checkpoint import load_prior, read_metadata
from latentmap.distributed import World
from latentmap.errors import LatentmapError
from latentmap.prior.diffusion import DiffusionPrior
from latentmap.recipe import load_recipe
from latentmap.train import build_prior, make_validator, open_dataset, train
from latentmap.training.state import latest_state, load_state, split_prefix


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    helpers_tiny.ensure_registered()
    return build_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("train")
    recipe_path = tiny_recipe(folder, dataset)
    recipe = load_recipe(recipe_path)
    with one_thread():  # tiny models on a shared CPU: threads cost more than they give
        result = train(recipe, progress=False)
    return recipe_path, recipe, result


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_decreases_and_the_prior_beats_an_untrained_one(trained, tmp_path: Path) -> None:
    _, recipe, result = trained
    records = read_metrics(result.out)
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 10 and all(r["steps_per_s"] > 0 for r in records if "loss" in r)
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    validations = [r for r in records if "val/text_clip" in r]
    assert [r["step"] for r in validations] == [100, 200]
    # the held-out image condition is reproduced far better than by an untrained prior
    dataset = open_dataset(recipe, World())
    untrained = build_prior(recipe, dataset.manifest)
    with one_thread():
        baseline = make_validator(recipe, dataset, tmp_path, torch.device("cpu"), untrained)(untrained, 0)
    final = validations[-1]
    assert final["val/text_clip"] > baseline["val/text_clip"] + 0.1, (final, baseline)
    assert final["val/image_clip"] > baseline["val/image_clip"] + 0.04, (final, baseline)
    assert final["val/loss"] < 0.8 * baseline["val/loss"]
    assert (result.out / "metrics.png").stat().st_size > 5000
    grids = sorted((result.out / "validation" / "step-000000200").glob("*.png"))
    assert [g.name for g in grids] == ["00-a-red-thing.png", "01-a-blue-thing.png", "02-a-green-square.png"]


def test_last_and_best_hold_the_ema_weights(trained, tmp_path: Path) -> None:
    _, recipe, result = trained
    tensors, info = load_state(latest_state(result.out / "states"))
    assert info["step"] == 200
    raw, ema = split_prefix(tensors, "model"), split_prefix(tensors, "ema")
    last, last_meta = load_prior(result.out / "last.safetensors")
    assert last_meta["step"] == 200 and last_meta["ema"] is True
    assert last_meta["encoder"]["name"] == "tiny-test" and last_meta["space"]["repeats"] == [1, 1, 2]
    for name, value in last.state_dict().items():
        assert torch.equal(value, ema[name]), name
    weight = "net.learned_query"
    assert (raw[weight] - ema[weight]).abs().max() > 1e-3  # the EMA is not the raw weights
    # best.safetensors is the best-scoring validation, and re-scoring it gives the logged score
    best_meta = read_metadata(result.out / "best.safetensors")
    scores = {r["step"]: r["val/text_clip"] for r in read_metrics(result.out) if "val/text_clip" in r}
    assert best_meta["step"] == max(scores, key=scores.get) == result.best_step
    best, _ = load_prior(result.out / "best.safetensors")
    with one_thread():
        rescored = make_validator(recipe, open_dataset(recipe, World()), tmp_path, torch.device("cpu"), best)(best, 0)
    assert rescored["val/text_clip"] == pytest.approx(scores[best_meta["step"]], abs=1e-5)
    assert best_meta["recipe"]["train"]["steps"] == 200


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_state(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = load_recipe(tiny_recipe(tmp_path, dataset, train={"steps": 200, "checkpoint_every": 50}))
    original, calls = DiffusionPrior.loss, {"n": 0}

    def exploding(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] > 130 else loss

    monkeypatch.setattr(DiffusionPrior, "loss", exploding)
    with pytest.raises(LatentmapError) as info, one_thread():
        train(recipe, validation=False, progress=False)
    message = str(info.value)
    assert "training diverged at step 131" in message and "nan" in message
    assert "state-000000100.safetensors" in message and "--resume" in message
    assert latest_state(recipe.train.out / "states").name == "state-000000100.safetensors"
    _, meta = load_prior(recipe.train.out / "last.safetensors")
    assert meta["step"] == 100


def test_cli_guards_against_clobbering_and_resuming_nothing(trained, dataset: Path, tmp_path: Path) -> None:
    from latentmap.cli import cli

    recipe_path, _, _ = trained
    runner = CliRunner()
    clobber = runner.invoke(cli, ["train", str(recipe_path), "--quiet"])
    assert clobber.exit_code == 2
    assert "already holds a training run (state state-000000200.safetensors); pass --resume" in clobber.output
    fresh = tiny_recipe(tmp_path, dataset)
    nothing = runner.invoke(cli, ["train", str(fresh), "--resume"])
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.output
    typo = runner.invoke(cli, ["train", str(fresh), "--set", "train.step=5"])
    assert typo.exit_code == 2 and "unknown key train.step (did you mean train.steps?)" in typo.output
    done = runner.invoke(cli, ["train", str(recipe_path), "--resume", "--quiet"])  # already at 200 of 200
    assert done.exit_code == 0, done.output
    assert "trained 200 steps" in done.output


def test_resume_refuses_a_changed_prior_or_dataset(trained, tmp_path: Path) -> None:
    recipe_path, _, _ = trained
    other = build_tiny_dataset(tmp_path / "other", samples=1024)
    moved = load_recipe(recipe_path, [f"data.dir={other}", "train.steps=400"])
    with pytest.raises(LatentmapError, match=r"state-000000200.safetensors: it was trained on a different dataset "
                                             r"\(samples differs\)"):
        train(moved, resume=True, validation=False, progress=False)
    changed = load_recipe(recipe_path, ["prior.depth=3", "train.steps=400"])
    with pytest.raises(LatentmapError, match=r"state-000000200.safetensors: it was trained with prior.depth=2, "
                                             r"the recipe now says 3"):
        train(changed, resume=True, validation=False, progress=False)
