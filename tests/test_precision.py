"""The precision option: autocast around a real (tiny) StyleGAN2 and open_clip model, refusals, recording in datasets."""

from __future__ import annotations

import json
from pathlib import Path

import helpers_tiny
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import latentmap
from latentmap.cli import cli
from latentmap.data import precision as precision_module
from latentmap.data.builder import BuildConfig, build_dataset
from latentmap.data.manifest import load_manifest
from latentmap.data.precision import (
    PRECISIONS,
    PrecisionEncoder,
    PrecisionGenerator,
    check_precision,
    with_precision,
)
from latentmap.errors import LatentmapError

FIXTURE = Path(__file__).parent / "fixtures" / "stylegan" / "sg2_tiny"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 4},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# The cosine between bfloat16 and float32 image embeddings that docs/data.md states for this check.
BF16_MIN_COSINE = 0.99
NATIVE_BF16 = precision_module.precision_problem("bfloat16", "cpu") is None


@pytest.fixture(autouse=True)
def one_thread():
    with helpers_tiny.single_thread():
        yield


@pytest.fixture()
def tiny_models(tmp_path):
    """The tiny StyleGAN2 fixture (32 px) and a tiny random open_clip ViT, both on the CPU."""
    config = json.loads((FIXTURE / "config.json").read_text())
    weights = tmp_path / "sg2_tiny.safetensors"
    save_file(load_file(FIXTURE / "weights.safetensors"), weights, metadata={
        "format": "latentmap-stylegan", "format_version": "1", "class": "stylegan2",
        "init_kwargs": json.dumps(config["init_kwargs"]), "source": "tests", "network": "G_ema"})
    (tmp_path / "clip.json").write_text(json.dumps(TINY_CLIP))
    generator = latentmap.get_generator("stylegan2", weights=str(weights), device="cpu")
    encoder = latentmap.get_encoder(f"openclip:{tmp_path / 'clip.json'}", device="cpu")
    return generator, encoder


def test_choices_are_the_recipes():
    assert PRECISIONS == ("float32", "bfloat16", "float16")
    assert latentmap.recipe.DataSection().precision == "float32"


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bfloat16")
def test_bf16_embeddings_are_close_to_float32_and_really_bf16(tiny_models):
    generator, encoder = tiny_models
    latents = generator.sample_latents(8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        full = encoder.embed_image(generator.synthesize(latents))
        half_generator, half_encoder = with_precision(generator, encoder, "bfloat16")
        images = half_generator.synthesize(latents)
        half = half_encoder.embed_image(images)
    assert isinstance(half_generator, PrecisionGenerator) and isinstance(half_encoder, PrecisionEncoder)
    assert images.dtype == torch.float32 and half.dtype == torch.float32  # outputs come back float32
    cosine = F.cosine_similarity(full, half, dim=-1)
    assert cosine.min().item() > BF16_MIN_COSINE
    assert not torch.equal(full, half)  # autocast really ran in bfloat16
    # the wrapper passes everything else through: identity, latents, a plugin's own helpers
    assert half_generator.identity() == generator.identity()
    assert half_encoder.identity() == encoder.identity()
    assert torch.equal(half_generator.mean_latent(), generator.mean_latent())
    assert half_generator.truncate(latents, 0.5).shape == latents.shape


def test_float32_wraps_nothing(tiny_models):
    generator, encoder = tiny_models
    assert with_precision(generator, encoder, "float32") == (generator, encoder)


def test_a_precision_the_cpu_lacks_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(LatentmapError) as error:
        check_precision("float16", "cpu")
    message = str(error.value)
    assert "\n" not in message
    assert message == ("--precision: precision float16 needs a CPU with native float16 (avx512_fp16/amx_fp16) or a "
                       "GPU; this CPU has none: use bfloat16 or float32")
    with pytest.raises(LatentmapError, match="bfloat16 needs a CPU with native bfloat16.*use float32"):
        check_precision("bfloat16", "cpu")
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    check_precision("bfloat16", "cpu")  # native: accepted
    with pytest.raises(LatentmapError, match="unknown precision 'half'"):
        check_precision("half", "cpu")


def test_build_data_refuses_before_writing_anything(tmp_path, monkeypatch):
    helpers_tiny.ensure_registered()
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset())
    generator, encoder = latentmap.get_generator("tiny-test"), latentmap.get_encoder("tiny-test")
    with pytest.raises(LatentmapError, match=r"^data.precision \(--precision\): precision float16 needs"):
        build_dataset(generator, encoder, BuildConfig(out=tmp_path / "data", samples=10, precision="float16",
                                                      progress=False))
    assert not (tmp_path / "data").exists()


def test_cli_flag_reaches_the_build_and_refuses_in_one_line(tmp_path, monkeypatch):
    helpers_tiny.ensure_registered()
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset())
    result = CliRunner().invoke(cli, ["build-data", "--generator", "tiny-test", "--encoder", "tiny-test", "--samples",
                                      "10", "--out", str(tmp_path / "d"), "--device", "cpu", "--precision", "bfloat16"])
    assert result.exit_code != 0
    assert "precision bfloat16 needs a CPU with native bfloat16" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bfloat16")
def test_precision_is_recorded_and_a_resume_in_another_precision_is_refused(tmp_path):
    helpers_tiny.ensure_registered()
    generator, encoder = latentmap.get_generator("tiny-test"), latentmap.get_encoder("tiny-test")
    out = tmp_path / "data"
    config = dict(out=out, samples=40, shard_size=20, progress=False)
    build_dataset(generator, encoder, BuildConfig(**config, precision="bfloat16"))
    assert load_manifest(out).precision == "bfloat16"
    with pytest.raises(LatentmapError, match="built with precision='bfloat16', not 'float32'"):
        build_dataset(generator, encoder, BuildConfig(**config))
    # a float32 dataset records nothing new: its manifest (and build key) is what it was before the option existed
    build_dataset(generator, encoder, BuildConfig(**{**config, "out": tmp_path / "f32"}))
    assert "precision" not in json.loads((tmp_path / "f32" / "manifest.json").read_text())


def test_sample_flag_refuses_in_one_line_and_runs_bf16_where_native(tmp_path, monkeypatch):
    import helpers_colour

    helpers_colour.ensure_registered()
    checkpoint = str(helpers_colour.colour_checkpoint())
    base = ["sample", "--checkpoint", checkpoint, "red", "--candidates", "2", "--keep", "1", "--device", "cpu", "-q"]
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset())
    refused = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "refused"), "--precision", "float16"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "--precision: precision float16 needs a CPU with native float16" in refused.output
    assert not (tmp_path / "refused" / "samples.jsonl").exists()
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    result = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bf16"), "--precision", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bf16" / "samples.jsonl").is_file()
