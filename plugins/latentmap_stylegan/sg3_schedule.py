"""StyleGAN3's layer schedule: every layer's size, channels, sampling rate and filter parameters.

StyleGAN3 does not list its layers; it derives them from a handful of constructor arguments so that
the signal's bandwidth grows geometrically from the Fourier input to the output image:

* cutoffs grow from ``first_cutoff`` to ``img_resolution / 2`` and stop-bands from ``first_stopband``
  to ``img_resolution / 2 * last_stopband_rel`` (geometric progressions); the last ``num_critical``
  layers stay at the top (critically sampled);
* each layer's sampling rate is the smallest power of two at least twice its stop-band (capped at the
  image resolution), its filter transition half-width is ``max(stopband, rate / 2) - cutoff``;
* feature maps carry a ``margin_size`` border on each side except the last two layers;
* channels fall as ``channel_base / 2 / cutoff`` (capped at ``channel_max``); ToRGB has ``img_channels``.

Each layer then upsamples by ``lrelu_upsampling`` around its nonlinearity (not ToRGB) and the
filter tap counts and paddings follow from the rates and sizes. ``derive_schedule`` computes all of
it, exactly as NVIDIA's constructors do (float64 numpy arithmetic), as plain data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """The Fourier-feature input layer."""

    channels: int
    size: tuple[int, int]
    sampling_rate: float
    bandwidth: float


@dataclass(frozen=True)
class LayerSpec:
    """One synthesis layer ``L{index}_{out_size}_{out_channels}``."""

    index: int
    is_torgb: bool
    is_critically_sampled: bool
    in_channels: int
    out_channels: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    in_sampling_rate: int
    out_sampling_rate: int
    tmp_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    conv_kernel: int
    up_factor: int
    down_factor: int
    up_taps: int
    down_taps: int
    down_radial: bool
    padding: tuple[int, int, int, int]  # x0, x1, y0, y1 (negative = crop)
    use_fp16: bool

    @property
    def name(self) -> str:
        return f"L{self.index}_{self.out_size[0]}_{self.out_channels}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"name": self.name}


@dataclass(frozen=True)
class Schedule:
    """The whole synthesis network: input, layers (the last one is ToRGB) and ``num_ws``."""

    input: InputSpec
    layers: tuple[LayerSpec, ...]

    @property
    def num_ws(self) -> int:
        """One w for the input plus one per layer."""
        return len(self.layers) + 1


def derive_schedule(
    img_resolution: int,
    img_channels: int,
    *,
    channel_base: int = 32768,
    channel_max: int = 512,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
    margin_size: int = 10,
    num_fp16_res: int = 4,
    conv_kernel: int = 3,
    filter_size: int = 6,
    lrelu_upsampling: int = 2,
    use_radial_filters: bool = False,
) -> Schedule:
    """Every layer's hyper-parameters from StyleGAN3's constructor arguments (NVIDIA's defaults)."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    exponents = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** exponents
    stopbands = first_stopband * (last_stopband / first_stopband) ** exponents
    rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, rates / 2) - cutoffs
    sizes = rates + margin_size * 2
    sizes[-2:] = img_resolution
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels

    input_spec = InputSpec(
        channels=int(channels[0]),
        size=(int(sizes[0]), int(sizes[0])),
        sampling_rate=float(rates[0]),
        bandwidth=float(cutoffs[0]),
    )
    layers = []
    for idx in range(num_layers + 1):
        prev = max(idx - 1, 0)
        is_torgb = idx == num_layers
        critical = idx >= num_layers - num_critical
        in_rate, out_rate = int(rates[prev]), int(rates[idx])
        tmp_rate = max(in_rate, out_rate) * (1 if is_torgb else lrelu_upsampling)
        up = int(np.rint(tmp_rate / in_rate))
        down = int(np.rint(tmp_rate / out_rate))
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        kernel = 1 if is_torgb else conv_kernel
        in_size = np.array([sizes[prev], sizes[prev]], dtype=np.int64)
        out_size = np.array([sizes[idx], sizes[idx]], dtype=np.int64)
        # Padding so that (up, pad, filter, lrelu, filter, down) of the (in + k - 1) conv output
        # lands exactly on out_size, split as evenly as possible (the extra sample goes first).
        total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
        lo = (total + up) // 2
        hi = total - lo
        layers.append(
            LayerSpec(
                index=idx,
                is_torgb=is_torgb,
                is_critically_sampled=bool(critical),
                in_channels=int(channels[prev]),
                out_channels=int(channels[idx]),
                in_size=(int(in_size[0]), int(in_size[1])),
                out_size=(int(out_size[0]), int(out_size[1])),
                in_sampling_rate=in_rate,
                out_sampling_rate=out_rate,
                tmp_sampling_rate=tmp_rate,
                in_cutoff=float(cutoffs[prev]),
                out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]),
                out_half_width=float(half_widths[idx]),
                conv_kernel=kernel,
                up_factor=up,
                down_factor=down,
                up_taps=up_taps,
                down_taps=down_taps,
                down_radial=bool(use_radial_filters and not critical),
                padding=(int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1])),
                use_fp16=bool(rates[idx] * (2**num_fp16_res) > img_resolution),
            )
        )
    return Schedule(input=input_spec, layers=tuple(layers))
