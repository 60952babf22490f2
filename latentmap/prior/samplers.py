"""Samplers: small functions that walk a :class:`Schedule` backwards from noise to a clean latent.

Each takes ``denoise(x_t, t) -> x̂_0`` (already guided; ``t`` is the (B,) original timestep), the
starting ``x`` (pure noise), the schedule, a ``noise`` source and an optional ``callback``, in the
spirit of k-diffusion's sampler functions. They know nothing about networks or conditions, nor
about where their steps fall: the schedule they walk is respaced to the timesteps a spacing function
of :mod:`latentmap.prior.schedule` (``SPACINGS``: uniform, leading, trailing, logsnr, karras) places.

Noise comes from a callable ``noise(shape) -> Tensor``: :class:`RandomNoise` draws from a
``torch.Generator`` (deterministic given its seed), :class:`RecordedNoise` replays given tensors,
so reference traces made with known noise can be reproduced step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.prior.schedule import Schedule, clip2latent_respace, respace, spaced

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


def _noise_levels(schedule: Schedule) -> list[tuple[float, float]]:
    """(ᾱ at step j, ᾱ after it) for every step, as Python floats (double precision on any device).

    The step after j is ``alphas_cumprod_prev[j]``: the previous visited timestep's ᾱ, and 1 (no
    noise left) after the last step.
    """
    return list(zip(schedule.alphas_cumprod.tolist(), schedule.alphas_cumprod_prev.tolist()))


def _log_snr(alpha_cumprod: float) -> float:
    """λ = log(α/σ) with α = √ᾱ, σ = √(1 − ᾱ); +∞ where no noise is left."""
    return math.inf if alpha_cumprod >= 1.0 else 0.5 * (math.log(alpha_cumprod) - math.log1p(-alpha_cumprod))


def dpmpp_2m(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: NoiseFn,
    eta: float = 0.0,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): multistep, second order, data prediction; one evaluation a step.

    In log-SNR λ = log(α/σ) the probability-flow ODE has the exact solution
    x_t = (σ_t/σ_s)·x_s + σ_t·∫ e^λ·x̂_0(λ) dλ over [λ_s, λ_t]. Holding x̂_0 at the step's estimate
    gives x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·x̂_0 with h = λ_t − λ_s (exactly DDIM at eta 0); the
    multistep rule replaces x̂_0 by D = x̂_0 + (x̂_0 − x̂_0')/(2r), r = h'/h, extrapolating linearly in
    λ through the previous step's estimate x̂_0' (step size h'). The first step is first order, and so
    is the last (to σ = 0, λ = ∞), which returns the denoised estimate. ``eta`` is accepted for the
    common signature and not used: the solver is deterministic.
    """
    levels = _noise_levels(schedule)
    previous: tuple[Tensor, float] | None = None  # (x̂_0, h) of the step before
    for j in reversed(range(len(schedule))):
        x0 = denoise(x, _timestep_batch(schedule, j, x.shape[0], x.device))
        now, after = levels[j]
        h = _log_snr(after) - _log_snr(now)
        if math.isinf(h):
            x = x0
        else:
            data = x0 if previous is None else x0 + (x0 - previous[0]) * (h / (2 * previous[1]))
            x = math.sqrt((1 - after) / (1 - now)) * x - math.sqrt(after) * math.expm1(-h) * data
        previous = (x0, h)
        _report(callback, len(schedule) - 1 - j, int(schedule.timesteps[j]), x, x0)
    return x


def heun(
    denoise: DenoiseFn,
    x: Tensor,
    schedule: Schedule,
    *,
    noise: NoiseFn,
    eta: float = 0.0,
    callback: Callback | None = None,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE in σ-space (Karras et al. 2022, "EDM").

    With y = x/α and s = σ/α the ODE is dy/ds = ε̂, the noise estimate (x − α·x̂_0)/σ. An Euler step
    to the next visited timestep is exactly DDIM; Heun evaluates the network again there and steps
    with the mean of the two slopes (trapezoid rule), so a step costs two network evaluations.

    Two steps are Euler alone. The last (to s = 0), as in EDM, lands on the denoised estimate. The
    first, unlike EDM (whose largest s is 80): a schedule's last timestep is pure noise (s ≈ 2·10⁴
    for the cosine schedule at 1000 steps), and the trapezoid over that interval weights the slope at
    its far end, s ~ 1, by half of it, which made 4 steps ~10³ times worse than DDIM on Gaussian data.
    ``steps`` steps therefore cost 2·steps − 2 evaluations (1 for one step). ``eta`` is accepted for
    the common signature and not used: the solver is deterministic.
    """
    levels = _noise_levels(schedule)
    first = len(schedule) - 1
    for j in reversed(range(len(schedule))):
        x0 = denoise(x, _timestep_batch(schedule, j, x.shape[0], x.device))
        now, after = levels[j]
        eps = (x - math.sqrt(now) * x0) / math.sqrt(1 - now)
        euler = math.sqrt(after) * x0 + math.sqrt(1 - after) * eps
        if 0 < j < first:
            x0_euler = denoise(euler, _timestep_batch(schedule, j - 1, x.shape[0], x.device))
            slope = 0.5 * (eps + (euler - math.sqrt(after) * x0_euler) / math.sqrt(1 - after))
            # y_after = y + (s_after − s)·slope, written for x = α·y
            x = math.sqrt(after / now) * (x - math.sqrt(1 - now) * slope) + math.sqrt(1 - after) * slope
        else:
            x = euler
        _report(callback, len(schedule) - 1 - j, int(schedule.timesteps[j]), x, x0)
    return x


# ----------------------------------------------------------------------------- the schedules they walk
def respaced(full: Schedule, steps: int | None, spacing: str = "uniform") -> Schedule:
    """``steps`` timesteps of ``full`` placed by ``spacing`` (schedule.SPACINGS), with the variances of the shorter chain.

    ``steps`` None (or all of them): the full schedule itself.
    """
    total = len(full)
    if steps is None or steps == total:
        spaced(full, total, spacing)  # validates the spacing name
        return full
    return respace(full, spaced(full, steps, spacing))


def clip2latent_skipped(full: Schedule, steps: int | None, spacing: str = "uniform") -> Schedule:
    """clip2latent's respacing: every ``T / steps``-th timestep, variances of the original steps.

    Its placement is its own (``leading``): ``spacing`` may only be the default or that.
    """
    total = len(full)
    steps = total if steps is None else steps
    if spacing not in ("uniform", "leading"):
        raise LatentmapError(f"the clip2latent sampler visits its own timesteps (t = 0, T/steps, ...); "
                             f"spacing must be 'uniform' (the default) or 'leading', got {spacing!r}")
    if not isinstance(steps, int) or steps < 1 or total % steps != 0:
        raise LatentmapError(f"the clip2latent sampler needs steps that divide the model's {total} timesteps, got {steps!r}")
    return clip2latent_respace(full, total // steps)


@dataclass(frozen=True)
class Sampler:
    """A registered sampler: the walk, and the schedule it walks for a number of steps."""

    walk: Callable[..., Tensor]
    schedule: Callable[[Schedule, int | None, str], Schedule]  # (full schedule, steps, spacing name)
    description: str


# The one list of sampler names: recipes, the command line and the prior all read it.
SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler(ddim, respaced, "DDIM, deterministic at eta 0"),
    "ddpm": Sampler(ddpm, respaced, "ancestral DDPM over the respaced chain"),
    "clip2latent": Sampler(clip2latent_compat, clip2latent_skipped, "clip2latent's own respaced sampler (imported models)"),
    "dpmpp_2m": Sampler(dpmpp_2m, respaced, "DPM-Solver++(2M): second order, one network evaluation a step"),
    "heun": Sampler(heun, respaced, "Heun (EDM) in sigma: second order, two evaluations a step (first and last: one)"),
}


def sampler_names() -> tuple[str, ...]:
    """The registered sampler names (a callable, so option declarations always read the current registry)."""
    return tuple(SAMPLERS)
