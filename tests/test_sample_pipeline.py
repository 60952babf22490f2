"""Loading a pipeline from a checkpoint: rebuild by identity, overrides, and refusing mismatches."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import helpers_colour
from latentmap.checkpoint import load_prior, save_prior
from latentmap.cli import cli
from latentmap.errors import LatentmapError
from latentmap.config import parse_pairs
from latentmap.options import resolve_device
from latentmap.pipeline import load_pipeline



def _rewrite(tmp_path, **changes):
    """A copy of the colour checkpoint with some metadata entries replaced."""
    helpers_colour.ensure_registered()
    prior, metadata = load_prior(helpers_colour.colour_checkpoint())
    kept = {k: v for k, v in metadata.items() if k not in ("format", "version", "prior", "extra_tensors")}
    path = tmp_path / "changed.safetensors"
    save_prior(path, prior, metadata={**kept, **changes})
    return path, metadata


def test_pipeline_rebuilds_generator_encoder_and_space():
    helpers_colour.ensure_registered()
    pipeline = load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")
    assert pipeline.generator.name == "colour-test" and pipeline.space.name == "w3"
    assert pipeline.encoder.embed_dim == 3
    assert pipeline.prior.training is False


def test_a_generator_that_differs_from_the_recorded_one_is_refused(tmp_path):
    _, metadata = load_prior(helpers_colour.colour_checkpoint())
    path, _ = _rewrite(tmp_path, generator={**metadata["generator"], "resolution": 16})
    with pytest.raises(LatentmapError, match=r"generator resolution differs: recorded 16, got 8"):
        load_pipeline(path)
    with pytest.warns(UserWarning, match="resolution"):
        pipeline = load_pipeline(path, check_identity=False)
    assert pipeline.generator.resolution == 8


def test_a_checkpoint_without_identities_is_refused(tmp_path):
    path, _ = _rewrite(tmp_path)
    prior, metadata = load_prior(path)
    bare = tmp_path / "bare.safetensors"
    save_prior(bare, prior, metadata={"space": metadata["space"]})
    with pytest.raises(LatentmapError, match=r"bare.safetensors' has no generator identity"):
        load_pipeline(bare)


def test_generator_options_override_recorded_ones(tmp_path):
    helpers_colour.ensure_registered()
    # asking for space w (same layers) is overridden by the checkpoint's space: it knows what it was trained on
    pipeline = load_pipeline(helpers_colour.colour_checkpoint(), generator_options={"space": "w"})
    assert pipeline.space.name == "w3"
    with pytest.raises(LatentmapError, match="has no option 'weights'"):
        load_pipeline(helpers_colour.colour_checkpoint(), generator_options={"weights": "x.pkl"})


def test_option_parsing_and_devices():
    assert parse_pairs(["path=/w/ffhq.pkl", "truncation=0.7", "flag=true"]) == {
        "path": "/w/ffhq.pkl", "truncation": 0.7, "flag": True}
    with pytest.raises(LatentmapError, match=r"bad --generator-option 'novalue': expected KEY=VALUE"):
        parse_pairs(["novalue"], flag="--generator-option")
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(LatentmapError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_cli_identity_mismatch_is_one_line(tmp_path):
    _, metadata = load_prior(helpers_colour.colour_checkpoint())
    path, _ = _rewrite(tmp_path, encoder={**metadata["encoder"], "embed_dim": 5})
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(path), "red", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "encoder embed_dim differs" in result.output and "--no-check-identity" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_keys_the_user_overrode_are_not_compared():
    from latentmap.identity import differences

    recorded = {"name": "g", "options": {"truncation": 1.0}, "truncation": 1.0, "weights_sha256": "aa" * 32}
    rebuilt = {"name": "g", "options": {"truncation": 0.7}, "truncation": 0.7, "weights_sha256": "bb" * 32}
    problems = differences("generator", recorded, rebuilt, overridden=frozenset({"truncation"}))
    assert problems == ["generator weights differ: recorded weights_sha256 aaaaaaaaaaaaaaaa..., got bbbbbbbbbbbbbbbb..."]
