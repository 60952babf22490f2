"""StyleGAN3 (alias-free GAN, configs T and R) in plain PyTorch, with NVIDIA's names and call semantics.

``StyleGAN3Generator(**init_kwargs)`` takes exactly the constructor arguments stored in NVIDIA's
``stylegan3`` network pickles (``z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs``
plus the synthesis options such as ``channel_base``, ``channel_max``, ``conv_kernel``,
``use_radial_filters``, ``conv_clamp``), its ``state_dict`` uses NVIDIA's key names
(``mapping.*``, ``synthesis.input.*``, ``synthesis.L{i}_{size}_{channels}.*``), and

* ``G.mapping(z, c=None, truncation_psi=1.0, truncation_cutoff=None) -> ws (B, num_ws, w_dim)``
* ``G.synthesis(ws, noise_mode='const') -> images (B, img_channels, H, W)``, raw (roughly [-1, 1])
* ``G(z, c=None, truncation_psi=1.0, truncation_cutoff=None)``

How a layer works (see docs/stylegan.md, "StyleGAN3"): the Fourier-feature input is a bank of
sinusoids whose frequencies and phases are rotated/translated by ``ws[0]``; every following layer is a
modulated convolution ("full" padding, growing the map by ``k - 1``) then ``filtered_lrelu``, which
runs the leaky ReLU at twice the sampling rate between two low-pass filters so that no aliasing
leaks into the features. The schedule of sizes, rates and filters is derived by ``sg3_schedule``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn

from latentmap import LatentmapError
from latentmap_stylegan.mapping import (
    FullyConnectedLayer,
    MappedGenerator,
    MappingNetwork,
)
from latentmap_stylegan.sg3_filters import design_lowpass_filter
from latentmap_stylegan.sg3_resample import filtered_lrelu, filtered_lrelu_reference
from latentmap_stylegan.sg3_schedule import InputSpec, LayerSpec, derive_schedule

_SCHEDULE_KWARGS = (
    "channel_base",
    "channel_max",
    "num_layers",
    "num_critical",
    "first_cutoff",
    "first_stopband",
    "last_stopband_rel",
    "margin_size",
    "num_fp16_res",
    "conv_kernel",
    "filter_size",
    "lrelu_upsampling",
    "use_radial_filters",
)


def modulated_conv2d(
    x: Tensor,
    weight: Tensor,
    styles: Tensor,
    *,
    padding: int,
    demodulate: bool,
    input_gain: Tensor | None = None,
) -> Tensor:
    """StyleGAN3's modulated convolution of x (B, I, H, W) with weight (O, I, k, k) and styles (B, I).

    Mathematically the per-sample weight is ``weight * styles`` (per input channel), optionally
    demodulated to unit norm per output channel, times ``input_gain``. Instead of building B weight
    tensors and one grouped convolution, the styles scale the *activations* and demodulation scales
    the *outputs*: the same result with one ordinary convolution over the whole batch, which is much
    faster on CPU for batches > 1. Before demodulating, weight and styles are first normalised by
    their RMS (weight per output channel, styles over the whole batch) as NVIDIA does; this cancels
    out except in the 1e-8 epsilon and keeps float16 in range.
    """
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)
    if demodulate:
        weight = weight * weight.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        styles = styles * styles.square().mean().rsqrt()
        # 1 / |w_o * s| per sample and output channel: sum_i,k (w[o,i,k] s[b,i])^2 = (s^2) @ (sum_k w^2)^T
        demod = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    scale = styles if input_gain is None else styles * input_gain.to(x.dtype)
    x = x * rearrange(scale, "b i -> b i 1 1")
    x = torch.nn.functional.conv2d(x, weight, padding=padding)
    if demodulate:
        x = x * rearrange(demod, "b o -> b o 1 1")
    return x


class SynthesisInput(nn.Module):
    """Fourier features: ``channels`` sinusoids sampled on a ``size`` grid, steered by ``w``.

    ``freqs`` (C, 2) and ``phases`` (C,) are fixed random draws; ``transform`` (3, 3) is a user-set
    global transform (identity by default); ``affine(w)`` gives a per-sample rotation and translation.
    """

    def __init__(self, w_dim: int, spec: InputSpec) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.channels = spec.channels
        self.size = spec.size
        self.sampling_rate = spec.sampling_rate
        self.bandwidth = spec.bandwidth
        freqs = torch.randn(self.channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * self.bandwidth
        self.weight = nn.Parameter(torch.randn(self.channels, self.channels))
        self.affine = FullyConnectedLayer(w_dim, 4)
        with torch.no_grad():
            self.affine.weight.zero_()
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        self.register_buffer("transform", torch.eye(3))
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", torch.rand(self.channels) - 0.5)

    def sample_grid(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Pixel-centre coordinates (in units of the sampling period) along x and y."""
        coords = [
            ((torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1) * (0.5 * n / self.sampling_rate)
            for n in self.size
        ]
        return coords[0], coords[1]

    def forward(self, w: Tensor) -> Tensor:
        batch = w.shape[0]
        t = self.affine(w)  # (B, 4): rotation (cos, sin) and translation (x, y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        eye = torch.eye(3, device=w.device, dtype=w.dtype)
        rotate = eye.repeat(batch, 1, 1)
        rotate[:, 0, 0], rotate[:, 0, 1] = t[:, 0], -t[:, 1]
        rotate[:, 1, 0], rotate[:, 1, 1] = t[:, 1], t[:, 0]
        translate = eye.repeat(batch, 1, 1)
        translate[:, 0, 2], translate[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = rotate @ translate @ self.transform.unsqueeze(0)

        freqs = self.freqs.unsqueeze(0)  # (1, C, 2)
        phases = self.phases.unsqueeze(0) + (freqs @ transforms[:, :2, 2:]).squeeze(2)  # (B, C)
        freqs = freqs @ transforms[:, :2, :2]  # (B, C, 2)
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        gx, gy = self.sample_grid(w.device)
        x = (
            rearrange(gx, "w -> 1 1 w 1") * rearrange(freqs[..., 0], "b c -> b 1 1 c")
            + rearrange(gy, "h -> 1 h 1 1") * rearrange(freqs[..., 1], "b c -> b 1 1 c")
            + rearrange(phases, "b c -> b 1 1 c")
        )
        x = torch.sin(x * (2 * math.pi)) * rearrange(amplitudes, "b c -> b 1 1 c")
        x = x @ (self.weight / math.sqrt(self.channels)).t()
        return rearrange(x, "b h w c -> b c h w").contiguous()

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, channels={self.channels}, size={list(self.size)}, sampling_rate={self.sampling_rate:g}, bandwidth={self.bandwidth:g}"


class SynthesisLayer(nn.Module):
    """One alias-free layer (or ToRGB): modulated conv, then ``filtered_lrelu`` to ``out_size``."""

    def __init__(self, w_dim: int, spec: LayerSpec, *, conv_clamp: float | None = 256, magnitude_ema_beta: float = 0.999) -> None:
        super().__init__()
        self.spec = spec
        self.w_dim = w_dim
        self.is_torgb = spec.is_torgb
        self.in_channels, self.out_channels = spec.in_channels, spec.out_channels
        self.conv_kernel = spec.conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta
        self.up_factor, self.down_factor, self.padding = spec.up_factor, spec.down_factor, spec.padding
        self.use_reference = False
        self.affine = FullyConnectedLayer(w_dim, spec.in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(spec.out_channels, spec.in_channels, spec.conv_kernel, spec.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(spec.out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))
        up = design_lowpass_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate)
        down = design_lowpass_filter(
            spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate, radial=spec.down_radial
        )
        self.register_buffer("up_filter", up)
        self.register_buffer("down_filter", down)

    def forward(self, x: Tensor, w: Tensor, update_emas: bool = False) -> Tensor:
        if update_emas:
            with torch.no_grad():
                magnitude = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        styles = self.affine(w)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel**2))
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            padding=self.conv_kernel - 1,
            demodulate=not self.is_torgb,
            input_gain=self.magnitude_ema.rsqrt(),
        )
        resample = filtered_lrelu_reference if self.use_reference else filtered_lrelu
        return resample(
            x,
            self.up_filter,
            self.down_filter,
            self.bias,
            up=self.up_factor,
            down=self.down_factor,
            padding=self.padding,
            gain=1.0 if self.is_torgb else math.sqrt(2),
            slope=1.0 if self.is_torgb else 0.2,
            clamp=self.conv_clamp,
        )

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"{s.in_channels}->{s.out_channels}, size {s.in_size[0]}->{s.out_size[0]}, "
            f"rate {s.in_sampling_rate}->{s.out_sampling_rate}, up={s.up_factor}, down={s.down_factor}, "
            f"kernel={s.conv_kernel}, radial={s.down_radial}, torgb={s.is_torgb}"
        )


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, img_channels, img_resolution, img_resolution)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        *,
        output_scale: float = 0.25,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
        **schedule_kwargs: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(schedule_kwargs) - set(_SCHEDULE_KWARGS))
        if unknown:
            raise LatentmapError(f"StyleGAN3 synthesis: unknown option(s) {', '.join(unknown)}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.output_scale = output_scale
        self.schedule = derive_schedule(img_resolution, img_channels, **schedule_kwargs)
        self.num_ws = self.schedule.num_ws
        self.input = SynthesisInput(w_dim, self.schedule.input)
        self.layer_names = []
        for spec in self.schedule.layers:
            self.add_module(spec.name, SynthesisLayer(w_dim, spec, conv_clamp=conv_clamp, magnitude_ema_beta=magnitude_ema_beta))
            self.layer_names.append(spec.name)

    def use_reference_ops(self, enabled: bool = True) -> "SynthesisNetwork":
        """Switch every layer to the literal, unfused ``filtered_lrelu`` (for tests and benchmarks)."""
        for name in self.layer_names:
            getattr(self, name).use_reference = enabled
        return self

    def check_ws(self, ws: Tensor) -> None:
        """Raise a one-line error unless ws is (B, num_ws, w_dim)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise LatentmapError(
                f"StyleGAN3 synthesis expects ws of shape (B, {self.num_ws}, {self.w_dim}) "
                f"(num_ws={self.num_ws} layers), got {tuple(ws.shape)}"
            )

    def forward(self, ws: Tensor, noise_mode: str = "const", update_emas: bool = False, **_ignored: Any) -> Tensor:
        """``noise_mode`` is accepted for NVIDIA compatibility and ignored (StyleGAN3 has no noise)."""
        self.check_ws(ws)
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, update_emas=update_emas)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)

    def extra_repr(self) -> str:
        return f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"


class StyleGAN3Generator(MappedGenerator):
    """NVIDIA's ``training.networks_stylegan3.Generator``: mapping + synthesis, same kwargs and keys."""

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.init_kwargs = dict(
            z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
            mapping_kwargs=dict(mapping_kwargs or {}), **synthesis_kwargs,
        )  # fmt: skip
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        mapping_kwargs = {"num_layers": 2, **(mapping_kwargs or {})}
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **mapping_kwargs)
