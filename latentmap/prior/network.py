"""The prior's denoising network: DALL-E 2's causal prior transformer (as DALLE2-pytorch 0.2.38).

Token sequence: [condition, timestep, noised latent token(s), learned query token(s)]. Causal
self-attention over it, with a learned null key/value every query may attend to, T5 relative
position bias, partial rotary embeddings and a single shared key/value head; SwiGLU feed-forward;
pre-norm blocks whose attention branch ends in a LayerNorm. The prediction is read at the
learned queries (one per latent token, as clip2latent's w+ network extended it).

Parameter names are our own; :mod:`latentmap.prior.clip2latent` maps DALLE2's onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

# Masked logits are filled with the most negative float32, not -inf, as the original does.
MASK_VALUE = -torch.finfo(torch.float32).max
ROTARY_MAX_DIM = 32
ROTARY_THETA = 10000.0
REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 128


def relative_position_buckets(queries: int, keys: int) -> Tensor:
    """T5 causal buckets for (query i, key slot k): distance m = max(i − k, 0), exact below 16, log above.

    Slot 0 is the null key, so real token j sits in slot j + 1 (fixtures README, quirk 11).
    """
    query_pos = torch.arange(queries)
    key_pos = torch.arange(keys)
    distance = (query_pos[:, None] - key_pos[None, :]).clamp(min=0)
    max_exact = REL_POS_BUCKETS // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(REL_POS_MAX_DISTANCE / max_exact)
    large = (max_exact + log_ratio * (REL_POS_BUCKETS - max_exact)).long()
    large = large.clamp(max=REL_POS_BUCKETS - 1)
    return torch.where(distance < max_exact, distance, large)


def rotary_frequencies(dim_head: int) -> Tensor:
    """θ_j = 10000^(−2j/r) for the r = min(32, dim_head) rotated features (r/2 pairs)."""
    rotary_dim = min(ROTARY_MAX_DIM, dim_head)
    return 1.0 / (ROTARY_THETA ** (torch.arange(0, rotary_dim, 2)[: rotary_dim // 2].float() / rotary_dim))


def apply_rotary(x: Tensor, freqs: Tensor, offset: int = 0) -> Tensor:
    """Rotate adjacent feature pairs of the first 2·len(freqs) features of x (…, n, d) by position·θ.

    Positions are ``offset … offset + n − 1``.
    """
    n = x.shape[-2]
    rotary_dim = freqs.shape[0] * 2
    positions = torch.arange(offset, offset + n, device=x.device, dtype=freqs.dtype)
    angles = positions[:, None] * freqs[None, :]
    angles = repeat(angles, "n r -> n (r two)", two=2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    pairs = rearrange(rotated, "... (r two) -> ... r two", two=2)
    a, b = pairs.unbind(dim=-1)
    turned = rearrange(torch.stack((-b, a), dim=-1), "... r two -> ... (r two)")
    return torch.cat((rotated * cos + turned * sin, passed), dim=-1)


class Attention(nn.Module):
    """Multi-query causal attention with a null key/value slot and a post-projection LayerNorm."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm = nn.LayerNorm(dim, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.out_norm = nn.LayerNorm(dim, bias=False)
        # Persistent so an imported checkpoint keeps its stored (EMA-drifted) frequencies.
        self.register_buffer("rotary_freqs", rotary_frequencies(dim_head))

    def keys_values(self, h: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """The shared key (rotated, positions ``offset …``) and value of normalised tokens h (B, n, dim).

        Each (B, n, dim_head).
        """
        k, v = self.to_kv(h).chunk(2, dim=-1)
        return apply_rotary(k, self.rotary_freqs, offset=offset), v

    def forward(
        self, x: Tensor, bias: Tensor, last: int | None = None, past: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x (B, n, dim); bias (B or 1, heads, n, 1 + p + n) additive logits, masks already folded in.

        ``last=k`` computes the output only for the last k tokens (they still attend to all).
        ``past`` = (keys, values), each (B, p, dim_head): p tokens before x's (already rotated, as
        :meth:`keys_values` gives them), so x's tokens sit at positions p … p + n − 1.
        """
        n = x.shape[1]
        p = 0 if past is None else past[0].shape[1]
        last = n if last is None else last
        h = self.norm(x)
        q = rearrange(self.to_q(h[:, n - last :]), "b n (h d) -> b h n d", h=self.heads) * self.dim_head**-0.5
        q = apply_rotary(q, self.rotary_freqs, offset=p + n - last)
        bias = bias[:, :, n - last :]
        k, v = self.keys_values(h, offset=p)
        null_k, null_v = (repeat(t, "d -> b 1 d", b=x.shape[0]).to(k.dtype) for t in self.null_kv.unbind(dim=0))
        before_k, before_v = (null_k,), (null_v,)
        if past is not None:
            before_k, before_v = (null_k, past[0].to(k.dtype)), (null_v, past[1].to(v.dtype))
        k = torch.cat((*before_k, k), dim=1)[:, None]
        v = torch.cat((*before_v, v), dim=1)[:, None]
        k, v = k.expand(-1, self.heads, -1, -1), v.expand(-1, self.heads, -1, -1)
        if torch.is_autocast_enabled(x.device.type):
            # A handful of tokens: the attention itself is a sliver of the work, and in float32 it is
            # both more accurate and (on CPUs) faster than the bfloat16 kernel.
            with torch.autocast(x.device.type, enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float(), scale=1.0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        return self.out_norm(self.to_out(rearrange(out, "b h n d -> b n (h d)")))


class FeedForward(nn.Module):
    """Pre-norm SwiGLU: LayerNorm, Linear to 2·mult·dim, a · SiLU(g), Linear back."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, bias=False)
        self.w_in = nn.Linear(dim, 2 * mult * dim, bias=False)
        self.w_out = nn.Linear(mult * dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.w_in(self.norm(x)).chunk(2, dim=-1)
        return self.w_out(a * F.silu(gate))


class Block(nn.Module):
    """One residual layer: attention then feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, ff_mult)

    def forward(
        self, x: Tensor, bias: Tensor, last: int | None = None, past: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """The block's output for all tokens, or for the last ``last`` tokens only (``past``: see :class:`Attention`)."""
        rows = x if last is None else x[:, -last:]
        rows = self.attn(x, bias, last, past) + rows
        return self.ff(rows) + rows


class PriorNetwork(nn.Module):
    """Predicts the clean latent (or the noise) from (noised latent, timestep, condition).

    ``forward(x_t (B, tokens, latent_dim), t (B,), cond (B, cond_dim), keep (B,) bool)``
    -> (B, tokens, latent_dim). ``keep[i] = False`` hides sample i's condition from every layer
    (classifier-free guidance's null branch).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        tokens: int,
        cond_dim: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
        timesteps: int,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.heads = heads
        self.time_embed = nn.Embedding(timesteps, dim)
        self.learned_query = nn.Parameter(torch.randn(tokens, dim))
        self.cond_in = nn.Linear(cond_dim, dim, bias=False) if cond_dim != dim else nn.Identity()
        self.latent_in = nn.Linear(latent_dim, dim, bias=False) if latent_dim != dim else nn.Identity()
        self.rel_pos_bias = nn.Embedding(REL_POS_BUCKETS, heads)
        self.layers = nn.ModuleList([Block(dim, heads, dim_head, ff_mult) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(dim, bias=False)
        self.project_out = nn.Linear(dim, dim, bias=False)
        self.latent_out = nn.Linear(dim, latent_dim, bias=False) if latent_dim != dim else nn.Identity()
        n = 2 + 2 * tokens
        self.register_buffer("rel_pos_buckets", relative_position_buckets(n, n + 1), persistent=False)

    def position_bias(self) -> Tensor:
        """(1, heads, n, n+1) relative-position bias, before any masking."""
        return rearrange(self.rel_pos_bias(self.rel_pos_buckets), "i k h -> 1 h i k")

    def attention_bias(self, keep: Tensor) -> Tensor:
        """(B, heads, n, n+1) additive logits: relative-position bias with causal and condition masks."""
        n = self.rel_pos_buckets.shape[0]
        slots = torch.arange(n + 1, device=keep.device)
        visible = slots[None, :] <= torch.arange(n, device=keep.device)[:, None] + 1  # causal, null slot 0
        cond_visible = torch.ones(keep.shape[0], n + 1, dtype=torch.bool, device=keep.device)
        cond_visible[:, 1] = keep
        visible = visible[None, None] & cond_visible[:, None, None, :]
        return self.position_bias().masked_fill(~visible, MASK_VALUE)

    def tokens_in(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The (B, 2 + 2·tokens, dim) sequence entering the transformer."""
        batch = x_t.shape[0]
        return torch.cat(
            (
                self.cond_in(cond)[:, None],
                self.time_embed(t)[:, None],
                self.latent_in(x_t),
                repeat(self.learned_query, "l d -> b l d", b=batch),
            ),
            dim=1,
        )

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor, keep: Tensor, cache: ConditionCache | None = None) -> Tensor:
        """The prediction (B, tokens, latent_dim); with ``cache`` (made by :meth:`condition_cache` from
        these ``cond`` and ``keep``) the condition token's work is taken from it."""
        if cache is not None:
            return self.forward_cached(x_t, t, cache)
        x = self.tokens_in(x_t, t, cond)
        bias = self.attention_bias(keep)
        # Only the learned queries are read out, so the last layer computes just their rows.
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, last=self.tokens if i == len(self.layers) - 1 else None)
        return self.readout(x)

    def readout(self, x: Tensor) -> Tensor:
        """The prediction from the final hidden states (the last ``tokens`` rows), in float32 even under autocast.

        The final LayerNorm and projection are a small share of the work; keeping them in float32
        keeps a bf16 pass from rounding its output to bf16's 8 bits.
        """
        with torch.autocast(x.device.type, enabled=False):
            out = self.project_out(self.final_norm(x[:, -self.tokens :].float()))
            return self.latent_out(out)

    # --------------------------------------------------------------- sampling with a fixed condition
    # With causal attention the condition token (position 0) sees only the null slot and itself, so its
    # activations in every layer depend on the condition alone, never on the timestep or the noised
    # latent. A sampler calls the network many times with the same conditions: their keys and values
    # are computed once (:meth:`condition_cache`) and each step runs only the other 1 + 2·tokens tokens.
    def condition_cache(self, cond: Tensor, keep: Tensor) -> ConditionCache:
        """Every layer's key and value of the condition token, for conditions (B, cond_dim) and keep mask (B,).

        Where ``keep`` is False the condition is invisible to every token, so its keys are never
        attended to (zeros stand in, and are not computed).
        """
        bias = self.attention_bias(keep)[:, :, :1, :2]  # the condition token: null slot and itself
        kept = keep.nonzero().squeeze(1)
        x = self.cond_in(cond[kept])[:, None]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.attn.keys_values(layer.attn.norm(x))
            keys.append(k)
            values.append(v)
            if i < len(self.layers) - 1:
                x = layer(x, bias[kept] if bias.shape[0] > 1 else bias)
        if kept.shape[0] != keep.shape[0]:  # scatter the kept rows into zeros for the dropped ones
            keys = [_scatter_rows(k, kept, keep.shape[0]) for k in keys]
            values = [_scatter_rows(v, kept, keep.shape[0]) for v in values]
        return ConditionCache(keys=keys, values=values, keep=keep)

    def forward_cached(self, x_t: Tensor, t: Tensor, cache: ConditionCache) -> Tensor:
        """:meth:`forward` for the cached conditions (same batch order): the same prediction within float32
        rounding, with 1 + 2·tokens instead of 2 + 2·tokens tokens per layer."""
        batch = x_t.shape[0]
        queries = repeat(self.learned_query, "l d -> b l d", b=batch)
        x = torch.cat((self.time_embed(t)[:, None], self.latent_in(x_t), queries), dim=1)
        bias = self.attention_bias(cache.keep)[:, :, 1:]
        for i, layer in enumerate(self.layers):
            x = layer(x, bias, last=self.tokens if i == len(self.layers) - 1 else None,
                      past=(cache.keys[i], cache.values[i]))
        return self.readout(x)


@dataclass
class ConditionCache:
    """Per-layer keys and values (B, 1, dim_head) of the condition token, and the keep mask (B,) they were made with."""

    keys: list[Tensor]
    values: list[Tensor]
    keep: Tensor


def _scatter_rows(rows: Tensor, index: Tensor, batch: int) -> Tensor:
    out = rows.new_zeros((batch, *rows.shape[1:]))
    out[index] = rows
    return out
