"""Exponential moving average of the prior's weights: the weights that get sampled and shipped.

Every ``every`` optimiser steps the EMA copy moves toward the trained weights,
``ema = decay * ema + (1 - decay) * weights``. With a fixed decay of 0.9999 the EMA starts at the
random initialisation and takes ~10,000 updates to forget it, so for most of a short run it lags far
behind (a known complaint with DALLE2-pytorch's prior). With ``warmup`` the decay of update ``n``
(counting from 0) is ``min(beta, (1 + n) / (10 + n))``: the first update copies 90% of the weights,
and the averaging window grows with training (about ``n / 9`` updates) until it reaches ``beta``'s.

Buffers (such as the latent statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA:
    """An EMA copy of ``model``. ``update(model)`` is called after every optimiser step."""

    def __init__(self, model: nn.Module, *, beta: float = 0.9999, every: int = 10, warmup: bool = True) -> None:
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.beta = beta
        self.every = every
        self.warmup = warmup
        self.updates = 0  # EMA updates done so far
        self.steps = 0  # optimiser steps seen so far

    def decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.beta
        return min(self.beta, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> bool:
        """Count one optimiser step; every ``every`` steps move the EMA toward ``model``. True if it moved."""
        self.steps += 1
        if self.steps % self.every != 0:
            return False
        decay = self.decay()
        ema_params = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - decay)
        ema_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            ema_buffers[name].copy_(buffer)
        self.updates += 1
        return True

    def state_tensors(self) -> dict[str, Tensor]:
        """The EMA model's state dict (for the training state file)."""
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def state_info(self) -> dict[str, int]:
        """The counters (JSON) that make a resumed EMA continue exactly."""
        return {"updates": self.updates, "steps": self.steps}

    def load(self, tensors: dict[str, Tensor], info: dict[str, int]) -> None:
        """Restore from ``state_tensors`` / ``state_info``."""
        self.model.load_state_dict(tensors)
        self.updates = int(info["updates"])
        self.steps = int(info["steps"])
