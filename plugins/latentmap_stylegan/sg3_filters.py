"""Low-pass filter design for StyleGAN3's alias-free resampling (no scipy needed).

StyleGAN3 band-limits every layer with windowed-sinc low-pass filters:

* separable layers use a 1-D Kaiser-windowed sinc, the classic window method: the ideal low-pass
  impulse response ``2 fc sinc(2 fc t)`` sampled at the filter's taps, times a Kaiser window whose
  ``beta`` is chosen from the transition width (Kaiser's empirical formulas), normalised to unit DC gain;
* StyleGAN3-R's non-critical down filters are radially symmetric: the 2-D ideal circular low-pass
  (a *jinc*, ``fc J1(2 pi fc r) / r``) times the outer product of two Kaiser windows, normalised to sum 1.

Everything is computed in float64 with numpy / ``torch.special`` and returned as float32, matching
the filters stored in NVIDIA's network pickles to float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def kaiser_attenuation(numtaps: int, width: float) -> float:
    """Stop-band attenuation (dB) a Kaiser FIR of ``numtaps`` reaches for a transition ``width``.

    ``width`` is relative to the Nyquist frequency (1 = Nyquist). Kaiser's formula.
    """
    return 2.285 * (numtaps - 1) * math.pi * width + 7.95


def kaiser_beta(attenuation: float) -> float:
    """Kaiser window ``beta`` for a desired stop-band attenuation in dB (Kaiser's empirical fit)."""
    if attenuation > 50:
        return 0.1102 * (attenuation - 8.7)
    if attenuation > 21:
        return 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    return 0.0


def kaiser_window(numtaps: int, beta: float) -> np.ndarray:
    """The symmetric Kaiser window of ``numtaps`` samples, float64."""
    if numtaps == 1:
        return np.ones(1)
    n = np.arange(numtaps, dtype=np.float64)
    ratio = 2.0 * n / (numtaps - 1) - 1.0
    return np.i0(beta * np.sqrt(np.clip(1.0 - ratio**2, 0.0, None))) / np.i0(beta)


def _window_beta(numtaps: int, width: float, fs: float) -> float:
    return kaiser_beta(kaiser_attenuation(numtaps, width / (fs / 2)))


def kaiser_sinc_filter(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """1-D Kaiser-windowed sinc low-pass: ``cutoff`` and transition ``width`` in Hz at sample rate ``fs``.

    Normalised to unit gain at DC (the taps sum to 1). float64, symmetric.
    """
    t = np.arange(numtaps, dtype=np.float64) - (numtaps - 1) / 2
    relative_cutoff = cutoff / (fs / 2)
    ideal = relative_cutoff * np.sinc(relative_cutoff * t)
    taps = ideal * kaiser_window(numtaps, _window_beta(numtaps, width, fs))
    return taps / taps.sum()


def jinc_kaiser_filter(numtaps: int, cutoff: float, width: float, fs: float) -> np.ndarray:
    """2-D radially symmetric low-pass (jinc times separable Kaiser), ``numtaps x numtaps``, sum 1.

    The ideal 2-D low-pass with a circular pass band of radius ``cutoff`` has the impulse response
    ``cutoff * J1(2 pi cutoff r) / r``; constant factors vanish in the final normalisation.
    """
    t = (np.arange(numtaps, dtype=np.float64) - (numtaps - 1) / 2) / fs
    r = np.hypot(t[None, :], t[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        bessel = torch.special.bessel_j1(torch.from_numpy(2 * math.pi * cutoff * r)).numpy()
        ideal = np.where(r > 0, cutoff * bessel / r, math.pi * cutoff**2)
    window = kaiser_window(numtaps, _window_beta(numtaps, width, fs))
    taps = ideal * np.outer(window, window)
    return taps / taps.sum()


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, *, radial: bool = False) -> Tensor | None:
    """StyleGAN3's layer filter: None for a single tap (no filtering), else a float32 tensor.

    1-D (``numtaps``,) for separable filtering, or 2-D (``numtaps``, ``numtaps``) when ``radial``.
    """
    if numtaps == 1:
        return None
    if radial:
        taps = jinc_kaiser_filter(numtaps, cutoff, width, fs)
    else:
        taps = kaiser_sinc_filter(numtaps, cutoff, width, fs)
    return torch.as_tensor(taps, dtype=torch.float32)
