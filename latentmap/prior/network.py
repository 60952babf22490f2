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


def rotary_angles(positions: Tensor, freqs: Tensor) -> Tensor:
    """(n, 2r) angles position·θ for positions (n,), each repeated for the two features of its pair."""
    return repeat(positions[:, None] * freqs[None, :], "n r -> n (r two)", two=2)


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent feature pairs of x's first cos.shape[-1] features; cos and sin broadcast against them."""
    rotary_dim = cos.shape[-1]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    a, b = rearrange(rotated, "... (r two) -> ... r two", two=2).unbind(dim=-1)
    turned = rearrange(torch.stack((-b, a), dim=-1), "... r two -> ... (r two)")
    return torch.cat((rotated * cos + turned * sin, passed), dim=-1)


def apply_rotary(x: Tensor, freqs: Tensor, offset: int = 0) -> Tensor:
    """Rotate adjacent feature pairs of the first 2·len(freqs) features of x (…, n, d) by position·θ.

    Positions are ``offset … offset + n − 1``.
    """
    n = x.shape[-2]
    positions = torch.arange(offset, offset + n, device=x.device, dtype=freqs.dtype)
    angles = rotary_angles(positions, freqs)
    return rotate_pairs(x, angles.cos().to(x.dtype), angles.sin().to(x.dtype))


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

    def keys_values(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The shared key (rotated, positions 0 …) and value of normalised tokens h (B, n, dim), each (B, n, dim_head)."""
        k, v = self.to_kv(h).chunk(2, dim=-1)
        return apply_rotary(k, self.rotary_freqs), v

    def forward(self, x: Tensor, bias: Tensor, last: int | None = None) -> Tensor:
        """x (B, n, dim); bias (B or 1, heads, n, 1 + n) additive logits, masks already folded in.

        ``last=k`` computes the output only for the last k tokens (they still attend to all).
        """
        n = x.shape[1]
        last = n if last is None else last
        h = self.norm(x)
        q = rearrange(self.to_q(h[:, n - last :]), "b n (h d) -> b h n d", h=self.heads) * self.dim_head**-0.5
        q = apply_rotary(q, self.rotary_freqs, offset=n - last)
        k, v = self.keys_values(h)
        null_k, null_v = (repeat(t, "d -> b 1 d", b=x.shape[0]).to(k.dtype) for t in self.null_kv.unbind(dim=0))
        k = torch.cat((null_k, k), dim=1)[:, None].expand(-1, self.heads, -1, -1)
        v = torch.cat((null_v, v), dim=1)[:, None].expand(-1, self.heads, -1, -1)
        out = attend(q, k, v, bias[:, :, n - last :])
        return self.out_norm(self.to_out(rearrange(out, "b h n d -> b n (h d)")))

    def forward_tokens(self, x: Tensor, keys: LayerKeys, layout: TokenLayout, rows: Tensor | None = None) -> Tensor:
        """:meth:`forward` for a flat token list x (N, dim) laid out by ``layout`` (see :class:`TokenLayout`).

        ``keys``: this layer's keys and values of the tokens outside the list (the cached conditions)
        and the tokens' rotary tables. ``rows`` (M,) computes the output for those tokens only.
        """
        h = self.norm(x)
        k, v = self.to_kv(h).chunk(2, dim=-1)
        cos, sin = (table.to(k.dtype) for table in keys.rotary)
        k = rotate_pairs(k, cos, sin)
        null_k, null_v = self.null_kv.to(k.dtype).unbind(dim=0)
        all_keys = torch.cat((null_k[None], keys.cond_keys.to(k.dtype), k))
        all_values = torch.cat((null_v[None], keys.cond_values.to(v.dtype), v))
        index, bias = layout.key_index, layout.bias
        if rows is not None:
            h, cos, sin, index, bias = h[rows], cos[rows], sin[rows], index[rows], bias[rows]
        q = rearrange(self.to_q(h), "m (h d) -> m h d", h=self.heads) * self.dim_head**-0.5
        q = rotate_pairs(q, cos[:, None], sin[:, None])
        # each token is one query (per head) over its own row's few key slots, gathered from the list
        out = attend_one_query(q, all_keys[index], all_values[index], bias)
        return self.out_norm(self.to_out(rearrange(out, "m h d -> m (h d)")))


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Softmax attention with additive logits ``bias`` (q already scaled), in float32 under autocast.

    A handful of keys per query: the attention itself is a sliver of the work, and in float32 it is
    both more accurate and (on CPUs) faster than the bfloat16 kernel.
    """
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias.float(), scale=1.0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


def attend_one_query(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Multi-query attention of M tokens, one query each: q (M, heads, d) already scaled, the heads' shared
    keys and values (M, s, d), additive logits bias (M, s, heads) -> (M, heads, d); in float32 under autocast.

    Two small batched products: a fused attention kernel spends far longer on M batches of one query
    (and would need the keys copied per head). The softmax runs over dim 1 of (M, s, heads): over a last
    dimension of a few slots torch's CPU softmax is several times slower.
    """
    dtype = torch.float32 if torch.is_autocast_enabled(q.device.type) else q.dtype
    with torch.autocast(q.device.type, enabled=False):
        logits = torch.baddbmm(bias.to(dtype), k.to(dtype), q.to(dtype).transpose(1, 2))  # bias + k·qᵀ
        weights = logits.softmax(dim=1).transpose(1, 2)  # (M, heads, s)
        return torch.bmm(weights, v.to(dtype))


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

    def forward(self, x: Tensor, bias: Tensor, last: int | None = None) -> Tensor:
        """The block's output for all tokens, or for the last ``last`` tokens only."""
        rows = x if last is None else x[:, -last:]
        rows = self.attn(x, bias, last) + rows
        return self.ff(rows) + rows

    def forward_tokens(self, x: Tensor, keys: LayerKeys, layout: TokenLayout, rows: Tensor | None = None) -> Tensor:
        """:meth:`forward` for a flat token list (see :meth:`Attention.forward_tokens`)."""
        out = x if rows is None else x[rows]
        out = self.attn.forward_tokens(x, keys, layout, rows) + out
        return self.ff(out) + out


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
    #
    # The same argument, one token further: the timestep token sees only the null slot, the condition
    # and itself, so its activations depend on (condition, t) alone, and where the condition is hidden
    # (``keep`` False: guidance's null half) on t alone. At a sampler step every row has the same t:
    # the null rows' timestep tokens are one row's work, not one per row, and so are those of rows with
    # the same condition (``sample`` draws all of a prompt's candidates in one batch). One row computes
    # it, the others read its keys and values (:func:`timestep_sharing`). Rows then run different numbers
    # of tokens, so a step runs them as ONE flat list of tokens: the token-wise layers (LayerNorm,
    # projections, feed-forward: nearly all the arithmetic) are one matrix product per weight over every
    # live token, and only attention looks back at the token's own row, through an index table
    # (:class:`TokenLayout`). For one w token and guidance, token rows per candidate and layer: 5 (4 + 1/c
    # for c candidates of one prompt) instead of 6 (DALLE2's two passes: 8).
    def condition_cache(self, cond: Tensor, keep: Tensor, *, share_timestep: bool = True) -> ConditionCache:
        """Every layer's key and value of the condition token, for conditions (B, cond_dim) and keep mask (B,).

        Computed once per distinct kept condition (the hidden ones are invisible to every token).
        ``share_timestep`` lets rows at the same t whose timestep tokens see the same thing share one
        (False: each computes its own; the same prediction, more work: for measuring).
        """
        groups = condition_groups(cond, keep)
        distinct = torch.zeros(int(groups.max()) + 1, dtype=torch.long, device=cond.device)
        distinct[groups[keep]] = keep.nonzero().squeeze(1)  # a row holding each distinct condition
        x = self.cond_in(cond[distinct])[:, None]
        bias = self.position_bias()[:, :, :1, :2]  # the condition token: null slot and itself, both visible
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            k, v = layer.attn.keys_values(layer.attn.norm(x))
            keys.append(k[:, 0])
            values.append(v[:, 0])
            if i < len(self.layers) - 1:
                x = layer(x, bias)
        all_at_one_t = torch.zeros(keep.shape[0], dtype=torch.long, device=keep.device)
        shares = timestep_sharing(all_at_one_t, groups, share_timestep)
        return ConditionCache(keys=keys, values=values, groups=groups, share_timestep=share_timestep,
                              layout=self.token_layout(groups, shares))

    def token_layout(self, groups: Tensor, shares: Tensor) -> TokenLayout:
        """The flat token list of a batch whose conditions are cached (see :class:`TokenLayout`).

        ``groups`` (B,): each row's distinct condition (−1: hidden; :func:`condition_groups`); ``shares``
        (B,): the row whose timestep token each row reads (itself or a row with the same condition and
        t; :func:`timestep_sharing`).
        """
        batch, n = groups.shape[0], self.rel_pos_buckets.shape[0]
        keep = groups >= 0
        device = groups.device
        live = torch.ones(batch, n - 1, dtype=torch.bool, device=device)  # positions 1 … n−1 (0: the condition)
        live[:, 0] = shares == torch.arange(batch, device=device)
        flat = rearrange(live.flatten().cumsum(0) - 1, "(b p) -> b p", b=batch)  # each live token's list index
        token_row, slot = live.nonzero(as_tuple=True)  # row-major, the list's order
        position = slot + 1
        # key slots of each row: null, condition, timestep (its own or the shared one), latents, queries;
        # indices into [null, distinct conditions, the list's tokens]
        first_token = 2 + int(groups.max())
        condition = torch.where(keep, 1 + groups, 0)  # masked (and pointing at null) where hidden
        slots = torch.cat((torch.zeros_like(condition)[:, None], condition[:, None],
                           first_token + flat[shares, :1], first_token + flat[:, 1:]), dim=1)
        bias = rearrange(self.attention_bias(keep)[token_row, :, position], "m h s -> m s h").contiguous()
        rotary = []
        for layer in self.layers:
            angles = rotary_angles(position.to(layer.attn.rotary_freqs.dtype), layer.attn.rotary_freqs)
            rotary.append((angles.cos(), angles.sin()))
        return TokenLayout(source=live.flatten().nonzero().squeeze(1), key_index=slots[token_row], bias=bias,
                           rotary=rotary, readout=flat[:, -self.tokens :].flatten(), shares=shares)

    def forward_cached(self, x_t: Tensor, t: Tensor, cache: ConditionCache) -> Tensor:
        """:meth:`forward` for the cached conditions (same batch order): the same prediction within float32
        rounding, without the condition token and, where t allows, with shared timestep tokens."""
        layout = cache.layout
        if cache.share_timestep and cache.groups.shape[0] > 1:
            shares = timestep_sharing(t, cache.groups)
            if not torch.equal(shares, layout.shares):  # rows that would share are not all at one t
                layout = self.token_layout(cache.groups, shares)
        queries = repeat(self.learned_query, "l d -> b l d", b=x_t.shape[0])
        x = torch.cat((self.time_embed(t)[:, None], self.latent_in(x_t), queries), dim=1)
        x = rearrange(x, "b n d -> (b n) d")[layout.source]
        for i, layer in enumerate(self.layers):
            # only the learned queries are read out, so the last layer computes just their rows
            rows = layout.readout if i == len(self.layers) - 1 else None
            keys = LayerKeys(cond_keys=cache.keys[i], cond_values=cache.values[i], rotary=layout.rotary[i])
            x = layer.forward_tokens(x, keys, layout, rows)
        return self.readout(rearrange(x, "(b l) d -> b l d", l=self.tokens))


def condition_groups(cond: Tensor, keep: Tensor) -> Tensor:
    """(B,) each kept row's distinct condition (0 …, rows with equal conditions alike), −1 where hidden."""
    groups = torch.full_like(keep, -1, dtype=torch.long)
    if keep.any():
        groups[keep] = torch.unique(cond[keep], dim=0, return_inverse=True)[1]
    return groups


def timestep_sharing(t: Tensor, groups: Tensor, share: bool = True) -> Tensor:
    """(B,) for each row the row whose timestep token it reads: the first row with the same t and the same
    condition group (:func:`condition_groups`; all hidden rows alike) if ``share``, else itself."""
    if not share:
        return torch.arange(groups.shape[0], device=groups.device)
    pairs = torch.stack((t.double(), groups.double()), dim=1)  # exact for timestep indices and float32 times
    kinds, kind = torch.unique(pairs, dim=0, return_inverse=True)
    rows = torch.arange(groups.shape[0], device=groups.device)
    first = torch.full((kinds.shape[0],), groups.shape[0], device=groups.device, dtype=torch.long)
    first.scatter_reduce_(0, kind, rows, reduce="amin")  # each kind's first row (not a B x B comparison)
    return first[kind]


@dataclass
class TokenLayout:
    """A batch of token sequences as one flat list of N live tokens, and what attention reads for each.

    The sequences are [condition, timestep, latents, queries] (n = 2 + 2·tokens); the condition comes from a
    :class:`ConditionCache` and is not in the list, nor is a timestep token another row's stands in for.

    - ``source`` (N,): each token's index in the (B·(n − 1)) rows of [timestep, latents, queries] per row;
    - ``key_index`` (N, n + 1): for each token, its row's key slots (null, condition, timestep, latents,
      queries) as indices into [null, the distinct kept conditions, the list's tokens];
    - ``bias`` (N, n + 1, heads): its additive attention logits (position bias, causal and condition masks);
    - ``rotary``: per layer, (cos, sin) (N, rotary features) at each token's position;
    - ``readout`` (B·tokens,): the learned queries' list indices, row-major;
    - ``shares`` (B,): the row whose timestep token each row reads.
    """

    source: Tensor
    key_index: Tensor
    bias: Tensor
    rotary: list[tuple[Tensor, Tensor]]
    readout: Tensor
    shares: Tensor


@dataclass
class LayerKeys:
    """One layer's keys and values (K, dim_head) of the K distinct cached conditions, and the list's rotary (cos, sin)."""

    cond_keys: Tensor
    cond_values: Tensor
    rotary: tuple[Tensor, Tensor]


@dataclass
class ConditionCache:
    """Per-layer keys and values (K, dim_head) of the K distinct kept conditions, each row's condition
    group (B,) (:func:`condition_groups`), and the token layout of a step where every row is at one t."""

    keys: list[Tensor]
    values: list[Tensor]
    groups: Tensor
    share_timestep: bool
    layout: TokenLayout
