"""The shared diffusion prior: a conditional Gaussian diffusion over (z-normalised) generator latents.

``DiffusionPrior`` owns the network, the schedule buffers and the latent statistics. Latents go
in and come out in the generator's own units; internally they are z-normalised with the stored
``latent_mean``/``latent_std`` (clip2latent's convention). Conditions are used raw unless
``normalize_cond`` asks for unit length (the paper's models were trained on raw CLIP embeddings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.interfaces import Prior
from latentmap.prior import samplers as sampler_fns
from latentmap.prior.network import PriorNetwork
from latentmap.prior.schedule import (
    BUFFER_NAMES,
    SCHEDULE_KINDS,
    Schedule,
    clip2latent_respace,
    make_schedule,
    respace,
    spaced_timesteps,
)

OBJECTIVES = ("x0", "noise")


@dataclass
class PriorConfig:
    """Everything needed to rebuild a prior; JSON-ready via ``dataclasses.asdict``.

    The defaults are the paper's (clip2latent ``mid``): 48,767,872 trainable parameters.
    """

    latent_dim: int = 512  # generator latent size per token (StyleGAN w: 512)
    tokens: int = 1  # latent tokens per sample (w: 1, w3: 3)
    cond_dim: int = 512  # encoder embedding size
    dim: int = 512  # transformer width; in/out projections only when latent_dim/cond_dim differ
    depth: int = 12
    heads: int = 12
    dim_head: int = 64
    ff_mult: int = 4
    timesteps: int = 1000
    schedule: str = "cosine"  # or "linear"
    objective: str = "x0"  # or "noise"
    cond_drop_prob: float = 0.2
    normalize_cond: bool = False  # L2-normalise conditions inside the model

    def validate(self) -> None:
        """Raise a one-line LatentmapError naming the first bad field."""
        for name in ("latent_dim", "tokens", "cond_dim", "dim", "depth", "heads", "dim_head", "ff_mult", "timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LatentmapError(f"prior config: {name} must be a positive integer, got {value!r}")
        if self.schedule not in SCHEDULE_KINDS:
            raise LatentmapError(f"prior config: schedule must be one of {', '.join(SCHEDULE_KINDS)}, got {self.schedule!r}")
        if self.objective not in OBJECTIVES:
            raise LatentmapError(f"prior config: objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not 0.0 <= float(self.cond_drop_prob) < 1.0:
            raise LatentmapError(f"prior config: cond_drop_prob must be in [0, 1), got {self.cond_drop_prob!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "PriorConfig":
        """Build from a dict (e.g. checkpoint metadata), rejecting unknown keys by name."""
        merged = {**data, **overrides}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise LatentmapError(f"unknown prior option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        config = cls(**merged)
        config.validate()
        return config


class DiffusionPrior(Prior):
    """Condition embedding -> generator latent, by DDPM over z-normalised latents.

    Buffers: the 12 schedule tables (DALLE2's names), ``latent_mean``/``latent_std`` of shape
    (tokens, latent_dim). Parameters: ``net.*`` (:class:`PriorNetwork`).
    """

    name = "diffusion"

    def __init__(self, config: PriorConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        base = asdict(config) if config is not None else {}
        self.config = PriorConfig.from_dict(base, **overrides)
        c = self.config
        self.net = PriorNetwork(
            latent_dim=c.latent_dim,
            tokens=c.tokens,
            cond_dim=c.cond_dim,
            dim=c.dim,
            depth=c.depth,
            heads=c.heads,
            dim_head=c.dim_head,
            ff_mult=c.ff_mult,
            timesteps=c.timesteps,
        )
        for buffer_name, table in make_schedule(c.schedule, c.timesteps).buffers().items():
            self.register_buffer(buffer_name, table)
        self.register_buffer("latent_mean", torch.zeros(c.tokens, c.latent_dim))
        self.register_buffer("latent_std", torch.ones(c.tokens, c.latent_dim))

    @staticmethod
    def expected_state_shapes(config: PriorConfig) -> dict[str, tuple[int, ...]]:
        """Every state-dict key of a prior with ``config`` and its shape, without allocating weights."""
        with torch.device("meta"):
            return {name: tuple(t.shape) for name, t in DiffusionPrior(config).state_dict().items()}

    # ----------------------------------------------------------------- statistics and shapes
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store the training latents' per-feature mean and std (anything reshapeable to (tokens, latent_dim))."""
        shape = (self.config.tokens, self.config.latent_dim)
        for label, value in (("mean", mean), ("std", std)):
            if value.numel() != shape[0] * shape[1]:
                raise LatentmapError(f"latent {label} has shape {tuple(value.shape)}, expected {shape}")
        std = std.reshape(shape).to(self.latent_std)
        if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise LatentmapError("latent std must be finite and positive in every feature")
        self.latent_mean.copy_(mean.reshape(shape).to(self.latent_mean))
        self.latent_std.copy_(std)

    def normalize_latents(self, latents: Tensor) -> Tensor:
        """Generator units -> the z-normalised space the diffusion runs in."""
        return (latents - self.latent_mean) / self.latent_std

    def denormalize_latents(self, latents: Tensor) -> Tensor:
        """The z-normalised space -> generator units."""
        return latents * self.latent_std + self.latent_mean

    def _check_latents(self, latents: Tensor) -> None:
        c = self.config
        if latents.ndim != 3 or latents.shape[1] != c.tokens or latents.shape[2] != c.latent_dim:
            raise LatentmapError(
                f"prior expects latents of shape (B, {c.tokens}, {c.latent_dim}), got {tuple(latents.shape)}"
            )

    def _prepare_cond(self, cond: Tensor, batch: int | None = None) -> Tensor:
        c = self.config
        if cond.ndim != 2 or cond.shape[1] != c.cond_dim:
            raise LatentmapError(
                f"condition has shape {tuple(cond.shape)}, but this prior expects (B, {c.cond_dim}) "
                f"embeddings (was it trained with a different encoder?)"
            )
        if batch is not None and cond.shape[0] != batch:
            raise LatentmapError(f"{cond.shape[0]} conditions for {batch} latents")
        cond = cond.to(self.latent_mean)
        return F.normalize(cond, dim=-1) if c.normalize_cond else cond

    def _check_guidance(self, guidance: float) -> None:
        if guidance != 1.0 and self.config.cond_drop_prob == 0.0:
            raise LatentmapError(
                f"guidance {guidance} needs a prior trained with condition dropout, but cond_drop_prob is 0; use guidance 1"
            )

    # ----------------------------------------------------------------------------- training
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward diffusion: √ᾱ_t · x0 + √(1 − ᾱ_t) · ε (normalised space)."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return self.sqrt_alphas_cumprod[t].reshape(shape) * x0 + self.sqrt_one_minus_alphas_cumprod[t].reshape(shape) * noise

    def loss(self, latents: Tensor, cond: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared error of the network's prediction (x0 or noise) at a random timestep.

        Draws, in this order from ``generator``: t ~ U{0..T−1} (B,), noise like the latents, and a
        per-sample keep mask with P(keep) = 1 − cond_drop_prob.
        """
        self._check_latents(latents)
        batch = latents.shape[0]
        device = self.latent_mean.device
        draw_device = generator.device if generator is not None else device
        t = torch.randint(0, self.config.timesteps, (batch,), generator=generator, device=draw_device).to(device)
        noise = torch.randn(latents.shape, generator=generator, device=draw_device).to(device)
        keep = (torch.rand(batch, generator=generator, device=draw_device) >= self.config.cond_drop_prob).to(device)
        return self.loss_given(latents, cond, t=t, noise=noise, keep=keep)

    def loss_given(self, latents: Tensor, cond: Tensor, *, t: Tensor, noise: Tensor, keep: Tensor) -> Tensor:
        """The training loss for explicit draws: timesteps t (B,), noise, condition keep mask (B,) bool."""
        self._check_latents(latents)
        cond = self._prepare_cond(cond, latents.shape[0])
        x0 = self.normalize_latents(latents.to(self.latent_mean))
        noise = noise.reshape(x0.shape).to(x0)
        prediction = self.net(self.q_sample(x0, t, noise), t, cond, keep.to(torch.bool))
        target = x0 if self.config.objective == "x0" else noise
        return F.mse_loss(prediction, target)

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t−1} | x_t, x0) (variances shaped to broadcast)."""
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        mean = self.posterior_mean_coef1[t].reshape(shape) * x0 + self.posterior_mean_coef2[t].reshape(shape) * x_t
        return mean, self.posterior_variance[t].reshape(shape), self.posterior_log_variance_clipped[t].reshape(shape)

    # ----------------------------------------------------------------------------- sampling
    def _timestep_tensor(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device, dtype=torch.long)
        return t.expand(batch) if t.ndim == 0 else t

    def predict_x0(self, x_t: Tensor, t: Tensor, output: Tensor) -> Tensor:
        """The network output as an x0 estimate (identity for objective x0)."""
        if self.config.objective == "x0":
            return output
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        return (
            self.sqrt_recip_alphas_cumprod[t].reshape(shape) * x_t
            - self.sqrt_recipm1_alphas_cumprod[t].reshape(shape) * output
        )

    def guided_output(self, x_t: Tensor, t: Tensor | int, cond: Tensor, *, guidance: float = 1.0) -> Tensor:
        """Raw network output with classifier-free guidance: null + (cond − null)·guidance.

        At guidance 1 only the conditional pass runs; otherwise both halves go through the network
        in ONE batched pass (conditions kept for the first half, dropped for the second).
        """
        batch = x_t.shape[0]
        t = self._timestep_tensor(t, batch, x_t.device)
        if guidance == 1.0:
            return self.net(x_t, t, cond, torch.ones(batch, dtype=torch.bool, device=x_t.device))
        keep = torch.cat((torch.ones(batch, dtype=torch.bool), torch.zeros(batch, dtype=torch.bool))).to(x_t.device)
        both = self.net(torch.cat((x_t, x_t)), torch.cat((t, t)), torch.cat((cond, cond)), keep)
        conditional, null = both.chunk(2, dim=0)
        return null + (conditional - null) * guidance

    def denoise(self, x_t: Tensor, t: Tensor | int, cond: Tensor, *, guidance: float = 1.0) -> Tensor:
        """x0 estimate (normalised space) of the guided prediction at timestep(s) ``t``."""
        self._check_latents(x_t)
        self._check_guidance(guidance)
        cond = self._prepare_cond(cond, x_t.shape[0])
        t = self._timestep_tensor(t, x_t.shape[0], x_t.device)
        return self.predict_x0(x_t, t, self.guided_output(x_t, t, cond, guidance=guidance))

    def schedule(self) -> Schedule:
        """The full schedule as stored in this prior's buffers (imported drift included)."""
        return Schedule.from_buffers({name: getattr(self, name) for name in BUFFER_NAMES})

    def sampling_schedule(self, sampler: str, steps: int | None) -> Schedule:
        """The schedule a sampler walks: all timesteps, evenly respaced ones, or clip2latent's skip."""
        full = self.schedule()
        total = self.config.timesteps
        if sampler == "clip2latent":
            steps = total if steps is None else steps
            if not isinstance(steps, int) or steps < 1 or total % steps != 0:
                raise LatentmapError(
                    f"the clip2latent sampler needs steps that divide the model's {total} timesteps, got {steps!r}"
                )
            return clip2latent_respace(full, total // steps)
        if steps is None or steps == total:
            spaced_timesteps(total, total)
            return full
        return respace(full, spaced_timesteps(total, steps))

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        *,
        steps: int | None = None,
        sampler: str = "ddpm",
        guidance: float = 1.0,
        eta: float = 0.0,
        truncation: float = 1.0,
        generator: torch.Generator | None = None,
        callback: sampler_fns.Callback | None = None,
        noise: sampler_fns.NoiseFn | None = None,
    ) -> Tensor:
        """Latents (B, tokens, latent_dim) in generator units for conditions (B, cond_dim).

        ``steps=None`` visits every timestep; fewer respaces the chain. ``sampler``: ``ddpm``
        (ancestral), ``ddim`` (``eta``), or ``clip2latent`` (its quirky respaced sampler, for
        checking imported models). ``truncation`` ψ lerps toward ``latent_mean``. ``noise``
        replaces the random draws (e.g. :class:`~latentmap.prior.samplers.RecordedNoise`).
        """
        if sampler not in sampler_fns.SAMPLERS:
            raise LatentmapError(f"unknown sampler {sampler!r}; expected one of {', '.join(sampler_fns.SAMPLERS)}")
        self._check_guidance(guidance)
        cond = self._prepare_cond(cond)
        schedule = self.sampling_schedule(sampler, steps)
        c = self.config
        noise = noise if noise is not None else sampler_fns.RandomNoise(generator, self.latent_mean.device)
        x = noise((cond.shape[0], c.tokens, c.latent_dim)).to(self.latent_mean)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            return self.predict_x0(x_t, t, self.guided_output(x_t, t, cond, guidance=guidance))

        if sampler == "ddim":
            x = sampler_fns.ddim(denoise, x, schedule, noise=noise, eta=eta, callback=callback)
        elif sampler == "clip2latent":
            x = sampler_fns.clip2latent_compat(denoise, x, schedule, noise=noise, callback=callback)
        else:
            x = sampler_fns.ddpm(denoise, x, schedule, noise=noise, callback=callback)
        latents = self.denormalize_latents(x)
        return self.latent_mean + truncation * (latents - self.latent_mean)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def extra_repr(self) -> str:
        c = self.config
        return f"tokens={c.tokens}, latent_dim={c.latent_dim}, cond_dim={c.cond_dim}, timesteps={c.timesteps}"
