"""The shared diffusion prior: a conditional Gaussian diffusion over (z-normalised) generator latents.

``DiffusionPrior`` owns the network, the schedule buffers and the latent statistics. Latents go
in and come out in the generator's own units; internally they are z-normalised with the stored
``latent_mean``/``latent_std`` (clip2latent's convention). Conditions are used raw unless
``normalize_cond`` asks for unit length (the paper's models were trained on raw CLIP embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap.config import option
from latentmap.interfaces import PriorShape
from latentmap.precision import BFLOAT16, FLOAT32, autocast, precision_option
from latentmap.prior import samplers
from latentmap.prior.samplers import sampler_names
from latentmap.prior.schedule import BUFFER_NAMES, SCHEDULE_KINDS, Schedule, make_schedule, spacing_names
from latentmap.prior.transformer_prior import TransformerPrior, TransformerPriorOptions

OBJECTIVES = ("x0", "noise")


@dataclass
class DiffusionOptions(TransformerPriorOptions):
    """The diffusion prior's options: a recipe's ``prior:`` section. Defaults are the paper's (clip2latent
    ``mid``, 48,767,872 trainable parameters for 512-d latents and conditions)."""

    timesteps: int = option(1000, min=1, help="diffusion timesteps")
    schedule: str = option("cosine", choices=SCHEDULE_KINDS, help="beta schedule")
    objective: str = option("x0", choices=OBJECTIVES, help="what the network predicts: the clean latent or the noise")


@dataclass
class DiffusionSampling:
    """How the diffusion prior samples: a recipe's ``validation.sampling`` / ``sample.sampling``, ``--steps`` etc."""

    steps: int | None = option(25, min=1, help="denoising steps, the schedule respaced by `spacing` (none: every timestep)")
    sampler: str = option("dpmpp_2m", choices=sampler_names, help="sampler (see latentmap.prior.samplers)")
    spacing: str = option("uniform", choices=spacing_names,
                          help="where the steps fall in t: uniform, leading (clip2latent's), trailing, logsnr, karras "
                               "(latentmap.prior.schedule.SPACINGS; docs/prior.md)")
    guidance: float = option(1.0, help="classifier-free guidance scale (1: conditional prediction only)")
    eta: float = option(0.0, min=0.0, help="DDIM noise (0: deterministic given the start noise)")
    precision: str = precision_option(FLOAT32, choices=(FLOAT32, BFLOAT16),
                                      help="arithmetic of the network's matrix products while sampling: float32, or "
                                           "bfloat16 (autocast: 1.6-1.9x faster on a CPU with avx512_bf16; for CPUs "
                                           "without native bfloat16 not advised; samples ~1% (relative RMS) from "
                                           "float32's; docs/prior.md)")


class DiffusionPrior(TransformerPrior):
    """Condition embedding -> generator latent, by DDPM over z-normalised latents.

    Buffers: the 12 schedule tables (DALLE2's names), ``latent_mean``/``latent_std`` of shape
    (tokens, latent_dim). Parameters: ``net.*`` (:class:`PriorNetwork`).
    """

    name = "diffusion"
    Options = DiffusionOptions
    Sampling = DiffusionSampling

    def __init__(self, shape: PriorShape, options: DiffusionOptions | None = None) -> None:
        super().__init__(shape, options)
        o = self.options
        self.net = self.build_network(o.timesteps)
        for buffer_name, table in make_schedule(o.schedule, o.timesteps).buffers().items():
            self.register_buffer(buffer_name, table)

    @staticmethod
    def expected_state_shapes(shape: PriorShape, options: DiffusionOptions) -> dict[str, tuple[int, ...]]:
        """Every state-dict key of a prior with this shape and options and its shape, without allocating weights."""
        with torch.device("meta"):
            return {name: tuple(t.shape) for name, t in DiffusionPrior(shape, options).state_dict().items()}

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
        self.check_latents(latents)
        t, noise, keep = self.training_draws(latents, generator, self.draw_timesteps)
        return self.loss_given(latents, cond, t=t, noise=noise, keep=keep)

    def draw_timesteps(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``batch`` training timesteps, uniform over 0..T−1."""
        return torch.randint(0, self.options.timesteps, (batch,), generator=generator, device=device)

    def loss_given(self, latents: Tensor, cond: Tensor, *, t: Tensor, noise: Tensor, keep: Tensor) -> Tensor:
        """The training loss for explicit draws: timesteps t (B,), noise, condition keep mask (B,) bool."""
        self.check_latents(latents)
        cond = self.prepare_cond(cond, latents.shape[0])
        x0 = self.normalize_latents(latents.to(self.latent_mean))
        noise = noise.reshape(x0.shape).to(x0)
        prediction = self.net(self.q_sample(x0, t, noise), t, cond, keep.to(torch.bool))
        target = x0 if self.options.objective == "x0" else noise
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
        if self.options.objective == "x0":
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
        self.check_latents(x_t)
        self.check_guidance(guidance)
        cond = self.prepare_cond(cond, x_t.shape[0])
        t = self._timestep_tensor(t, x_t.shape[0], x_t.device)
        return self.predict_x0(x_t, t, self.guided_output(x_t, t, cond, guidance=guidance))

    def schedule(self) -> Schedule:
        """The full schedule as stored in this prior's buffers (imported drift included)."""
        return Schedule.from_buffers({name: getattr(self, name) for name in BUFFER_NAMES})

    def sampling_schedule(self, sampler: str, steps: int | None, spacing: str = "uniform") -> Schedule:
        """The schedule ``sampler`` walks for ``steps`` (None: every timestep) placed by ``spacing``, from the stored one."""
        return samplers.SAMPLERS[sampler].schedule(self.schedule(), steps, spacing)

    def guided_denoiser(self, cond: Tensor, guidance: float = 1.0, *, cache: bool = True) -> samplers.DenoiseFn:
        """``(x_t, t) -> x̂_0``: the guided x0 estimate for fixed, prepared conditions (B, cond_dim), as a sampler calls it.

        Conditional and null halves go through the network in one batched pass (only the
        conditional one at guidance 1). ``cache`` computes the condition token's keys and values
        once (:meth:`PriorNetwork.condition_cache`), and the null half shares one timestep token:
        the same prediction within float32 rounding for 5 instead of 8 token rows per candidate
        and layer (one w token; :meth:`PriorNetwork.forward_cached`).
        """
        batch = cond.shape[0]
        ones = torch.ones(batch, dtype=torch.bool, device=cond.device)
        keep = ones if guidance == 1.0 else torch.cat((ones, torch.zeros_like(ones)))
        conds = cond if guidance == 1.0 else torch.cat((cond, cond))
        if cache:
            condition = self.net.condition_cache(conds, keep)

            def network(x_t: Tensor, t: Tensor) -> Tensor:
                return self.net(x_t, t, conds, keep, condition)
        else:

            def network(x_t: Tensor, t: Tensor) -> Tensor:
                return self.net(x_t, t, conds, keep)

        def denoise(x_t: Tensor, t: Tensor) -> Tensor:
            t = self._timestep_tensor(t, x_t.shape[0], x_t.device)
            if guidance == 1.0:
                return self.predict_x0(x_t, t, network(x_t, t))
            conditional, null = network(torch.cat((x_t, x_t)), torch.cat((t, t))).chunk(2, dim=0)
            return self.predict_x0(x_t, t, null + (conditional - null) * guidance)

        return denoise

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        settings: DiffusionSampling | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: samplers.Callback | None = None,
        noise: samplers.NoiseFn | None = None,
    ) -> Tensor:
        """Latents (B, tokens, latent_dim) in generator units for conditions (B, cond_dim).

        ``settings`` (default: :class:`DiffusionSampling`'s) pick the sampler from
        :data:`~latentmap.prior.samplers.SAMPLERS`, the respaced step count, the guidance scale and
        the precision. ``noise`` replaces the random draws (e.g. :class:`~latentmap.prior.samplers.RecordedNoise`).
        """
        settings = settings if settings is not None else self.sampling()
        self.check_guidance(settings.guidance)
        cond = self.prepare_cond(cond)
        schedule = self.sampling_schedule(settings.sampler, settings.steps, settings.spacing)
        noise = noise if noise is not None else samplers.RandomNoise(generator, self.latent_mean.device)
        x = noise((cond.shape[0], self.shape.tokens, self.shape.latent_dim)).to(self.latent_mean)
        walk = samplers.SAMPLERS[settings.sampler].walk
        # bfloat16: one autocast around the whole run, so the weights are cast once and reused by every step;
        # matrix products in bfloat16, LayerNorm, softmax, the residual stream and the sampler stay float32
        with autocast(settings.precision, self.latent_mean.device):
            denoise = self.guided_denoiser(cond, settings.guidance)
            x = walk(denoise, x, schedule, noise=noise, eta=settings.eta, callback=callback)
        return self.denormalize_latents(x)

    def extra_repr(self) -> str:
        s = self.shape
        return f"tokens={s.tokens}, latent_dim={s.latent_dim}, cond_dim={s.cond_dim}, timesteps={self.options.timesteps}"
