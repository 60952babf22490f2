"""The flow prior: conditional flow matching on the straight path from noise to latents (rectified flow).

In z-normalised latent units, with data x1 (a training latent), noise x0 ~ N(0, I) drawn independently
and t in [0, 1], the path is x_t = (1 − t)·x0 + t·x1 (Lipman et al. 2022, the conditional OT path with
σ_min = 0; Liu et al. 2022, rectified flow). Its velocity is dx_t/dt = x1 − x0, and the marginal field
v(x, t, c) = E[x1 − x0 | x_t = x, c] carries N(0, I) at t = 0 to the latents' distribution given c at
t = 1. Sampling integrates it with a few steps of an ODE solver (:mod:`latentmap_flow.samplers`).

What the network predicts: x1, and the velocity is derived from it. Since x0 = (x_t − t·x1)/(1 − t),
x1 − x0 = (x1 − x_t)/(1 − t), so v = (E[x1 | x_t, c] − x_t)/(1 − t): regressing the network onto x1
(mean squared error, every t weighted alike) learns the same field. Why not regress onto x1 − x0: the
transformer (``latentmap.PriorNetwork``, the DALL-E 2 prior clip2latent trains to predict clean latents)
reads its output off learned query tokens after LayerNorm'd attention, so a prediction that must carry
x_t through at its own scale (v = E[x1 | c] − x_t at t = 0) is hard for it to learn, and a clean latent
is what it is built for. Measured (docs/flow.md): on a toy linear map, samples' matched/shuffled error
0.010 for x1 against 0.084 for velocity after the same 400 steps; in the shapes world (a small prior,
800 steps) colour accuracy at 4 Euler steps 83% against 69%. The division by 1 − t never reaches t = 1:
no solver here evaluates the field there (Heun's last step is Euler), and at the last grid time 1 − h
an Euler step of h moves x_t exactly onto the predicted x1, so the network's error is not amplified.
One Euler step from t = 0 gives the network's E[x1 | c], the conditional mean.

The transformer is the diffusion prior's, with its integer-timestep embedding table replaced by a
continuous one (:class:`TimeEmbedding`): the flow is trained at every real t in [0, 1], and a table of
rounded times would leave rarely drawn buckets untrained (under logit-normal time sampling almost no
draw falls near t = 0, where every sample starts).

Distillation (``teacher``): the data latent x1 is replaced by a teacher flow prior's guided ODE solution
from the same noise x0, so the pairs are coupled and the path straight (reflow, Liu et al. 2022); the
student, started from the teacher's weights, then samples in one or two Euler steps at guidance 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import latentmap
from latentmap import (  # the plugin API: latentmap's top level
    PriorShape,
    TransformerPrior,
    TransformerPriorOptions,
    option,
)
from latentmap_flow.samplers import SOLVERS, solver_names, time_grid

__all__ = ["TIME_SAMPLING", "FlowOptions", "FlowPrior", "FlowSampling", "TimeEmbedding", "load_teacher"]

TIME_SAMPLING = ("uniform", "logit-normal")
TIME_SCALE = 1000.0  # t in [0, 1] is embedded as 1000·t, the range of the diffusion prior's timesteps


@dataclass
class FlowOptions(TransformerPriorOptions):
    """The flow prior's options: a recipe's ``prior:`` section for ``name: flow`` (stored in checkpoints).

    The transformer's size and the treatment of conditions are the shared ones of every transformer
    prior (``latentmap.TransformerPriorOptions``, the paper's size by default); the time distribution is its own.
    """

    time_sampling: str = option("uniform", choices=TIME_SAMPLING,
                                help="how training draws t: uniform on [0, 1], or logit-normal (the sigmoid of a "
                                     "standard normal: more weight mid-path, fewer draws near the ends)")
    teacher: str | None = option(None, identity=False, path="file",
                                 help="distil this flow checkpoint (a path; in a recipe relative to the recipe's folder, "
                                      "else to the working directory): train on the straight path from each noise to the teacher's solution "
                                      "from that noise (reflow), starting from the teacher's weights; the student then "
                                      "samples in 1-2 Euler steps (docs/flow.md#distillation-reflow)")
    teacher_steps: int = option(4, min=1, help="solver steps of the teacher's solution (with teacher)")
    teacher_sampler: str = option("euler", choices=solver_names, help="the teacher's solver (with teacher)")
    teacher_guidance: float = option(2.0, help="the teacher's classifier-free guidance (with teacher); the student "
                                               "learns the guided solution, so it samples at guidance 1")


@dataclass
class FlowSampling:
    """How the flow prior samples: a recipe's ``validation.sampling`` / ``sample.sampling``, ``--steps`` etc."""

    steps: int = option(8, min=1, help="solver steps, equal intervals of [0, 1]")
    sampler: str = option("euler", choices=solver_names,
                          help="ODE solver: euler (1 network pass a step, first order), heun (2 a step, the last "
                               "step 1; second order), midpoint (2 a step; second order)")
    guidance: float = option(1.0, help="classifier-free guidance scale (1: conditional only)")


class TimeEmbedding(nn.Module):
    """Continuous time t (B,) in [0, 1] -> (B, dim): sinusoidal features of 1000·t, then a two-layer MLP.

    Features: sin and cos of 1000·t·ω_k with ω_k = 10000^(−k/n), k < n = ⌈dim/2⌉ (the transformer's
    position encoding, applied to time). It stands in for ``PriorNetwork.time_embed``, which only
    needs a module mapping (B,) times to (B, dim).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        pairs = (dim + 1) // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(pairs) / pairs),
                             persistent=False)  # fixed by dim: not stored in checkpoints
        self.mlp = nn.Sequential(nn.Linear(2 * pairs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angles = (TIME_SCALE * t.float())[:, None] * self.frequencies[None, :]
        features = torch.cat((angles.sin(), angles.cos()), dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class FlowPrior(TransformerPrior):
    """Condition (B, cond_dim) -> latents (B, tokens, latent_dim), by flow matching on z-normalised latents.

    Parameters: ``net.*`` (``latentmap.PriorNetwork`` with ``net.time_embed`` a :class:`TimeEmbedding`).
    Buffers: ``latent_mean``/``latent_std``.
    """

    name = "flow"
    Options = FlowOptions
    Sampling = FlowSampling

    def __init__(self, shape: PriorShape, options: FlowOptions | None = None) -> None:
        super().__init__(shape, options)
        self.net = self.build_network(timesteps=1)
        self.net.time_embed = TimeEmbedding(self.options.dim)  # continuous t instead of the one-row timestep table
        # The teacher (distillation), in a tuple so that it is no submodule: not in state_dict, parameters or .to().
        self._teacher: tuple[FlowPrior, ...] = ()

    # ----------------------------------------------------------------------------- distillation
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Set the dataset's latent statistics; with ``teacher``, also load it and start from its weights.

        Only a prior built fresh for training gets its statistics set (a loaded checkpoint restores
        them with its tensors), so this is where a student meets its teacher: before the trainer
        copies the prior for its EMA, and before a resumed run loads the student's own weights over it.
        """
        super().set_latent_stats(mean, std)
        if self.options.teacher:
            teacher = load_teacher(self.options.teacher, self)
            self.load_state_dict(teacher.state_dict(), strict=True)
            self._teacher = (teacher,)

    @property
    def teacher(self) -> FlowPrior | None:
        """The loaded teacher (``options.teacher``), or None."""
        return self._teacher[0] if self._teacher else None

    @torch.no_grad()
    def teacher_latents(self, noise: Tensor, cond: Tensor, keep: Tensor) -> Tensor:
        """The teacher's ODE solution (generator units) from ``noise`` (z-normalised) for conditions ``cond``.

        Guided by ``teacher_guidance`` where ``keep`` is True; where the condition is dropped, the
        teacher's unconditional solution (its conditional half sees the same keep mask, so guidance
        there mixes the null prediction with itself).
        """
        teacher, o = self.teacher, self.options
        if teacher is None:
            raise latentmap.LatentmapError("teacher_latents needs prior.teacher")
        if teacher.latent_mean.device != noise.device:
            teacher.to(noise.device)
        prepared = teacher.prepare_cond(cond, noise.shape[0])
        keep = keep.to(device=noise.device, dtype=torch.bool)
        cache = teacher.condition_cache(prepared, guidance=o.teacher_guidance, keep=keep)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            return teacher.velocity(x_t, t, prepared, guidance=o.teacher_guidance, keep=keep, cache=cache)

        solution = SOLVERS[o.teacher_sampler](velocity, noise.to(teacher.latent_mean), time_grid(o.teacher_steps))
        return teacher.denormalize_latents(solution)

    # ----------------------------------------------------------------------------- training
    def draw_times(self, batch: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``batch`` training times in [0, 1] by ``time_sampling``: one draw of ``batch`` numbers from ``generator``."""
        if self.options.time_sampling == "logit-normal":
            return torch.sigmoid(torch.randn(batch, generator=generator, device=device))
        return torch.rand(batch, generator=generator, device=device)

    def loss(self, latents: Tensor, cond: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss: mean squared error of the network's x1 prediction at a random time.

        Draws, in this order from ``generator``: t (B,) by ``time_sampling``, the noise x0 like the
        latents, and a per-sample keep mask with P(keep) = 1 − cond_drop_prob. With a ``teacher``,
        x1 is the teacher's solution from x0 instead of the data latent (the latents then only give
        the batch's shape): the pairs (x0, x1) are coupled, so the path is straight for the student.
        """
        self.check_latents(latents)
        t, noise, keep = self.training_draws(latents, generator, self.draw_times)
        if self.teacher is not None:  # distillation: the teacher's solution from this noise replaces the data latent
            latents = self.teacher_latents(noise, cond, keep)
        return self.loss_given(latents, cond, t=t, noise=noise, keep=keep)

    def loss_given(self, latents: Tensor, cond: Tensor, *, t: Tensor, noise: Tensor, keep: Tensor) -> Tensor:
        """The loss for explicit draws: times t (B,) in [0, 1], noise x0 like the latents, keep mask (B,) bool."""
        self.check_latents(latents)
        cond = self.prepare_cond(cond, latents.shape[0])
        x1 = self.normalize_latents(latents.to(self.latent_mean))
        x0 = noise.reshape(x1.shape).to(x1)
        t = t.to(x1)
        x_t = torch.lerp(x0, x1, t.reshape(-1, 1, 1))
        return F.mse_loss(self.net(x_t, t, cond, keep.to(torch.bool)), x1)

    # ----------------------------------------------------------------------------- sampling
    def condition_cache(self, cond: Tensor, *, guidance: float = 1.0, keep: Tensor | None = None) -> Any:
        """The network's condition cache for :meth:`velocity` calls with these prepared conditions, guidance
        and keep mask: the condition token's work (and shared timestep tokens) done once per solve instead of
        once per step (:meth:`latentmap.prior.network.PriorNetwork.condition_cache`; the same velocity to
        float32 rounding)."""
        if keep is None:
            keep = torch.ones(cond.shape[0], dtype=torch.bool, device=cond.device)
        if guidance == 1.0:
            return self.net.condition_cache(cond, keep)
        return self.net.condition_cache(cond.repeat(2, 1), torch.cat((keep, torch.zeros_like(keep))))

    def velocity(self, x: Tensor, t: float, cond: Tensor, *, guidance: float = 1.0, keep: Tensor | None = None,
                 cache: Any = None) -> Tensor:
        """The velocity (z-normalised units) at time ``t`` < 1 for prepared conditions, with guidance.

        The network's x1 predictions are guided, null + (cond − null)·guidance, which guides the
        velocity alike (it is affine in x̂1 at fixed x_t, t). At guidance 1 only the conditional half
        runs; otherwise both halves go through the network in ONE batched pass (condition kept for the
        first B rows, hidden for the last B). ``keep`` (B,) bool hides the condition of the rows where
        it is False in the conditional half too (default: every row keeps it). ``cache``: made by
        :meth:`condition_cache` for the same conditions, guidance and keep mask.
        """
        batch = x.shape[0]
        times = torch.full((batch,), float(t), device=x.device, dtype=x.dtype)
        if keep is None:
            keep = torch.ones(batch, dtype=torch.bool, device=x.device)
        if guidance == 1.0:
            out = self.net(x, times, cond, keep, cache)
        else:
            both = torch.cat((keep, torch.zeros_like(keep)))
            conditional, null = self.net(x.repeat(2, 1, 1), times.repeat(2), cond.repeat(2, 1), both, cache).chunk(2)
            out = torch.lerp(null, conditional, guidance)
        return (out - x) / (1.0 - t)  # v = (x̂1 − x_t)/(1 − t); solvers never ask at t = 1

    @torch.no_grad()
    def sample(self, cond: Tensor, settings: FlowSampling | None = None, *, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """Latents (B, tokens, latent_dim) in generator units for conditions (B, cond_dim).

        Starts from x0 ~ N(0, I) drawn from ``generator`` (or the given ``noise``, z-normalised units)
        and integrates the guided velocity from t = 0 to 1 with ``settings.steps`` steps of
        ``settings.sampler``; deterministic given the start noise.
        """
        settings = settings if settings is not None else self.sampling()
        self.check_guidance(settings.guidance)
        cond = self.prepare_cond(cond)
        shape = (cond.shape[0], self.shape.tokens, self.shape.latent_dim)
        if noise is None:
            draw_device = generator.device if generator is not None else self.latent_mean.device
            noise = torch.randn(shape, generator=generator, device=draw_device)
        elif tuple(noise.shape) != shape:
            raise latentmap.LatentmapError(f"start noise has shape {tuple(noise.shape)}, expected {shape}")
        x = noise.to(self.latent_mean)
        cache = self.condition_cache(cond, guidance=settings.guidance)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            return self.velocity(x_t, t, cond, guidance=settings.guidance, cache=cache)

        return self.denormalize_latents(SOLVERS[settings.sampler](velocity, x, time_grid(settings.steps)))

    def extra_repr(self) -> str:
        s = self.shape
        return f"tokens={s.tokens}, latent_dim={s.latent_dim}, cond_dim={s.cond_dim}, time_sampling={self.options.time_sampling}"


def load_teacher(path: str, student: FlowPrior) -> FlowPrior:
    """The flow checkpoint at ``path`` (``prior.teacher``), checked to fit ``student``; LatentmapError otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise latentmap.LatentmapError(f"prior.teacher: flow checkpoint not found: {path} (looked in {Path.cwd()}; "
                                       "relative paths resolve against the working directory)")
    teacher, _ = latentmap.load_prior(file)
    if teacher.name != "flow":
        raise latentmap.LatentmapError(f"prior.teacher: {path} holds a {teacher.name!r} prior; distillation needs a flow prior")
    theirs, ours = teacher.options, student.options
    differences = [f"{key} {getattr(theirs, key)!r} (student {getattr(ours, key)!r})"
                   for key in ("dim", "depth", "heads", "dim_head", "ff_mult", "normalize_cond", "text_correction")
                   if getattr(theirs, key) != getattr(ours, key)]
    if teacher.shape != student.shape:
        differences.insert(0, f"shape {teacher.shape} (student {student.shape})")
    if not differences and not (torch.allclose(teacher.latent_mean.cpu(), student.latent_mean.cpu())
                                and torch.allclose(teacher.latent_std.cpu(), student.latent_std.cpu())):
        differences.append("latent statistics (another dataset)")
    if differences:
        raise latentmap.LatentmapError(f"prior.teacher: {path} does not fit the student: " + "; ".join(differences)
                                       + "; the student starts from the teacher's weights, so both need the same size")
    try:
        teacher.check_guidance(ours.teacher_guidance)
    except latentmap.LatentmapError as exc:
        raise latentmap.LatentmapError(f"prior.teacher_guidance: {exc} (the teacher {path})") from None
    return teacher.eval().requires_grad_(False)
