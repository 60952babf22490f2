"""Priors are plugins: a non-diffusion prior that only the entry-point door knows does everything the built-in does.

The prior is ``regression`` (tests/plugins/latentmap_regression_prior/: an MLP from the condition to
z-normalised latents, trained with MSE, sampled as prediction + noise). No line of latentmap names it.
Here it is "installed" the way pip would leave it: a ``*.dist-info`` folder with an ``entry_points.txt``
(``[latentmap] regression = latentmap_regression_prior``) beside a copy of the module, on the
PYTHONPATH of ``python -m latentmap`` subprocesses. In the shipped shapes world (``shapes`` generator,
``shapes-clip`` encoder, both tiny) the command line then lists its options, builds data, trains it
(killed with SIGKILL and resumed, bit for bit), samples, evaluates, finds and applies an edit
direction, refuses what it does not declare with one line, and names it when it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from helpers_train import kill_after_first_state

from latentmap.checkpoint import read_metadata
from latentmap.errors import LatentmapError
from latentmap.training.state import latest_state, load_state

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "tests" / "plugins" / "latentmap_regression_prior"
PLUGIN_MODULE = "latentmap_regression_prior"
PLUGIN_SOURCE = PLUGIN_DIR / f"{PLUGIN_MODULE}.py"

PRIOR = {"name": "regression", "hidden": 32, "normalize_cond": True}  # shapes-clip: image embeddings ~7x text ones
STEPS = 1000
CHECKPOINT_EVERY = 200
VALIDATION_PROMPTS = ["a red circle", "a blue square", "a green star"]


# ---------------------------------------------------------------------------------------------- helpers
def install_plugin(site: Path) -> Path:
    """What ``pip install`` of the plugin leaves in site-packages: the module and its dist-info."""
    info = site / f"{PLUGIN_MODULE}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: latentmap-regression-prior\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[latentmap]\nregression = {PLUGIN_MODULE}\n")
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE.read_text(encoding="utf-8"), encoding="utf-8")
    return site


def cli_env(site: Path | None) -> dict[str, str]:
    """One torch thread (bit-equal resume), only the plugins needed, and the plugin's site if given."""
    env = dict(os.environ)
    env.pop("LATENTMAP_PLUGIN_MODULES", None)
    paths = [str(site)] if site is not None else []
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["LATENTMAP_LOAD_PLUGINS"] = "shapes,regression"  # the core's spaces and diffusion prior always register
    env["OMP_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "latentmap", *args]


def run_cli(*args: str, site: Path | None, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m latentmap ARGS``; fail with its output unless it exits with ``expect``."""
    result = subprocess.run(command(*args), cwd=cwd, env=cli_env(site), capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, (
        f"latentmap {' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single ``Error: ...`` line a refused command prints (exit code 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def write_recipe(folder: Path, data: Path, prior: dict | None = None) -> Path:
    """A shapes-world recipe sized for a test: ~2k samples, a ~5k-parameter prior, 1000 fast steps."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "val.txt").write_text("\n".join(VALIDATION_PROMPTS) + "\n")
    recipe = {
        "generator": {"name": "shapes"},
        "encoder": {"name": "shapes-clip"},
        "data": {"dir": str(data), "samples": 2000, "batch_size": 500, "shard_size": 1000, "dtype": "float32",
                 "device": "cpu"},
        "prior": dict(prior if prior is not None else PRIOR),
        "train": {"out": "run", "steps": STEPS, "batch_size": 128, "lr": 3.0e-3, "ema_beta": 0.99, "ema_every": 1,
                  "log_every": 50, "checkpoint_every": CHECKPOINT_EVERY, "device": "cpu", "threads": 1,
                  "tensorboard": False},
        "validation": {"prompts": "val.txt", "samples_per_prompt": 2, "every": 100_000, "image_conditions": 32,
                       "sampling": {"noise": 0.0}},
        "sample": {"candidates": 4, "keep": 2, "sampling": {"noise": 0.0}},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def losses(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


@dataclass
class World:
    root: Path
    site: Path
    data: Path
    recipe: Path  # trained, uninterrupted: root/a/run
    run: Path

    @property
    def checkpoint(self) -> Path:
        return self.run / "last.safetensors"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_plugin(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, site: Path) -> World:
    """``latentmap build-data`` and an uninterrupted ``latentmap train`` of the regression prior."""
    root = tmp_path_factory.mktemp("regression-world")
    data = root / "data"
    recipe = write_recipe(root / "a", data)
    built = run_cli("build-data", str(recipe), "--quiet", site=site, cwd=root)
    assert "2,000 samples" in built.stdout, built.stdout
    run_cli("train", str(recipe), "--quiet", site=site, cwd=root)
    return World(root=root, site=site, data=data, recipe=recipe, run=root / "a" / "run")


def load_plugin_module(monkeypatch: pytest.MonkeyPatch):
    """The plugin module imported straight from its file (no registry involved)."""
    spec = importlib.util.spec_from_file_location(PLUGIN_MODULE, PLUGIN_SOURCE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, PLUGIN_MODULE, module)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- tests
def test_the_plugin_fulfils_the_contract_deterministically_and_the_core_never_names_it(monkeypatch) -> None:
    plugin = load_plugin_module(monkeypatch)
    prior = plugin.RegressionPrior.create(tokens=3, latent_dim=8, cond_dim=16, hidden=8, layers=1)
    assert prior.config_dict() == {"name": "regression", "shape": {"tokens": 3, "latent_dim": 8, "cond_dim": 16},
                                   "options": {"hidden": 8, "layers": 1, "normalize_cond": False}}
    prior.set_latent_stats(torch.linspace(-1, 1, 24), torch.linspace(0.5, 2, 24))
    cond = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    latents = torch.randn(5, 3, 8, generator=torch.Generator().manual_seed(1))

    loss = prior.loss(latents, cond, generator=torch.Generator().manual_seed(2))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in prior.parameters())

    def draw(seed: int, noise: float) -> torch.Tensor:
        return prior.sample(cond, prior.sampling(noise=noise), generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3, 0.5), draw(3, 0.5))  # deterministic given the generator
    assert not torch.equal(draw(3, 0.5), draw(4, 0.5))
    mean = prior.denormalize_latents(prior.predict(cond)).detach()
    assert torch.equal(draw(3, 0.0), mean) and torch.equal(prior.sample(cond), mean)  # noise 0: the prediction
    assert draw(3, 0.5).shape == (5, 3, 8)
    with pytest.raises(LatentmapError, match="prior 'regression' has no option 'steps'"):
        prior.sampling(steps=5)
    with pytest.raises(LatentmapError, match="option 'noise' must be >= 0"):
        prior.sampling(noise=-1.0)

    for folder in ("latentmap", "plugins"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert PLUGIN_MODULE not in text and "RegressionPrior" not in text, f"{path} names the test plugin"
    assert PLUGIN_MODULE not in (REPO / "pyproject.toml").read_text(), "pyproject.toml installs the test plugin"


def test_list_priors_shows_the_plugin_with_its_options_and_sampling_settings(site: Path, tmp_path: Path) -> None:
    listed = run_cli("list", "priors", "--options", site=site, cwd=tmp_path).stdout
    lines = listed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("regression "))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        block.append(line.strip())
    assert "[regression]" in lines[start] and "MLP regression" in lines[start]  # registered by the plugin named regression
    assert block[0] == "options:"
    assert block[1].startswith("hidden (int, default 64, >= 1): ")
    assert block[2].startswith("layers (int, default 2, >= 1): ")
    assert block[3].startswith("normalize_cond (bool, default False): ")
    assert block[4] == "sampling settings:"
    assert block[5].startswith("noise (float, default 0.0, >= 0.0): ")
    assert len(block) == 6  # nothing diffusion-specific
    assert any(line.startswith("diffusion ") for line in lines)  # the built-in is still there

    plugins = run_cli("plugins", site=site, cwd=tmp_path).stdout
    line = next(l for l in plugins.splitlines() if l.startswith("regression"))
    assert "ok" in line and "latentmap-regression-prior 0.1" in line and "register_priors" in line


def test_a_misspelt_recipe_option_is_refused_naming_the_right_one(site: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, tmp_path / "data", prior={"name": "regression", "hiden": 32})
    error = one_error_line(run_cli("train", str(recipe), site=site, cwd=tmp_path, expect=2))
    assert "prior 'regression' has no option 'hiden'" in error and "did you mean 'hidden'" in error, error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_records_the_prior_and_learns(world: World) -> None:
    document = read_metadata(world.checkpoint)
    assert document["prior"] == {"name": "regression", "shape": {"tokens": 3, "latent_dim": 8, "cond_dim": 64},
                                 "options": {"hidden": 32, "layers": 2, "normalize_cond": True}}
    assert document["recipe"]["prior"] == {"name": "regression", "hidden": 32, "layers": 2, "normalize_cond": True}
    assert document["recipe"]["validation"]["sampling"] == {"noise": 0.0}
    assert (world.run / "best.safetensors").is_file()
    tensors = load_file(str(world.checkpoint))
    assert {name.split(".")[0] for name in tensors} == {"net", "latent_mean", "latent_std"}

    logged = losses(world.run)
    assert [step for step, _ in logged] == list(range(50, STEPS + 1, 50))
    first, last = logged[0][1], logged[-1][1]
    # MEASURED (2 shared cores): 0.98 at step 50, 0.78 at the end; the attributes' argmax is all a
    # regression can learn of the latents, the rest of their variance (~0.75) is irreducible.
    assert last < 0.9 * first, logged


@pytest.mark.slow
def test_killed_then_resumed_run_ends_with_the_same_prior(world: World) -> None:
    recipe = write_recipe(world.root / "b", world.data)
    run = world.root / "b" / "run"
    states = run / "states"
    killed_at = kill_after_first_state(command("train", str(recipe), "--quiet"), states, env=cli_env(world.site),
                                       cwd=world.root)
    assert 0 < killed_at < STEPS

    run_cli("train", str(recipe), "--resume", "--quiet", site=world.site, cwd=world.root)

    final_a, info_a = load_state(latest_state(world.run / "states"))
    final_b, info_b = load_state(latest_state(states))
    assert info_a["step"] == info_b["step"] == STEPS
    assert info_a["prior"] == info_b["prior"] and info_b["prior"]["name"] == "regression"
    compared = sorted(k for k in final_a if k.startswith(("model.", "ema.", "optim.")))
    assert compared == sorted(k for k in final_b if k.startswith(("model.", "ema.", "optim.")))
    assert any(k.startswith("model.net.") for k in compared)
    for key in compared:
        assert torch.equal(final_a[key], final_b[key]), key
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(world.run / name)), load_file(str(run / name))
        assert sorted(a) == sorted(b)
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
    assert losses(world.run) == losses(run)  # the killed run's extra metrics lines were dropped on resume


@pytest.mark.slow
def test_sample_eval_directions_and_edit_use_the_plugin_prior(world: World, tmp_path: Path) -> None:
    from latentmap_shapes import COLOURS, SHAPES, decode_attributes

    checkpoint = str(world.checkpoint)
    out = tmp_path / "samples"
    run_cli("sample", "--checkpoint", checkpoint, "a red circle", "a blue circle", "--sampling", "noise=0.1",
              "--device", "cpu", "--out", str(out), site=world.site, cwd=tmp_path)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["rank"]) for r in records] == [("a red circle", 0), ("a red circle", 1),
                                                            ("a blue circle", 0), ("a blue circle", 1)]
    for record in records:
        assert record["settings"] == {"noise": 0.1, "truncation": 1.0}
        with Image.open(out / record["image"]) as image:
            assert image.format == "PNG" and image.size == (64, 64)
    for folder, colour in (("000-a-red-circle", "red"), ("001-a-blue-circle", "blue")):
        latents = load_file(str(out / folder / "latents.safetensors"))["latents"]
        truth = decode_attributes(latents)  # the shapes world knows what every latent renders
        assert [COLOURS[i] for i in truth["colour"]] == [colour, colour], folder
        assert SHAPES[int(truth["shape"][0])] == "circle", folder  # the best-scored one (MEASURED: 3 of the 4 kept are circles)

    report = tmp_path / "report.json"
    evaluated = run_cli("eval", "--checkpoint", checkpoint, "--prompts-file", "shapes-eval-64.txt", "--prefix", "",
                          "--candidates", "2", "--device", "cpu", "--report", str(report), site=world.site, cwd=tmp_path)
    assert "attribute accuracy:" in evaluated.stdout
    accuracy = json.loads(report.read_text())["attribute_accuracy"]
    # MEASURED: colour 1.00, all named attributes 0.95 (chance: 1/8 and at most 1/32)
    assert accuracy["colour"] > 0.6 and accuracy["all"] > 0.4, accuracy

    direction = tmp_path / "d.safetensors"
    run_cli("directions", "--checkpoint", checkpoint, "a red circle", "a blue circle", "--samples", "8",
              "--device", "cpu", "--out", str(direction), site=world.site, cwd=tmp_path)
    colour_part = load_file(str(direction))["direction"][1]  # token 1 holds the colour logits
    assert COLOURS[int(colour_part.argmax())] == "red" and COLOURS[int(colour_part.argmin())] == "blue", colour_part

    edits = tmp_path / "edits"
    run_cli("edit", "--checkpoint", checkpoint, "a circle", "--direction", str(direction), "--strengths", "-1,0,1",
              "--candidates", "2", "--device", "cpu", "--out", str(edits), site=world.site, cwd=tmp_path)
    images = {s: edits / "00-d" / f"00-strength{s}.png" for s in ("-1", "+0", "+1")}
    assert all(path.is_file() for path in images.values()), sorted(p.name for p in edits.rglob("*"))

    def redness(path: Path) -> float:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        return float((pixels[..., 0] - pixels[..., 2]).mean())

    assert redness(images["+1"]) > redness(images["-1"])  # toward "red" minus "blue"


@pytest.mark.slow
def test_sampling_flags_the_prior_does_not_declare_are_refused(world: World, tmp_path: Path) -> None:
    result = run_cli("sample", "--checkpoint", str(world.checkpoint), "a red circle", "--steps", "5",
                       "--device", "cpu", "--out", str(tmp_path / "s"), site=world.site, cwd=tmp_path, expect=2)
    error = one_error_line(result)
    assert "prior 'regression'" in error and "'steps'" in error and "noise" in error, error
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_checkpoint_whose_plugin_is_missing_names_the_prior_and_the_installed_ones(world: World, tmp_path: Path) -> None:
    result = run_cli("sample", "--checkpoint", str(world.checkpoint), "a red circle", "--device", "cpu",
                       "--out", str(tmp_path / "s"), site=None, cwd=tmp_path, expect=2)
    error = one_error_line(result)
    assert "holds a 'regression' prior" in error and "no installed plugin registers prior 'regression'" in error, error
    assert "installed priors: diffusion" in error, error
