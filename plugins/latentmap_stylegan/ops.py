"""FIR resampling in plain PyTorch (NVIDIA's ``upfirdn2d`` semantics, no CUDA extension).

``upfirdn2d`` = upsample by inserting zeros, pad (negative padding crops), convolve with a FIR
filter, keep every ``down``-th sample. Filters are 1-D (applied separably along x then y) or 2-D.
Convolution here is a *true* convolution (the filter is flipped) unless ``flip_filter=True``,
exactly as NVIDIA defines it; for the symmetric filters StyleGAN uses this makes no difference.

Padding is given as ``(x0, x1, y0, y1)`` (before/after on each axis), or one int for all sides.
The filter is scaled by ``gain ** (ndim / 2)`` so a separable filter applies ``sqrt(gain)`` per pass
and the overall gain is ``gain`` either way.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Padding = int | Sequence[int]


def make_filter(taps: Sequence[float] | Tensor, *, normalize: bool = True, separable: bool = False) -> Tensor:
    """A FIR filter tensor from taps: 1-D taps become their 2-D outer product unless ``separable``.

    ``normalize`` divides by the sum so that the filter preserves DC (StyleGAN's [1, 3, 3, 1]).
    """
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    return f


def parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``int`` or ``(x, y)`` or ``(x0, x1, y0, y1)`` -> ``(x0, x1, y0, y1)``."""
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    if len(padding) != 4:
        raise ValueError(f"padding must be an int, (x, y) or (x0, x1, y0, y1), got {padding}")
    return tuple(padding)  # type: ignore[return-value]


def filter_size(f: Tensor | None) -> tuple[int, int]:
    """(width, height) of a 1-D or 2-D filter; (1, 1) for no filter."""
    if f is None:
        return 1, 1
    if f.ndim == 1:
        return f.shape[0], f.shape[0]
    return f.shape[1], f.shape[0]


def pad_or_crop(x: Tensor, padding: Padding) -> Tensor:
    """Zero-pad the last two axes by ``(x0, x1, y0, y1)``; negative values crop instead."""
    x0, x1, y0, y1 = parse_padding(padding)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    h, w = x.shape[-2], x.shape[-1]
    return x[..., max(-y0, 0) : h - max(-y1, 0), max(-x0, 0) : w - max(-x1, 0)]


def insert_zeros(x: Tensor, up: int) -> Tensor:
    """(B, C, H, W) -> (B, C, H*up, W*up): each sample followed by ``up - 1`` zeros on each axis."""
    if up == 1:
        return x
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, h, up, w, up)
    out[:, :, :, 0, :, 0] = x
    return out.reshape(b, c, h * up, w * up)


def depthwise_fir(x: Tensor, f: Tensor, *, flip_filter: bool = False, gain: float = 1.0, stride: int = 1) -> Tensor:
    """Apply FIR filter ``f`` (1-D separable or 2-D) to every channel of x with no padding."""
    channels = x.shape[1]
    f = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(channels, 1, *f.shape)
        return F.conv2d(x, weight, groups=channels, stride=stride)
    taps = f.shape[0]
    x = F.conv2d(x, f.view(1, 1, 1, taps).expand(channels, 1, 1, taps), groups=channels, stride=(1, stride))
    return F.conv2d(x, f.view(1, 1, taps, 1).expand(channels, 1, taps, 1), groups=channels, stride=(stride, 1))


def upfirdn2d(
    x: Tensor,
    f: Tensor | None,
    *,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1.0,
) -> Tensor:
    """Upsample (zero insertion), pad, FIR filter and downsample a (B, C, H, W) batch."""
    x = insert_zeros(x, up)
    x = pad_or_crop(x, padding)
    if f is None:
        return x[:, :, ::down, ::down] * gain
    return depthwise_fir(x, f, flip_filter=flip_filter, gain=gain, stride=down)


def upsample2d(x: Tensor, f: Tensor, *, up: int = 2, padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Upsample by ``up`` with filter ``f`` so that the output is exactly ``up`` times larger.

    Adds the filter's own padding to ``padding`` and multiplies ``gain`` by ``up ** 2`` (the zeros
    inserted dilute the signal by that factor).
    """
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = parse_padding(padding)
    pad = (x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2)
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x: Tensor, f: Tensor, *, down: int = 2, padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Filter then keep every ``down``-th sample so that the output is exactly ``down`` times smaller."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = parse_padding(padding)
    pad = (x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2)
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)


def filter2d(x: Tensor, f: Tensor, *, padding: Padding = 0, flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Filter with ``f`` keeping the size (the filter's own padding is added to ``padding``)."""
    fw, fh = filter_size(f)
    x0, x1, y0, y1 = parse_padding(padding)
    pad = (x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)
