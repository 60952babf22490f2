"""Behaviour of the diffusion prior: it learns, samplers follow their schedules, guidance is one pass, bad input."""

from __future__ import annotations

import pytest
import torch

from helpers_prior import assert_deterministic, condition_errors, loss_drop, train_on_linear_toy

import latentmap
from latentmap.errors import LatentmapError
from latentmap.prior import DiffusionOptions, DiffusionPrior
from latentmap.prior import samplers as S
from latentmap.prior.schedule import clip2latent_respace, make_schedule, respace, spaced_timesteps

TINY = dict(latent_dim=8, tokens=2, cond_dim=6, dim=32, depth=2, heads=2, dim_head=16, timesteps=100)


@pytest.fixture(scope="module")
def trained():
    """A tiny prior trained for 300 steps on latents that are a fixed linear function of the condition."""
    return train_on_linear_toy(lambda: DiffusionPrior.create(**TINY), 300)


def test_training_loss_goes_down(trained):
    first, last = loss_drop(trained[2])
    assert last < 0.35 * first, (first, last)


@pytest.mark.parametrize("options", [dict(steps=20), dict(steps=20, sampler="ddim"), dict(steps=10, guidance=2.0)])
def test_samples_follow_the_condition(trained, options):
    prior, batch, _ = trained
    matched, shuffled = condition_errors(prior, batch, prior.sampling(**options))
    assert matched < 0.15 * shuffled, (matched, shuffled)


def test_sampling_is_deterministic_given_a_generator(trained):
    prior, batch, _ = trained
    assert_deterministic(prior, batch, prior.sampling(steps=7, guidance=1.5))


def test_guidance_is_one_batched_pass_equal_to_two_passes(trained):
    prior, batch, _ = trained
    _, cond = batch(5, torch.Generator().manual_seed(4))
    x_t = torch.randn(5, 2, 8)
    t = torch.tensor([0, 10, 50, 80, 99])
    calls = []
    handle = prior.net.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        guided = prior.denoise(x_t, t, cond, guidance=2.5)
        assert calls == [10], "conditional and null halves go through the network together"
        calls.clear()
        prior.sample(cond, prior.sampling(steps=4, guidance=2.5), generator=torch.Generator().manual_seed(0))
        assert calls == [10] * 4, "one network call per sampling step"
    finally:
        handle.remove()
    with torch.no_grad():
        conditional = prior.net(x_t, t, cond, torch.ones(5, dtype=torch.bool))
        null = prior.net(x_t, t, cond, torch.zeros(5, dtype=torch.bool))
    assert (guided - (null + (conditional - null) * 2.5)).abs().max() < 1e-5


# --------------------------------------------------------------- samplers against an exact denoiser
DATA_VAR = 0.25


def exact_gaussian_denoiser(schedule):
    """E[x0 | x_t] for data ~ N(0, DATA_VAR): the ideal network for this toy distribution."""
    alphas_cumprod = schedule.alphas_cumprod

    def denoise(x, t):
        a = alphas_cumprod[t].reshape(-1, 1, 1)
        return a.sqrt() * DATA_VAR / (a * DATA_VAR + 1 - a) * x

    return denoise


def chain_variance(full, schedule):
    """The output variance the ancestral chain over ``schedule`` must produce with the exact denoiser."""
    var = torch.tensor(1.0, dtype=torch.float64)
    for j in reversed(range(len(schedule))):
        a = full.alphas_cumprod[schedule.timesteps[j]].double()
        gain = a.sqrt() * DATA_VAR / (a * DATA_VAR + 1 - a)
        slope = schedule.posterior_mean_coef1[j].double() * gain + schedule.posterior_mean_coef2[j].double()
        noise_var = schedule.posterior_log_variance_clipped[j].double().exp() if j > 0 else 0.0
        var = slope**2 * var + noise_var
    return var.item()


@pytest.mark.parametrize("steps", [4, 25, 1000])
def test_respaced_ddpm_matches_its_own_chain(steps):
    full = make_schedule("cosine", 1000)
    schedule = respace(full, spaced_timesteps(1000, steps))
    noise = S.RandomNoise(torch.Generator().manual_seed(0), "cpu")
    out = S.ddpm(exact_gaussian_denoiser(full), noise((20000, 1, 1)), schedule, noise=noise)
    expected = chain_variance(full, schedule)
    assert abs(out.var().item() / expected - 1) < 0.04, (out.var().item(), expected)
    # respacing keeps the original marginals: ᾱ at every visited step is the original one
    assert torch.allclose(schedule.alphas_cumprod, full.alphas_cumprod[schedule.timesteps], rtol=1e-6)
    if steps == 1000:
        assert abs(out.var().item() / DATA_VAR - 1) < 0.04, "the full chain recovers the data distribution"


def test_clip2latent_sampler_uses_single_step_noise():
    """clip2latent's quirk: the respaced chain adds the noise of one original step, far too little."""
    full = make_schedule("cosine", 1000)
    proper = respace(full, torch.arange(0, 1000, 250))
    quirky = clip2latent_respace(full, 250)
    assert torch.equal(quirky.timesteps, proper.timesteps)
    assert torch.allclose(quirky.posterior_mean_coef1, proper.posterior_mean_coef1, rtol=1e-4)
    # from the second visited step on, the proper chain has much larger steps (t=0 and t=250 are tiny in both)
    assert (quirky.posterior_log_variance_clipped[2:] < proper.posterior_log_variance_clipped[2:] - 2).all()
    noise = S.RandomNoise(torch.Generator().manual_seed(0), "cpu")
    out = S.clip2latent_compat(exact_gaussian_denoiser(full), noise((20000, 1, 1)), quirky, noise=noise)
    assert abs(out.var().item() / chain_variance(full, quirky) - 1) < 0.04
    assert out.var().item() < 0.5 * chain_variance(full, proper)


def test_ddim_full_chain_recovers_data_variance():
    full = make_schedule("cosine", 1000)
    schedule = respace(full, spaced_timesteps(1000, 200))
    noise = S.RandomNoise(torch.Generator().manual_seed(0), "cpu")
    out = S.ddim(exact_gaussian_denoiser(full), noise((20000, 1, 1)), schedule, noise=noise, eta=0.0)
    assert abs(out.var().item() / DATA_VAR - 1) < 0.05, out.var().item()


def test_spaced_timesteps_and_linear_schedule():
    assert spaced_timesteps(1000, 4).tolist() == [0, 333, 666, 999]
    assert spaced_timesteps(100, 100).tolist() == list(range(100))
    assert spaced_timesteps(100, 1).tolist() == [99]
    betas = make_schedule("linear", 1000).betas
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_noise_objective_recovers_x0_from_true_noise():
    prior = DiffusionPrior.create(**TINY, objective="noise")
    x0, eps = torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    t = torch.tensor([0, 5, 50, 90])  # not 99: ᾱ ≈ 0 there, so x0 is not recoverable in float32
    assert torch.allclose(prior.predict_x0(prior.q_sample(x0, t, eps), t, eps), x0, atol=1e-4)


def test_condition_normalisation_ignores_scale():
    torch.manual_seed(0)
    prior = DiffusionPrior.create(**TINY, normalize_cond=True).eval()
    cond, x_t = torch.randn(3, 6), torch.randn(3, 2, 8)
    assert torch.allclose(prior.denoise(x_t, 7, cond), prior.denoise(x_t, 7, cond * 5.0), atol=1e-6)


def test_registered_as_prior_diffusion():
    prior = latentmap.get_prior("diffusion", **TINY)
    assert isinstance(prior, DiffusionPrior)
    shape = {k: TINY[k] for k in ("tokens", "latent_dim", "cond_dim")}
    options = {k: v for k, v in TINY.items() if k not in shape}
    assert prior.config_dict() == {"name": "diffusion", "shape": shape,
                                   "options": {**DiffusionOptions().__dict__, **options}}


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_errors_are_clear():
    prior = DiffusionPrior.create(**TINY)
    with pytest.raises(LatentmapError, match=r"condition has shape \(2, 5\).*\(B, 6\)"):
        prior.sample(torch.randn(2, 5))
    with pytest.raises(LatentmapError, match=r"latents of shape \(B, 2, 8\), got \(2, 16\)"):
        prior.loss(torch.randn(2, 16), torch.randn(2, 6))
    with pytest.raises(LatentmapError, match="steps must be an integer from 1 to the model's 100 timesteps, got 101"):
        prior.sample(torch.randn(2, 6), prior.sampling(steps=101))
    with pytest.raises(LatentmapError, match="got 0"):
        prior.sample(torch.randn(2, 6), prior.sampling(steps=0))
    with pytest.raises(LatentmapError, match="divide the model's 100 timesteps, got 7"):
        prior.sample(torch.randn(2, 6), prior.sampling(steps=7, sampler="clip2latent"))
    with pytest.raises(LatentmapError, match="sampler' must be one of ddim, ddpm, clip2latent, dpmpp_2m, heun; got 'euler'"):
        prior.sample(torch.randn(2, 6), prior.sampling(sampler="euler"))
    with pytest.raises(LatentmapError, match="prior 'diffusion' has no option 'width' \\(did you mean 'depth'\\?\\)"):
        DiffusionPrior.create(**TINY, width=3)
    with pytest.raises(LatentmapError, match="option 'schedule' must be one of cosine, linear; got 'sigmoid'"):
        DiffusionPrior.create(**TINY, schedule="sigmoid")
    with pytest.raises(LatentmapError, match=r"latent std has shape \(5,\)"):
        prior.set_latent_stats(torch.zeros(16), torch.ones(5))
    no_dropout = DiffusionPrior.create(**TINY, cond_drop_prob=0.0)
    with pytest.raises(LatentmapError, match="guidance 2.0 needs a prior trained with condition dropout"):
        no_dropout.sample(torch.randn(2, 6), no_dropout.sampling(steps=2, guidance=2.0))


@pytest.mark.parametrize(
    "options,count",
    [({}, 48_767_872), ({"depth": 6, "heads": 8}, 23_198_720), ({"tokens": 3}, 48_768_896)],
    ids=["paper", "small", "w3"],
)
def test_parameter_counts_match_dalle2_pytorch(options, count):
    """Paper/`mid`, clip2latent `small`, and the w3 network: exactly DALLE2-pytorch 0.2.38's counts."""
    with torch.device("meta"):  # count without allocating 48M weights
        prior = DiffusionPrior.create(**{"tokens": 1, "latent_dim": 512, "cond_dim": 512, **options})
    assert sum(p.numel() for p in prior.parameters() if p.requires_grad) == count
