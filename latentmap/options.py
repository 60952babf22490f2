"""Values users type on the command line or in recipes: ``KEY=VALUE`` plugin options and device names.

One reading for every command, so ``--generator-option truncation=0.7`` and ``--device auto`` mean
the same thing in build-data, train, sample, edit and optimize.
"""

from __future__ import annotations

from typing import Any

import torch
import yaml

from latentmap.errors import LatentmapError

__all__ = ["parse_options", "resolve_device"]


def parse_options(pairs: tuple[str, ...] | list[str] | None, *, flag: str = "--option") -> dict[str, Any]:
    """``["weights=/w/ffhq.pkl", "truncation=0.7"]`` -> dict, values read as YAML scalars (numbers, booleans)."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LatentmapError(f"bad {flag} {pair!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            options[key.strip()] = value
    return options


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
