"""The clip2latent importer: strict key mapping, config inference, weight choice, CLI, no code execution."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from latentmap.checkpoint import load_extra_tensors, load_prior
from latentmap.cli import cli
from latentmap.errors import LatentmapError
from latentmap.interfaces import PriorShape
from latentmap.prior import DiffusionOptions

PAPER = (PriorShape(tokens=1, latent_dim=512, cond_dim=512), DiffusionOptions())
from latentmap.prior.clip2latent import (
    DOUBLE_NORM_PREPROCESS,
    convert_state_dict,
    import_clip2latent,
    infer_config,
    read_checkpoint,
    select_weights,
)
from latentmap.prior.schedule import make_betas

FIXTURES = Path(__file__).parent / "fixtures" / "prior"
CKPT = FIXTURES / "clip2latent_tiny.ckpt"


@pytest.fixture(scope="module")
def ckpt_state():
    return torch.load(CKPT, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def mid_state():
    """A state dict shaped exactly like a real clip2latent `mid` w checkpoint, with no real memory behind it."""
    shapes = json.loads((FIXTURES / "ckpt_keys_mid_w.json").read_text())
    zero = torch.zeros(1)
    state = {key: zero.expand(*shape) for key, shape in shapes.items()}
    for key in state:
        if key.endswith(".betas"):
            state[key] = make_betas("cosine", 1000).float()
    return state


def test_cli_import_round_trip_keeps_ema_numbers(tmp_path, ckpt_state):
    out = tmp_path / "tiny.safetensors"
    result = CliRunner().invoke(cli, ["import-clip2latent", str(CKPT), "--out", str(out)])
    assert result.exit_code == 0, result.output
    prior, metadata = load_prior(out)
    cases = load_file(FIXTURES / "tiny_w" / "cases.safetensors")
    with torch.no_grad():
        x0 = prior.net(cases["x_t"][:, None], cases["times"], cases["c2l_embed"], torch.ones(4, dtype=torch.bool))
    assert (x0.reshape(4, 32) - cases["c2l_net_out_cond"]).abs().max() <= 1e-5
    # stored EMA buffers are kept bit for bit (they drifted from the recomputed schedule)
    ema_betas = ckpt_state["ema_diffusion_prior.ema_model.betas"]
    assert torch.equal(prior.betas, ema_betas)
    assert not torch.equal(ema_betas, make_betas("cosine", 100).float()), "fixture EMA buffers carry drift"
    assert torch.equal(prior.latent_mean.reshape(-1), ckpt_state["ema_diffusion_prior.ema_model.latent_mean"])
    assert not torch.equal(prior.latent_mean, prior.latent_std), "mean and std stay separate (quirk 6)"
    assert metadata["encoder"]["image_conditions_preprocess"] == DOUBLE_NORM_PREPROCESS
    assert "preprocess" not in metadata["encoder"]  # text sampling rebuilds the default encoder
    assert metadata["encoder"]["conditions"] == "raw"
    assert metadata["encoder"]["name"] == "openclip:ViT-B-32/openai"
    assert metadata["generator"]["name"] == "stylegan2-ffhq"
    assert metadata["space"] == {"name": "w", "dim": 32, "repeats": [18]}
    assert metadata["imported_from"]["step"] == 4000.0
    online = load_extra_tensors(out, prefix="online.")
    key = "net.layers.0.attn.to_q.weight"
    assert torch.equal(
        online[f"online.{key}"],
        ckpt_state["diffusion_prior.net.causal_transformer.layers.0.0.to_q.weight"],
    )


def test_online_weights_option_and_identities(ckpt_state, tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model:\n  diffusion:\n    cond_drop_prob: 0.2\n    predict_x_start: true\ndata:\n  latent_repeats: [16]\n")
    prior, metadata, extra = import_clip2latent(
        CKPT, config=yaml_path, weights="online", generator="stylegan3-lhq", encoder="openclip:ViT-B-32/openai"
    )
    online = ckpt_state["diffusion_prior.net.causal_transformer.layers.1.1.5.weight"]
    ema = ckpt_state["ema_diffusion_prior.ema_model.net.causal_transformer.layers.1.1.5.weight"]
    assert not torch.equal(online, ema)
    assert torch.equal(prior.net.layers[1].ff.w_out.weight.detach(), online)
    assert torch.equal(extra["ema.net.layers.1.ff.w_out.weight"], ema)
    assert metadata["generator"]["name"] == "stylegan3-lhq"
    assert metadata["space"]["repeats"] == [16]


def test_latent_repeats_must_match_latent_count(tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("data:\n  latent_repeats: [4, 4, 10]\n")
    with pytest.raises(LatentmapError, match=r"latent_repeats \[4, 4, 10\] has 3 entries but the checkpoint has 1"):
        import_clip2latent(CKPT, config=yaml_path)


def test_mid_config_is_inferred_from_shapes(mid_state):
    state = select_weights(mid_state, "ema")
    config = infer_config(state)
    assert config == PAPER  # the paper's config: dim 512, depth 12, heads 12, dim_head 64, 1000 steps
    converted = convert_state_dict(state, config)
    assert len(converted) == 139
    assert converted["net.learned_query"].shape == (1, 512)
    assert converted["latent_mean"].shape == (1, 512)
    assert converted["net.layers.11.ff.w_in.weight"].shape == (4096, 512)


def test_missing_key_is_named(mid_state):
    state = dict(select_weights(mid_state, "ema"))
    del state["net.causal_transformer.layers.7.0.to_kv.weight"]
    with pytest.raises(LatentmapError, match=r"net\.layers\.7\.attn\.to_kv\.weight"):
        convert_state_dict(state, PAPER)


def test_unexpected_key_is_named(mid_state):
    state = dict(select_weights(mid_state, "ema"))
    state["net.causal_transformer.layers.3.0.to_q.bias"] = torch.zeros(768)
    with pytest.raises(LatentmapError, match=r"unexpected key 'net\.causal_transformer\.layers\.3\.0\.to_q\.bias'"):
        convert_state_dict(state, PAPER)
    trainer_state = dict(mid_state)
    trainer_state["optimizer.lr"] = torch.zeros(1)
    with pytest.raises(LatentmapError, match=r"unexpected key 'optimizer\.lr'"):
        select_weights(trainer_state, "ema")


def test_nonzero_layernorm_bias_and_wrong_shape_are_errors(mid_state):
    state = dict(select_weights(mid_state, "ema"))
    state["net.causal_transformer.norm.beta"] = torch.ones(512)
    with pytest.raises(LatentmapError, match=r"'net\.causal_transformer\.norm\.beta' is not zero"):
        convert_state_dict(state, PAPER)
    state = dict(select_weights(mid_state, "ema"))
    state["latent_std"] = torch.ones(3, 512)
    with pytest.raises(LatentmapError, match="latent_std"):
        convert_state_dict(state, PAPER)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/latentmap_importer_pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_never_executed(tmp_path):
    marker = Path("/tmp/latentmap_importer_pwned")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": _Exploit()}))
    with pytest.raises(LatentmapError, match="evil.ckpt"):
        read_checkpoint(bad)
    assert not marker.exists()


def test_cli_error_names_the_file(tmp_path):
    bad = tmp_path / "not_a_ckpt.ckpt"
    torch.save({"weights": torch.zeros(2)}, bad)
    result = CliRunner().invoke(cli, ["import-clip2latent", str(bad), "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2
    assert "not_a_ckpt.ckpt" in result.output and "state_dict" in result.output


# ----------------------------------------------------------------------------------------------
# Issue 15: a safe torch, no retry hint, the yaml's embedding scales.


def test_pyproject_requires_a_torch_without_the_weights_only_bypass():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    torch_req = next(Requirement(dep) for dep in project["dependencies"] if Requirement(dep).name == "torch")
    assert not torch_req.specifier.contains("2.5.1") and torch_req.specifier.contains("2.6.0")


def test_an_older_torch_is_refused_in_one_line(monkeypatch):
    from torch.torch_version import TorchVersion

    monkeypatch.setattr(torch, "__version__", TorchVersion("2.5.1"))
    with pytest.raises(LatentmapError, match=r"refusing to read clip2latent checkpoint .*torch 2\.5\.1.*CVE-2025-32434.*torch >= 2\.6"):
        read_checkpoint(CKPT)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_refusal_says_latentmap_never_unpickles_code(tmp_path):
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": _Exploit()}))
    result = CliRunner().invoke(cli, ["import-clip2latent", str(bad), "--out", str(tmp_path / "o.safetensors")])
    assert result.exit_code == 2
    message = result.output.strip().splitlines()[-1]
    assert "evil.ckpt" in message and "never retries with weights_only=False" in message
    assert "will likely succeed" not in result.output and "Re-running" not in result.output


def test_corrupt_checkpoint_is_one_line_without_the_retry_hint(tmp_path):
    bad = tmp_path / "junk.ckpt"
    bad.write_bytes(bytes(100))
    with pytest.raises(LatentmapError) as info:
        read_checkpoint(bad)
    assert "junk.ckpt" in str(info.value) and "\n" not in str(info.value)
    assert "will likely succeed" not in str(info.value)


def test_text_embed_scale_other_than_one_is_refused(tmp_path):
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model:\n  diffusion:\n    text_embed_scale: 2.0\n")
    with pytest.raises(LatentmapError, match=r"text_embed_scale is 2\.0; latentmap imports only models trained with 1\.0"):
        import_clip2latent(CKPT, config=yaml_path)
    yaml_path.write_text("model:\n  diffusion:\n    image_embed_scale: .nan\n")
    with pytest.raises(LatentmapError, match=r"image_embed_scale is nan, expected a positive number"):
        import_clip2latent(CKPT, config=yaml_path)


def test_image_embed_scale_is_honoured(tmp_path, ckpt_state):
    """clip2latent's network sees z-scored latents times image_embed_scale; so does the imported prior."""
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("model:\n  diffusion:\n    image_embed_scale: 4.0\n    text_embed_scale: 1.0\n")
    prior, metadata, extra = import_clip2latent(CKPT, config=yaml_path)
    mean = ckpt_state["ema_diffusion_prior.ema_model.latent_mean"].reshape(1, -1)
    std = ckpt_state["ema_diffusion_prior.ema_model.latent_std"].reshape(1, -1)
    latents = torch.randn(3, 1, mean.shape[-1], generator=torch.Generator().manual_seed(0))
    assert torch.allclose(prior.normalize_latents(latents), (latents - mean) / std * 4.0, atol=1e-5)
    online_std = ckpt_state["diffusion_prior.latent_std"].reshape(1, -1)
    assert torch.allclose(extra["online.latent_std"], online_std / 4.0)
    assert metadata["imported_from"]["image_embed_scale"] == 4.0
    unscaled, _, _ = import_clip2latent(CKPT)
    assert torch.equal(unscaled.latent_std, std)  # 1.0: the stored buffer, bit for bit
