"""Data-parallel training through torchrun: 2 CPU processes over gloo train like one process, and
only rank 0 writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_train import build_tiny_dataset, one_thread, subprocess_env, tiny_recipe

import helpers_tiny
from latentmap.recipe import load_recipe
from latentmap.train import train
from latentmap.training.state import latest_state, load_state

SETTINGS = {"steps": 200, "batch_size": 64, "log_every": 20, "checkpoint_every": 100}


def losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
def test_two_process_gloo_run_matches_a_single_process_run(tmp_path: Path) -> None:
    helpers_tiny.ensure_registered()
    data = build_tiny_dataset(tmp_path / "data", samples=2048)
    for name in ("ddp", "single"):
        (tmp_path / name).mkdir()
    ddp_recipe = tiny_recipe(tmp_path / "ddp", data, train=SETTINGS, validation={"every": 100})
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "latentmap", "train", str(ddp_recipe), "--quiet",
    ]
    run = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained 200 steps") == 1  # rank 0 alone reports

    with one_thread():
        single = train(load_recipe(tiny_recipe(tmp_path / "single", data, train=SETTINGS)), validation=False,
                       progress=False)
    ddp_out = tmp_path / "ddp" / "run"
    ddp_losses, single_losses = losses(ddp_out), losses(single.out)
    # rank 0 alone writes: one metrics line per logged step, one set of states
    steps = [json.loads(line)["step"] for line in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60, 80, 100, 100, 120, 140, 160, 180, 200, 200]
    assert sorted(p.name for p in (ddp_out / "states").iterdir()) == [
        "state-000000100.safetensors", "state-000000200.safetensors"]
    info = load_state(latest_state(ddp_out / "states"))[1]
    assert info["world_size"] == 2 and info["step"] == 200
    # the same loss curve shape: both fall by a similar factor to a similar level
    assert len(ddp_losses) == len(single_losses) == 10
    for curve in (ddp_losses, single_losses):
        assert sum(curve[-3:]) / 3 < 0.75 * curve[0], curve
    ddp_end, single_end = sum(ddp_losses[-3:]) / 3, sum(single_losses[-3:]) / 3
    assert abs(ddp_end - single_end) < 0.15 * single_end, (ddp_losses, single_losses)
    assert (ddp_out / "best.safetensors").is_file() and (ddp_out / "validation" / "step-000000200").is_dir()
