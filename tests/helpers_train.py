"""A tiny real dataset (built by build-data from the ``tiny-test`` world) and a recipe sized for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

PROMPTS = ["a red thing", "a blue thing", "a green square"]


def build_tiny_dataset(root: Path, *, samples: int = 2048, space: str = "w3") -> Path:
    """A dataset of ``samples`` (latent, embedding) pairs from the tiny generator and encoder."""
    import helpers_tiny

    import latentmap
    from latentmap.data.builder import BuildConfig, build_dataset

    helpers_tiny.ensure_registered()
    generator = latentmap.get_generator("tiny-test", space=space)
    encoder = latentmap.get_encoder("tiny-test")
    build_dataset(generator, encoder, BuildConfig(out=root, samples=samples, batch_size=512, shard_size=512,
                                                  dtype="float32", progress=False))
    return root


def tiny_recipe(folder: Path, data: Path, **sections: dict) -> Path:
    """Write a recipe for a ~20k-parameter prior on ``data``; ``sections`` override values."""
    (folder / "val.txt").write_text("\n".join(PROMPTS) + "\n")
    recipe = {
        "generator": {"name": "tiny-test", "space": "w3"},
        "encoder": {"name": "tiny-test"},
        "data": {"dir": str(data)},
        "prior": {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "timesteps": 100},
        "train": {"out": "run", "steps": 200, "batch_size": 64, "lr": 1.0e-3, "ema_beta": 0.99, "ema_every": 1,
                  "log_every": 20, "checkpoint_every": 100, "tensorboard": False},
        "validation": {"prompts": "val.txt", "samples_per_prompt": 2, "every": 100, "image_conditions": 32,
                       "sampling": {"steps": 10}},
    }
    for section, values in sections.items():
        recipe.setdefault(section, {}).update(values)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for a ``latentmap`` subprocess that sees the tiny plugin, on one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env["LATENTMAP_PLUGIN_MODULES"] = "helpers_tiny"
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def latentmap_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentmap", *args]


class one_thread:
    """Run a block with one torch thread (as the subprocesses), restoring the count after."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


def kill_after_first_state(command: list[str], states: Path, *, env: dict[str, str] | None = None,
                           cwd: Path | None = None, timeout: float = 240.0) -> int:
    """Start ``command``, SIGKILL it as soon as a state file exists; returns that state's step (a crash at hour 8)."""
    from latentmap.training.state import latest_state, load_state

    process = subprocess.Popen(command, env=env if env is not None else subprocess_env(), cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while latest_state(states) is None:
            if process.poll() is not None:
                raise AssertionError(f"training exited early: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no training state appeared in time")
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return int(load_state(latest_state(states))[1]["step"])


# `latentmap run recipes/shapes.yaml` at a reduced size: half-width prior, 3k samples, 400 steps (~15 s on 2 cores).
REDUCED_SHAPES = [
    "data.samples=3000", "data.shard_size=1500", "data.batch_size=500",
    "prior.dim=64", "prior.depth=2", "prior.heads=4", "prior.dim_head=16",
    "train.steps=400", "train.batch_size=128", "train.lr=1.0e-3", "train.ema_beta=0.99",
    "train.log_every=50", "train.device=cpu", "train.tensorboard=false",
    "validation.image_conditions=32", "validation.samples_per_prompt=2", "validation.sampling.steps=10",
]


def reduced_shapes_run(root: Path, *, every: int, sample: list[str]) -> Path:
    """Run the shapes recipe at the reduced size into ``root`` (data/ and run/) through the CLI, on one thread;
    checkpoints and validation every ``every`` steps, ``sample`` the sample.* overrides. Returns the run folder."""
    from click.testing import CliRunner

    from latentmap.cli import cli

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "shapes.yaml"
    overrides = [*REDUCED_SHAPES, f"train.checkpoint_every={every}", f"validation.every={every}", *sample,
                 f"data.dir={root / 'data'}", f"train.out={root / 'run'}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(cli, ["run", str(recipe), "--quiet", *[arg for v in overrides for arg in ("--set", v)]],
                                    catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return root / "run"
