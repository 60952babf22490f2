"""A trained prior with its encoder and generator: everything text-to-image needs, from one checkpoint.

A prior checkpoint is self-describing: its metadata names the encoder and generator (with the
options they were built with), the latent space and the training recipe. ``load_pipeline`` rebuilds
all three through the plugin registries, lets the user override options (a local weights path, the
device), and checks that what it rebuilt is what the prior was trained with -- a prior paired with
other generator weights produces garbage silently, so a mismatch is refused unless asked otherwise.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentmap.errors import LatentmapError
from latentmap.options import resolve_device
from latentmap.interfaces import Encoder, Generator, LatentSpace, Prior

__all__ = ["Pipeline", "SamplerSettings", "load_pipeline"]

# Identity keys that may legitimately differ between training and use: how the object was asked for.
UNCOMPARED_KEYS = frozenset({"options"})


@dataclass(frozen=True)
class SamplerSettings:
    """How the prior samples: respaced steps, sampler, guidance (super-conditioning), truncation psi."""

    steps: int | None = 25
    sampler: str = "ddim"
    guidance: float = 1.0
    truncation: float = 1.0
    eta: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def updated(self, **changes: Any) -> "SamplerSettings":
        """A copy with the given fields replaced; ``None`` values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class Pipeline:
    """Prior + encoder + generator on one device, with the checkpoint's metadata."""

    prior: Prior
    encoder: Encoder
    generator: Generator
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def space(self) -> LatentSpace:
        return self.generator.space

    def defaults(self) -> SamplerSettings:
        """Sampling settings from the checkpoint's recipe (``recipe.sample``), else the package defaults."""
        section = (self.metadata.get("recipe") or {}).get("sample") or {}
        known = {f.name for f in fields(SamplerSettings)}
        return SamplerSettings().updated(**{k: v for k, v in section.items() if k in known})

    def embed_prompts(self, prompts: list[str]) -> Tensor:
        """Prior conditions for text prompts: raw text embeddings (N, D), as clip2latent feeds them."""
        if not prompts:
            raise LatentmapError("no prompts given: pass at least one prompt or a --prompts-file")
        with torch.no_grad():
            return self.encoder.embed_text(list(prompts)).float().to(self.device)

    def embed_images(self, images: Tensor) -> Tensor:
        """Prior conditions for image prompts (N, 3, H, W) in [-1, 1]: raw image embeddings (N, D)."""
        with torch.no_grad():
            return self.encoder.embed_image(images.to(self.encoder.device)).float().to(self.device)

    def sample_latents(self, cond: Tensor, settings: SamplerSettings, *, seed: int) -> Tensor:
        """One batched prior call: latents (N, tokens, dim) for conditions (N, D), deterministic in ``seed``.

        The noise comes from a CPU ``torch.Generator`` so a seed gives the same draws on any device.
        """
        rng = torch.Generator().manual_seed(int(seed))
        return self.prior.sample(
            cond.to(self.device),
            steps=settings.steps,
            sampler=settings.sampler,
            guidance=settings.guidance,
            eta=settings.eta,
            truncation=settings.truncation,
            generator=rng,
        )

    def render(self, latents: Tensor, *, batch_size: int = 16, to_cpu: bool = True) -> Tensor:
        """Images (N, 3, H, W) in [-1, 1] for latents (N, tokens|layers, dim), in chunks.

        On the CPU by default; ``to_cpu=False`` leaves them on the generator's device (re-ranking
        scores them there and only moves the kept ones).
        """
        chunks = []
        with torch.no_grad():
            for start in range(0, latents.shape[0], batch_size):
                chunk = latents[start : start + batch_size].to(self.generator.device)
                images = self.generator.synthesize(chunk).float()
                chunks.append(images.cpu() if to_cpu else images)
        return torch.cat(chunks)


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def compare_identity(
    kind: str, recorded: dict[str, Any], rebuilt: dict[str, Any], *, source: str, overridden: frozenset[str] = frozenset()
) -> list[str]:
    """The keys present in both identities whose values differ, as lines.

    Not compared: how the object was asked for (``options``) and the keys the user overrode on
    purpose (``overridden``, e.g. ``truncation``).
    """
    problems = []
    for key in sorted(set(recorded) & set(rebuilt) - UNCOMPARED_KEYS - overridden):
        if _canonical(recorded[key]) != _canonical(rebuilt[key]):
            problems.append(
                f"{kind} {key!r} differs from what {source} was trained with: "
                f"recorded {_canonical(recorded[key])!r}, got {_canonical(rebuilt[key])!r}"
            )
    return problems


def _identity_of(metadata: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    identity = metadata.get(key)
    if not isinstance(identity, dict) or not isinstance(identity.get("name"), str):
        raise LatentmapError(f"checkpoint {source} has no {key} identity in its metadata (key {key!r} with a 'name')")
    return identity


def load_pipeline(
    checkpoint: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    generator_options: dict[str, Any] | None = None,
    encoder_options: dict[str, Any] | None = None,
    check_identity: bool = True,
) -> Pipeline:
    """Rebuild prior, encoder and generator from a prior checkpoint, on ``device``.

    ``generator_options``/``encoder_options`` are merged over the recorded ones (e.g. a local weights
    path). With ``check_identity`` a rebuilt object whose identity (weights checksum, resolution,
    embedding size ...) differs from the recorded one is refused; without it the difference is a warning.
    """
    import latentmap
    from latentmap.checkpoint import load_prior

    path = Path(checkpoint)
    if not path.is_file():
        raise LatentmapError(f"checkpoint {str(path)!r} does not exist")
    source = repr(str(path))
    prior, metadata = load_prior(path, device="cpu")
    gen_id = _identity_of(metadata, "generator", source)
    enc_id = _identity_of(metadata, "encoder", source)

    generator = latentmap.get_generator(gen_id["name"], **{**gen_id.get("options", {}), **(generator_options or {})})
    encoder = latentmap.get_encoder(enc_id["name"], **{**enc_id.get("options", {}), **(encoder_options or {})})
    if "space" in metadata:
        _adopt_space(generator, LatentSpace.from_dict(metadata["space"]), source)

    problems = compare_identity("generator", gen_id, generator.identity(), source=source,
                                overridden=frozenset(generator_options or {}))
    problems += compare_identity("encoder", enc_id, encoder.identity(), source=source,
                                 overridden=frozenset(encoder_options or {}))
    config = prior.config_dict()
    if config.get("cond_dim") not in (None, encoder.embed_dim):
        problems.append(f"prior of {source} expects {config['cond_dim']}-d conditions, encoder gives {encoder.embed_dim}")
    if (config.get("tokens"), config.get("latent_dim")) not in ((None, None), (generator.space.tokens, generator.space.dim)):
        problems.append(
            f"prior of {source} generates ({config.get('tokens')}, {config.get('latent_dim')}) latents, generator "
            f"space {generator.space.name!r} takes ({generator.space.tokens}, {generator.space.dim})"
        )
    if problems and check_identity:
        raise LatentmapError(problems[0] + " (pass --no-check-identity to use it anyway)")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)

    target = resolve_device(device)
    prior = prior.to(target).eval()
    generator = generator.to(target)
    encoder = encoder.to(target)
    return Pipeline(prior=prior, encoder=encoder, generator=generator, metadata=metadata,
                    checkpoint=str(path), device=target)


def _adopt_space(generator: Generator, space: LatentSpace, source: str) -> None:
    """Make the generator use the checkpoint's space (same layers and size), or refuse naming both."""
    current = generator.space
    if current == space:
        return
    if current.layers != space.layers or current.dim != space.dim:
        raise LatentmapError(
            f"checkpoint {source} was trained in space {space.name!r} ({space.layers} layers of {space.dim}), "
            f"generator {generator.name!r} has {current.layers} layers of {current.dim}"
        )
    generator.space = space
