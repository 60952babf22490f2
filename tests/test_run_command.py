"""``latentmap run`` on a tiny recipe: it calls the build-data and train task functions (not their
click commands), prints each stage's summary exactly once, writes every output, and a second run
reuses the dataset and resumes training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_train import one_thread, tiny_recipe

import helpers_tiny
from latentmap.cli import cli

SIZE = ["data.samples=600", "data.shard_size=300", "data.batch_size=100", "data.device=cpu"]


def run(recipe: Path) -> list[str]:
    """The printed lines of one ``latentmap run``, less validation scores and warnings."""
    argv = ["run", str(recipe), "--quiet", *sum((["--set", value] for value in SIZE), [])]
    with one_thread():
        result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return [line for line in result.output.splitlines() if not line.startswith(("step ", "warning:"))]


def starts(lines: list[str]) -> list[str]:
    return [" ".join(line.split()[:2]) if line.startswith("[") else line.split()[0] for line in lines]


def test_run_builds_trains_samples_then_resumes(tmp_path: Path, monkeypatch) -> None:
    from latentmap.commands import build_data, train

    helpers_tiny.ensure_registered()
    for module in (build_data, train):  # run calls the task functions, never another command
        monkeypatch.setattr(module.command, "callback", lambda **_: pytest.fail("run invoked a click command"))
    data, out = tmp_path / "data", tmp_path / "run"
    recipe = tiny_recipe(tmp_path, data, train={"steps": 40, "log_every": 20, "checkpoint_every": 20, "device": "cpu"},
                         validation={"every": 20},
                         sample={"prompts": ["a red thing", "a blue thing"], "candidates": 4, "keep": 2})

    first = run(recipe)
    assert starts(first) == ["[1/3] build-data", "dataset", "this", "[2/3] train", "trained", "[3/3] sample",
                             "samples", "'a", "'a", "images"]
    assert first[0] == f"[1/3] build-data -> {data}" and first[3] == f"[2/3] train -> {out}"
    assert "600 samples in 2 shards" in first[1] and "built 2 shards" in first[2]
    assert first[4].startswith("trained 40 steps") and f"outputs in {out}" in first[4]
    assert json.loads((data / "manifest.json").read_text())["complete"]
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    assert len((out / "samples" / "samples.jsonl").read_text().splitlines()) == 4

    second = run(recipe)
    assert second[3] == f"[2/3] train -> {out} (resuming)"
    assert "built 0 shards" in second[2] and "reused 2 complete shards" in second[2]
    assert second[4].startswith("trained 40 steps")
