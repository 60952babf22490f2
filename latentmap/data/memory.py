"""Will a build-data batch fit in memory? Measured before the build starts, refused in one line if not.

A generator's activations can grow with the batch: a StyleGAN2 at 1024 px with a ViT-B-32 needed 0.73 GiB
per sample on a CPU when it synthesised whole batches at once (the recipe's batch 64: ~47 GiB, killed by
the kernel once the build is under way). On the CPU it now runs its large blocks one sample at a time
(0.012 GiB per sample, measured); on a GPU it synthesises whole batches, and other generators may too. Before the first shard, :func:`measure_footprint` runs the models on one and then two probe
samples (from a stream of their own, so the dataset does not change) and reads the peak memory of
each: the difference is the cost of one more sample, the rest is the fixed cost (weights, runtime).
:func:`check_batch_fits` compares ``fixed + batch * per_sample`` with the memory available (RAM, or
the cgroup limit in a container; free CUDA memory on a GPU) and raises a LatentmapError naming the
batch size that would fit.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from latentmap.errors import LatentmapError
from latentmap.interfaces import Encoder, Generator

# Keep this share of the available memory free (allocator slack, the writer's shards, other processes).
HEADROOM = 0.85
GIB = 1024**3
_PROC = Path("/proc/self")


@dataclass(frozen=True)
class Footprint:
    """Peak memory of a forward pass (generator + encoder): ``fixed + batch * per_sample`` bytes."""

    fixed: int
    per_sample: int
    device: str

    def peak(self, batch: int) -> int:
        return self.fixed + batch * self.per_sample


def _read_kib(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """Bytes left under this container's cgroup v2 memory limit, None if unlimited or unknown."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device | str) -> int | None:
    """Memory a larger batch could still use on ``device`` now; None if it cannot be told (then nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    candidates = [value for value in (_read_kib(Path("/proc/meminfo"), "MemAvailable"), _cgroup_room()) if value is not None]
    return min(candidates) if candidates else None


class _PeakMeter:
    """Peak memory of what runs inside: resident set (Linux VmHWM, reset through clear_refs) or CUDA allocations."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> _PeakMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            (_PROC / "clear_refs").write_text("5")  # resets VmHWM to the current resident size
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak = _read_kib(_PROC / "status", "VmHWM") or 0


def can_measure(device: torch.device | str) -> bool:
    """True where peaks can be measured: CUDA, or a Linux CPU whose peak RSS can be reset."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        (_PROC / "clear_refs").write_text("5")
    except OSError:
        return False
    return _read_kib(_PROC / "status", "VmHWM") is not None


# Footprints already measured in this process, per (unwrapped) generator: {(encoder id, precision, device): ...}.
_MEASURED: weakref.WeakKeyDictionary[Any, dict[tuple[int, str, str], Footprint]] = weakref.WeakKeyDictionary()


def _unwrapped(model: Any) -> Any:
    return getattr(model, "inner", model)


@torch.inference_mode()
def measure_footprint(generator: Generator, encoder: Encoder, rng: torch.Generator) -> Footprint | None:
    """Peak memory of one and of two samples through both models; None where it cannot be measured.

    Costs the forward passes of four samples (one to warm the allocator and kernels up, then 1 and 2), once
    per process and models: a second build in the same process reuses the measurement.
    """
    device = generator.device
    key = (id(_unwrapped(encoder)), str(getattr(generator, "precision", "float32")), str(device))
    known = _MEASURED.get(_unwrapped(generator), {}).get(key)
    if known is not None:
        return known
    if not can_measure(device):
        return None
    peaks = []
    for batch in (1, 1, 2):  # the first run warms the allocator and kernels up; then one and two samples
        latents = generator.sample_latents(batch, generator=rng).to(device)
        with _PeakMeter(device) as meter:
            encoder.embed_image(generator.synthesize(latents))
        peaks.append(meter.peak)
    one, two = peaks[1], peaks[2]
    per_sample = max(two - one, 0)
    footprint = Footprint(fixed=max(one - per_sample, 0), per_sample=per_sample, device=str(device))
    try:
        _MEASURED.setdefault(_unwrapped(generator), {})[key] = footprint
    except TypeError:  # a generator that cannot be weakly referenced: measured again next time
        pass
    return footprint


def largest_batch(footprint: Footprint, available: int, current: int) -> int:
    """The largest batch whose peak stays within ``HEADROOM`` of what is available (at least 0)."""
    room = current + int(available * HEADROOM) - footprint.fixed
    return max(room // footprint.per_sample, 0) if footprint.per_sample else 1 << 30


def check_batch_fits(batch: int, footprint: Footprint, *, available: int, current: int, resolution: int) -> None:
    """Raise one LatentmapError line if ``batch`` will not fit, with the batch size that would.

    ``current``: bytes in use now that the peak already counts (resident set on the CPU, allocated
    memory on a GPU); ``available``: bytes that can still be used.
    """
    if footprint.per_sample == 0 or batch == 1:
        return
    fits = largest_batch(footprint, available, current)
    if batch <= fits:
        return
    needed = footprint.peak(batch) - current
    where = "GPU memory" if footprint.device.startswith("cuda") else "RAM"
    advice = (f"use --batch-size {fits} or less (data.batch_size)" if fits >= 1
              else "free memory or use a device with more")
    raise LatentmapError(
        f"build-data: batch size {batch} will not fit: at {resolution} px it needs about {needed / GIB:.1f} GiB more "
        f"({footprint.per_sample / GIB:.2f} GiB per sample, measured) but {available / GIB:.1f} GiB of {where} "
        f"are available; {advice}"
    )


def current_bytes(device: torch.device | str) -> int:
    """Memory in use now that a measured peak includes: resident set (CPU) or allocated bytes (CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _read_kib(_PROC / "status", "VmRSS") or 0
