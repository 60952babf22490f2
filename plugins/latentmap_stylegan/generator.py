"""``StyleGANGenerator``: a StyleGAN2/StyleGAN3 network as a latentmap ``Generator``.

Latents live in a *space* over W (see ``latentmap.spaces``):

* ``w``  -- one w per sample, repeated over every style layer (the paper's default);
* ``w3`` -- three independent w for coarse, middle and fine layers ((4, 4, 10) for 18 layers),
  i.e. every draw is a style mix of three random images, as the paper made its w3 data;
* ``w+`` -- one w per layer. Draws are the generator's own distribution: one w repeated on
  every layer (independent per-layer draws would be a 16-18-way style mix the generator never
  saw). The space lets a prior *produce* per-layer latents, e.g. after training on inverted images.

``sample_latents`` draws z ~ N(0, I) from the caller's ``torch.Generator`` (on that generator's
device, so draws do not depend on where the network runs), maps it to w and applies the
``truncation`` option toward ``w_avg``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import torch
from torch import Tensor

from latentmap import Generator, LatentmapError, LatentSpace, build_options
from latentmap_stylegan.converted import tensors_sha256
from latentmap_stylegan.mapping import truncate
from latentmap_stylegan.options import DTYPE_NAMES, NOISE_MODES, StyleGANOptions, space_names  # noqa: F401

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def make_space(name: str, layers: int, dim: int, split: Sequence[int] | None = None) -> LatentSpace:
    """The latent space ``name`` for a generator with ``layers`` style layers of size ``dim``."""
    import latentmap

    return latentmap.get_space(name, layers=layers, dim=dim, **({} if split is None else {"split": list(split)}))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def style_mix(ws: Tensor, other: Tensor, crossover: int) -> Tensor:
    """Per-layer latents (B, layers, dim): layers < ``crossover`` from ``ws``, the rest from ``other``."""
    if ws.shape != other.shape:
        raise LatentmapError(f"style mixing needs equal shapes, got {tuple(ws.shape)} and {tuple(other.shape)}")
    if not 0 <= crossover <= ws.shape[1]:
        raise LatentmapError(f"style-mixing crossover {crossover} is outside 0-{ws.shape[1]}")
    return torch.cat([ws[:, :crossover], other[:, crossover:]], dim=1)


class StyleGANGenerator(Generator):
    """Wraps an SG2/SG3 network (ours, NVIDIA's call semantics) and a latent space over W."""

    def __init__(self, network: torch.nn.Module, options: StyleGANOptions | None = None, *,
                 name: str = "stylegan", kind: str = "stylegan2", **values: Any) -> None:
        """``options`` as the registry validated them, or the same as keywords (``device="cpu"``)."""
        if options is None:
            options = build_options(StyleGANOptions, values, where="StyleGANGenerator", owner=f"generator {name!r}")
        elif values:
            raise TypeError("StyleGANGenerator takes options or keyword options, not both")
        if network.c_dim > 0:
            raise LatentmapError(
                f"{options.weights or name}: class-conditional networks (c_dim={network.c_dim}) are not supported; "
                "latentmap needs an unconditional generator"
            )
        self.network = network.eval().requires_grad_(False)
        self.name = name
        self.kind = kind
        self.resolution = int(network.img_resolution)
        self.space = make_space(options.space, layers=int(network.num_ws), dim=int(network.w_dim), split=options.split)
        self.truncation = float(options.truncation)
        self.noise_mode = options.noise_mode
        self.dtype_name = options.dtype
        self.weights = options.weights
        self._sha256: str | None = None
        self.to(options.device if options.device is not None else default_device())

    # -- the Generator contract -------------------------------------------------------------------
    def sample_latents(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, tokens, w_dim): one mapped z per token (style mixing for w3), truncated by ``truncation``."""
        tokens = 1 if self.space.name == "w+" else self.space.tokens
        z_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n * tokens, self.network.z_dim, generator=generator, device=z_device)
        with torch.no_grad():
            w = self.map(z.to(self.device), truncation=self.truncation)
        w = w.reshape(n, tokens, -1)
        if self.space.name == "w+":
            w = w.expand(n, self.space.tokens, w.shape[-1]).contiguous()
        return w

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        """(B, layers, w_dim) -> images (B, 3, H, W) clamped to [-1, 1]; differentiable."""
        if per_layer.ndim != 3 or per_layer.shape[1:] != (self.space.layers, self.space.dim):
            raise LatentmapError(
                f"generator {self.name!r} expects per-layer latents (B, {self.space.layers}, {self.space.dim}), "
                f"got {tuple(per_layer.shape)}"
            )
        ws = per_layer.to(self.device, torch.float32)
        autocast = (
            torch.autocast(self.device.type, dtype=DTYPES[self.dtype_name])
            if self.dtype_name != "float32" else nullcontext()
        )
        with autocast:
            images = self.network.synthesis(ws, noise_mode=self.noise_mode)
        return images.float().clamp(-1.0, 1.0)

    def mean_latent(self) -> Tensor:
        """``w_avg`` repeated over the space's tokens: (tokens, w_dim)."""
        w_avg = self.network.mapping.w_avg.detach().float()
        return w_avg.expand(self.space.tokens, -1).clone()

    def identity(self) -> dict[str, Any]:
        if self._sha256 is None:
            self._sha256 = tensors_sha256(self.network)
        return {
            **super().identity(),
            "kind": self.kind,
            "weights_sha256": self._sha256,
            "truncation": self.truncation,
            "noise_mode": self.noise_mode,
        }

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "StyleGANGenerator":
        self._device = torch.device(device)
        self.network.to(self._device)
        return self

    # -- helpers for callers (edit, sample) -------------------------------------------------------
    def map(self, z: Tensor, *, truncation: float = 1.0) -> Tensor:
        """z (B, z_dim) -> w (B, w_dim), truncated toward ``w_avg`` by ``truncation``."""
        w = self.network.mapping(z.to(self.device, torch.float32))[:, 0]
        return truncate(w, self.network.mapping.w_avg, truncation) if truncation != 1 else w

    def sample_ws(self, n: int, *, generator: torch.Generator | None = None, truncation: float | None = None,
                  truncation_cutoff: int | None = None) -> Tensor:
        """NVIDIA-style per-layer ws (n, num_ws, w_dim): one z each, truncated on layers < cutoff."""
        psi = self.truncation if truncation is None else float(truncation)
        z_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.network.z_dim, generator=generator, device=z_device).to(self.device)
        with torch.no_grad():
            return self.network.mapping(z, truncation_psi=psi, truncation_cutoff=truncation_cutoff)

    def truncate(self, latents: Tensor, psi: float) -> Tensor:
        """Latents in the space (B, tokens, dim) or per layer (B, layers, dim), moved toward ``w_avg``."""
        return truncate(latents, self.network.mapping.w_avg.to(latents.device), psi)

    @staticmethod
    def style_mix(ws: Tensor, other: Tensor, crossover: int) -> Tensor:
        """Layers < crossover from ``ws``, the rest from ``other`` (both (B, layers, dim))."""
        return style_mix(ws, other, crossover)
