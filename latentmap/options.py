"""Device names users type on the command line or in recipes.

One reading for every command, so ``--device auto`` means the same thing in build-data, train,
sample, edit and optimize. (``KEY=VALUE`` options are read by :func:`latentmap.config.parse_pairs`.)
"""

from __future__ import annotations


import torch

from latentmap.errors import LatentmapError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``None``/``auto`` -> this process's GPU if there is one, else the CPU; anything else as torch reads it.

    A bare ``cuda`` becomes ``cuda:<local_rank>`` so every torchrun process takes its own GPU.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LatentmapError(f"unknown device {str(name)!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentmapError(f"device {str(name)!r} asked for, but torch sees no CUDA GPU on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
