"""StyleGAN3's ``filtered_lrelu``: bias, upsample, leaky ReLU, clamp, downsample, in plain PyTorch.

The nonlinearity of an alias-free layer runs at a temporarily higher sampling rate:

1. add the bias;
2. upsample by ``up``: insert ``up - 1`` zeros after each sample, pad by ``(x0, x1, y0, y1)``
   (negative crops), convolve with the up filter at gain ``up**2``;
3. leaky ReLU (``slope``) times ``gain``, clamp to ``+-clamp``;
4. convolve with the down filter and keep every ``down``-th sample.

Two implementations compute the same thing:

* ``filtered_lrelu_reference`` follows the recipe literally with ``ops.upfirdn2d`` (zero-filled
  upsampled maps, depthwise convolutions). It is the readable definition and the benchmark baseline.
* ``filtered_lrelu`` is the fast path. Separable filters run as 1-D passes along each axis, each pass
  a small matrix product over sliding windows. The upsampling pass is polyphase: output phase ``r``
  of every input sample only needs the taps ``f[r::up]``, so the inserted zeros are never stored
  or multiplied. The downsampling pass only computes the samples it keeps. Non-separable (radial)
  down filters use one strided single-channel convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from latentmap_stylegan.ops import upfirdn2d

Padding4 = tuple[int, int, int, int]


def _activate(x: Tensor, slope: float, gain: float, clamp: float | None) -> Tensor:
    """Leaky ReLU times gain, then clamp (in place on a fresh tensor)."""
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def filtered_lrelu_reference(
    x: Tensor,
    up_filter: Tensor | None,
    down_filter: Tensor | None,
    bias: Tensor | None,
    *,
    up: int = 1,
    down: int = 1,
    padding: Padding4 = (0, 0, 0, 0),
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
) -> Tensor:
    """The literal, unfused definition (zero insertion, depthwise FIR, elementwise, FIR, decimation)."""
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    x = upfirdn2d(x, up_filter, up=up, padding=padding, gain=up**2)
    x = _activate(x, slope, gain, clamp)
    return upfirdn2d(x, down_filter, down=down)


def _shift_window(x: Tensor, start: int, length: int) -> Tensor:
    """``x[..., start : start + length]`` along the last axis, zero-filled outside ``x``."""
    size = x.shape[-1]
    pad_lo, pad_hi = max(-start, 0), max(start + length - size, 0)
    x = x[..., max(start, 0) : min(start + length, size)]
    if pad_lo or pad_hi:
        x = F.pad(x, [pad_lo, pad_hi])
    return x


def upsample_1d(x: Tensor, f: Tensor, up: int, pad_before: int, out_len: int) -> Tensor:
    """Zero-insert by ``up``, pad by ``pad_before`` and convolve with ``f`` along the last axis.

    Polyphase: with ``z = conv_transpose(x, f, stride=up)`` the result is ``z[k - 1 - pad_before + n]``
    and ``z[up*q + r] = sum_t x[q - t] f[up*t + r]``, i.e. a product of length-``T`` windows of ``x``
    with a ``(T, up)`` matrix of filter phases. ``f`` is the raw filter with its gain applied.
    """
    taps = f.shape[0]
    phases = -(-taps // up)
    if phases * up != taps:
        f = F.pad(f, [0, phases * up - taps])
    shift = taps - 1 - pad_before
    q_first = shift // up
    q_last = (shift + out_len - 1) // up
    windows = _shift_window(x, q_first - phases + 1, q_last - q_first + phases).unfold(-1, phases, 1)
    phase_matrix = f.reshape(phases, up).flip(0)  # [T - 1 - t, r] = f[up * t + r]
    z = (windows @ phase_matrix).flatten(-2)
    offset = shift - up * q_first
    return z[..., offset : offset + out_len]


def downsample_1d(x: Tensor, f: Tensor, down: int) -> Tensor:
    """Convolve with ``f`` (no padding) along the last axis and keep every ``down``-th sample."""
    return x.unfold(-1, f.shape[0], down) @ f.flip(0)


def _along_rows(fn, x: Tensor, *args) -> Tensor:
    """Apply a last-axis operation along the second-to-last axis instead."""
    return fn(x.transpose(-1, -2), *args).transpose(-1, -2)


def filtered_lrelu(
    x: Tensor,
    up_filter: Tensor | None,
    down_filter: Tensor | None,
    bias: Tensor | None,
    *,
    up: int = 1,
    down: int = 1,
    padding: Padding4 = (0, 0, 0, 0),
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
) -> Tensor:
    """Fast ``filtered_lrelu`` for (B, C, H, W): same result as the reference to float32 rounding.

    ``up_filter`` must be 1-D (separable) or None; ``down_filter`` 1-D, 2-D (radial) or None.
    """
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, 1, 1)
    x0, x1, y0, y1 = padding
    if up_filter is None:
        x = upfirdn2d(x, None, up=up, padding=padding, gain=up**2)
    else:
        if up_filter.ndim != 1:
            raise ValueError("filtered_lrelu: the fast path needs a separable (1-D) up filter")
        f = up_filter.to(x.dtype) * up  # gain up**2 split over the two passes
        taps = f.shape[0]
        out_w = x.shape[-1] * up + x0 + x1 - taps + 1
        out_h = x.shape[-2] * up + y0 + y1 - taps + 1
        x = upsample_1d(x, f, up, x0, out_w)
        x = _along_rows(upsample_1d, x, f, up, y0, out_h)
    x = _activate(x, slope, gain, clamp)
    if down_filter is None:
        return x[:, :, ::down, ::down]
    fd = down_filter.to(x.dtype)
    if fd.ndim == 2:
        b, c, h, w = x.shape
        kernel = fd.flip([0, 1])[None, None]
        x = F.conv2d(x.reshape(b * c, 1, h, w), kernel, stride=down)
        return x.reshape(b, c, x.shape[-2], x.shape[-1])
    x = downsample_1d(x, fd, down)
    return _along_rows(downsample_1d, x, fd, down)
