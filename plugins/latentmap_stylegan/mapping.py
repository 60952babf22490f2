"""The StyleGAN mapping network z -> w, shared by StyleGAN2 and StyleGAN3.

State-dict key names follow NVIDIA's (``fc{i}.weight``, ``fc{i}.bias``, ``embed.*``, ``w_avg``) so
their weights load unchanged. Every layer uses the *equalised learning rate* trick: parameters are
stored ``1 / lr_multiplier`` times larger than they act, and the weight is scaled by
``lr_multiplier / sqrt(fan_in)`` at run time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


def normalize_2nd_moment(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each row to unit root-mean-square (the mapping's input normalisation)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def lrelu_gain(x: Tensor, gain: float = LRELU_GAIN) -> Tensor:
    """Leaky ReLU (slope 0.2) times ``gain`` (sqrt(2) keeps the signal's magnitude)."""
    return F.leaky_relu(x, LRELU_SLOPE) * gain


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate, optional leaky-ReLU, NVIDIA parameter layout.

    ``weight`` is (out, in). ``bias_init`` is the constant the bias starts at (1 for style affines,
    so an untrained generator modulates by 1).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_multiplier)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = F.linear(x, w, b)
        return lrelu_gain(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """z (and an optional class label c) -> ws (B, num_ws, w_dim).

    ``num_layers`` leaky-ReLU FC layers; ``w_avg`` is the running mean of w that truncation pulls
    toward (tracked only when ``update_emas=True``, i.e. during training). With ``num_ws=None`` the
    output is a single (B, w_dim) w, as in NVIDIA's code.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            layer = FullyConnectedLayer(features[i], features[i + 1], activation=activation, lr_multiplier=lr_multiplier)
            setattr(self, f"fc{i}", layer)
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def embed_inputs(self, z: Tensor | None, c: Tensor | None) -> Tensor:
        """Normalised z, concatenated with the normalised label embedding when c_dim > 0."""
        parts = []
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise ValueError(f"mapping expects z of shape (B, {self.z_dim}), got {None if z is None else tuple(z.shape)}")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise ValueError(f"mapping expects c of shape (B, {self.c_dim}), got {None if c is None else tuple(c.shape)}")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> Tensor:
        x = self.embed_inputs(z, c)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_emas and hasattr(self, "w_avg"):
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x if truncation_psi == 1 else truncate(x, self.w_avg, truncation_psi)
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            ws = truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)
        return ws

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


class MappedGenerator(nn.Module):
    """What StyleGAN2 and StyleGAN3 generators share: ``G(z) = G.synthesis(G.mapping(z))``.

    Subclasses build ``self.mapping`` (a :class:`MappingNetwork`) and ``self.synthesis``.
    """

    mapping: MappingNetwork
    synthesis: nn.Module

    def forward(
        self,
        z: Tensor,
        c: Tensor | None = None,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs: Any,
    ) -> Tensor:
        """z (B, z_dim) -> images (B, C, H, W) in about [-1, 1], NVIDIA's call semantics."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)


def truncate(ws: Tensor, w_avg: Tensor, psi: float, cutoff: int | None = None) -> Tensor:
    """Pull per-layer latents toward ``w_avg``: ``w_avg + psi * (w - w_avg)`` on layers < ``cutoff``.

    ``ws`` is (B, layers, dim) (or (B, dim), where ``cutoff`` is ignored); returns a new tensor.
    """
    w_avg = w_avg.to(ws.dtype)
    if ws.ndim == 2 or cutoff is None:
        return w_avg.lerp(ws, psi)
    out = ws.clone()
    out[:, :cutoff] = w_avg.lerp(ws[:, :cutoff], psi)
    return out
