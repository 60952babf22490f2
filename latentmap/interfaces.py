"""The contracts every encoder, generator, latent space and prior fulfils.

The core only ever talks to these classes; plugins subclass them. Shapes are written as
``(batch, tokens, dim)`` for latents in a space and ``(batch, layers, dim)`` for the per-layer
latents a style-based generator consumes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from latentmap.config import build_options, no_options, options_dict
from latentmap.errors import LatentmapError


@dataclass(frozen=True)
class LatentSpace:
    """What the prior generates, and how it feeds the generator's style layers.

    ``repeats[i]`` is the number of consecutive generator layers driven by token ``i``; their sum
    is the generator's layer count. ``w`` is one token repeated over every layer, ``w3`` three tokens
    (coarse, middle, fine), ``w+`` one token per layer.
    """

    name: str
    dim: int
    repeats: tuple[int, ...]

    @property
    def tokens(self) -> int:
        """Latent vectors per sample."""
        return len(self.repeats)

    @property
    def layers(self) -> int:
        """Style layers of the generator this space feeds."""
        return sum(self.repeats)

    def expand(self, latents: Tensor) -> Tensor:
        """(B, tokens, dim) -> (B, layers, dim), each token repeated over its layers."""
        self.check(latents)
        counts = torch.tensor(self.repeats, device=latents.device)
        return torch.repeat_interleave(latents, counts, dim=1, output_size=self.layers)

    def collapse(self, per_layer: Tensor) -> Tensor:
        """(B, layers, dim) -> (B, tokens, dim): the mean of each token's layer group."""
        if per_layer.ndim != 3 or per_layer.shape[1] != self.layers or per_layer.shape[2] != self.dim:
            raise LatentmapError(
                f"space {self.name!r} expects per-layer latents of shape (B, {self.layers}, {self.dim}), "
                f"got {tuple(per_layer.shape)}"
            )
        groups = torch.split(per_layer, list(self.repeats), dim=1)
        return torch.stack([g.mean(dim=1) for g in groups], dim=1)

    def check(self, latents: Tensor) -> None:
        """Raise a clear error unless ``latents`` is (B, tokens, dim) for this space."""
        if latents.ndim != 3 or latents.shape[1] != self.tokens or latents.shape[2] != self.dim:
            raise LatentmapError(
                f"space {self.name!r} expects latents of shape (B, {self.tokens}, {self.dim}), "
                f"got {tuple(latents.shape)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, stored in manifests and checkpoints."""
        return {"name": self.name, "dim": self.dim, "repeats": list(self.repeats)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentSpace":
        return cls(name=str(data["name"]), dim=int(data["dim"]), repeats=tuple(int(r) for r in data["repeats"]))


class Generator(ABC):
    """A frozen, pretrained unconditional generator: latent -> image.

    Subclasses set ``name``, ``resolution`` and ``space`` and implement ``sample_latents``,
    ``synthesize_layers`` and ``mean_latent``. ``synthesize`` accepts latents in the space
    ``(B, tokens, dim)`` or already expanded per layer ``(B, layers, dim)``.
    """

    name: str = "generator"
    resolution: int = 0
    space: LatentSpace

    @abstractmethod
    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        """Random draws in the space, (n, tokens, dim), deterministic given ``generator``."""

    @abstractmethod
    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        """Per-layer latents (B, layers, dim) -> images (B, 3, H, W) in [-1, 1]; differentiable."""

    @abstractmethod
    def mean_latent(self) -> Tensor:
        """The mean latent (tokens, dim), the centre truncation moves toward."""

    def synthesize(self, latents: Tensor) -> Tensor:
        """Latents (B, tokens, dim) or (B, layers, dim) -> images (B, 3, H, W) in [-1, 1]."""
        if latents.ndim == 3 and latents.shape[1] == self.space.tokens and latents.shape[2] == self.space.dim:
            return self.synthesize_layers(self.space.expand(latents))
        if latents.ndim == 3 and latents.shape[1] == self.space.layers and latents.shape[2] == self.space.dim:
            return self.synthesize_layers(latents)
        raise LatentmapError(
            f"generator {self.name!r} (space {self.space.name!r}) expects latents of shape "
            f"(B, {self.space.tokens}, {self.space.dim}) or (B, {self.space.layers}, {self.space.dim}), "
            f"got {tuple(latents.shape)}"
        )

    def identity(self) -> dict[str, Any]:
        """What makes this generator this generator: name, options, weights checksum, space.

        Stored in dataset manifests and prior checkpoints, and compared on load. ``name`` and
        ``options`` are what ``latentmap.get_generator`` was called with, so the generator can be
        rebuilt from them; subclasses add a checksum of their weights.
        """
        return {
            "name": getattr(self, "registry_name", self.name),
            "options": dict(getattr(self, "registry_options", {})),
            "resolution": self.resolution,
            "space": self.space.to_dict(),
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Generator":
        """Move to ``device``; returns self."""
        return self


class Encoder(ABC):
    """A frozen joint text/image embedding model (CLIP and the like).

    Embeddings are returned raw unless ``normalize=True`` asks for unit L2 norm: the paper's prior
    was trained on raw CLIP embeddings, scores use normalised ones.

    Optional: an encoder with a closed vocabulary (a word-level tokenizer, like the shapes world's
    tiny CLIP) may define ``unknown_words(prompt: str) -> list[str]``, the words of ``prompt`` it
    reads as an unknown token; every command that embeds a prompt then warns about them (see
    :func:`warn_unknown_words`). A byte-level BPE tokenizer (open_clip) has no unknown words and
    need not define it.
    """

    name: str = "encoder"
    embed_dim: int = 0

    @abstractmethod
    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        """Prompts -> (B, embed_dim)."""

    @abstractmethod
    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], any size -> (B, embed_dim); differentiable."""

    def identity(self) -> dict[str, Any]:
        """Name, options and weights checksum: stored in manifests and checkpoints."""
        return {
            "name": getattr(self, "registry_name", self.name),
            "options": dict(getattr(self, "registry_options", {})),
            "embed_dim": self.embed_dim,
        }

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> "Encoder":
        """Move to ``device``; returns self."""
        return self


def unknown_words(encoder: Encoder, prompts: list[str]) -> list[str]:
    """The words of ``prompts`` that ``encoder`` cannot read, each once, in order of appearance.

    Uses the encoder's optional ``unknown_words(prompt)`` (or that of the encoder it wraps, as
    ``inner``); an encoder without one reads every word.
    """
    method = getattr(encoder, "unknown_words", None) or getattr(getattr(encoder, "inner", None), "unknown_words", None)
    if method is None:
        return []
    return list(dict.fromkeys(word for prompt in prompts for word in method(prompt)))


def warn_unknown_words(encoder: Encoder, prompts: list[str], *, already: set[str] | None = None) -> str | None:
    """Print one ``warning:`` line on stderr naming the words of ``prompts`` the encoder cannot read.

    Such words are silently read as an unknown token, so "a pink hexagon" would sample something
    unrelated without a word of complaint. Words in ``already`` are not named again (and new ones
    are added to it), so a command that embeds its prompts in batches warns once per word.
    Returns the line, or None when there was nothing to say.
    """
    import sys

    words = [word for word in unknown_words(encoder, prompts) if already is None or word not in already]
    if not words:
        return None
    if already is not None:
        already.update(words)
    name = getattr(encoder, "registry_name", encoder.name)
    line = (f"warning: encoder {name!r} does not know the word{'s' if len(words) > 1 else ''} "
            f"{', '.join(repr(word) for word in words)}; it reads them as an unknown token (they say nothing)")
    print(line, file=sys.stderr)
    return line


@dataclass(frozen=True)
class PriorShape:
    """What a prior maps between, fixed by the dataset: (tokens, latent_dim) latents from cond_dim conditions."""

    tokens: int
    latent_dim: int
    cond_dim: int

    def to_dict(self) -> dict[str, int]:
        return {"tokens": self.tokens, "latent_dim": self.latent_dim, "cond_dim": self.cond_dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorShape":
        try:
            values = {key: data[key] for key in ("tokens", "latent_dim", "cond_dim")}
        except (KeyError, TypeError):
            raise LatentmapError(f"a prior shape needs tokens, latent_dim and cond_dim, got {data!r}") from None
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LatentmapError(f"prior shape: {key} must be a positive integer, got {value!r}")
        return cls(**values)


class Prior(torch.nn.Module, ABC):
    """A conditional generative model of latents given an embedding: embedding -> latent.

    A prior declares its configuration once, as two dataclasses: ``Options`` (what the recipe's
    ``prior:`` section sets and the checkpoint stores) and ``Sampling`` (its sampling settings and
    their defaults: what ``sample`` takes, what the recipe's ``sampling:`` sections and the command
    line's flags set). It is built as ``PriorClass(shape, options)``, ``shape`` coming from the data.

    ``latents`` are always in the generator's own units. The base class keeps the training latents'
    per-feature statistics (buffers ``latent_mean``/``latent_std``, shape (tokens, latent_dim)) so a
    prior can work in z-normalised units with :meth:`normalize_latents`/:meth:`denormalize_latents`.
    """

    name: str = "prior"
    Options: type = None  # type: ignore[assignment]  # set by subclasses: a dataclass
    Sampling: type = None  # type: ignore[assignment]  # set by subclasses: a dataclass

    def __init__(self, shape: PriorShape, options: Any = None) -> None:
        super().__init__()
        if not isinstance(shape, PriorShape):
            raise LatentmapError(f"{type(self).__name__} needs a PriorShape first, got {shape!r}")
        options_class = type(self).Options or no_options
        if options is None:
            options = build_options(options_class, {}, where=type(self).__name__)
        elif not isinstance(options, options_class):
            raise LatentmapError(f"{type(self).__name__} takes {options_class.__name__} options, got {type(options).__name__}")
        self.shape = shape
        self.options = options
        self.register_buffer("latent_mean", torch.zeros(shape.tokens, shape.latent_dim))
        self.register_buffer("latent_std", torch.ones(shape.tokens, shape.latent_dim))

    @classmethod
    def create(cls, **values: Any) -> "Prior":
        """A prior from flat keywords: the shape's three sizes plus any options (notebooks, tests)."""
        shape = PriorShape.from_dict({k: values.pop(k, None) for k in ("tokens", "latent_dim", "cond_dim")})
        return cls(shape, build_options(cls.Options or no_options, values, where=cls.__name__, owner=f"prior {cls.name!r}"))

    # -------------------------------------------------------------------------- the contract
    @abstractmethod
    def loss(self, latents: Tensor, cond: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Training loss (scalar) for latents (B, tokens, dim) given conditions (B, cond_dim)."""

    @abstractmethod
    def sample(self, cond: Tensor, settings: Any = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Latents (B, tokens, dim) in generator units for conditions (B, cond_dim); ``settings`` a ``Sampling``."""

    # -------------------------------------------------------------------------- provided
    def sampling(self, base: Any = None, *, where: str = "sampling settings", **changes: Any) -> Any:
        """This prior's ``Sampling`` settings: ``base`` (default: the declared defaults) with ``changes``, validated."""
        values = options_dict(base) if base is not None else {}
        values.update(changes)
        return build_options(type(self).Sampling or no_options, values, where=where, owner=f"prior {self.name!r}")

    @property
    def normalizes_conditions(self) -> bool:
        """True if the prior compares conditions by direction only (unit length inside the model)."""
        return False

    @property
    def uses_text_statistics(self) -> bool:
        """True if the prior wants :meth:`set_text_statistics` called before training (unpaired statistics)."""
        return False

    def set_text_statistics(self, image_embeds: Tensor, text_embeds: Tensor) -> None:
        """Learn whatever :meth:`text_conditions` needs from UNPAIRED image embeddings (N, D) of the training
        data and text embeddings (M, D) of a prompt corpus (never matched pairs). Default: nothing."""

    def text_conditions(self, text_embeds: Tensor) -> Tensor:
        """The conditions to sample with for text embeddings (B, D). A prior trained on image embeddings may
        move text onto their distribution here (the modality gap); image conditions are used as they are.
        Re-ranking still compares with the raw text embeddings. Default: unchanged."""
        return text_embeds

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store the training latents' per-feature mean and std (anything reshapeable to (tokens, latent_dim))."""
        shape = (self.shape.tokens, self.shape.latent_dim)
        for label, value in (("mean", mean), ("std", std)):
            if value.numel() != shape[0] * shape[1]:
                raise LatentmapError(f"latent {label} has shape {tuple(value.shape)}, expected {shape}")
        std = std.reshape(shape).to(self.latent_std)
        if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
            raise LatentmapError("latent std must be finite and positive in every feature")
        self.latent_mean.copy_(mean.reshape(shape).to(self.latent_mean))
        self.latent_std.copy_(std)

    def normalize_latents(self, latents: Tensor) -> Tensor:
        """Generator units -> z-normalised units (per feature, with the stored statistics)."""
        return (latents - self.latent_mean) / self.latent_std

    def denormalize_latents(self, latents: Tensor) -> Tensor:
        """z-normalised units -> generator units."""
        return latents * self.latent_std + self.latent_mean

    def check_latents(self, latents: Tensor) -> None:
        """Raise a clear error unless ``latents`` is (B, tokens, latent_dim)."""
        s = self.shape
        if latents.ndim != 3 or latents.shape[1] != s.tokens or latents.shape[2] != s.latent_dim:
            raise LatentmapError(f"prior expects latents of shape (B, {s.tokens}, {s.latent_dim}), got {tuple(latents.shape)}")

    def check_cond(self, cond: Tensor, batch: int | None = None) -> None:
        """Raise a clear error unless ``cond`` is (B, cond_dim) (and B == ``batch`` if given)."""
        if cond.ndim != 2 or cond.shape[1] != self.shape.cond_dim:
            raise LatentmapError(
                f"condition has shape {tuple(cond.shape)}, but this prior expects (B, {self.shape.cond_dim}) "
                f"embeddings (was it trained with a different encoder?)"
            )
        if batch is not None and cond.shape[0] != batch:
            raise LatentmapError(f"{cond.shape[0]} conditions for {batch} latents")

    def config_dict(self) -> dict[str, Any]:
        """Registered name, shape and options, JSON-ready: what a checkpoint needs to rebuild the prior."""
        return {"name": getattr(self, "registry_name", self.name), "shape": self.shape.to_dict(),
                "options": options_dict(self.options)}
