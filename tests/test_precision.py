"""The precision vocabulary and option: one set of names (older spellings read as aliases) for every option,
autocast around a real (tiny) StyleGAN2 and open_clip model, refusals, recording in datasets, datasets built
before the names were unified."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import helpers_tiny
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import latentmap
from latentmap import precision as precision_module
from latentmap.cli import cli
from latentmap.data.builder import BuildConfig, build_dataset
from latentmap.data.manifest import load_manifest
from latentmap.errors import LatentmapError
from latentmap.precision import ALIASES, PRECISIONS, autocast, canonical_precision, check_precision, resolve_precision
from latentmap.precision_models import PrecisionEncoder, PrecisionGenerator, with_precision

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


def precision_fields():
    """Every option that holds a precision: (where, dataclass field)."""
    from latentmap.prior.diffusion import DiffusionSampling
    from latentmap.recipe import DataSection, TrainSection

    return {name: next(f for f in dataclasses.fields(cls) if f.name == "precision")
            for name, cls in (("data", DataSection), ("train", TrainSection), ("sampling", DiffusionSampling))}


def test_every_precision_option_uses_the_one_vocabulary_and_its_aliases():
    assert PRECISIONS == ("float32", "bfloat16", "float16")
    assert ALIASES == {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    choices = {name: f.metadata["choices"] for name, f in precision_fields().items()}
    assert choices == {"data": PRECISIONS, "train": ("auto", "float32", "bfloat16"),
                       "sampling": ("float32", "bfloat16")}
    assert all(f.metadata["aliases"] == ALIASES for f in precision_fields().values())
    assert latentmap.recipe.DataSection().precision == "float32"


def test_older_spellings_are_read_as_the_full_names_and_wrong_ones_name_the_key_and_choices(tmp_path):
    from latentmap.recipe import load_recipe

    recipe = tmp_path / "old.yaml"
    recipe.write_text("generator: {name: stylegan2-ffhq}\ndata: {dir: data, precision: bf16}\ntrain: {out: runs, precision: bf16}\n"
                      "validation: {sampling: {precision: fp32}}\nsample: {sampling: {precision: bf16}}\n")
    loaded = load_recipe(recipe)
    assert (loaded.data.precision, loaded.train.precision) == ("bfloat16", "bfloat16")
    assert loaded.validation.sampling.precision == "float32" and loaded.sample.sampling.precision == "bfloat16"
    assert loaded.to_dict()["train"]["precision"] == "bfloat16"  # stored again in the one spelling
    recipe.write_text("generator: {name: stylegan2-ffhq}\ndata: {dir: data}\ntrain: {out: runs, precision: float16}\n")
    with pytest.raises(LatentmapError) as error:
        load_recipe(recipe)
    assert str(error.value) == (f"{recipe}: train.precision must be one of auto, float32, bfloat16 (or fp32, bf16); "
                                "got 'float16'")
    assert canonical_precision("fp16") == "float16"
    with pytest.raises(LatentmapError, match=r"^data.precision must be one of float32, bfloat16, float16 "
                                             r"\(or fp32, bf16, fp16\); got 'half'$"):
        canonical_precision("half", key="data.precision")


def test_autocast_and_resolution_speak_the_vocabulary(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    x = torch.randn(4, 4)
    for name in ("bfloat16", "bf16"):
        with autocast(name, "cpu"):
            assert (x @ x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ x).dtype == torch.float32
    assert resolve_precision("auto", "cpu") == "float32"  # auto picks bfloat16 only on a GPU that has it
    assert resolve_precision("bf16", "cpu", key="train.precision") == "bfloat16"
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset())
    with pytest.raises(LatentmapError, match=r"^train.precision: precision bfloat16 needs a CPU with native bfloat16"):
        resolve_precision("bfloat16", "cpu", key="train.precision")


def test_a_checkpoint_recorded_with_the_older_sampling_spelling_still_loads():
    import helpers_colour

    helpers_colour.ensure_registered()
    pipeline = latentmap.load_pipeline(str(helpers_colour.colour_checkpoint()), device="cpu")
    stored = pipeline.metadata.setdefault("recipe", {}).setdefault("sample", {})
    stored["sampling"] = {**(stored.get("sampling") or {}), "precision": "bf16"}
    assert pipeline.defaults().sampling.precision == "bfloat16"
    assert pipeline.settings(precision="fp32").sampling.precision == "float32"
    with pytest.raises(LatentmapError, match=r"precision' must be one of float32, bfloat16 \(or fp32, bf16\); got 'fp16'"):
        pipeline.settings(precision="fp16", where="command line")


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


def test_a_dataset_built_before_the_names_were_unified_is_reused_whatever_the_spelling(tmp_path, monkeypatch):
    """data.precision kept its names (float32, bfloat16, float16): a dataset's manifest and build key are what
    build-data wrote before, and the older short spellings (fp32, bf16) resume it instead of rebuilding it."""
    helpers_tiny.ensure_registered()
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx512_bf16"}))  # bf16 runs on any CPU
    generator, encoder = latentmap.get_generator("tiny-test"), latentmap.get_encoder("tiny-test")
    for name, spellings in (("float32", ("fp32", "float32")), ("bfloat16", ("bf16", "bfloat16"))):
        out = tmp_path / name
        config = dict(out=out, samples=40, shard_size=20, progress=False)
        build_dataset(generator, encoder, BuildConfig(**config, precision=name))
        manifest = json.loads((out / "manifest.json").read_text())
        # what build-data wrote before: no "precision" for float32 (older datasets' key), the full name otherwise
        assert manifest.get("precision", "<unset>") == ("<unset>" if name == "float32" else name)
        shards = {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.name.startswith("shard")}
        assert len(shards) == 2
        for spelling in spellings:
            summary = build_dataset(generator, encoder, BuildConfig(**config, precision=spelling))
            assert (summary.built_shards, summary.reused_shards) == (0, 2), spelling
        assert {path.name: path.stat().st_mtime_ns for path in out.iterdir() if path.name.startswith("shard")} == shards
        rewritten = json.loads((out / "manifest.json").read_text())
        assert {**rewritten, "build": None} == {**manifest, "build": None}  # only the last run's timing differs
    result = CliRunner().invoke(cli, ["build-data", "--generator", "tiny-test", "--encoder", "tiny-test", "--samples",
                                      "40", "--shard-size", "20", "--out", str(tmp_path / "bfloat16"), "--device", "cpu",
                                      "--precision", "bf16", "-q"])
    assert result.exit_code == 0, result.output
    assert "built 0 shards" in result.output and "reused 2 complete shards" in result.output


def test_cli_precision_flags_name_the_accepted_values():
    helpers_tiny.ensure_registered()
    for command in (["build-data", "--generator", "tiny-test", "--samples", "1", "--out", "unused"],
                    ["sample", "--checkpoint", "unused.safetensors", "red"]):
        result = CliRunner().invoke(cli, [*command, "--precision", "half"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert ("Invalid value for '--precision': must be one of float32, bfloat16, float16 (or fp32, bf16, fp16); "
                "got 'half'") in result.output
