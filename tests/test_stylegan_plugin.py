"""The stylegan plugin as the core sees it: registry, converter command, the Generator adapter, zoo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

import latentmap
from latentmap.errors import LatentmapError
from latentmap_stylegan.generator import StyleGANGenerator
from latentmap_stylegan.pickle_loader import load_network_pickle
from stylegan_pickles import discriminator_record, dump_nvidia_pickle, sg2_fixture, sg2_record


@pytest.fixture
def network_pkl(tmp_path, marker) -> Path:
    kwargs, weights, _ = sg2_fixture()
    contents = {"G": sg2_record(kwargs, weights, marker, scale=1.1), "D": discriminator_record(marker),
                "G_ema": sg2_record(kwargs, weights, marker)}
    return dump_nvidia_pickle(tmp_path / "sg2_tiny.pkl", contents)


@pytest.fixture
def converted(tmp_path, network_pkl) -> Path:
    from latentmap.cli import cli

    out = tmp_path / "converted" / "sg2_tiny.safetensors"
    result = CliRunner().invoke(cli, ["convert-stylegan", str(network_pkl), str(out)])
    assert result.exit_code == 0, result.output
    assert "stylegan2 32px, 8 style layers" in result.output
    return out


def test_generators_are_registered_through_the_plugin():
    from latentmap.plugins import get_plugin_manager

    names = set(get_plugin_manager().registry("generators"))
    assert {"stylegan2", "stylegan3", "stylegan2-ffhq", "stylegan3-lhq"} <= names


def test_converted_file_has_metadata_and_gives_identical_outputs(network_pkl, converted):
    with safe_open(str(converted), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "latentmap-stylegan" and metadata["class"] == "stylegan2"
    assert json.loads(metadata["init_kwargs"])["channel_max"] == 64
    from_pickle = latentmap.get_generator("stylegan2", weights=str(network_pkl), device="cpu")
    from_safetensors = latentmap.get_generator("stylegan2", weights=str(converted), device="cpu")
    _, _, cases = sg2_fixture()
    with torch.no_grad():
        a = from_pickle.network.synthesis(cases["ws_psi1"])
        b = from_safetensors.network.synthesis(cases["ws_psi1"])
    assert torch.equal(a, b)
    assert from_pickle.identity()["weights_sha256"] == from_safetensors.identity()["weights_sha256"]
    g = latentmap.get_generator("stylegan2", weights=str(network_pkl), network="G", device="cpu")
    assert g.identity()["weights_sha256"] != from_pickle.identity()["weights_sha256"]


def test_convert_command_bad_input_is_one_line_exit_2(tmp_path):
    from latentmap.cli import cli

    bad = tmp_path / "notes.pkl"
    bad.write_text("hello")
    result = CliRunner().invoke(cli, ["convert-stylegan", str(bad), str(tmp_path / "out.safetensors")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"Error: {bad} is not a Python pickle (expected an NVIDIA network .pkl, protocol 2 or later)"]


def test_a_foreign_safetensors_file_is_named(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(LatentmapError, match=r"not a converted StyleGAN network .*latentmap convert-stylegan"):
        latentmap.get_generator("stylegan2", weights=str(foreign), device="cpu")


def make_generator(converted: Path, **options) -> StyleGANGenerator:
    return latentmap.get_generator("stylegan2", weights=str(converted), device="cpu", **options)


def test_w_space_draws_are_seeded_mapped_z(converted):
    gen = make_generator(converted)
    assert (gen.space.name, gen.space.tokens, gen.space.layers, gen.space.dim) == ("w", 1, 8, 32)
    a = gen.sample_latents(5, generator=torch.Generator().manual_seed(7))
    b = gen.sample_latents(5, generator=torch.Generator().manual_seed(7))
    assert a.shape == (5, 1, 32) and torch.equal(a, b)
    z = torch.randn(5, 32, generator=torch.Generator().manual_seed(7))
    expected = gen.network.mapping(z)[:, 0]
    assert torch.allclose(a[:, 0], expected, atol=1e-6)


def test_w3_space_is_a_style_mix_of_three_independent_draws(converted):
    gen = make_generator(converted, space="w3")
    assert gen.space.repeats == (2, 2, 4)  # 8 layers, the (4, 4, 10) proportions
    latents = gen.sample_latents(6, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (6, 3, 32)
    assert (latents[:, 0] - latents[:, 1]).abs().amax(dim=1).min() > 1e-3  # tokens are independent w
    custom = make_generator(converted, space="w3", split="3,3,2")
    assert custom.space.repeats == (3, 3, 2)


def test_w3_synthesis_reproduces_nvidia_style_mixing(converted):
    """Tokens (a, a, b) with split (2, 2, 4) feed layers 0-3 from a and 4-7 from b: the fixture's ws_mixed."""
    gen = make_generator(converted, space="w3")
    _, _, cases = sg2_fixture()
    ws = cases["ws_psi1"]
    source = cases["mix_source_index"]
    tokens = torch.stack([ws[:, 0], ws[:, 0], ws[source, 0]], dim=1)
    with torch.no_grad():
        images = gen.synthesize(tokens)
    expected = cases["img_ws_mixed"].clamp(-1, 1)
    assert images.shape == (4, 3, 32, 32)
    assert (images - expected).abs().max() <= 2e-5 * cases["img_ws_mixed"].abs().max()


def test_w_plus_draws_repeat_one_w_per_layer(converted):
    gen = make_generator(converted, space="w+")
    latents = gen.sample_latents(3, generator=torch.Generator().manual_seed(1))
    assert latents.shape == (3, 8, 32)
    assert torch.equal(latents, latents[:, :1].expand_as(latents))


def test_truncation_moves_draws_toward_w_avg(converted):
    full = make_generator(converted)
    half = make_generator(converted, truncation=0.5)
    zero = make_generator(converted, truncation=0.0)
    w_avg = full.mean_latent()
    assert w_avg.shape == (1, 32)
    assert torch.equal(w_avg[0], full.network.mapping.w_avg)
    seed = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b, c = (g.sample_latents(4, generator=seed()) for g in (full, half, zero))
    assert torch.allclose(b - w_avg, 0.5 * (a - w_avg), atol=1e-6)
    assert torch.allclose(c, w_avg.expand_as(c))
    assert torch.allclose(full.truncate(a, 0.5), b, atol=1e-6)


def test_style_mix_helper_matches_nvidia_fixture(converted):
    gen = make_generator(converted)
    _, _, cases = sg2_fixture()
    ws = cases["ws_psi1"]
    mixed = gen.style_mix(ws, ws[cases["mix_source_index"]], int(cases["mix_crossover"]))
    assert torch.equal(mixed, cases["ws_mixed"])


def test_synthesize_clamps_to_unit_range_and_is_differentiable(converted):
    gen = make_generator(converted)
    latents = gen.sample_latents(2, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    images = gen.synthesize(latents)
    assert images.shape == (2, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    images.mean().backward()
    assert latents.grad.abs().sum() > 0


def test_wrong_latent_shapes_are_one_clear_line(converted):
    gen = make_generator(converted)
    with pytest.raises(LatentmapError, match=r"expects latents of shape \(B, 1, 32\) or \(B, 8, 32\), got \(2, 7, 32\)"):
        gen.synthesize(torch.zeros(2, 7, 32))


def test_weights_are_required_and_kind_is_checked(converted, tmp_path):
    with pytest.raises(LatentmapError, match=r"generator 'stylegan2' needs weights=PATH"):
        latentmap.get_generator("stylegan2")
    with pytest.raises(LatentmapError, match=r"holds a stylegan2 network; use generator 'stylegan2', not 'stylegan3'"):
        latentmap.get_generator("stylegan3", weights=str(converted), device="cpu")


def test_zoo_offline_and_missing_says_what_to_get_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LATENTMAP_OFFLINE", "1")
    monkeypatch.delenv("LATENTMAP_STYLEGAN2_FFHQ", raising=False)
    with pytest.raises(LatentmapError) as info:
        latentmap.get_generator("stylegan2-ffhq")
    message = str(info.value)
    assert "stylegan2-ffhq-1024x1024.pkl" in message and "\n" not in message
    assert "api.ngc.nvidia.com" in message and "LATENTMAP_STYLEGAN2_FFHQ" in message
    assert str(tmp_path / "cache") in message


def test_zoo_refuses_a_different_network_given_as_its_weights(converted):
    with pytest.raises(LatentmapError, match=r"is a 32-px network with 8 style layers, but 'stylegan2-ffhq' is 1024 px with 18"):
        latentmap.get_generator("stylegan2-ffhq", weights=str(converted), device="cpu")


def test_identity_names_weights_space_and_truncation(converted):
    gen = make_generator(converted, space="w3", truncation=0.7)
    identity = gen.identity()
    assert identity["space"] == {"name": "w3", "dim": 32, "repeats": [2, 2, 4]}
    assert identity["truncation"] == 0.7 and identity["kind"] == "stylegan2"
    assert len(identity["weights_sha256"]) == 64
    json.dumps(identity)  # must be JSON-ready for manifests and checkpoints


def test_options_are_declared_once_recorded_without_placement(converted):
    gen = make_generator(converted, space="w3", split="3,3,2", dtype="bfloat16")
    assert gen.space.repeats == (3, 3, 2) and gen.dtype_name == "bfloat16"
    assert gen.registry_options == {"weights": str(converted), "space": "w3", "split": [3, 3, 2], "truncation": 1.0,
                                    "network": "G_ema", "noise_mode": "const"}  # no device, no dtype
    assert "weights" not in gen.registry_identity_options  # where the file lies is not what it is


@pytest.mark.parametrize("name, options, message", [
    ("stylegan2", {"truncaton": 0.7}, r"generator 'stylegan2' has no option 'truncaton' \(did you mean 'truncation'\?\)"),
    ("stylegan2-ffhq", {"cachedir": "/x"}, r"generator 'stylegan2-ffhq' has no option 'cachedir' \(did you mean 'cache_dir'\?\)"),
    ("stylegan3", {"noise_mode": "loud"}, r"option 'noise_mode' must be one of const, random, none; got 'loud'"),
    ("stylegan2", {"dtype": "float64"}, r"option 'dtype' must be one of float32, bfloat16, float16; got 'float64'"),
    ("stylegan2", {"space": "w4"}, r"option 'space' must be one of w, w\+, w3; got 'w4'"),
    ("stylegan2", {"split": "4,x,4"}, r"option 'split'?\[1\]'? must be an integer, got 'x'"),
])
def test_bad_options_are_one_line_errors_before_any_weights_load(tmp_path, name, options, message):
    with pytest.raises(LatentmapError, match=message) as info:
        latentmap.get_generator(name, weights=str(tmp_path / "absent.pkl"), **options)
    assert "\n" not in str(info.value)


def test_pickle_loader_and_adapter_agree_on_layers(network_pkl):
    loaded = load_network_pickle(network_pkl)
    gen = StyleGANGenerator(loaded.network, name="x", device="cpu")
    assert gen.space.layers == loaded.network.num_ws == 8
