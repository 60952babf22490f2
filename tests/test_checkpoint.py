"""Prior checkpoints: one safetensors file that rebuilds the prior exactly, atomic, with clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from latentmap.checkpoint import load_extra_tensors, load_prior, read_metadata, save_prior
from latentmap.errors import LatentmapError
from latentmap.prior import DiffusionPrior

TINY = dict(latent_dim=12, tokens=3, cond_dim=10, dim=16, depth=2, heads=2, dim_head=8, timesteps=20)
METADATA = {
    "encoder": {"name": "openclip:ViT-B-32/openai", "embed_dim": 10},
    "generator": {"name": "shapes", "resolution": 64},
    "space": {"name": "w3", "dim": 12, "repeats": [1, 1, 2]},
    "recipe": {"train": {"lr": 1e-4}},
}


@pytest.fixture()
def prior():
    torch.manual_seed(0)
    model = DiffusionPrior.create(**TINY, objective="noise", schedule="linear")
    model.set_latent_stats(torch.randn(3, 12), torch.rand(3, 12) + 0.5)
    return model


def test_round_trip_rebuilds_the_same_prior(tmp_path, prior):
    path = tmp_path / "ckpt.safetensors"
    online = {f"online.{k}": v + 1 for k, v in prior.state_dict().items() if k.startswith("net.")}
    save_prior(path, prior, metadata=METADATA, extra_tensors=online)
    loaded, metadata = load_prior(path)
    assert not loaded.training
    assert (loaded.shape, loaded.options) == (prior.shape, prior.options)
    for key, value in prior.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert metadata["format"] == "latentmap-prior" and metadata["version"] == 2
    assert metadata["prior"]["name"] == "diffusion"
    assert metadata["prior"]["options"]["objective"] == "noise" and metadata["prior"]["shape"]["tokens"] == 3
    for key, value in METADATA.items():
        assert metadata[key] == value
    cond = torch.randn(4, 10)
    a = prior.sample(cond, prior.sampling(steps=5, guidance=2.0), generator=torch.Generator().manual_seed(3))
    b = loaded.sample(cond, loaded.sampling(steps=5, guidance=2.0), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    extra = load_extra_tensors(path, prefix="online.")
    assert set(extra) == set(online)
    assert torch.equal(extra["online.net.time_embed.weight"], online["online.net.time_embed.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"], "no temporary file left behind"


def test_save_replaces_atomically(tmp_path, prior):
    path = tmp_path / "ckpt.safetensors"
    save_prior(path, prior, metadata={"note": "first"})
    save_prior(path, prior, metadata={"note": "second"})
    assert read_metadata(path)["note"] == "second"


def test_bad_metadata_and_name_clashes(tmp_path, prior):
    path = tmp_path / "x.safetensors"
    with pytest.raises(LatentmapError, match="'format' is reserved"):
        save_prior(path, prior, metadata={"format": "mine"})
    with pytest.raises(LatentmapError, match="'latent_mean'"):
        save_prior(path, prior, metadata={}, extra_tensors={"latent_mean": torch.zeros(1)})
    with pytest.raises(LatentmapError, match="not JSON-serialisable"):
        save_prior(path, prior, metadata={"tensor": torch.zeros(1)})
    assert not path.exists()


def test_files_that_are_not_priors_are_named(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other, metadata={"format": "something"})
    with pytest.raises(LatentmapError, match="other.safetensors.*not a latentmap prior"):
        load_prior(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not safetensors at all")
    with pytest.raises(LatentmapError, match="garbage.safetensors"):
        load_prior(garbage)
    with pytest.raises(LatentmapError, match="missing.safetensors.*does not exist"):
        load_prior(tmp_path / "missing.safetensors")


def test_tampered_tensors_are_named(tmp_path, prior):
    path = tmp_path / "ckpt.safetensors"
    save_prior(path, prior, metadata={})
    document = read_metadata(path)
    tensors = {k: v.clone() for k, v in prior.state_dict().items()}
    del tensors["net.layers.1.ff.w_out.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata={"latentmap": json.dumps(document)})
    with pytest.raises(LatentmapError, match=r"broken.safetensors.*missing tensor 'net\.layers\.1\.ff\.w_out\.weight'"):
        load_prior(broken)


def test_version_1_checkpoints_still_load(tmp_path, prior):
    """Files written before priors were pluggable hold the diffusion prior's flat config."""
    path = tmp_path / "v1.safetensors"
    flat = {**prior.config_dict()["shape"], **prior.config_dict()["options"]}
    document = {"format": "latentmap-prior", "version": 1, "prior": flat, "extra_tensors": []}
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, path,
              metadata={"latentmap": json.dumps(document)})
    loaded, metadata = load_prior(path)
    assert metadata["prior"]["name"] == "diffusion" and loaded.options == prior.options
    assert torch.equal(loaded.net.time_embed.weight, prior.net.time_embed.weight)


def test_a_prior_whose_plugin_is_missing_is_named(tmp_path, prior):
    path = tmp_path / "ckpt.safetensors"
    save_prior(path, prior, metadata={})
    document = read_metadata(path)
    document["prior"]["name"] = "not-installed"
    save_file({k: v.contiguous() for k, v in prior.state_dict().items()}, tmp_path / "other.safetensors",
              metadata={"latentmap": json.dumps(document)})
    with pytest.raises(LatentmapError, match=r"holds a 'not-installed' prior, but no installed plugin registers "
                                             r"prior 'not-installed' \(installed priors: diffusion"):
        load_prior(tmp_path / "other.safetensors")


def test_a_corrupted_checkpoint_is_refused(tmp_path, prior):
    """It once sampled with exit 0 and NaN scores."""
    path = tmp_path / "ckpt.safetensors"
    save_prior(path, prior, metadata={})
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(64)  # the last tensor's bytes zeroed
    path.write_bytes(bytes(data))
    with pytest.raises(LatentmapError, match=r"ckpt.safetensors' is corrupted: its tensors do not match"):
        load_prior(path)
