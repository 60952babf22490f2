"""Noise schedules of the Gaussian diffusion, and respacing them to fewer steps.

A :class:`Schedule` is the table of per-step coefficients a sampler walks through, together with
``timesteps``: the index into the original schedule each step corresponds to (the network's time
embedding is always looked up with the original index). Everything is derived in float64 and
cast to float32, as DALLE2-pytorch 0.2.38 did: computing in float32 instead moves the cosine
betas by up to 1.4e-3 relative at 1000 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from latentmap.errors import LatentmapError

SCHEDULE_KINDS = ("cosine", "linear")

# The buffer names a prior stores (DALLE2's names, so imported checkpoints keep their values).
BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

# Floor under the posterior variance before taking its log (the variance is exactly 0 at t = 0).
LOG_VARIANCE_FLOOR = 1e-20


def cosine_betas(timesteps: int, offset: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule, float64: ᾱ(s) = cos²((s/T + o)/(1 + o) · π/2) / ᾱ(0)."""
    s = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((s / timesteps) + offset) / (1 + offset) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


def linear_betas(timesteps: int) -> Tensor:
    """The DDPM linear schedule, 1e-4 to 0.02 at 1000 steps, scaled so other lengths cover the same range.

    Clipped at 0.999 like the cosine schedule: below 21 steps the scaled end would reach β = 1
    (ᾱ = 0, no signal left, and a predict-noise model could not be inverted).
    """
    scale = 1000 / timesteps
    return torch.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=torch.float64).clip(max=0.999)


def make_betas(kind: str, timesteps: int) -> Tensor:
    """Betas (float64) of a named schedule."""
    if kind == "cosine":
        return cosine_betas(timesteps)
    if kind == "linear":
        return linear_betas(timesteps)
    raise LatentmapError(f"unknown beta schedule {kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")


@dataclass
class Schedule:
    """Per-step diffusion coefficients (float32, one entry per sampling step, ascending in time).

    ``timesteps[j]`` is the original timestep of step ``j``; ``len(timesteps)`` steps in all.
    """

    timesteps: Tensor
    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    log_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def buffers(self) -> dict[str, Tensor]:
        """The coefficient tables by name (no ``timesteps``)."""
        return {name: getattr(self, name) for name in BUFFER_NAMES}

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def from_buffers(cls, buffers: dict[str, Tensor], timesteps: Tensor | None = None) -> "Schedule":
        """Wrap stored buffers (e.g. a prior's, possibly EMA-drifted) without recomputing anything."""
        n = buffers["betas"].shape[0]
        if timesteps is None:
            timesteps = torch.arange(n, device=buffers["betas"].device)
        return cls(timesteps=timesteps, **{name: buffers[name] for name in BUFFER_NAMES})


def schedule_from_betas(betas: Tensor, timesteps: Tensor | None = None) -> Schedule:
    """Derive every coefficient from float64 betas, then cast to float32."""
    betas = betas.to(torch.float64)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    table = {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": torch.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / alphas_cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(posterior_variance.clamp(min=LOG_VARIANCE_FLOOR)),
        "posterior_mean_coef1": betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    }
    if timesteps is None:
        timesteps = torch.arange(betas.shape[0])
    return Schedule(timesteps=timesteps.long(), **{k: v.to(torch.float32) for k, v in table.items()})


def make_schedule(kind: str, timesteps: int) -> Schedule:
    """The full schedule of ``timesteps`` steps."""
    if timesteps < 1:
        raise LatentmapError(f"timesteps must be at least 1, got {timesteps}")
    return schedule_from_betas(make_betas(kind, timesteps))


def spaced_timesteps(total: int, steps: int) -> Tensor:
    """``steps`` original timesteps spread evenly over 0 … total−1, always including both ends."""
    _check_steps(total, steps)
    if steps == 1:
        return torch.tensor([total - 1])
    picked = torch.linspace(0, total - 1, steps, dtype=torch.float64).round().long()
    return torch.unique(picked)


# ----------------------------------------------------------------------------- timestep spacings
# Where a sampler of ``steps`` steps evaluates the network: pure functions (ᾱ of the full schedule,
# steps) -> the visited original timesteps, strictly increasing. They read only ᾱ, so one spacing
# serves any beta schedule, in the spirit of k-diffusion's ``get_sigmas_*`` functions.


# The largest noise-to-signal ratio σ/α the log-SNR and ρ spacings start from (EDM's σ_max): at the
# cosine schedule's t = 991 of 1000, the start noise is a draw from that step's marginal to 1e-4.
SIGMA_MAX = 80.0


def _check_steps(total: int, steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1 or steps > total:
        raise LatentmapError(f"steps must be an integer from 1 to the model's {total} timesteps, got {steps!r}")


def _distinct(picked: Tensor, total: int) -> Tensor:
    """``picked`` (ascending, possibly with repeats where it was rounded) made strictly increasing within 0..total−1.

    Repeats are pushed up one timestep at a time, then, where that ran past the end, down again, so
    ``steps`` targets always give ``steps`` distinct timesteps (for steps <= total).
    """
    ts = picked.tolist()
    for j in range(1, len(ts)):
        ts[j] = max(ts[j], ts[j - 1] + 1)
    ts[-1] = min(ts[-1], total - 1)
    for j in range(len(ts) - 2, -1, -1):
        ts[j] = min(ts[j], ts[j + 1] - 1)
    return torch.tensor(ts, dtype=torch.long)


def _nearest(values: Tensor, targets: Tensor) -> Tensor:
    """Index of the entry of ``values`` (monotone, any direction) nearest each target."""
    return (values[None, :] - targets[:, None]).abs().argmin(dim=1)


def uniform_spacing(alphas_cumprod: Tensor, steps: int) -> Tensor:
    """Evenly spread in t over 0 … T−1, both ends included (the default; DDIM's "linspace")."""
    return spaced_timesteps(alphas_cumprod.shape[0], steps)


def leading_spacing(alphas_cumprod: Tensor, steps: int) -> Tensor:
    """t = 0, T/steps, …, T − T/steps: clip2latent's (and the first DDIM code's) respacing.

    It starts the walk from pure noise at t = T − T/steps, a timestep that still holds signal (ᾱ = 0.14
    at 750 of 1000, cosine), so the start is *not* a draw from that step's marginal. Measured in the
    shapes world it costs the ODE samplers accuracy (docs/prior.md); it is here to compare with.
    """
    total = alphas_cumprod.shape[0]
    _check_steps(total, steps)
    return _distinct(torch.floor(torch.arange(steps, dtype=torch.float64) * (total / steps)).long(), total)


def trailing_spacing(alphas_cumprod: Tensor, steps: int) -> Tensor:
    """t = T−1, T−1−T/steps, …, T/steps − 1 (Lin et al. 2024): starts at pure noise, spends no step at t ≈ 0.

    The last step lands on the denoised estimate from t = T/steps − 1, which evenly spaced timesteps
    reach only after one more evaluation at t = 0, where there is almost nothing left to remove.
    """
    total = alphas_cumprod.shape[0]
    _check_steps(total, steps)
    picked = torch.round(total - torch.arange(steps, dtype=torch.float64) * (total / steps)).long() - 1
    return _distinct(picked.flip(0), total)


def log_snr(alphas_cumprod: Tensor) -> Tensor:
    """λ = log(α/σ) = ½·log(ᾱ/(1 − ᾱ)) per timestep (float64), decreasing in t."""
    a = alphas_cumprod.detach().cpu().to(torch.float64)
    return 0.5 * (torch.log(a) - torch.log1p(-a))


def logsnr_spacing(alphas_cumprod: Tensor, steps: int, sigma_max: float | None = None) -> Tensor:
    """Evenly spread in log-SNR λ from λ_min to λ(0), each at the nearest timestep (DPM-Solver's "logSNR").

    Equal λ intervals are what the exponential integrators (DDIM, DPM-Solver++) step in, so their
    error per step is alike. λ_min is −log σ_max (EDM's σ_max = 80, λ = −4.4) or λ(T−1) if higher:
    the cosine schedule's λ runs down to −9.9 at its last timestep, and over that whole range four
    steps would spend two evaluations above t = 990, in pure noise.
    """
    total = alphas_cumprod.shape[0]
    _check_steps(total, steps)
    if steps == 1:
        return torch.tensor([total - 1])
    lam = log_snr(alphas_cumprod)
    low = max(-math.log(SIGMA_MAX if sigma_max is None else sigma_max), float(lam[-1]))
    targets = torch.linspace(low, float(lam[0]), steps, dtype=torch.float64)
    return _distinct(_nearest(lam, targets).flip(0), total)


def karras_spacing(alphas_cumprod: Tensor, steps: int, rho: float = 7.0, sigma_max: float | None = None) -> Tensor:
    """EDM's ρ-spacing (Karras et al. 2022): σ_i^{1/ρ} evenly spread from σ_max^{1/ρ} to σ_min^{1/ρ}.

    σ = √((1 − ᾱ)/ᾱ) is the noise-to-signal ratio; σ_min is the schedule's at t = 0 and σ_max is EDM's
    80 (or the schedule's largest, if smaller): the cosine schedule's last timestep is at σ ≈ 2·10⁴,
    and from there ρ = 7 would spend half of four steps above σ = 1000, in pure noise. Each σ_i is
    taken at the timestep of nearest log σ; ρ = 7 crowds the steps toward low noise.
    """
    total = alphas_cumprod.shape[0]
    _check_steps(total, steps)
    if steps == 1:
        return torch.tensor([total - 1])
    log_sigma = -log_snr(alphas_cumprod)
    top = min(math.log(SIGMA_MAX if sigma_max is None else sigma_max), float(log_sigma[-1]))
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    inv_rho = 1.0 / rho
    sigmas = (math.exp(top * inv_rho) + ramp * (math.exp(float(log_sigma[0]) * inv_rho) - math.exp(top * inv_rho))) ** rho
    return _distinct(_nearest(log_sigma, sigmas.log()).flip(0), total)


# The one list of spacing names: the sampling option ``spacing`` reads it.
SPACINGS = {
    "uniform": uniform_spacing,
    "leading": leading_spacing,
    "trailing": trailing_spacing,
    "logsnr": logsnr_spacing,
    "karras": karras_spacing,
}


def spacing_names() -> tuple[str, ...]:
    """The registered spacing names (a callable, so option declarations read the current registry)."""
    return tuple(SPACINGS)


def spaced(schedule: Schedule, steps: int, spacing: str = "uniform") -> Tensor:
    """The original timesteps a ``steps``-step walk of ``schedule`` visits under ``spacing`` (ascending)."""
    if spacing not in SPACINGS:
        raise LatentmapError(f"unknown timestep spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    return SPACINGS[spacing](schedule.alphas_cumprod, steps)


def respace(schedule: Schedule, timesteps: Tensor | list[int]) -> Schedule:
    """A proper DDPM over a subset of the original timesteps.

    The respaced chain keeps the original ᾱ at each visited step and re-derives the betas between
    consecutive visited steps (β'_j = 1 − ᾱ_{t_j} / ᾱ_{t_{j−1}}), so the posterior mean *and* the
    noise variance are those of the shorter chain. ᾱ is taken from the schedule's own (float32)
    table, so a prior whose stored buffers drifted is respaced from what it holds.
    """
    total = len(schedule)
    visited = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    if visited.ndim != 1 or visited.numel() == 0:
        raise LatentmapError("respacing needs a non-empty list of timesteps")
    if bool((visited[1:] <= visited[:-1]).any()) or int(visited[0]) < 0 or int(visited[-1]) >= total:
        raise LatentmapError(
            f"respaced timesteps must be strictly increasing within 0..{total - 1}, got {visited.tolist()}"
        )
    alphas_cumprod = schedule.alphas_cumprod.detach().cpu().to(torch.float64)[visited]
    previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    betas = 1.0 - alphas_cumprod / previous
    original_timesteps = schedule.timesteps.cpu()[visited]
    return schedule_from_betas(betas, original_timesteps).to(schedule.betas.device)


def clip2latent_respace(schedule: Schedule, skip: int) -> Schedule:
    """clip2latent's ``set_timestep_skip(skip)``, quirks included (fixtures README, quirks 3–5).

    Visits t = 0, skip, …, T − skip. Betas, ᾱ, posterior variance and mean coefficients of the
    shorter chain are recomputed in float32 from the stored ᾱ, but the log variance the sampler
    draws its noise with is *not* rewritten: it stays the original single-step value at each
    visited t. Use only to reproduce clip2latent's samples; :func:`respace` is the correct chain.
    """
    total = len(schedule)
    if not isinstance(skip, int) or skip < 1 or total % skip != 0:
        raise LatentmapError(f"clip2latent respacing needs a skip that divides the {total} timesteps, got {skip!r}")
    visited = torch.arange(0, total, skip, device=schedule.betas.device)
    alphas_cumprod_visited = schedule.alphas_cumprod[visited]
    previous = torch.cat([alphas_cumprod_visited.new_ones(1), alphas_cumprod_visited[:-1]])
    betas = 1.0 - alphas_cumprod_visited / previous
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    kept = {name: buffer[visited] for name, buffer in schedule.buffers().items()}
    kept.update(
        betas=betas,
        posterior_variance=betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef1=betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    )
    return Schedule(timesteps=schedule.timesteps[visited], **kept)
