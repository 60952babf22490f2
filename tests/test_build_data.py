"""build-data in-process: determinism, exact statistics, resume and repair, refusals, full disk, CLI."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import helpers_tiny
import latentmap
from latentmap import atomic
from latentmap.data.builder import BuildConfig, build_dataset, latent_batches, plan_shards
from latentmap.data.manifest import load_manifest
from latentmap.data.seeds import shard_generator
from latentmap.data.shards import read_shard
from latentmap.errors import LatentmapError


@pytest.fixture(scope="module", autouse=True)
def tiny_plugin():
    helpers_tiny.ensure_registered()
    with helpers_tiny.single_thread():
        yield


def models(space: str = "w3"):
    return latentmap.get_generator("tiny-test", space=space), latentmap.get_encoder("tiny-test")


def build(out: Path, samples: int = 500, *, space: str = "w3", **options) -> object:
    generator, encoder = models(space)
    options.setdefault("shard_size", 200)
    options.setdefault("progress", False)
    return build_dataset(generator, encoder, BuildConfig(out=out, samples=samples, **options))


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


def all_pairs(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    manifest = load_manifest(root)
    parts = [read_shard(root / entry["file"]) for entry in manifest.shards]
    return torch.cat([p[0] for p in parts]).float(), torch.cat([p[1] for p in parts]).float()


def test_plan_and_latent_chunks_do_not_depend_on_batch_size():
    assert plan_shards(500, 200) == [200, 200, 100]
    assert plan_shards(400, 200) == [200, 200]
    generator, _ = models()
    a = torch.cat(list(latent_batches(generator, 300, shard_generator(0, 3), 7, chunk=64)))
    b = torch.cat(list(latent_batches(generator, 300, shard_generator(0, 3), 300, chunk=64)))
    assert a.shape == (300, 3, 8)
    assert torch.equal(a, b)
    assert [x.shape[0] for x in latent_batches(generator, 300, shard_generator(0, 3), 128, chunk=64)] == [128, 128, 44]
    other = torch.cat(list(latent_batches(generator, 300, shard_generator(0, 4), 7, chunk=64)))
    assert not torch.allclose(a, other)  # every shard has its own stream


def test_same_settings_give_byte_identical_shards_and_batch_size_changes_only_rounding(tmp_path):
    build(tmp_path / "a", batch_size=32, dtype="float32")
    build(tmp_path / "b", batch_size=32, dtype="float32")
    build(tmp_path / "c", batch_size=7, dtype="float32")
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    lat_a, emb_a = all_pairs(tmp_path / "a")
    lat_c, emb_c = all_pairs(tmp_path / "c")
    assert lat_a.shape == (500, 3, 8) and emb_a.shape == (500, 16)
    assert torch.equal(lat_a, lat_c)
    torch.testing.assert_close(emb_a, emb_c, rtol=1e-5, atol=1e-6)
    assert emb_a.std() > 0.1  # real, varied embeddings


def test_embeddings_are_the_encoder_of_the_synthesised_latents(tmp_path):
    build(tmp_path, samples=64, dtype="float32")
    latents, embeddings = all_pairs(tmp_path)
    generator, encoder = models()
    with torch.no_grad():
        expected = encoder.embed_image(generator.synthesize(latents))
    torch.testing.assert_close(embeddings, expected, rtol=1e-4, atol=1e-5)


def test_manifest_statistics_are_exact_over_the_stored_values(tmp_path):
    build(tmp_path, samples=500, dtype="float16")
    manifest = load_manifest(tmp_path)
    latents, embeddings = all_pairs(tmp_path)
    assert manifest.latent_shape == (3, 8) and manifest.embed_dim == 16 and manifest.samples == 500
    assert [s["count"] for s in manifest.shards] == [200, 200, 100]
    torch.testing.assert_close(manifest.latent_mean, latents.double().mean(0).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(manifest.latent_std, latents.double().std(0).float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(manifest.embed_mean, embeddings.double().mean(0).float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(manifest.embed_std, embeddings.double().std(0).float(), rtol=1e-6, atol=1e-7)
    raw = json.loads((tmp_path / "manifest.json").read_text())
    assert raw["generator"]["weights_sha256"] and raw["encoder"]["weights_sha256"]
    assert raw["space"] == {"name": "w3", "dim": 8, "repeats": [1, 1, 2]}


def test_corrupt_and_missing_shards_are_rebuilt_identically(tmp_path):
    build(tmp_path, batch_size=50)
    original = shard_bytes(tmp_path)
    corrupt = tmp_path / "shard-00001.safetensors"
    data = bytearray(corrupt.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the embeddings
    corrupt.write_bytes(bytes(data))
    (tmp_path / "shard-00002.safetensors").unlink()
    summary = build(tmp_path, batch_size=50)
    assert summary.built_shards == 2 and summary.reused_shards == 1
    assert [index for index, _ in summary.rebuilt] == [1]
    assert "checksum" in summary.rebuilt[0][1]
    assert shard_bytes(tmp_path) == original


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    build(reference, batch_size=40)
    out = tmp_path / "interrupted"
    import latentmap.data.builder as builder

    real = builder._compute_shard
    calls = {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "_compute_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(out, batch_size=40)
    monkeypatch.setattr(builder, "_compute_shard", real)
    with pytest.raises(LatentmapError, match="has not finished"):
        load_manifest(out)
    summary = build(out, batch_size=40)
    assert summary.reused_shards == 2 and summary.built_shards == 1
    assert shard_bytes(out) == shard_bytes(reference)
    ref, new = json.loads((reference / "manifest.json").read_text()), json.loads((out / "manifest.json").read_text())
    assert ref["shards"] == new["shards"] and ref["stats"] == new["stats"]


def test_a_larger_sample_count_extends_the_dataset(tmp_path):
    build(tmp_path / "grown", samples=250)
    summary = build(tmp_path / "grown", samples=600)
    assert summary.reused_shards == 1 and summary.built_shards == 2  # shard 1 grew from 50 to 200 samples
    build(tmp_path / "fresh", samples=600)
    assert shard_bytes(tmp_path / "grown") == shard_bytes(tmp_path / "fresh")
    assert load_manifest(tmp_path / "grown").samples == 600


@pytest.mark.parametrize(
    ("change", "named"),
    [({"seed": 1}, "seed=0, not 1"), ({"space": "w"}, "space.name='w3', not 'w'"), ({"dtype": "float32"}, "dtype")],
)
def test_refuses_an_out_folder_built_with_other_settings(tmp_path, change, named):
    build(tmp_path, samples=100)
    with pytest.raises(LatentmapError, match="new --out folder") as info:
        build(tmp_path, samples=100, **change)
    assert named in str(info.value) and str(tmp_path) in str(info.value)


def test_refuses_a_non_empty_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LatentmapError, match="not empty and holds no dataset"):
        build(tmp_path, samples=10)


def test_full_disk_leaves_no_partial_shard_and_the_rerun_completes(tmp_path, monkeypatch):
    real = atomic._write_all
    writes = {"n": 0}

    def disk_full_on_second_shard(fd, data):
        writes["n"] += 1
        if writes["n"] == 3:  # manifest, shard 0, then shard 1 fails halfway
            os.write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(atomic, "_write_all", disk_full_on_second_shard)
    with pytest.raises(LatentmapError, match="no space left on device while writing .*shard-00001"):
        build(tmp_path, samples=500)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["manifest.json", "shard-00000.safetensors"]  # no temporary, no partial shard 1
    monkeypatch.setattr(atomic, "_write_all", real)
    summary = build(tmp_path, samples=500)
    assert summary.reused_shards == 1 and load_manifest(tmp_path).samples == 500


def test_save_images_writes_previews_and_a_contact_sheet(tmp_path):
    build(tmp_path, samples=300, save_images=True)
    assert (tmp_path / "contact-sheet.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["shard-00000.png", "shard-00001.png"]
    from PIL import Image

    with Image.open(tmp_path / "contact-sheet.png") as sheet:
        pixels = torch.from_numpy(np.asarray(sheet.convert("L"), dtype=np.float32))
    assert pixels.std() > 5  # not a blank image


# -- command line ----------------------------------------------------------------------------


def run_cli(*args: str):
    from latentmap.cli import cli

    return CliRunner().invoke(cli, ["build-data", *args], catch_exceptions=False)


def test_cli_builds_from_flags_and_reports_a_summary(tmp_path):
    out = tmp_path / "data"
    result = run_cli("--generator", "tiny-test", "--encoder", "tiny-test:12", "--space", "w+", "--samples", "130",
                     "--shard-size", "50", "--batch-size", "16", "--dtype", "float32", "-G", "channels=4", "-q",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "130 samples in 3 shards" in result.output and "samples/s" in result.output
    manifest = load_manifest(out)
    assert manifest.latent_shape == (4, 8) and manifest.embed_dim == 12 and manifest.dtype == "float32"
    assert manifest.generator["options"]["channels"] == 4


def test_cli_reads_a_recipe_and_flags_override_it(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "generator: {name: tiny-test, space: w}\n"
        "encoder: {name: tiny-test}\n"
        "data: {dir: data/tiny, samples: 90, shard_size: 40, batch_size: 8, seed: 3, dtype: float32, device: cpu}\n"
        "train: {out: runs/tiny}\n"
    )
    result = run_cli(str(recipe), "--samples", "100", "-q")
    assert result.exit_code == 0, result.output
    manifest = load_manifest(tmp_path / "data" / "tiny")  # relative to the recipe's folder
    assert manifest.samples == 100 and manifest.seed == 3 and manifest.shard_size == 40
    assert manifest.space["name"] == "w"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--generator", "no-such-gan", "--encoder", "tiny-test", "--samples", "5"], "unknown generator 'no-such-gan'"),
        (["--generator", "tiny-test", "--encoder", "nope:x", "--samples", "5"], "unknown encoder 'nope'"),
        (["--generator", "tiny-test", "--encoder", "tiny-test", "--space", "w9", "--samples", "5"], "unknown space 'w9'"),
        (["--generator", "tiny-test", "--encoder", "tiny-test", "--samples", "5", "-G", "truncation"], "KEY=VALUE"),
        (["--generator", "tiny-test", "--encoder", "tiny-test"], "needs --samples"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, args, message):
    result = run_cli(*args, "--out", str(tmp_path / "d"), "-q")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_defaults_and_dtype_choices_are_the_recipe_data_sections(tmp_path, monkeypatch):
    import dataclasses

    from latentmap.commands import build_data as build_data_command
    from latentmap.data import builder
    from latentmap.recipe import DataSection, EncoderSection

    given = []
    monkeypatch.setattr(builder, "build_data", lambda **arguments: given.append(arguments) or built)
    built = build(tmp_path / "small", 10)
    result = run_cli("--generator", "tiny-test", "--samples", "5", "--out", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert "10 samples in 1 shard," in result.output  # the summary of what build_data returned (one shard: singular)
    [arguments] = given
    assert arguments.pop("data") == DataSection(samples=5, dir=tmp_path / "d")  # all else the recipe's defaults
    assert arguments == {"generator": "tiny-test", "encoder": EncoderSection().name, "generator_options": {},
                         "encoder_options": {}, "save_images": False, "progress": True}

    dtype = next(f for f in dataclasses.fields(DataSection) if f.name == "dtype")
    params = {p.name: p for p in build_data_command.command.params}
    assert tuple(params["dtype"].type.choices) == tuple(dtype.metadata["choices"])
    defaults, config = DataSection(), BuildConfig(out=tmp_path, samples=1)
    assert (config.batch_size, config.shard_size, config.seed, config.dtype) == (
        defaults.batch_size, defaults.shard_size, defaults.seed, defaults.dtype)
