"""The training loop: one optimiser step per batch, with EMA, augmentation, logging and checkpoints.

``Trainer`` receives ready objects (prior, data, optimiser, EMA, world) and owns only the order of
operations; ``latentmap.train.train`` builds those objects from a recipe. Each step:

1. next batch of (latents, image embeddings) from the shard reader (float32, on the device);
2. LAFITE noise on the conditions (``train.noise_alpha``), from the step's own random stream;
3. the prior's loss (it draws timesteps, noise and the condition-dropout mask from the same stream),
   under bfloat16 autocast on a GPU (``train.precision``, latentmap.precision);
4. backward, gradient clipping (the clipped norm is also the divergence check: it is identical on
   every rank after DDP's all-reduce, so all ranks stop together), AdamW step, EMA update;
5. every ``log_every`` steps a metrics line, every ``checkpoint_every`` a full training state and
   ``last.safetensors``, every ``validation.every`` a validation and maybe ``best.safetensors``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentmap.data.augment import lafite_noise
from latentmap.distributed import World
from latentmap.errors import LatentmapError
from latentmap.interfaces import Prior
from latentmap.precision import FLOAT32, autocast
from latentmap.training.ema import EMA
from latentmap.training.metrics import MetricsLog
from latentmap.training.optim import step_generator
from latentmap.training.state import (
    add_prefix,
    optimizer_from_state,
    optimizer_to_state,
    prune_states,
    rng_from_state,
    rng_to_state,
    save_state,
    split_prefix,
    state_path,
)


class LossModule(nn.Module):
    """Makes ``prior.loss`` the ``forward`` of a module, which is what DDP hooks into."""

    def __init__(self, prior: Prior) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, latents: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
        return self.prior.loss(latents, cond, generator=generator)


@dataclass
class LoopSettings:
    """The recipe values the loop itself uses."""

    steps: int
    seed: int = 0
    noise_alpha: float = 1.0
    grad_clip: float = 1.0
    precision: str = FLOAT32  # latentmap.precision's vocabulary, resolved (never auto)
    log_every: int = 100
    checkpoint_every: int = 10_000
    validate_every: int = 5000
    keep_states: int = 2
    progress: bool = True


@dataclass
class Position:
    """Where training stands: optimiser steps done and the next batch to read."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_score: float = -math.inf
    best_step: int = -1
    window_loss: float = 0.0  # sum of the losses since the last metrics line (averaged over ranks)
    window_steps: int = 0  # steps since the last metrics line: a resume continues the same window


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    final_loss: float
    best_score: float
    best_step: int
    out: Path
    validations: list[dict[str, float]] = field(default_factory=list)


class DivergedError(LatentmapError):
    """The loss or gradient became NaN or infinite."""


BatchSource = Callable[[int, int], Iterator[tuple[Tensor, Tensor]]]  # (epoch, start_batch) -> batches


class Trainer:
    """Runs steps until ``settings.steps``; rank 0 writes every file.

    ``validate(ema_model, step)`` returns validation metrics (rank 0 only; may be None to skip);
    ``save_prior(path, ema_model, extra_metadata)`` writes a shippable prior file.
    """

    def __init__(
        self,
        *,
        prior: Prior,
        ema: EMA,
        optimizer: torch.optim.Optimizer,
        batches: BatchSource,
        world: World,
        settings: LoopSettings,
        out: Path,
        metrics: MetricsLog | None,
        validate: Callable[[Prior, int], dict[str, float]] | None = None,
        save_prior: Callable[[Path, Prior, dict[str, Any]], None] | None = None,
        state_info: dict[str, Any] | None = None,
    ) -> None:
        self.prior = prior
        self.ema = ema
        self.optimizer = optimizer
        self.batches = batches
        self.world = world
        self.settings = settings
        self.out = out
        self.states_dir = out / "states"
        self.metrics = metrics
        self.validate_fn = validate
        self.save_prior_fn = save_prior
        self.state_info = state_info or {}
        self.position = Position()
        self.model: nn.Module = LossModule(prior)
        if world.distributed:
            device_ids = [world.device.index] if world.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.validations: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Everything needed to continue exactly: (tensors, JSON info)."""
        opt_tensors, opt_info = optimizer_to_state(self.optimizer)
        rng_tensors, rng_info = rng_to_state()
        tensors = {
            **add_prefix(self.prior.state_dict(), "model"),
            **add_prefix(self.ema.state_tensors(), "ema"),
            **add_prefix(opt_tensors, "optim"),
            **add_prefix(rng_tensors, "rng"),
        }
        p = self.position
        info = {
            **self.state_info,
            "step": p.step,
            "epoch": p.epoch,
            "batch": p.batch,
            "best_score": p.best_score if math.isfinite(p.best_score) else None,
            "best_step": p.best_step,
            "loss_window": {"loss_sum": p.window_loss, "steps": p.window_steps},
            "ema": self.ema.state_info(),
            "optimizer": opt_info,
            "rng": rng_info,
            "world_size": self.world.size,
        }
        return tensors, info

    def load_state(self, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
        """Restore what ``state`` captured (on every rank)."""
        self.prior.load_state_dict(split_prefix(tensors, "model"))
        self.ema.load(split_prefix(tensors, "ema"), info["ema"])
        optimizer_from_state(self.optimizer, split_prefix(tensors, "optim"), info["optimizer"])
        rng_from_state(split_prefix(tensors, "rng"), info["rng"])
        best = info.get("best_score")
        window = info.get("loss_window", {"loss_sum": 0.0, "steps": 0})  # absent in states before 2026-11-30
        self.position = Position(
            step=int(info["step"]),
            epoch=int(info["epoch"]),
            batch=int(info["batch"]),
            best_score=-math.inf if best is None else float(best),
            best_step=int(info.get("best_step", -1)),
            window_loss=float(window["loss_sum"]),
            window_steps=int(window["steps"]),
        )

    def save_checkpoint(self) -> Path | None:
        """Write the training state and ``last.safetensors`` (rank 0)."""
        if not self.world.is_main:
            return None
        path = state_path(self.states_dir, self.position.step)
        tensors, info = self.state()
        save_state(path, tensors, info)
        prune_states(self.states_dir, self.settings.keep_states)
        if self.save_prior_fn is not None:
            self.save_prior_fn(self.out / "last.safetensors", self.ema.model, {"step": self.position.step})
        return path

    # ------------------------------------------------------------------------------- loop
    def _batch_stream(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches forever from the saved position, advancing ``position.epoch/batch``."""
        p = self.position
        while True:
            produced = False
            for latents, embeds in self.batches(p.epoch, p.batch):
                produced = True
                p.batch += 1
                yield latents, embeds
            if not produced and p.batch == 0:
                raise LatentmapError("the dataset yields no batches (fewer samples than one batch?)")
            p.epoch += 1
            p.batch = 0

    def train_step(self, latents: Tensor, embeds: Tensor) -> tuple[float, float]:
        """One optimiser step; returns (loss, gradient norm before clipping)."""
        s, device = self.settings, self.world.device
        rng = step_generator(s.seed, self.world.rank, self.position.step, device)
        latents = latents.to(device, non_blocking=True)
        cond = lafite_noise(embeds.to(device, non_blocking=True), s.noise_alpha, generator=rng)
        with autocast(s.precision, device):
            loss = self.model(latents, cond, rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = s.grad_clip if s.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.prior.parameters(), max_norm)
        grad_norm_value = float(grad_norm)  # one sync per step; also the divergence check
        loss_value = float(loss.detach())
        if not math.isfinite(grad_norm_value) or not math.isfinite(loss_value):
            raise DivergedError(f"loss {loss_value} / gradient norm {grad_norm_value}")
        self.optimizer.step()
        self.ema.update(self.prior)
        self.position.step += 1
        return loss_value, grad_norm_value

    def run(self) -> TrainResult:
        """Train to ``settings.steps`` from the current position."""
        s, p, world = self.settings, self.position, self.world
        self.prior.train()
        bar = tqdm(
            total=s.steps, initial=p.step, desc="train", unit="step", dynamic_ncols=True,
            disable=not (s.progress and world.is_main),
        )
        window_start = time.perf_counter()
        last_loss = last_logged = math.nan
        stream = self._batch_stream()
        try:
            while p.step < s.steps:
                latents, embeds = next(stream)
                try:
                    last_loss, _ = self.train_step(latents, embeds)
                except DivergedError as exc:
                    raise self._diverged(str(exc)) from None
                p.window_loss += last_loss
                p.window_steps += 1
                bar.update(1)
                if p.step % s.log_every == 0 or p.step == s.steps:
                    elapsed = time.perf_counter() - window_start
                    mean_loss = float(world.mean_across(torch.tensor(p.window_loss / p.window_steps, device=world.device)))
                    last_logged = mean_loss
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    if self.metrics is not None:
                        self.metrics.log(p.step, {
                            "loss": mean_loss,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "steps_per_s": p.window_steps / max(elapsed, 1e-9),
                            "ema_decay": self.ema.decay(),
                        })
                    p.window_loss, p.window_steps, window_start = 0.0, 0, time.perf_counter()
                pause_start = time.perf_counter()
                if p.step % s.validate_every == 0 or p.step == s.steps:
                    self._validate(bar)
                if p.step % s.checkpoint_every == 0 or p.step == s.steps:
                    if p.window_steps and world.distributed:  # the state carries one open window for every rank
                        p.window_loss = float(world.mean_across(torch.tensor(p.window_loss, dtype=torch.float64, device=world.device)))
                    self.save_checkpoint()
                    world.barrier()
                window_start += time.perf_counter() - pause_start  # steps/s measures training only
        finally:
            bar.close()
        return TrainResult(
            steps=p.step, final_loss=last_logged if math.isfinite(last_logged) else last_loss, best_score=p.best_score, best_step=p.best_step,
            out=self.out, validations=self.validations,
        )

    def _validate(self, bar: Any) -> None:
        """Score the EMA weights (rank 0), keep best.safetensors, redraw the plot."""
        p = self.position
        if self.world.is_main and self.validate_fn is not None:
            results = self.validate_fn(self.ema.model, p.step)
            if results:
                self.validations.append({"step": p.step, **results})
                if self.metrics is not None:
                    self.metrics.log(p.step, results)
                from latentmap.training.validation import selection_score

                score = selection_score(results)  # attribute accuracy where the world has one, else text CLIP
                if score is not None and score > p.best_score:
                    p.best_score, p.best_step = score, p.step
                    if self.save_prior_fn is not None:
                        self.save_prior_fn(self.out / "best.safetensors", self.ema.model, {"step": p.step, "scores": results})
                from latentmap.training.validation import describe

                bar.write(f"step {p.step}: {describe(results)}" + (" (best)" if p.best_step == p.step else ""))
        if self.world.is_main and self.metrics is not None:
            self.metrics.plot()
        self.world.barrier()

    def _diverged(self, what: str) -> DivergedError:
        from latentmap.training.state import latest_state

        last = latest_state(self.states_dir)
        keep = f"the last good state is {last} (continue with --resume, e.g. with a lower train.lr)" if last else (
            "no training state was saved before it"
        )
        return DivergedError(f"training diverged at step {self.position.step + 1}: {what}; {keep}")
