"""StyleGAN2 (config F and its skip / resnet / orig variants) in plain PyTorch.

Written from the maths of Karras et al. 2020 and the behaviours listed in the parity fixtures'
README, with NVIDIA's constructor keyword arguments and state-dict key names so that their
network pickles (read by :mod:`latentmap_stylegan.pickle_loader`) load unchanged.

Speed on the CPU comes from doing each layer in few passes over memory (on a CPU, a pass that
writes a freshly allocated large tensor also pays the kernel's page faults, as much as the pass):

* a batch runs its high-resolution blocks (>= ``PER_SAMPLE_RESOLUTION``) one sample at a time,
  with the style and demodulation folded into that sample's weights: one plain convolution per
  layer and no pass to scale activations (and activations B times smaller); the low-resolution
  blocks run on the whole batch as "modulate the input, convolve with the shared weight, scale
  the output" (one dense convolution, which CPU kernels run faster than B groups);
* demodulation, ``sqrt(2) * gain`` and the activation's gain folded into the weights / the
  per-channel output scale, and noise + bias added in place, followed by in-place leaky-ReLU and
  clamp;
* every activation channels-last (oneDNN's fast layout on the CPU, no conversions between layers);
* the x2 upsampling convolution as a stride-2 transposed convolution followed by one 2-D
  depthwise FIR pass whose padding gives exactly the output size (never a convolution over a
  zero-stuffed grid, no crop copy);
* the image (skip) path and the resnet shortcut upsampled by polyphase FIR written straight into
  the output (no zero insertion, no depthwise convolution on 3 channels).

Under ``torch.autocast`` (bfloat16 / float16) the convolutions run in the low precision; the
modulation and demodulation coefficients are always computed in float32.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentmap import LatentmapError
from latentmap_stylegan.mapping import (
    LRELU_SLOPE,
    FullyConnectedLayer,
    MappedGenerator,
    MappingNetwork,
)
from latentmap_stylegan.ops import make_filter

SQRT2 = math.sqrt(2.0)
SQRT_HALF = math.sqrt(0.5)
NOISE_MODES = ("const", "random", "none")
ARCHITECTURES = ("orig", "skip", "resnet")
# On the CPU a batch runs the blocks of this resolution and above one sample at a time (measured
# faster than the dense batched path for every config-F block of 64 px and above at batch 8, 1 thread;
# the smaller blocks cost little and keep the batch, whose matrix products are better shaped).
PER_SAMPLE_RESOLUTION = 64


# ----------------------------------------------------------------------------------------------
# FIR helpers specialised to StyleGAN2's x2 upsampling with an even, separable filter.


def separable_taps(f: Tensor) -> Tensor | None:
    """The 1-D taps ``a`` with ``f == outer(a, a)``, or None if the 2-D filter is not separable."""
    if f.ndim == 1:
        return f
    col, row = f.sum(dim=1), f.sum(dim=0)
    total = f.sum()
    if total == 0:
        return None
    a_col, a_row = col / total.sqrt(), row / total.sqrt()
    if torch.allclose(torch.outer(a_col, a_row), f, rtol=1e-6, atol=1e-7) and torch.allclose(a_col, a_row):
        return a_row
    return None


def fir_1d(x: Tensor, taps: Tensor, dim: int, pad: tuple[int, int]) -> Tensor:
    """Convolve along ``dim`` (-1 or -2) with ``taps`` (true convolution), zero padding ``pad``."""
    channels = x.shape[1]
    k = taps.flip(0).to(dtype=x.dtype, device=x.device)
    symmetric = pad[0] == pad[1]  # let the convolution pad (no extra copy of x)
    if dim == -1:
        if not symmetric:
            x = F.pad(x, [pad[0], pad[1], 0, 0])
        weight = k.view(1, 1, 1, -1).expand(channels, 1, 1, k.numel())
        return F.conv2d(x, weight, groups=channels, padding=(0, pad[0]) if symmetric else 0)
    if not symmetric:
        x = F.pad(x, [0, 0, pad[0], pad[1]])
    weight = k.view(1, 1, -1, 1).expand(channels, 1, k.numel(), 1)
    return F.conv2d(x, weight, groups=channels, padding=(pad[0], 0) if symmetric else 0)


def fir_2d(x: Tensor, f: Tensor, pad: int, gain: float) -> Tensor:
    """Depthwise 2-D FIR (true convolution) with ``pad`` zeros on every side; separable if possible."""
    taps = separable_taps(f)
    if taps is not None:
        taps = taps * math.sqrt(gain)
        x = fir_1d(x, taps, -1, (pad, pad))
        return fir_1d(x, taps, -2, (pad, pad))
    channels = x.shape[1]
    weight = (f.flip([0, 1]) * gain).to(dtype=x.dtype, device=x.device)
    return F.conv2d(F.pad(x, [pad] * 4), weight[None, None].expand(channels, 1, *f.shape), groups=channels)


def upsample_2x(x: Tensor, f: Tensor) -> Tensor:
    """Exactly NVIDIA's ``upsample2d(x, f, up=2)`` (zero insertion, pad, FIR with gain 4), done polyphase.

    With zeros inserted after every sample and the filter flipped, output sample ``2i + p`` only
    sees the input through every other filter tap: each of the two phases is a short FIR on the
    low-resolution signal, so no work is spent multiplying inserted zeros.
    """
    taps = separable_taps(f)
    if taps is None or taps.numel() % 2:
        return _upsample_2x_direct(x, f)
    x = _upsample_axis(x, taps, -1)
    return _upsample_axis(x, taps, -2)


def _upsample_axis(x: Tensor, taps: Tensor, dim: int) -> Tensor:
    """Upsample by 2 along one axis with gain 2 (so two axes give NVIDIA's gain 4).

    Each output phase is a short sum of shifted copies of ``x``, accumulated straight into that
    phase's (strided) view of the output: no zero insertion, no depthwise convolution (which CPU
    kernels run slowly for the 3-channel image), one allocation.
    """
    n = taps.numel()
    pad_before = (n + 1) // 2  # NVIDIA pads (fw + up - 1) // 2 before and (fw - up) // 2 after
    # Zero-stuffed signal u[2j] = x[j]; padded; output y[m] = sum_t u[m + t - pad_before] * k[t]
    # with k the flipped, gained taps. For output phase p (m = 2i + p) only taps with
    # (p + t - pad_before) even touch real samples: x[i + (p + t - pad_before) / 2].
    k = (taps.flip(0) * 2.0).tolist()
    terms = [[((p + t - pad_before) // 2, k[t]) for t in range(n) if (p + t - pad_before) % 2 == 0] for p in range(2)]
    offsets = [o for phase in terms for o, _ in phase]
    before, after = max(-min(offsets), 0), max(max(offsets), 0)
    size = x.shape[dim]
    padded = F.pad(x, [before, after, 0, 0] if dim == -1 else [0, 0, before, after])
    b, c, h, w = x.shape
    phase_dim = -1 if dim == -1 else -2
    if needs_grad(x):  # autograd: out-of-place sums, stacked
        out = torch.stack([sum(padded.narrow(dim, o + before, size) * weight for o, weight in phase)
                           for phase in terms], dim=phase_dim)
    else:
        out = x.new_empty(b, c, h, w, 2) if dim == -1 else x.new_empty(b, c, h, 2, w)
        for p, phase in enumerate(terms):
            view = out.select(phase_dim, p)
            for j, (o, weight) in enumerate(phase):
                shifted = padded.narrow(dim, o + before, size)
                if j == 0:
                    torch.mul(shifted, weight, out=view)
                else:
                    view.add_(shifted, alpha=weight)
    return out.reshape(b, c, h, 2 * w) if dim == -1 else out.reshape(b, c, 2 * h, w)


def _upsample_2x_direct(x: Tensor, f: Tensor) -> Tensor:
    from latentmap_stylegan.ops import upsample2d

    return upsample2d(x, f.to(x.device), up=2)


# ----------------------------------------------------------------------------------------------
# Modulated convolution.


def modulation_coefficients(weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor | None:
    """Demodulation factors (B, out): 1 / sqrt(sum over in, kh, kw of (weight * style)^2 + 1e-8)."""
    if not demodulate:
        return None
    w_sq = weight.square().sum(dim=[2, 3])  # (out, in)
    return (styles.square() @ w_sq.t() + 1e-8).rsqrt()


# CPU kernels (oneDNN) run these convolutions at least as fast in channels-last layout as in NCHW,
# and depthwise FIR passes 2-5x faster (measured at config F's shapes, 1 thread): on the CPU every
# layer works channels-last, so no layer pays a layout conversion.


def cpu_layout_hint(x: Tensor) -> bool:
    """True when ``x`` should be channels-last and FIR-filtered in one 2-D pass (the CPU)."""
    return x.device.type == "cpu"


def conv_up_fir(x: Tensor, weight: Tensor, f: Tensor, groups: int) -> Tensor:
    """NVIDIA's upsampling convolution: stride-2 transposed conv, then FIR ``f`` (gain 4) -> (B, out, 2H, 2W).

    ``weight`` is (groups * out, in, 3, 3) in conv orientation. On the CPU (channels-last) the FIR
    is one 2-D depthwise pass with the convolution's own zero padding: faster there than two 1-D
    passes, and its output is exactly 2H x 2W (no crop, no copy before the next layer).
    """
    out_total, in_per_group, kh, kw = weight.shape
    h, w = x.shape[-2:]
    wt = weight.view(groups, out_total // groups, in_per_group, kh, kw).transpose(1, 2)
    y = F.conv_transpose2d(x, wt.reshape(groups * in_per_group, out_total // groups, kh, kw), stride=2, groups=groups)
    if cpu_layout_hint(y) and f.ndim == 2:
        fir = (f.flip([0, 1]) * 4.0).to(dtype=y.dtype, device=y.device)
        y = F.conv2d(y, fir[None, None].expand(y.shape[1], 1, *f.shape), padding=1, groups=y.shape[1])
    else:
        y = fir_2d(y, f, pad=1, gain=4.0)
    return y[..., : 2 * h, : 2 * w]


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    demodulate: bool = True,
    up_filter: Tensor | None = None,
    out_gain: float = 1.0,
) -> Tensor:
    """Style-modulated (and optionally demodulated) convolution, NVIDIA's semantics.

    x (B, in, H, W), weight (out, in, k, k), styles (B, in). Same-size convolutions pad k // 2;
    with ``up_filter`` it is NVIDIA's x2 upsampling convolution (stride-2 transposed convolution,
    then that FIR with gain 4: output 2H). The output is multiplied by ``out_gain``.
    """
    batch, in_ch = styles.shape
    out_ch, _, kh, kw = weight.shape
    weight = weight.to(torch.float32)
    styles = styles.to(torch.float32)
    dcoefs = modulation_coefficients(weight, styles, demodulate)
    scale = dcoefs * out_gain if dcoefs is not None else torch.full((batch, out_ch), out_gain, device=x.device)
    if cpu_layout_hint(x):
        x = x.contiguous(memory_format=torch.channels_last)

    if batch > 1:
        # One dense conv over the batch: scale inputs by the styles, outputs by the demod factors
        # (after the FIR, with which a per-channel scale commutes).
        xs = x * styles.to(x.dtype).view(batch, in_ch, 1, 1)
        w = weight.to(x.dtype)
        y = conv_up_fir(xs, w, up_filter, 1) if up_filter is not None else F.conv2d(xs, w, padding=kh // 2)
        scale = scale.to(y.dtype).view(batch, out_ch, 1, 1)
        return y * scale if needs_grad(y, scale) else y.mul_(scale)

    # Batch 1: fold style and demodulation into the weight (NVIDIA's "fused" path, groups = batch).
    factors = scale.view(batch, out_ch, 1) * styles.view(batch, 1, in_ch)
    w = (weight.unsqueeze(0) * factors.view(batch, out_ch, in_ch, 1, 1)).reshape(batch * out_ch, in_ch, kh, kw)
    w = w.to(x.dtype)
    if up_filter is not None:
        return conv_up_fir(x, w, up_filter, batch)
    return F.conv2d(x, w, padding=kh // 2, groups=batch)


def needs_grad(*tensors: Tensor) -> bool:
    """True when autograd will record ops on these tensors (then in-place updates are unsafe)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def bias_lrelu_clamp(x: Tensor, bias: Tensor, clamp: float | None, *, activation: bool = True,
                     noise: Tensor | None = None) -> Tensor:
    """x + noise + bias; leaky-ReLU (0.2) if ``activation``; clamp to +-clamp. Gains are pre-folded.

    ``bias`` is (1, C, 1, 1), ``noise`` (B or 1, 1, H, W). In place (no extra memory traffic)
    unless autograd is recording.
    """
    if needs_grad(x, bias, *(() if noise is None else (noise,))):
        x = x + bias.to(x.dtype) if noise is None else x + noise.to(x.dtype) + bias.to(x.dtype)
        x = F.leaky_relu(x, LRELU_SLOPE) if activation else x
        return x.clamp(-clamp, clamp) if clamp is not None else x
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    x = x.add_(bias.to(x.dtype))
    if activation:
        x = F.leaky_relu_(x, LRELU_SLOPE)
    if clamp is not None:
        x = x.clamp_(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------------------------
# Layers with NVIDIA's parameter names.


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally x2 upsampling) + noise + bias + leaky-ReLU + clamp."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Iterable[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"SynthesisLayer supports up=1 or 2, got {up}")
        if activation != "lrelu":
            raise ValueError(f"SynthesisLayer supports activation='lrelu' only, got {activation!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", make_filter(list(resample_filter)))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def noise(self, batch: int, mode: str, device: torch.device, generator: torch.Generator | None) -> Tensor | None:
        """(B or 1, 1, res, res) noise image times noise_strength, or None."""
        if not self.use_noise or mode == "none":
            return None
        if mode == "const":
            return (self.noise_const * self.noise_strength).view(1, 1, self.resolution, self.resolution)
        draw = torch.randn(batch, 1, self.resolution, self.resolution, generator=generator, device=device)
        return draw * self.noise_strength

    def forward(
        self,
        x: Tensor,
        w: Tensor,
        noise_mode: str = "const",
        gain: float = 1.0,
        noise_generator: torch.Generator | None = None,
    ) -> Tensor:
        styles = self.affine(w.to(torch.float32))
        act_gain = SQRT2 * gain  # leaky-ReLU is positively homogeneous: fold the gain in first
        up_filter = self.resample_filter if self.up == 2 else None
        x = modulated_conv2d(x, self.weight, styles, up_filter=up_filter, out_gain=act_gain)
        bias = (self.bias.to(torch.float32) * act_gain).view(1, -1, 1, 1)
        noise = self.noise(x.shape[0], noise_mode, x.device, noise_generator)
        if noise is not None:
            noise = noise * act_gain
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_lrelu_clamp(x, bias, clamp, noise=noise)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, res={self.resolution}, up={self.up}"


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels: no demodulation, no noise, linear, clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w.to(torch.float32)) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_lrelu_clamp(x, self.bias.to(torch.float32).view(1, -1, 1, 1), self.conv_clamp, activation=False)


class SkipLayer(nn.Module):
    """The resnet shortcut: 1x1 conv (no bias, weight gain 1/sqrt(in)), x2 FIR upsample, times gain.

    NVIDIA upsamples before the 1x1 conv; both are linear and per-pixel/per-channel, so doing the
    conv first (on 4x fewer pixels) gives the same result up to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, resample_filter: Iterable[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        self.register_buffer("resample_filter", make_filter(list(resample_filter)))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        x = F.conv2d(x, (self.weight.to(torch.float32) * (self.weight_gain * gain)).to(x.dtype))
        return upsample_2x(x, self.resample_filter)


class SynthesisBlock(nn.Module):
    """One resolution: [const] or conv0 (x2 up), conv1, [ToRGB], [resnet shortcut]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Iterable[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fp16_channels_last: bool = False,
        fused_modconv_default: Any = True,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        resample_filter = list(resample_filter)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.is_last, self.architecture = resolution, is_last, architecture
        self.register_buffer("resample_filter", make_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, resample_filter)

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: Tensor,
        noise_mode: str = "const",
        noise_generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor | None]:
        w_iter = iter(ws.unbind(dim=1))
        noise = {"noise_mode": noise_mode, "noise_generator": noise_generator}
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), **noise)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=SQRT_HALF)
            x = self.conv0(x, next(w_iter), **noise)
            x = self.conv1(x, next(w_iter), gain=SQRT_HALF, **noise)
            x = y + x if needs_grad(x, y) else y.add_(x)
        else:
            x = self.conv0(x, next(w_iter), **noise)
            x = self.conv1(x, next(w_iter), **noise)
        if img is not None:
            img = upsample_2x(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter))
            y = y.to(img.dtype) if img is not None else y
            img = y if img is None else (img + y if needs_grad(img, y) else img.add_(y))
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, img_channels, R, R), NVIDIA's block layout and w indexing."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.num_fp16_res = num_fp16_res
        # CPU batches run the blocks from this resolution on one sample at a time (see per_sample_from)
        self.per_sample_resolution = PER_SAMPLE_RESOLUTION
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            is_last = res == img_resolution
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, is_last, **block_kwargs)
            self.num_ws += block.num_conv
            if is_last:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)

    def check_ws(self, ws: Tensor) -> None:
        """Raise a one-line error unless ws is (B, num_ws, w_dim)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise LatentmapError(
                f"StyleGAN2 synthesis expects ws of shape (B, {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}"
            )

    def forward(
        self,
        ws: Tensor,
        noise_mode: str = "const",
        noise_generator: torch.Generator | None = None,
        **ignored: Any,
    ) -> Tensor:
        """``ignored`` accepts NVIDIA's ``force_fp32``, ``fused_modconv``, ``update_emas`` for call compatibility."""
        self.check_ws(ws)
        if noise_mode not in NOISE_MODES:
            raise LatentmapError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        dtype = torch.get_autocast_dtype(ws.device.type) if torch.is_autocast_enabled(ws.device.type) else torch.float32
        ws = ws.to(torch.float32)
        kwargs = {"noise_mode": noise_mode, "noise_generator": noise_generator, "dtype": dtype}
        blocks = [(getattr(self, f"b{res}"), w_idx) for res, w_idx in zip(self.block_resolutions, self.block_w_starts)]
        split = self.per_sample_from(ws, noise_mode)
        x = img = None
        for block, w_idx in blocks[:split]:
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **kwargs)
        if split == len(blocks):
            return img.to(torch.float32)
        images = []
        for i in range(ws.shape[0]):  # one sample at a time: style and demodulation folded into its weights
            xi = x[i : i + 1] if x is not None else None
            imgi = img[i : i + 1] if img is not None else None
            for block, w_idx in blocks[split:]:
                xi, imgi = block(xi, imgi, ws[i : i + 1].narrow(1, w_idx, block.num_conv + block.num_torgb), **kwargs)
            images.append(imgi.to(torch.float32))
        return torch.cat(images)

    @property
    def block_w_starts(self) -> list[int]:
        """Index of each block's first w in ws (a block's ToRGB shares its w with the next block's conv0)."""
        starts, w_idx = [], 0
        for res in self.block_resolutions:
            starts.append(w_idx)
            w_idx += getattr(self, f"b{res}").num_conv
        return starts

    def per_sample_from(self, ws: Tensor, noise_mode: str) -> int:
        """How many blocks run on the whole batch; the rest run one sample at a time (CPU, batch > 1).

        A batch of B samples either folds each sample's styles into its own copy of the weights
        (groups = B) or scales the activations before and after one shared-weight convolution, which
        costs two extra passes over every activation. On the CPU, at high resolution, the cheapest is
        neither: one sample at a time with folded weights, a plain convolution each (and activations
        B times smaller, so the peak memory of a batch barely grows with it). Random noise keeps the
        batched order of its draws, so it keeps the batch.
        """
        if ws.shape[0] == 1 or ws.device.type != "cpu" or noise_mode == "random":
            return len(self.block_resolutions)
        return sum(1 for res in self.block_resolutions if res < self.per_sample_resolution)


class StyleGAN2Generator(MappedGenerator):
    """Mapping + synthesis with NVIDIA's constructor arguments and call semantics.

    ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, **synthesis_kwargs)``
    as in NVIDIA's stylegan3 repository; the older stylegan2-ada-pytorch form with a nested
    ``synthesis_kwargs`` dict is accepted too.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        synthesis_kwargs: dict[str, Any] | None = None,
        **more_synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        kwargs = {**(synthesis_kwargs or {}), **more_synthesis_kwargs}
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, **kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **(mapping_kwargs or {}))
