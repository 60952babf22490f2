"""The training loop's parts: LAFITE noise, EMA warm-up, training-state round trips, random streams."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentmap.data.augment import lafite_noise
from latentmap.errors import LatentmapError
from latentmap.training.ema import EMA
from latentmap.training.metrics import MetricsLog
from latentmap.training.optim import make_optimizer, step_generator
from latentmap.training.state import (
    latest_state,
    load_state,
    optimizer_from_state,
    optimizer_to_state,
    prune_states,
    rng_from_state,
    rng_to_state,
    save_state,
    state_path,
)


def test_lafite_noise_keeps_norms_and_moves_by_alpha() -> None:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2000, 512, generator=g) * 9.0  # raw CLIP-like norms
    out = lafite_noise(cond, 1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.norm(dim=-1), cond.norm(dim=-1))
    # a unit step orthogonal (in high dimension) to a unit vector: cos = 1 / sqrt(1 + alpha^2)
    cos = F.cosine_similarity(out, cond, dim=-1)
    assert cos.mean().item() == pytest.approx(1 / math.sqrt(2), abs=0.01)
    half = lafite_noise(cond, 0.5, generator=torch.Generator().manual_seed(1))
    assert F.cosine_similarity(half, cond).mean().item() == pytest.approx(1 / math.sqrt(1.25), abs=0.01)
    assert lafite_noise(cond, 0.0) is cond
    again = lafite_noise(cond, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_ema_warmup_follows_the_formula_and_lags_behind() -> None:
    model = nn.Linear(4, 4)
    ema = EMA(model, beta=0.9999, every=2, warmup=True)
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not ema.update(model)  # step 1 of every=2: no update
    assert torch.equal(ema.model.weight, start)
    assert ema.decay() == pytest.approx(1 / 10)
    assert ema.update(model)  # the first update moves 90% of the way
    torch.testing.assert_close(ema.model.weight, start + 0.9)
    assert ema.decay() == pytest.approx(2 / 11)
    ema.updates = 20_000
    assert ema.decay() == pytest.approx(1 - 9 / 20_010)  # still warming up: window ~ updates / 9
    ema.updates = 100_000
    assert ema.decay() == 0.9999  # the window caps at beta
    plain = EMA(model, beta=0.99, every=1, warmup=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    plain.update(model)
    torch.testing.assert_close(plain.model.weight, (start + 1) * 0.99 + (start + 2) * 0.01)


def test_optimizer_state_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # matrices decay, vectors do not
    assert len(opt.param_groups[1]["params"]) == 4  # two biases, LayerNorm weight and bias
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 6)).square().mean().backward()
        opt.step()
    tensors, info = optimizer_to_state(opt)
    save_state(tmp_path / "s.safetensors", {f"optim.{k}": v for k, v in tensors.items()}, {"optimizer": info})
    loaded, loaded_info = load_state(tmp_path / "s.safetensors")
    twin = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    twin.load_state_dict(model.state_dict())
    twin_opt = make_optimizer(twin, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    optimizer_from_state(twin_opt, {k[6:]: v for k, v in loaded.items()}, loaded_info["optimizer"])
    batch = torch.randn(5, 6)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(batch).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_rng_states_round_trip() -> None:
    tensors, info = rng_to_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    rng_from_state(tensors, info)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_step_streams_depend_on_seed_rank_and_step_only() -> None:
    cpu = torch.device("cpu")
    a = torch.rand(4, generator=step_generator(0, 0, 10, cpu))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 0, 10, cpu)))
    for other in (step_generator(1, 0, 10, cpu), step_generator(0, 1, 10, cpu), step_generator(0, 0, 11, cpu)):
        assert not torch.equal(a, torch.rand(4, generator=other))


def test_state_files_are_found_newest_first_and_pruned(tmp_path: Path) -> None:
    assert latest_state(tmp_path / "none") is None
    for step in (5, 100, 20):
        save_state(state_path(tmp_path, step), {"x": torch.zeros(1)}, {"step": step})
    (tmp_path / ".state-000000999.safetensors.tmp-1").write_bytes(b"half written")
    assert latest_state(tmp_path).name == "state-000000100.safetensors"
    prune_states(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("state-*")) == ["state-000000020.safetensors", "state-000000100.safetensors"]
    (tmp_path / "junk.safetensors").write_bytes(b"not a state")
    with pytest.raises(LatentmapError, match="junk.safetensors"):
        load_state(tmp_path / "junk.safetensors")


def test_metrics_resume_drops_lines_of_the_interrupted_run(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (10, 20, 30):
        log.log(step, {"loss": 1.0 / step})
    log.log(20, {"val/text_clip": 0.3})
    resumed = MetricsLog(tmp_path, resume_step=20, tensorboard=False)
    assert [r["step"] for r in resumed.read()] == [10, 20, 20]
    assert resumed.plot().stat().st_size > 1000


def test_metrics_plot_legends_hide_no_point(tmp_path: Path) -> None:
    """The legend once sat in a corner of the axes, over the newest point when the curve ended there."""
    log = MetricsLog(tmp_path, tensorboard=False)
    for step, loss in ((10, 0.5), (20, 0.2), (30, 0.1), (40, 0.9)):  # ends high: the upper right corner
        log.log(step, {"loss": loss, "val/loss": loss})
    for step, score in ((10, 0.3), (20, 0.6), (30, 0.7), (40, 0.05)):  # ends low: the lower right corner
        log.log(step, {"val/text_clip": score, "val/image_clip": score + 0.01})
    figure = log.figure()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend()
        box = legend.get_window_extent(renderer).padded(2)
        for line in ax.get_lines():
            xs, ys = line.get_data()
            for x, y in ax.transData.transform(list(zip(xs, ys))):
                assert not box.contains(x, y), f"{line.get_label()} point under the legend of {ax.get_title()!r}"
    assert log.plot().stat().st_size > 1000


def test_condition_scale_mismatch_names_the_recipe_key():
    from latentmap.training.validation import ValidationSet, condition_scale_mismatch

    g = torch.Generator().manual_seed(0)
    unit = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=-1)
    images = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=-1)
    short_text = ValidationSet(["p"] * 8, unit * 10.0, torch.zeros(32, 1, 4), images * 73.0)
    message = condition_scale_mismatch(short_text, normalize_cond=False)
    assert message is not None and "7.3x" in message and "prior.normalize_cond: true" in message
    assert condition_scale_mismatch(short_text, normalize_cond=True) is None
    alike = ValidationSet(["p"] * 8, unit * 9.0, torch.zeros(32, 1, 4), images * 11.0)  # CLIP ViT-B/32-like
    assert condition_scale_mismatch(alike, normalize_cond=False) is None
