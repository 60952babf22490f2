"""build-data's batch-size check: a batch that will not fit is refused before anything is written."""

from __future__ import annotations

import helpers_tiny
import pytest
import torch

import latentmap
from latentmap.data import builder, memory
from latentmap.data.builder import BuildConfig, build_dataset
from latentmap.data.memory import (
    GIB,
    Footprint,
    check_batch_fits,
    largest_batch,
    measure_footprint,
)
from latentmap.errors import LatentmapError


@pytest.fixture(autouse=True)
def tiny_plugin():
    helpers_tiny.ensure_registered()
    with helpers_tiny.single_thread():
        yield


def models():
    return latentmap.get_generator("tiny-test"), latentmap.get_encoder("tiny-test")


def test_the_largest_batch_that_fits_keeps_headroom():
    footprint = Footprint(fixed=2 * GIB, per_sample=GIB // 2, device="cpu")
    # 2 GiB in use now, 4 GiB more available: 2 + 0.85 * 4 = 5.4 GiB for 2 GiB fixed + 0.5 GiB per sample -> 6
    assert largest_batch(footprint, available=4 * GIB, current=2 * GIB) == 6
    check_batch_fits(6, footprint, available=4 * GIB, current=2 * GIB, resolution=1024)  # fits: no error
    with pytest.raises(LatentmapError) as error:
        check_batch_fits(64, footprint, available=4 * GIB, current=2 * GIB, resolution=1024)
    assert str(error.value) == (
        "build-data: batch size 64 will not fit: at 1024 px it needs about 32.0 GiB more (0.50 GiB per sample, "
        "measured) but 4.0 GiB of RAM are available; use --batch-size 6 or less (data.batch_size)")


def test_when_not_even_one_sample_fits_the_advice_is_to_free_memory():
    footprint = Footprint(fixed=10 * GIB, per_sample=GIB, device="cuda:0")
    with pytest.raises(LatentmapError, match="of GPU memory are available; free memory or use a device with more$"):
        check_batch_fits(2, footprint, available=GIB, current=0, resolution=256)


def test_build_refuses_a_batch_over_a_fake_memory_limit_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "measure_footprint",
                        lambda *args: Footprint(fixed=GIB, per_sample=GIB // 4, device="cpu"))
    monkeypatch.setattr(builder, "available_bytes", lambda device: 2 * GIB)
    monkeypatch.setattr(builder, "current_bytes", lambda device: GIB)
    generator, encoder = models()
    out = tmp_path / "data"
    with pytest.raises(LatentmapError, match=r"^build-data: batch size 64 will not fit.*use --batch-size 6 or less"):
        build_dataset(generator, encoder, BuildConfig(out=out, samples=100, batch_size=64, progress=False))
    assert not out.exists()
    summary = build_dataset(generator, encoder, BuildConfig(out=out, samples=100, batch_size=6, shard_size=50,
                                                            progress=False))
    assert summary.built_samples == 100


def test_the_probe_measures_real_peaks_and_leaves_the_dataset_unchanged(tmp_path, monkeypatch):
    generator, encoder = models()
    if not memory.can_measure("cpu"):
        pytest.skip("peak memory cannot be measured on this system")
    footprint = measure_footprint(generator, encoder, torch.Generator().manual_seed(0))
    assert footprint is not None and footprint.fixed > 10 * 2**20  # at least the interpreter and torch
    assert footprint.per_sample >= 0
    # a build with the probe (batch 8) and one without it write the same bytes
    build_dataset(generator, encoder, BuildConfig(out=tmp_path / "a", samples=60, batch_size=8, shard_size=30,
                                                  progress=False))
    build_dataset(generator, encoder, BuildConfig(out=tmp_path / "b", samples=60, batch_size=8, shard_size=30,
                                                  progress=False, check_memory=False))
    for name in ("shard-00000.safetensors", "shard-00001.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
