"""Import clip2latent's released prior checkpoints (DALLE2-pytorch 0.2.38 state dicts) without either library.

A clip2latent ``.ckpt`` is ``{"state_dict": DiffusionPriorTrainer.state_dict()}``: the online prior
under ``diffusion_prior.``, the EMA wrapper's copies under ``ema_diffusion_prior.online_model.`` and
``ema_diffusion_prior.ema_model.`` (what clip2latent samples with). It holds only tensors, so it is
read with ``torch.load(weights_only=True)`` on a torch without that loader's published bypass
(CVE-2025-32434, fixed in 2.6): nothing in the file can execute code, and a file holding anything
else is refused, never retried with ``weights_only=False``.

The key mapping is strict: every DALLE2 key must map onto exactly one of ours and every one of
ours must be filled, or the import fails naming the key. The stored buffers (schedule tables,
rotary frequencies, latent statistics) are kept as stored, EMA drift included, so an imported
model reproduces clip2latent's numbers rather than an idealised version of them.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.interfaces import LatentSpace, PriorShape
from latentmap.prior import CLIP2LATENT_ENCODER, CLIP2LATENT_GENERATOR
from latentmap.prior.diffusion import DiffusionOptions, DiffusionPrior
from latentmap.prior.schedule import BUFFER_NAMES, make_betas
from latentmap.spaces import w3_space, w_space

WEIGHT_PREFIXES = {"ema": "ema_diffusion_prior.ema_model.", "online": "diffusion_prior."}
# Trainer bookkeeping and the EMA wrapper's duplicate of the online model: known, not imported.
IGNORED_TOP_LEVEL = ("step", "ema_diffusion_prior.initted", "ema_diffusion_prior.step")
# Condition z-score buffers: registered by clip2latent but never used (fixtures README, quirk 1).
UNUSED_PRIOR_KEYS = ("embed_mean", "embed_std")

DEFAULT_GENERATOR = CLIP2LATENT_GENERATOR
DEFAULT_ENCODER = CLIP2LATENT_ENCODER
# clip2latent's image embedder applied CLIP's mean/std normalisation twice (quirk 14).
DOUBLE_NORM_PREPROCESS = "clip2latent-double-norm"

TRANSFORMER = "net.causal_transformer."
_T = re.escape(TRANSFORMER)
# The one key table, read in both directions: (DALLE2 key, our key), "{i}" standing for a layer index.
# Our key None marks a DALLE2 LayerNorm bias: a zero buffer there, absent here (import checks it is zero,
# export writes zeros).
KEY_MAP: list[tuple[str, str | None]] = [
    ("net.learned_query", "net.learned_query"),
    ("net.to_time_embeds.0.weight", "net.time_embed.weight"),
    (TRANSFORMER + "rel_pos_bias.relative_attention_bias.weight", "net.rel_pos_bias.weight"),
    (TRANSFORMER + "layers.{i}.0.null_kv", "net.layers.{i}.attn.null_kv"),
    (TRANSFORMER + "layers.{i}.0.norm.gamma", "net.layers.{i}.attn.norm.weight"),
    (TRANSFORMER + "layers.{i}.0.norm.beta", None),
    (TRANSFORMER + "layers.{i}.0.to_q.weight", "net.layers.{i}.attn.to_q.weight"),
    (TRANSFORMER + "layers.{i}.0.to_kv.weight", "net.layers.{i}.attn.to_kv.weight"),
    (TRANSFORMER + "layers.{i}.0.rotary_emb.freqs", "net.layers.{i}.attn.rotary_freqs"),
    (TRANSFORMER + "layers.{i}.0.to_out.0.weight", "net.layers.{i}.attn.to_out.weight"),
    (TRANSFORMER + "layers.{i}.0.to_out.1.gamma", "net.layers.{i}.attn.out_norm.weight"),
    (TRANSFORMER + "layers.{i}.0.to_out.1.beta", None),
    (TRANSFORMER + "layers.{i}.1.0.gamma", "net.layers.{i}.ff.norm.weight"),
    (TRANSFORMER + "layers.{i}.1.0.beta", None),
    (TRANSFORMER + "layers.{i}.1.1.weight", "net.layers.{i}.ff.w_in.weight"),
    (TRANSFORMER + "layers.{i}.1.5.weight", "net.layers.{i}.ff.w_out.weight"),
    (TRANSFORMER + "norm.gamma", "net.final_norm.weight"),
    (TRANSFORMER + "norm.beta", None),
    (TRANSFORMER + "project_out.weight", "net.project_out.weight"),
    ("latent_mean", "latent_mean"),
    ("latent_std", "latent_std"),
] + [(name, name) for name in BUFFER_NAMES]


def _key_pattern(template: str) -> re.Pattern[str]:
    """A template's exact-match regex, its layer index captured."""
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(\d+)") + r"\Z")


def _key_target(template: str | None) -> str:
    """The template as a ``match.expand`` replacement ("zero" for a DALLE2 LayerNorm bias)."""
    return "zero" if template is None else template.replace("{i}", r"\1")


# DALLE2 key -> ours ("zero": a LayerNorm bias that must be zero).
_COMPILED_RULES = [(_key_pattern(theirs), _key_target(ours)) for theirs, ours in KEY_MAP]
# Ours -> DALLE2 key, for writing a latentmap prior as a DALLE2-pytorch state dict.
_INVERSE_RULES = [(_key_pattern(ours), _key_target(theirs)) for theirs, ours in KEY_MAP if ours is not None]
# DALLE2's zero LayerNorm biases of layer-less (None) or per-layer ({i}) keys.
ZERO_BIAS_KEYS = [theirs for theirs, ours in KEY_MAP if ours is None]


# torch.load(weights_only=True) had a published bypass before torch 2.6 (CVE-2025-32434).
SAFE_TORCH_LOAD = (2, 6)


def require_safe_torch_load(what: str) -> None:
    """Refuse, in one line, to unpickle an untrusted file with a torch whose ``weights_only`` can be bypassed."""
    if torch.__version__ < SAFE_TORCH_LOAD:
        raise LatentmapError(
            f"refusing to read {what} with torch {torch.__version__}: its weights_only loader has a published "
            f"bypass (CVE-2025-32434); install torch >= {'.'.join(map(str, SAFE_TORCH_LOAD))}"
        )


def _checkpoint_error(path: Path, exc: Exception) -> LatentmapError:
    """One line for a checkpoint torch would not load, without torch's hint to retry unsafely."""
    text = str(exc)
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text, re.S)
        found = f" ({detail.group(1).strip()})" if detail else ""
        return LatentmapError(
            f"refusing to load {str(path)!r}: it holds something other than tensors and plain containers{found}. "
            "latentmap reads checkpoints with torch.load(weights_only=True) only and never retries with "
            "weights_only=False: unpickling other objects can run code from the file"
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    return LatentmapError(f"cannot read {str(path)!r} as a torch checkpoint (truncated or corrupt?): {first}")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The trainer state dict of a clip2latent ``.ckpt``, loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"clip2latent checkpoint {str(path)!r} does not exist")
    require_safe_torch_load(f"clip2latent checkpoint {str(path)!r}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused or file corrupt: say which file, never torch's retry hint
        raise _checkpoint_error(path, exc) from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state_dict"), dict):
        raise LatentmapError(f"{str(path)!r} is not a clip2latent checkpoint (no 'state_dict' dict)")
    return loaded["state_dict"]


def select_weights(state: dict[str, Tensor], weights: str = "ema") -> dict[str, Tensor]:
    """One prior's state dict (prefix removed) out of the trainer's: ``ema`` (default) or ``online``."""
    if weights not in WEIGHT_PREFIXES:
        raise LatentmapError(f"weights must be one of {', '.join(WEIGHT_PREFIXES)}, got {weights!r}")
    prefix = WEIGHT_PREFIXES[weights]
    known_prefixes = tuple(WEIGHT_PREFIXES.values()) + ("ema_diffusion_prior.online_model.",)
    for key in state:
        if key not in IGNORED_TOP_LEVEL and not key.startswith(known_prefixes):
            raise LatentmapError(f"unexpected key {key!r} in clip2latent checkpoint")
    selected = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not selected:
        raise LatentmapError(f"clip2latent checkpoint has no {weights} weights (no keys starting with {prefix!r})")
    return selected


def _map_key(key: str) -> str | None:
    for pattern, target in _COMPILED_RULES:
        match = pattern.match(key)
        if match:
            return target if target == "zero" else match.expand(target)
    return None


def _find(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise LatentmapError(f"clip2latent state dict is missing key {key!r}")
    return state[key]


def infer_config(
    state: dict[str, Tensor], clip2latent_config: dict[str, Any] | None = None
) -> tuple[PriorShape, DiffusionOptions]:
    """The shape and options a DALLE2 prior state dict was built with, from tensor shapes (+ the yaml's flags)."""
    query = _find(state, "net.learned_query")
    tokens, dim = (1, query.shape[0]) if query.ndim == 1 else tuple(query.shape)
    timesteps = _find(state, "net.to_time_embeds.0.weight").shape[0]
    null_kv = _find(state, TRANSFORMER + "layers.0.0.null_kv")
    dim_head = null_kv.shape[1]
    heads = _find(state, TRANSFORMER + "layers.0.0.to_q.weight").shape[0] // dim_head
    ff_mult = _find(state, TRANSFORMER + "layers.0.1.5.weight").shape[1] // dim
    layer_ids = {int(m.group(1)) for k in state if (m := re.match(_T + r"layers\.(\d+)\.", k))}
    diffusion = (clip2latent_config or {}).get("model", {}).get("diffusion", {})
    schedule = diffusion.get("beta_schedule") or _detect_schedule(_find(state, "betas"))
    objective = "x0" if diffusion.get("predict_x_start", True) else "noise"
    return PriorShape(tokens=tokens, latent_dim=dim, cond_dim=dim), DiffusionOptions(
        dim=dim,
        depth=len(layer_ids),
        heads=heads,
        dim_head=dim_head,
        ff_mult=ff_mult,
        timesteps=timesteps,
        schedule=schedule,
        objective=objective,
        cond_drop_prob=float(diffusion.get("cond_drop_prob", 0.2)),
        normalize_cond=False,
    )


def _detect_schedule(betas: Tensor) -> str:
    for kind in ("cosine", "linear"):
        reference = make_betas(kind, betas.shape[0]).to(torch.float32)
        if torch.allclose(betas.float(), reference, rtol=1e-3, atol=1e-6):
            return kind
    raise LatentmapError("cannot tell the beta schedule from the checkpoint's betas; pass the clip2latent yaml with --config")


def convert_state_dict(
    state: dict[str, Tensor], config: tuple[PriorShape, DiffusionOptions], *, require_latent_stats: bool = True
) -> dict[str, Tensor]:
    """DALLE2/clip2latent prior keys -> ours, strictly (unknown, missing or non-zero-bias keys are errors).

    ``require_latent_stats=False`` accepts a plain DALLE2 ``DiffusionPrior`` (no latent statistics:
    identity normalisation).
    """
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in UNUSED_PRIOR_KEYS:
            continue
        target = _map_key(key)
        if target is None:
            raise LatentmapError(f"unexpected key {key!r} in clip2latent prior state dict")
        if target == "zero":
            if bool(value.abs().max() != 0):
                raise LatentmapError(f"LayerNorm bias {key!r} is not zero; latentmap's network has no LayerNorm biases")
            continue
        converted[target] = value.detach().to(torch.float32)
    prior_shape, options = config
    shape = (prior_shape.tokens, prior_shape.latent_dim)
    # DALLE2 keeps single-token tensors without the token axis: (dim,) -> (1, dim).
    for name, target_shape in (("net.learned_query", (prior_shape.tokens, options.dim)), ("latent_mean", shape), ("latent_std", shape)):
        if name in converted and converted[name].numel() == target_shape[0] * target_shape[1]:
            converted[name] = converted[name].reshape(target_shape)
    if not require_latent_stats:
        converted.setdefault("latent_mean", torch.zeros(shape))
        converted.setdefault("latent_std", torch.ones(shape))
    expected_shapes = DiffusionPrior.expected_state_shapes(prior_shape, options)
    expected = set(expected_shapes)
    missing = sorted(expected - set(converted))
    if missing:
        raise LatentmapError(f"clip2latent state dict is missing the weights for {missing[0]!r}")
    extra = sorted(set(converted) - expected)
    if extra:
        raise LatentmapError(f"clip2latent state dict has weights for {extra[0]!r}, which this config does not use")
    for name, shape in expected_shapes.items():
        if tuple(converted[name].shape) != shape:
            raise LatentmapError(f"weights for {name!r} have shape {tuple(converted[name].shape)}, expected {shape}")
    return converted


def dalle2_key(key: str) -> str | None:
    """The DALLE2-pytorch 0.2.38 key of one of our state-dict keys (None: it has no DALLE2 counterpart)."""
    for pattern, target in _INVERSE_RULES:
        match = pattern.match(key)
        if match:
            return match.expand(target)
    return None


def dalle2_state_dict(prior: DiffusionPrior, *, latent_stats: bool = False) -> dict[str, Tensor]:
    """Our prior's weights and buffers under DALLE2-pytorch 0.2.38's keys: the importer's mapping run backwards.

    DALLE2 keeps single-token tensors without the token axis, and zero LayerNorm biases we do not
    have; both are restored. ``latent_stats`` adds ``latent_mean``/``latent_std`` (clip2latent's
    ``LatentPrior`` has them, DALLE2's ``DiffusionPrior`` does not). Fails naming any key of ours
    that has no DALLE2 counterpart (projections of a network whose widths differ, which DALLE2 lacks).
    """
    tokens = prior.shape.tokens
    exported: dict[str, Tensor] = {}
    for key, value in prior.state_dict().items():
        if key in ("latent_mean", "latent_std") and not latent_stats:
            continue
        target = dalle2_key(key)
        if target is None:
            raise LatentmapError(f"{key!r} has no DALLE2-pytorch counterpart (its network has no such weight)")
        if tokens == 1 and key in ("net.learned_query", "latent_mean", "latent_std"):
            value = value.reshape(-1)
        exported[target] = value.detach().clone()
    dim = prior.options.dim
    layers = sorted({int(m.group(1)) for k in exported if (m := re.match(_T + r"layers\.(\d+)\.", k))})
    for template in ZERO_BIAS_KEYS:
        for name in ([template.format(i=i) for i in layers] if "{i}" in template else [template]):
            exported[name] = torch.zeros(dim)
    return exported


def prior_from_dalle2_state(
    state: dict[str, Tensor],
    clip2latent_config: dict[str, Any] | None = None,
    *,
    require_latent_stats: bool = True,
) -> DiffusionPrior:
    """A DiffusionPrior (eval mode) holding a DALLE2-pytorch prior's weights and stored buffers."""
    config = infer_config(state, clip2latent_config)
    converted = convert_state_dict(state, config, require_latent_stats=require_latent_stats)
    prior = DiffusionPrior(*config)
    prior.load_state_dict(converted, strict=True)
    return prior.eval()


def read_clip2latent_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A clip2latent run config (``model.network``, ``model.diffusion``, ``data.latent_repeats`` ...)."""
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"clip2latent config {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LatentmapError(f"{str(path)!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LatentmapError(f"{str(path)!r} is not a clip2latent config (expected a mapping)")
    return data


def embed_scale(clip2latent_config: dict[str, Any] | None) -> float:
    """``model.diffusion.image_embed_scale`` of a clip2latent yaml (1.0 if absent); ``text_embed_scale`` must be 1.0.

    clip2latent multiplies the z-scored latent by ``image_embed_scale`` before its network and divides
    the sample by it: the same as a ``latent_std`` divided by the scale, which is how the importer
    honours it. It multiplies the condition by ``text_embed_scale``, which no latentmap prior can
    reproduce (the condition enters the transformer as it is), so another value is refused.
    """
    diffusion = ((clip2latent_config or {}).get("model") or {}).get("diffusion") or {}
    scales = {}
    for name in ("text_embed_scale", "image_embed_scale"):
        value = diffusion.get(name, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise LatentmapError(f"clip2latent config: model.diffusion.{name} is {value!r}, expected a positive number")
        scales[name] = float(value)
    if scales["text_embed_scale"] != 1.0:
        raise LatentmapError(
            f"clip2latent config: model.diffusion.text_embed_scale is {scales['text_embed_scale']}; latentmap "
            "imports only models trained with 1.0 (its priors feed the condition to the network unscaled)"
        )
    return scales["image_embed_scale"]


def space_for(tokens: int, dim: int, latent_repeats: list[int] | None) -> LatentSpace:
    """The latent space a clip2latent model generates: w (one token) or w3 (three), from latent_repeats."""
    if latent_repeats is None:
        if tokens == 1:
            latent_repeats = [18]
        elif tokens == 3:
            latent_repeats = [4, 4, 10]
        else:
            raise LatentmapError(f"a {tokens}-latent clip2latent model needs its yaml (--config) for latent_repeats")
    repeats = [int(r) for r in latent_repeats]
    if len(repeats) != tokens:
        raise LatentmapError(f"latent_repeats {repeats} has {len(repeats)} entries but the checkpoint has {tokens} latents")
    if tokens == 1:
        return w_space(repeats[0], dim)
    if tokens == 3:
        return w3_space(sum(repeats), dim, repeats)
    return LatentSpace("w+" if all(r == 1 for r in repeats) else f"w{tokens}", dim, tuple(repeats))


def import_clip2latent(
    checkpoint: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    weights: str = "ema",
    generator: str = DEFAULT_GENERATOR,
    encoder: str = DEFAULT_ENCODER,
) -> tuple[DiffusionPrior, dict[str, Any], dict[str, Tensor]]:
    """Read a clip2latent checkpoint: (prior, checkpoint metadata, extra tensors).

    The extra tensors hold the other weight copy (the online weights when importing the EMA one)
    under ``online.``/``ema.``, so nothing of the original is lost.
    """
    state = read_checkpoint(checkpoint)
    clip2latent_config = read_clip2latent_yaml(config) if config is not None else None
    image_embed_scale = embed_scale(clip2latent_config)
    selected = select_weights(state, weights)
    prior = prior_from_dalle2_state(selected, clip2latent_config)
    other = "online" if weights == "ema" else "ema"
    other_state = select_weights(state, other)
    other_converted = convert_state_dict(other_state, (prior.shape, prior.options))
    if image_embed_scale != 1.0:  # clip2latent's network works on z-scored latents times the scale
        prior.latent_std.div_(image_embed_scale)
        other_converted["latent_std"] = other_converted["latent_std"] / image_embed_scale
    data_config = (clip2latent_config or {}).get("data", {})
    space = space_for(prior.shape.tokens, prior.shape.latent_dim, data_config.get("latent_repeats"))
    step = state.get("step")
    metadata = {
        "encoder": {
            "name": encoder,
            "embed_dim": prior.shape.cond_dim,
            "conditions": "raw",
            # Text prompts need no special preprocessing; image prompts match clip2latent's training
            # conditions only with --encoder-option preprocess=clip2latent-double-norm (docs/prior.md).
            "image_conditions_preprocess": DOUBLE_NORM_PREPROCESS,
        },
        "generator": {"name": generator, "space": space.to_dict()},
        "space": space.to_dict(),
        "recipe": {},
        "imported_from": {
            "format": "clip2latent",
            "file": Path(checkpoint).name,
            "weights": weights,
            "step": float(step.reshape(-1)[0]) if isinstance(step, Tensor) else None,
            "clip2latent_config": clip2latent_config,
            "image_embed_scale": image_embed_scale,
            "notes": (
                "conditions are raw (un-normalised) encoder embeddings; clip2latent's image conditions were "
                "made from doubly CLIP-normalised pixels (encoder.image_conditions_preprocess); stored EMA buffers kept as is "
                "(latent_std divided by image_embed_scale when that is not 1)"
            ),
        },
    }
    extra = {f"{other}.{name}": tensor for name, tensor in other_converted.items()}
    return prior, metadata, extra
