"""Parity with DALLE2-pytorch 0.2.38 / clip2latent on the tiny fixture models (tests/fixtures/prior).

Every model is loaded through the clip2latent importer's key mapping; every expected tensor was
produced by the original code (see tests/fixtures/prior/README.md). Tolerance 1e-5 absolute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentmap.edit import truncate
from latentmap.prior.clip2latent import import_clip2latent, prior_from_dalle2_state
from latentmap.prior.network import relative_position_buckets
from latentmap.prior.samplers import RecordedNoise
from latentmap.prior.schedule import BUFFER_NAMES, clip2latent_respace, make_schedule

FIXTURES = Path(__file__).parent / "fixtures" / "prior"
ATOL = 1e-5


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL) -> None:
    actual = actual.detach().reshape(expected.shape).to(expected.dtype)
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


@pytest.fixture(scope="module")
def tiny_w():
    torch.set_num_threads(1)
    weights = load_file(FIXTURES / "tiny_w" / "weights.safetensors")
    prior = prior_from_dalle2_state(weights, require_latent_stats=False)
    return prior, load_file(FIXTURES / "tiny_w" / "cases.safetensors")


@pytest.fixture(scope="module")
def tiny_w3():
    weights = load_file(FIXTURES / "tiny_w3" / "weights.safetensors")
    return prior_from_dalle2_state(weights), load_file(FIXTURES / "tiny_w3" / "cases.safetensors")


@pytest.fixture(scope="module")
def c2l_tiny():
    prior, metadata, extra = import_clip2latent(FIXTURES / "clip2latent_tiny.ckpt")
    return prior, metadata, extra


def keep_all(n: int, value: bool = True) -> torch.Tensor:
    return torch.full((n,), value, dtype=torch.bool)


def as_tokens(x: torch.Tensor, tokens: int) -> torch.Tensor:
    return x.reshape(x.shape[0], tokens, -1)


def recorded_trace(prior, cond, init, steps_noise, **options):
    trace = []
    noise = RecordedNoise([init, *steps_noise.unbind(0)])
    out = prior.sample(cond, prior.sampling(**options), noise=noise, callback=lambda info: trace.append(info["x"].clone()))
    assert noise.used == 1 + steps_noise.shape[0], "every recorded noise tensor is consumed"
    return out, torch.stack(trace)


# ------------------------------------------------------------------------------------ schedules
def test_cosine_schedule_matches_every_buffer(tiny_w):
    prior, cases = tiny_w
    schedule = make_schedule("cosine", 100)
    for name in BUFFER_NAMES:
        close(getattr(schedule, name), cases[f"sched_{name}"], atol=0.0)
        close(getattr(prior, name), cases[f"sched_{name}"], atol=0.0)


def test_clip2latent_respacing_buffers(tiny_w):
    prior, cases = tiny_w
    visited = torch.arange(0, 100, 10)
    respaced = clip2latent_respace(prior.schedule(), 10)
    assert respaced.timesteps.tolist() == visited.tolist()
    for name in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2"):
        close(getattr(respaced, name), cases[f"respaced10_{name}"][visited])
        close(getattr(clip2latent_respace(prior.schedule(), 1), name), cases[f"respaced1_{name}"])
    # quirk 3: the log variance the sampler uses is the original one
    close(respaced.posterior_log_variance_clipped, cases["respaced10_posterior_log_variance_clipped"][visited])


def test_relative_position_buckets(tiny_w):
    _, cases = tiny_w
    assert torch.equal(relative_position_buckets(4, 5), cases["rel_pos_bucket_n4"])
    assert torch.equal(relative_position_buckets(40, 41), cases["rel_pos_bucket_n40"])


# -------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("variant", ["tiny_w", "tiny_w3"])
def test_network_internals_layer_by_layer(variant, request):
    prior, cases = request.getfixturevalue(variant)
    tokens = prior.shape.tokens
    x_t, t, cond = as_tokens(cases["x_t"], tokens), cases["times"], cases["text_embed"]
    with torch.no_grad():
        x = prior.net.tokens_in(x_t, t, cond)
        close(x, cases["debug_tokens_in"])
        close(prior.net.position_bias()[0], cases["debug_attn_bias"])
        bias = prior.net.attention_bias(keep_all(4))
        for i, layer in enumerate(prior.net.layers):
            attn = layer.attn(x, bias)
            close(attn, cases[f"debug_layer{i}_attn_out"])
            x = attn + x
            ff = layer.ff(x)
            close(ff, cases[f"debug_layer{i}_ff_out"])
            x = ff + x
        close(prior.net.final_norm(x), cases["debug_final_norm_out"])


@pytest.mark.parametrize("variant", ["tiny_w", "tiny_w3"])
def test_network_outputs_cond_null_mixed(variant, request):
    prior, cases = request.getfixturevalue(variant)
    tokens = prior.shape.tokens
    x_t, t, cond = as_tokens(cases["x_t"], tokens), cases["times"], cases["text_embed"]
    with torch.no_grad():
        cond_out = prior.net(x_t, t, cond, keep_all(4))
        null_out = prior.net(x_t, t, cond, keep_all(4, False))
        close(cond_out, cases["net_out_cond"])
        close(null_out, cases["net_out_null"])
        close(prior.net(x_t, t, cond, cases["mixed_keep_mask"]), cases["net_out_mixed"])
    assert (cond_out - null_out).abs().max() > 1e-2, "the condition changes the output"


def test_training_loss_with_given_draws(tiny_w):
    prior, cases = tiny_w
    with torch.no_grad():
        loss = prior.loss_given(
            as_tokens(cases["x_start"], 1), cases["text_embed"],
            t=cases["times"], noise=cases["noise"], keep=cases["mixed_keep_mask"],
        )
    close(loss, cases["loss_mixed"])


@pytest.mark.parametrize("variant,scales", [("tiny_w", (1.0, 3.0)), ("tiny_w3", (3.0,))])
def test_guided_prediction_and_posterior(variant, scales, request):
    prior, cases = request.getfixturevalue(variant)
    tokens = prior.shape.tokens
    x_t, t, cond = as_tokens(cases["x_t"], tokens), cases["times"], cases["text_embed"]
    with torch.no_grad():
        for scale in scales:
            tag = f"cs{scale:g}"
            x0 = prior.denoise(x_t, t, cond, guidance=scale)
            if f"guided_{tag}" in cases:
                close(x0, cases[f"guided_{tag}"])
            mean, var, logvar = prior.posterior(x0, x_t, t)
            close(mean, cases[f"pmv_mean_{tag}"])
            close(var.reshape(-1), cases[f"pmv_var_{tag}"].reshape(-1))
            close(logvar.reshape(-1), cases[f"pmv_logvar_{tag}"].reshape(-1))


# ------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_ancestral_trace_with_recorded_noise(tiny_w, guidance):
    prior, cases = tiny_w
    tag = f"cs{guidance:g}"
    out, trace = recorded_trace(
        prior, cases["sample_text_embed"], cases["sample_init_noise"], cases["sample_step_noise"], guidance=guidance,
        sampler="ddpm", steps=None,
    )
    close(trace, cases[f"sample_traj_{tag}"])
    close(out, cases[f"sample_out_{tag}"])


def test_clip2latent_respaced_trace(tiny_w):
    prior, cases = tiny_w
    steps = []
    trace = []
    noise = RecordedNoise([cases["respaced10_init_noise"], *cases["respaced10_step_noise"].unbind(0)])
    out = prior.sample(
        cases["text_embed"], prior.sampling(sampler="clip2latent", steps=10, guidance=2.0), noise=noise,
        callback=lambda info: (trace.append(info["x"].clone()), steps.append(info["t"])),
    )
    assert steps == cases["respaced10_times"].tolist()
    close(torch.stack(trace), cases["respaced10_traj_cs2"])
    close(out, cases["respaced10_out_cs2"])


def test_w3_clip2latent_sample(tiny_w3):
    prior, cases = tiny_w3
    times = []
    noise = RecordedNoise([cases["sample_init_noise"], *cases["sample_step_noise"].unbind(0)])
    trace = []
    out = prior.sample(
        cases["text_embed"], prior.sampling(sampler="clip2latent", steps=10, guidance=2.0), noise=noise,
        callback=lambda info: (trace.append(info["x"].clone()), times.append(info["t"])),
    )
    assert times == cases["sample_times"].tolist()
    close(torch.stack(trace), cases["sample_traj_cs2"])
    repeats = torch.tensor([4, 4, 10])
    close(torch.repeat_interleave(out, repeats, dim=1), cases["sample_out_cs2"])


# ------------------------------------------------------------------------- imported clip2latent
def test_imported_checkpoint_network_and_guidance(c2l_tiny, tiny_w):
    prior, _, _ = c2l_tiny
    _, cases = tiny_w
    x_t, t, cond = as_tokens(cases["x_t"], 1), cases["times"], cases["c2l_embed"]
    with torch.no_grad():
        close(prior.net(x_t, t, cond, keep_all(4)), cases["c2l_net_out_cond"])
        close(prior.denoise(x_t, t, cond, guidance=3.0), cases["c2l_guided_cs3"])


@pytest.mark.parametrize("truncation,key", [(1.0, "c2l_sample_out_cs2_trunc1p0"), (0.7, "c2l_sample_out_cs2_trunc0p7")])
def test_imported_checkpoint_sampling(c2l_tiny, tiny_w, truncation, key):
    prior, metadata, _ = c2l_tiny
    _, cases = tiny_w
    trace = []
    noise = RecordedNoise([cases["respaced10_init_noise"], *cases["respaced10_step_noise"].unbind(0)])
    out = prior.sample(
        cases["c2l_embed"], prior.sampling(sampler="clip2latent", steps=10, guidance=2.0), noise=noise,
        callback=lambda info: trace.append(info["x"].clone()),
    )
    out = truncate(out, prior.latent_mean, truncation)  # what the pipeline does after any prior
    close(torch.stack(trace), cases["c2l_sample_traj_cs2"])
    repeats = torch.tensor(metadata["space"]["repeats"])
    close(torch.repeat_interleave(out, repeats, dim=1), cases[key])
