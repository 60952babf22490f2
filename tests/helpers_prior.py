"""A toy for priors: latents that are a fixed linear function of the condition, and what tests ask of a prior on it.

Conditions are 6 numbers, latents 2 tokens of 8 (``tokens=2, latent_dim=8, cond_dim=6``); a prior that
learned the map puts each sample near its own condition's latent and far from the others'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Batch = Callable[[int, torch.Generator], "tuple[Tensor, Tensor]"]


def train_on_linear_toy(make_prior: Callable[[], Any], steps: int, *, lr: float = 2e-3) -> tuple[Any, Batch, list[float]]:
    """``make_prior()`` trained for ``steps`` Adam steps of batch 64 (seeded); returns (prior in eval mode, batch, losses).

    ``batch(n, generator)`` draws n (latents, conditions) pairs of the toy.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mapping = torch.randn(6, 16)

    def batch(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        cond = torch.randn(n, 6, generator=g)
        return (cond @ mapping).reshape(n, 2, 8) * 2 + 3, cond

    prior = make_prior()
    g = torch.Generator().manual_seed(1)
    latents, _ = batch(4096, g)
    prior.set_latent_stats(latents.mean(0), latents.std(0))
    losses = adam_steps(prior, batch, steps, g, lr=lr)
    return prior.eval(), batch, losses


def adam_steps(prior: Any, batch: Batch, steps: int, g: torch.Generator, *, lr: float = 2e-3) -> list[float]:
    """``steps`` Adam steps of ``prior.loss`` on batches of 64 from ``batch`` (draws from ``g``); the losses."""
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        latents, cond = batch(64, g)
        loss = prior.loss(latents, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def condition_errors(prior: Any, batch: Batch, settings: Any, n: int = 256) -> tuple[float, float]:
    """Mean squared error of n samples against their own condition's latents and against shuffled ones."""
    latents, cond = batch(n, torch.Generator().manual_seed(9))
    samples = prior.sample(cond, settings, generator=torch.Generator().manual_seed(2))
    assert samples.shape == latents.shape
    matched = ((samples - latents) ** 2).mean().item()
    shuffled = ((samples - latents[torch.randperm(n)]) ** 2).mean().item()
    return matched, shuffled


def loss_drop(losses: list[float], window: int = 20) -> tuple[float, float]:
    """Mean loss over the first and the last ``window`` steps."""
    return sum(losses[:window]) / window, sum(losses[-window:]) / window


def assert_deterministic(prior: Any, batch: Batch, settings: Any) -> None:
    """The same generator seed gives the same samples, another seed other samples."""
    _, cond = batch(8, torch.Generator().manual_seed(3))
    a, b, c = (prior.sample(cond, settings, generator=torch.Generator().manual_seed(seed)) for seed in (5, 5, 6))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
