"""The optimiser and per-step random streams of the training loop (its precision: latentmap.precision)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (as DALLE2-pytorch's prior trainer).

    Vectors (LayerNorm gains, the learned query) are not decayed: shrinking a norm's gain toward
    zero only fights the normalisation. ``fused`` (default: where every parameter's device supports
    it) updates all parameters in one kernel instead of a loop of small ones; it computes the same
    update to float32 rounding (~1e-7) and saves a few percent of a training step.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    if fused is None:
        fused = fused_adamw_supported(decay + no_decay)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)


# Devices with a fused AdamW kernel (torch >= 2.4 has the CPU one).
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """True if torch's fused AdamW can update these parameters (floating point, on a device it has a kernel for)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """The random stream of one training step on one process (timesteps, noise, dropout, augmentation).

    Derived from (seed, rank, step) alone, so a resumed run draws exactly what the uninterrupted run
    drew, on every rank, without carrying generator states around.
    """
    state = np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint32)
    value = (int(state[0]) << 31) ^ int(state[1])
    return torch.Generator(device=device).manual_seed(value)
