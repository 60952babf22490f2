"""Samplers: small functions that walk a :class:`Schedule` backwards from noise to a clean latent.

Each takes ``denoise(x_t, t) -> x̂_0`` (already guided; ``t`` is the (B,) original timestep), the
starting ``x`` (pure noise), the schedule, a ``noise`` source and an optional ``callback``, in the
spirit of k-diffusion's sampler functions. They know nothing about networks or conditions.

Noise comes from a callable ``noise(shape) -> Tensor``: :class:`RandomNoise` draws from a
``torch.Generator`` (deterministic given its seed), :class:`RecordedNoise` replays given tensors,
so reference traces made with known noise can be reproduced step by step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.prior.schedule import Schedule, clip2latent_respace, respace, spaced_timesteps

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
NoiseFn = Callable[[tuple[int, ...]], Tensor]
Callback = Callable[[dict[str, Any]], None]


class RandomNoise:
    """Standard normal draws from ``generator`` (on its device), moved to ``device``."""

    def __init__(self, generator: torch.Generator | None, device: torch.device | str, dtype=torch.float32):
        self.generator = generator
        self.device = torch.device(device)
        self.dtype = dtype

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        draw_device = self.generator.device if self.generator is not None else self.device
        z = torch.randn(shape, generator=self.generator, device=draw_device, dtype=self.dtype)
        return z.to(self.device)


class RecordedNoise:
    """Replays recorded noise tensors in order: the first is the starting x, then one per step.

    A tensor with the right number of elements is reshaped (a (B, dim) recording fits (B, 1, dim)).
    """

    def __init__(self, tensors: Sequence[Tensor]):
        self.tensors = list(tensors)
        self.used = 0

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        if self.used >= len(self.tensors):
            raise LatentmapError(f"recorded noise ran out after {self.used} draws")
        z = self.tensors[self.used]
        if z.numel() != torch.Size(shape).numel():
            raise LatentmapError(f"recorded noise draw {self.used} has shape {tuple(z.shape)}, expected {tuple(shape)}")
        self.used += 1
        return z.reshape(shape)


def _timestep_batch(schedule: Schedule, step: int, batch: int, device: torch.device) -> Tensor:
    return schedule.timesteps[step].to(device).expand(batch)


def _report(callback: Callback | None, step: int, t: int, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback({"step": step, "t": t, "x": x, "denoised": x0})


def ddpm(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: NoiseFn,
    eta: float = 1.0,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral DDPM: x_{j−1} = coef1·x̂_0 + coef2·x_j + [j ≠ 0]·σ_j·z, over every step of ``schedule``.

    ``eta`` is accepted for the common signature and not used: the noise is always the posterior's.

    With a schedule from :func:`~latentmap.prior.schedule.respace` this is the respaced DDPM whose
    noise variance matches the shorter chain. One z is drawn per step, also at the last (as the
    original did), so a noise stream lines up with reference traces.
    """
    for j in reversed(range(len(schedule))):
        t = _timestep_batch(schedule, j, x.shape[0], x.device)
        x0 = denoise(x, t)
        mean = schedule.posterior_mean_coef1[j] * x0 + schedule.posterior_mean_coef2[j] * x
        z = noise(tuple(x.shape))
        x = mean + torch.exp(0.5 * schedule.posterior_log_variance_clipped[j]) * z if j > 0 else mean
        _report(callback, len(schedule) - 1 - j, int(schedule.timesteps[j]), x, x0)
    return x


def ddim(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: NoiseFn,
    eta: float = 0.0,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM (Song et al.): deterministic at ``eta = 0``, ancestral-like at ``eta = 1``.

    x_{prev} = √ᾱ_prev·x̂_0 + √(1 − ᾱ_prev − σ²)·ε̂ + σ·z with ε̂ = (x − √ᾱ·x̂_0)/√(1 − ᾱ) and
    σ = η·√((1 − ᾱ_prev)/(1 − ᾱ))·√(1 − ᾱ/ᾱ_prev), over the (respaced) schedule's ᾱ.
    """
    if eta < 0:
        raise LatentmapError(f"DDIM eta must be >= 0, got {eta}")
    for j in reversed(range(len(schedule))):
        t = _timestep_batch(schedule, j, x.shape[0], x.device)
        x0 = denoise(x, t)
        alpha = schedule.alphas_cumprod[j]
        alpha_prev = schedule.alphas_cumprod_prev[j]
        eps = (x - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        sigma = eta * ((1 - alpha_prev) / (1 - alpha)).sqrt() * (1 - alpha / alpha_prev).sqrt()
        z = noise(tuple(x.shape))
        direction = (1 - alpha_prev - sigma**2).clamp(min=0).sqrt()
        x = alpha_prev.sqrt() * x0 + direction * eps + sigma * z
        _report(callback, len(schedule) - 1 - j, int(schedule.timesteps[j]), x, x0)
    return x


def clip2latent_compat(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: NoiseFn,
    eta: float = 1.0,
    callback: Callback | None = None,
) -> Tensor:
    """clip2latent's respaced sampler, reproduced for checking imported models against its samples.

    ``schedule`` must come from :func:`~latentmap.prior.schedule.clip2latent_respace`: the chain
    starts from pure noise at t = T − skip and each step adds the noise of a single *original* step
    (its log variance was never respaced). The step rule itself is the ancestral DDPM one.
    """
    return ddpm(denoise, x, schedule, noise=noise, callback=callback)


# ----------------------------------------------------------------------------- the schedules they walk
def respaced(full: Schedule, steps: int | None) -> Schedule:
    """``steps`` evenly spaced timesteps of ``full`` with the variances of the shorter chain (None: all)."""
    total = len(full)
    if steps is None or steps == total:
        spaced_timesteps(total, total)
        return full
    return respace(full, spaced_timesteps(total, steps))


def clip2latent_skipped(full: Schedule, steps: int | None) -> Schedule:
    """clip2latent's respacing: every ``T / steps``-th timestep, variances of the original steps."""
    total = len(full)
    steps = total if steps is None else steps
    if not isinstance(steps, int) or steps < 1 or total % steps != 0:
        raise LatentmapError(f"the clip2latent sampler needs steps that divide the model's {total} timesteps, got {steps!r}")
    return clip2latent_respace(full, total // steps)


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: the walk, and the schedule it walks for a number of steps."""

    walk: Callable[..., Tensor]
    schedule: Callable[[Schedule, int | None], Schedule]
    description: str


# The one list of sampler names: recipes, the command line and the prior all read it.
SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler(ddim, respaced, "DDIM, deterministic at eta 0"),
    "ddpm": Sampler(ddpm, respaced, "ancestral DDPM over the respaced chain"),
    "clip2latent": Sampler(clip2latent_compat, clip2latent_skipped, "clip2latent's own respaced sampler (imported models)"),
}


def sampler_names() -> tuple[str, ...]:
    """The registered sampler names (a callable, so option declarations always read the current registry)."""
    return tuple(SAMPLERS)
