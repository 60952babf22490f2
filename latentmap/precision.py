"""Compute precision: one vocabulary, one device-support check and one autocast context for every option.

Every option that picks an arithmetic precision spells it the same way: ``float32``, ``bfloat16``,
``float16`` (torch's dtype names, the same as ``data.dtype``), plus ``auto`` where an option lets the
device decide (``train.precision``). Each option allows the subset it can do (:func:`precision_option`):

- ``data.precision`` / ``build-data --precision`` / ``sample --precision``: generator and encoder
  (float32, bfloat16, float16; the wrappers are in :mod:`latentmap.precision_models`);
- ``train.precision``: the training forward pass (auto, float32, bfloat16);
- a diffusion prior's sampling ``precision``: its network's matrix products while sampling (float32, bfloat16).

The short names the training and sampling options used before (``fp32``, ``bf16``, ``fp16``) are
accepted everywhere as aliases (:data:`ALIASES`) and replaced by the full name on reading, so older
recipes and checkpoints load unchanged and nothing downstream (a dataset's build key, a manifest)
ever sees two spellings of one precision.

Lower precision runs under ``torch.autocast``: weights, latents and everything stored stay float32.
A half precision the device cannot do natively is slower than float32 (emulated) or has no kernels
(float16 on most CPUs), so :func:`check_precision` refuses it in one line naming the option.

Importing this module does not import torch (recipes and the command listing stay light).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from latentmap.config import option
from latentmap.errors import LatentmapError

if TYPE_CHECKING:
    import torch

FLOAT32, BFLOAT16, FLOAT16, AUTO = "float32", "bfloat16", "float16", "auto"
PRECISIONS: tuple[str, ...] = (FLOAT32, BFLOAT16, FLOAT16)
# Older spellings (train.precision and the prior's sampling precision used them): read as the full names.
ALIASES: dict[str, str] = {"fp32": FLOAT32, "bf16": BFLOAT16, "fp16": FLOAT16}
# CPU feature flags (Linux /proc/cpuinfo names) that make each half precision native on a CPU.
CPU_FLAGS: dict[str, tuple[str, ...]] = {BFLOAT16: ("avx512_bf16", "amx_bf16", "bf16"),
                                          FLOAT16: ("avx512_fp16", "amx_fp16")}


def precision_option(default: str, *, choices: tuple[str, ...] = PRECISIONS, help: str = "", **kwargs: Any) -> Any:
    """A recipe/component option holding a precision: ``choices`` from this vocabulary, the aliases accepted."""
    unknown = [name for name in choices if name not in (*PRECISIONS, AUTO)]
    if unknown:  # a bug in a declaration, not a user error
        raise ValueError(f"precision choices {unknown} are not in the vocabulary {(*PRECISIONS, AUTO)}")
    return option(default, choices=choices, aliases=ALIASES, help=help, **kwargs)


def accepted_names(choices: tuple[str, ...] = PRECISIONS) -> str:
    """``float32, bfloat16 (or fp32, bf16)``: what an error message lists as accepted."""
    also = [alias for alias, name in ALIASES.items() if name in choices]
    return ", ".join(choices) + (f" (or {', '.join(also)})" if also else "")


def canonical_precision(name: str, *, key: str = "precision", choices: tuple[str, ...] = PRECISIONS) -> str:
    """``name`` in the vocabulary's spelling (``bf16`` -> ``bfloat16``); a one-line error naming ``key`` otherwise."""
    name = ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in choices:
        raise LatentmapError(f"{key} must be one of {accepted_names(choices)}; got {name!r}")
    return name


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM); None if unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def precision_problem(precision: str, device: torch.device | str) -> str | None:
    """Why ``device`` cannot run ``precision`` natively (one line), or None if it can."""
    import torch

    given, precision = precision, ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        return f"unknown precision {given!r}; expected one of {accepted_names()}"
    device = torch.device(device)
    if precision == FLOAT32:
        return None
    if device.type == "cuda":
        if precision == BFLOAT16 and not torch.cuda.is_bf16_supported(including_emulation=False):
            name = torch.cuda.get_device_name(device)
            return f"precision bfloat16 needs a GPU with native bfloat16 (compute capability 8.0+), not {name}: use float16"
        return None
    if device.type == "cpu":
        flags = cpu_flags()
        if flags is None:  # not Linux: ask oneDNN instead
            native = (torch.ops.mkldnn._is_mkldnn_bf16_supported() if precision == BFLOAT16
                      else torch.ops.mkldnn._is_mkldnn_fp16_supported())
        else:
            native = any(flag in flags for flag in CPU_FLAGS[precision])
        if not native:
            alternative = "bfloat16 or float32" if precision == FLOAT16 else "float32"
            return (f"precision {precision} needs a CPU with native {precision} "
                    f"({'/'.join(CPU_FLAGS[precision])}) or a GPU; this CPU has none: use {alternative}")
        return None
    return f"precision {precision} is not supported on device {device.type!r}: use float32"


def check_precision(precision: str, device: torch.device | str, *, key: str = "--precision") -> None:
    """Raise a one-line LatentmapError naming ``key`` unless ``device`` runs ``precision`` natively."""
    problem = precision_problem(precision, device)
    if problem is not None:
        raise LatentmapError(f"{key}: {problem}")


def resolve_precision(precision: str, device: torch.device | str, *, key: str = "precision") -> str:
    """The precision to run: ``auto`` -> bfloat16 on a GPU with native bfloat16, float32 elsewhere; any other is
    spelled canonically and checked against the device (:func:`check_precision`)."""
    import torch

    device = torch.device(device)
    if precision == AUTO:
        return BFLOAT16 if device.type == "cuda" and precision_problem(BFLOAT16, device) is None else FLOAT32
    precision = canonical_precision(precision, key=key, choices=(*PRECISIONS, AUTO))
    check_precision(precision, device, key=key)
    return precision


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager[Any]:
    """``torch.autocast`` in ``precision`` on ``device``'s type (the forward passes inside run in it);
    a no-op for float32. Aliases are accepted; ``auto`` must be resolved first (:func:`resolve_precision`)."""
    import torch

    precision = canonical_precision(precision)
    if precision == FLOAT32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, precision))
