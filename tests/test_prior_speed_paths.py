"""The diffusion prior's fast paths agree with the plain ones: condition cache, shared timestep tokens (the
flat token list), bf16 sampling, fused AdamW, and the DALLE2 export (the importer's key table run
backwards) used to time the peers on the same weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentmap.errors import LatentmapError
from latentmap.interfaces import PriorShape
from latentmap.prior import DiffusionPrior
from latentmap.prior.clip2latent import dalle2_state_dict, prior_from_dalle2_state
from latentmap.training.optim import make_optimizer

FIXTURES = Path(__file__).parent / "fixtures" / "prior"


def small_prior(tokens: int = 2, seed: int = 0) -> DiffusionPrior:
    torch.manual_seed(seed)
    options = DiffusionPrior.Options(dim=48, depth=3, heads=3, dim_head=40, timesteps=100)
    prior = DiffusionPrior(PriorShape(tokens=tokens, latent_dim=16, cond_dim=24), options).eval()
    with torch.no_grad():  # LayerNorm gains away from 1 so every weight matters
        for name, param in prior.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    return prior


@pytest.mark.parametrize("tokens", [1, 3])
def test_condition_cache_gives_the_uncached_prediction(tokens):
    prior = small_prior(tokens)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(6, tokens, 16, generator=g)
    cond = torch.randn(6, 24, generator=g)
    t = torch.tensor([0, 3, 17, 50, 80, 99])
    for keep in (torch.tensor([True, False, True, True, False, True]), torch.zeros(6, dtype=torch.bool)):
        with torch.no_grad():
            plain = prior.net(x_t, t, cond, keep)
            cached = prior.net(x_t, t, cond, keep, prior.net.condition_cache(cond, keep))
        # the same arithmetic on fewer rows: equal to float32 rounding (BLAS blocks differ with the row count)
        assert (cached - plain).abs().max() < 1e-5 * plain.abs().max()
        # and not trivially: the condition matters for the kept rows
        other = prior.net(x_t, t, cond.flip(0), keep, prior.net.condition_cache(cond.flip(0), keep))
        assert (other[keep] - plain[keep]).abs().max() > 1e-3 if keep.any() else torch.allclose(other, plain, atol=1e-5)


KEEP = torch.tensor([True, False, True, False, False, True, False, False])
REPEATED = torch.tensor([0, 1, 0, 2, 0, 1, 1, 0])  # rows 0 and 2 keep the same condition: one prompt's candidates


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("t", [torch.full((8,), 37), torch.tensor([5, 5, 5, 5, 99, 40, 40, 5])], ids=["one-t", "mixed-t"])
@pytest.mark.parametrize("repeated", [False, True], ids=["distinct-conds", "repeated-conds"])
def test_shared_timestep_tokens_give_the_plain_prediction(tokens, t, repeated):
    prior = small_prior(tokens)
    g = torch.Generator().manual_seed(6)
    x_t, cond = torch.randn(8, tokens, 16, generator=g), torch.randn(8, 24, generator=g)
    if repeated:
        cond = cond[REPEATED]
    with torch.no_grad():
        plain = prior.net(x_t, t, cond, KEEP)
        cache = prior.net.condition_cache(cond, KEEP)
        shared = prior.net(x_t, t, cond, KEEP, cache)
        unshared = prior.net(x_t, t, cond, KEEP, prior.net.condition_cache(cond, KEEP, share_timestep=False))
    assert (shared - plain).abs().max() < 1e-5 * plain.abs().max()
    assert (unshared - plain).abs().max() < 1e-5 * plain.abs().max()
    # the saving is real: at one t every row runs its 2·tokens latents and queries, and there is one
    # timestep token per distinct kept condition (3, or 2 when rows 0 and 2 share one) plus ONE for all null rows
    assert cache.layout.source.numel() == 8 * 2 * tokens + (2 if repeated else 3) + 1
    # and not trivially: every null row's own t matters (reading another t's timestep token would show)
    with torch.no_grad():
        earlier = prior.net(x_t, t - 1, cond, KEEP, cache)
    assert ((earlier - plain)[~KEEP].flatten(1).abs().amax(dim=1) > 1e-4).all()


@pytest.mark.parametrize("tokens", [1, 3])
def test_shared_timestep_tokens_under_bf16_autocast(tokens):
    prior = small_prior(tokens)
    g = torch.Generator().manual_seed(7)
    x_t, cond = torch.randn(8, tokens, 16, generator=g), torch.randn(8, 24, generator=g)[REPEATED]
    t = torch.tensor([5, 5, 5, 5, 99, 40, 40, 5])
    with torch.no_grad():
        fp32 = prior.net(x_t, t, cond, KEEP)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = prior.net(x_t, t, cond, KEEP)
            shared = prior.net(x_t, t, cond, KEEP, prior.net.condition_cache(cond, KEEP))
    assert shared.dtype == torch.float32

    def relative(a, b):
        return ((a - b).norm() / b.norm()).item()

    bf16_error = relative(plain, fp32)
    assert bf16_error > 1e-3  # bfloat16 really ran
    # Under bf16 "the same arithmetic" holds to bf16's rounding, not float32's: a product over other rows
    # may round a bf16 output the other way (the condition cache alone did so before the shared token).
    # The cached pass is closer to the plain bf16 pass than bf16 is to float32, and as close to float32.
    assert relative(shared, plain) < bf16_error
    assert relative(shared, fp32) < 1.5 * bf16_error


def test_sampling_with_the_cache_equals_sampling_without():
    prior = small_prior(2)
    cond = torch.randn(5, 24, generator=torch.Generator().manual_seed(2))
    settings = prior.sampling(steps=6, guidance=2.5, sampler="ddpm")
    cached = prior.sample(cond, settings, generator=torch.Generator().manual_seed(3))
    # the same walk with the uncached denoiser
    from latentmap.prior import samplers

    noise = samplers.RandomNoise(torch.Generator().manual_seed(3), "cpu")
    x = noise((5, 2, 16))
    with torch.no_grad():
        plain = samplers.ddpm(prior.guided_denoiser(prior.prepare_cond(cond), 2.5, cache=False), x,
                              prior.sampling_schedule("ddpm", 6), noise=noise)
    assert (cached - prior.denormalize_latents(plain)).abs().max() < 1e-4


def test_bf16_sampling_agrees_with_fp32_within_two_percent():
    prior = small_prior(1)
    cond = torch.randn(8, 24, generator=torch.Generator().manual_seed(4))
    fp32 = prior.sample(cond, prior.sampling(steps=8, guidance=2.0), generator=torch.Generator().manual_seed(5))
    bf16 = prior.sample(cond, prior.sampling(steps=8, guidance=2.0, precision="bf16"),
                        generator=torch.Generator().manual_seed(5))
    assert bf16.dtype == torch.float32
    relative = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 0 < relative < 2e-2, relative  # > 0: the bf16 path really ran in reduced precision


def test_unknown_precision_is_refused_naming_the_choices():
    prior = small_prior(1)
    with pytest.raises(LatentmapError, match="precision"):
        prior.sampling(precision="fp8")


def test_fused_adamw_equals_the_unfused_update():
    prior = small_prior(1)
    prior.train()
    twin = copy.deepcopy(prior)
    fused = make_optimizer(prior, lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999))
    plain = make_optimizer(twin, lr=1e-3, weight_decay=1e-2, betas=(0.9, 0.999), fused=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    for step in range(4):
        for model, optimizer in ((prior, fused), (twin, plain)):
            g = torch.Generator().manual_seed(step)
            latents, cond = torch.randn(8, 1, 16, generator=g), torch.randn(8, 24, generator=g)
            loss = model.loss(latents, cond, generator=g)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    moved = max((a - b).abs().max().item() for a, b in zip(prior.parameters(), small_prior(1).parameters()))
    assert moved > 1e-3
    assert max((a - b).abs().max().item() for a, b in zip(prior.parameters(), twin.parameters())) < 1e-6


def test_dalle2_export_reproduces_the_fixture_state_dict():
    weights = load_file(FIXTURES / "tiny_w" / "weights.safetensors")
    exported = dalle2_state_dict(prior_from_dalle2_state(weights, require_latent_stats=False))
    assert set(exported) == set(weights)
    for key, value in weights.items():
        assert exported[key].shape == value.shape, key
        assert torch.equal(exported[key], value), key


def test_dalle2_export_round_trips_a_w_plus_prior_with_statistics():
    weights = load_file(FIXTURES / "tiny_w3" / "weights.safetensors")
    prior = prior_from_dalle2_state(weights)
    exported = dalle2_state_dict(prior, latent_stats=True)
    assert set(exported) == set(weights)
    again = prior_from_dalle2_state(exported)
    for key, value in prior.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_dalle2_export_names_a_weight_dalle2_cannot_hold():
    prior = small_prior(1)  # latent 16, condition 24, width 48: latentmap's in/out projections
    with pytest.raises(LatentmapError, match="net.cond_in.weight"):
        dalle2_state_dict(prior)
