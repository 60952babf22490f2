"""Exact resume: a run killed with SIGKILL after a checkpoint, then ``--resume``d, ends with the same
weights, EMA, optimiser moments and metrics as a run that was never interrupted (CPU, bit for bit)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from helpers_train import build_tiny_dataset, kill_after_first_state, latentmap_command, one_thread, subprocess_env, tiny_recipe

import helpers_tiny
from latentmap.recipe import load_recipe
from latentmap.train import train
from latentmap.training.state import latest_state, load_state

STEPS = 300
# States every 60 steps, metrics lines every 40: the resumed run's first line (step 80) must average
# steps 41-80, half of them from before the kill, exactly as the uninterrupted run's does.
SETTINGS = {"steps": STEPS, "checkpoint_every": 60, "log_every": 40, "batch_size": 96}


@pytest.mark.slow
def test_kill_nine_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    helpers_tiny.ensure_registered()
    data = build_tiny_dataset(tmp_path / "data", samples=1536)  # 3 epochs in 300 steps: crosses epochs
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    recipe_a = tiny_recipe(tmp_path / "a", data, train=SETTINGS)
    recipe_b = tiny_recipe(tmp_path / "b", data, train=SETTINGS)

    with one_thread():  # same thread count as the subprocesses: same float summation order
        reference = train(load_recipe(recipe_a), validation=False, progress=False)
    assert reference.steps == STEPS

    states = tmp_path / "b" / "run" / "states"
    command = latentmap_command("train", str(recipe_b), "--no-validation", "--quiet")
    killed_at = kill_after_first_state(command, states)
    assert 0 < killed_at < STEPS
    resumed = subprocess.run([*command, "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    final_a, info_a = load_state(latest_state(tmp_path / "a" / "run" / "states"))
    final_b, info_b = load_state(latest_state(states))
    assert info_a["step"] == info_b["step"] == STEPS
    assert (info_a["epoch"], info_a["batch"]) == (info_b["epoch"], info_b["batch"])
    assert info_a["ema"] == info_b["ema"]
    compared = [k for k in final_a if k.startswith(("model.", "ema.", "optim."))]
    assert len(compared) > 50 and set(compared) == {k for k in final_b if k.startswith(("model.", "ema.", "optim."))}
    for key in compared:
        assert torch.equal(final_a[key], final_b[key]), key

    def losses(folder: str) -> list[tuple[int, float]]:
        lines = (tmp_path / folder / "run" / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]

    assert losses("a") == losses("b")  # the killed run's extra lines were dropped on resume
    assert [step for step, _ in losses("b")] == [*range(40, STEPS, 40), STEPS]

