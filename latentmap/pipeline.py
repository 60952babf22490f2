"""A trained prior with its encoder and generator: everything text-to-image needs, from one checkpoint.

A prior checkpoint is self-describing: its metadata names the encoder and generator (with the
options they were built with), the latent space and the training recipe. ``load_pipeline`` rebuilds
all three through the plugin registries, lets the user override options (a local weights path, the
device), and checks that what it rebuilt is what the prior was trained with -- a prior paired with
other generator weights produces garbage silently, so a mismatch is refused unless asked otherwise.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from latentmap.config import options_dict
from latentmap.edit import truncate
from latentmap.errors import LatentmapError
from latentmap.identity import differences
from latentmap.interfaces import Encoder, Generator, LatentSpace, Prior, warn_unknown_words
from latentmap.options import resolve_device
from latentmap.recipe import MOVED_SAMPLING_KEYS, SampleSection

if TYPE_CHECKING:
    from latentmap.sample import Generation

__all__ = ["Pipeline", "SamplerSettings", "interpolate_conditions", "load_pipeline"]

@dataclass(frozen=True)
class SamplerSettings:
    """How a pipeline samples: the prior's own sampling settings (its ``Sampling``) and truncation psi.

    Truncation is the pipeline's, whatever the prior: it moves the prior's latents toward the mean of
    the latents it was trained on (``prior.latent_mean``, as clip2latent does). Make one with
    :meth:`Pipeline.settings` (``pipe.settings(steps=10)``).
    """

    sampling: Any
    truncation: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {**options_dict(self.sampling), "truncation": self.truncation}


@dataclass
class Pipeline:
    """Prior + encoder + generator on one device, with the checkpoint's metadata."""

    prior: Prior
    encoder: Encoder
    generator: Generator
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warned_words: set[str] = field(default_factory=set, repr=False)  # unknown prompt words already named

    @property
    def space(self) -> LatentSpace:
        return self.generator.space

    def recipe_sample(self) -> dict[str, Any]:
        """The checkpoint recipe's ``sample`` section as stored, with ``SampleSection``'s defaults for the
        candidate count, kept count and truncation it lacks (an imported or older checkpoint)."""
        stored = (self.metadata.get("recipe") or {}).get("sample") or {}
        defaults = SampleSection()
        return {"candidates": defaults.candidates, "keep": defaults.keep, "truncation": defaults.truncation, **stored}

    def defaults(self) -> SamplerSettings:
        """The sampling settings of the checkpoint's recipe (``sample.sampling``, ``sample.truncation``),
        else the prior's declared defaults."""
        section = self.recipe_sample()
        sampling = section.get("sampling")
        if not isinstance(sampling, dict):  # recipes stored before sampling settings had their own key
            sampling = {k: section[k] for k in MOVED_SAMPLING_KEYS if k in section}
        declared = {f.name for f in fields(self.prior.Sampling)}
        base = self.prior.sampling(where=f"checkpoint {self.checkpoint}",
                                   **{k: v for k, v in sampling.items() if k in declared})
        return SamplerSettings(base, float(section["truncation"]))

    def settings(self, base: SamplerSettings | None = None, *, truncation: float | None = None,
                 where: str = "sampling settings", **changes: Any) -> SamplerSettings:
        """``base`` (default: :meth:`defaults`) with ``changes`` to the prior's sampling settings, validated."""
        base = base if base is not None else self.defaults()
        sampling = self.prior.sampling(base.sampling, where=where, **changes)
        if truncation is not None and not math.isfinite(float(truncation)):
            raise LatentmapError(f"{where}: truncation must be a finite number, got {truncation!r}")
        return SamplerSettings(sampling, base.truncation if truncation is None else float(truncation))

    def __call__(
        self,
        prompts: str | Sequence[str] | None = None,
        *,
        image: Any = None,
        n: int = 4,
        candidates: int | None = None,
        seed: int = 0,
        progress: bool = False,
        **settings: Any,
    ) -> "Generation":
        """Text (or image) to images in one call: ``pipe("a blue star", n=4, seed=0).images``.

        ``prompts`` is one prompt or a list; ``image`` an image prompt instead (a path, a Pillow image,
        a (3, H, W) or (N, 3, H, W) tensor in [-1, 1], or a list of those). The best ``n`` of
        ``candidates`` (default: the checkpoint recipe's, at least ``n``) are kept by CLIP score.
        Other keywords are sampling settings (``steps=10``, ``guidance=2.0``, ``truncation=0.7``).
        """
        from latentmap.sample import Generation, sample  # (latentmap.sample imports this module)

        candidates = candidates if candidates is not None else max(n, int(self.recipe_sample()["candidates"]))
        chosen = self.settings(**settings) if settings else self.defaults()
        images = labels = None
        if image is not None:
            images, labels = _image_prompts(image)
        result = sample(self, None if image is not None else prompts, images=images, image_labels=labels,
                        candidates=candidates, keep=n, settings=chosen, seed=seed, progress=progress)
        return Generation(result)

    def direction(self, positive: str, negative: str, *, samples: int = 64, seed: int = 0, **settings: Any) -> Any:
        """An edit direction from a positive and a negative prompt (see :func:`latentmap.edit.discover_direction`)."""
        from latentmap.edit import discover_direction

        chosen = self.settings(**settings) if settings else self.defaults()
        return discover_direction(self, positive, negative, samples=samples, seed=seed, settings=chosen)

    def edit(self, latents: Tensor, direction: Any, strengths: Sequence[float] = (-2.0, 0.0, 2.0)) -> list[list[Any]]:
        """Pillow images of ``latents`` ((N, tokens, dim), e.g. ``pipe(...).latents[0]``) moved along
        ``direction`` (a :class:`~latentmap.edit.Direction` or a file) at each strength: [latent][strength]."""
        from latentmap.edit import Direction, load_direction, render_edits
        from latentmap.images import tensor_to_pil

        if not isinstance(direction, Direction):
            direction = load_direction(direction)
        flat = latents.reshape(-1, *latents.shape[-2:]).float()
        per_layer = self.space.expand(flat) if flat.shape[1] == self.space.tokens else flat
        rendered = render_edits(self.generator, per_layer, direction, [float(s) for s in strengths])
        return [[tensor_to_pil(image) for image in row] for row in rendered]

    def interpolate(self, a: str, b: str, *, frames: int = 8, seed: int = 0, **settings: Any) -> list[Any]:
        """Pillow images of ``frames`` steps from prompt ``a`` to prompt ``b``, all from the same noise.

        The conditions move along the great circle between the two raw embeddings while their length
        moves linearly (:func:`interpolate_conditions`); the first and last images are what sampling
        ``a`` and ``b`` alone with ``seed`` gives. Keywords are sampling settings, as for ``pipe(...)``.
        """
        from latentmap.images import tensor_to_pil

        chosen = self.settings(**settings) if settings else self.defaults()
        latents = self.interpolation_latents(a, b, frames=frames, seed=seed, settings=chosen)
        return [tensor_to_pil(image) for image in self.render(latents)]

    def interpolation_latents(self, a: str, b: str, *, frames: int = 8, seed: int = 0,
                              settings: SamplerSettings | None = None) -> Tensor:
        """Latents (frames, tokens, dim) from prompt ``a`` to ``b``: one prior call, the same noise for every frame."""
        if frames < 2:
            raise LatentmapError(f"an interpolation needs at least 2 frames, got {frames}")
        ends = self.embed_prompts([a, b])
        cond = interpolate_conditions(ends[0], ends[1], frames)
        return self.sample_latents(cond, settings or self.defaults(), seed=seed, shared_noise=True)

    def embed_prompts(self, prompts: str | Sequence[str]) -> Tensor:
        """Prior conditions for text prompts: raw text embeddings (N, D), as clip2latent feeds them."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise LatentmapError("no prompts given: pass at least one prompt or a --prompts-file")
        warn_unknown_words(self.encoder, prompts, already=self.warned_words)
        with torch.no_grad():
            return self.encoder.embed_text(list(prompts)).float().to(self.device)

    def embed_images(self, images: Tensor) -> Tensor:
        """Prior conditions for image prompts (N, 3, H, W) in [-1, 1]: raw image embeddings (N, D)."""
        with torch.no_grad():
            return self.encoder.embed_image(images.to(self.encoder.device)).float().to(self.device)

    def sample_latents(self, cond: Tensor, settings: SamplerSettings, *, seed: int, shared_noise: bool = False,
                       progress: bool = False, kind: str = "text") -> Tensor:
        """Latents (N, tokens, dim) for conditions (N, D) in one batched prior call, deterministic in ``seed``.

        ``kind`` says what the conditions are: raw ``"text"`` embeddings go through the prior's
        ``text_conditions`` first (its modality-gap correction, if it has one), ``"image"`` embeddings as they are.

        The noise comes from a CPU ``torch.Generator`` so a seed gives the same draws on any device.
        With ``shared_noise`` every row gets the noise a one-row call with ``seed`` gets (interpolation):
        one call a row, which needs nothing of a prior beyond the contract.
        ``progress`` shows a bar of the denoising steps on stderr, for priors whose ``sample`` takes a ``callback``.
        """
        cond = self.prior.text_conditions(cond.to(self.device)) if kind == "text" else cond
        if shared_noise:  # every row drawn as a one-row call with ``seed`` is: works for any prior
            rows = cond.to(self.device)
            latents = torch.cat([self.prior.sample(row[None], settings.sampling,
                                                   generator=torch.Generator().manual_seed(int(seed))) for row in rows])
        else:
            rng = torch.Generator().manual_seed(int(seed))
            with denoising_progress(self.prior, enabled=progress) as extra:
                latents = self.prior.sample(cond.to(self.device), settings.sampling, generator=rng, **extra)
        if settings.truncation == 1.0:
            return latents
        return truncate(latents, self.prior.latent_mean, settings.truncation)

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


def interpolate_conditions(a: Tensor, b: Tensor, frames: int) -> Tensor:
    """``frames`` conditions (frames, D) from ``a`` to ``b`` (raw embeddings, (D,) each), ends included exactly.

    The direction moves along the great circle from ``a``'s to ``b``'s at constant angular speed
    (spherical interpolation) and the length moves linearly from ``|a|`` to ``|b|``. Encoders compare
    embeddings by direction, so equal angle steps are equal steps in meaning; and a straight line
    between two embeddings passes through vectors shorter than real ones (about 30% shorter midway
    for embeddings 90 degrees apart), conditions unlike any the prior was trained on, while here every
    condition keeps the norm profile of real ones. Embeddings with no length or pointing in opposite directions (no unique great
    circle) are interpolated linearly, as are (nearly) parallel ones, where both ways agree.
    """
    t = torch.linspace(0.0, 1.0, frames, dtype=torch.float64, device=a.device)[:, None]
    start, end = a.double(), b.double()
    cond = (1 - t) * start + t * end  # degenerate cases: no length, or (anti)parallel directions
    if float(start.norm()) > 0.0 and float(end.norm()) > 0.0:
        u, v = start / start.norm(), end / end.norm()
        angle = torch.arccos((u @ v).clamp(-1.0, 1.0))
        if float(torch.sin(angle)) > 1e-6:
            directions = (torch.sin((1 - t) * angle) * u + torch.sin(t * angle) * v) / torch.sin(angle)
            cond = directions * ((1 - t) * start.norm() + t * end.norm())
    cond = cond.to(a.dtype)
    cond[0], cond[-1] = a, b
    return cond


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

    ``checkpoint`` is a path or a Hub file, ``hf:owner/repo/file.safetensors[@revision]`` (see latentmap.hub).

    ``generator_options``/``encoder_options`` are merged over the recorded ones (e.g. a local weights
    path). With ``check_identity`` a rebuilt object whose identity (weights checksum, resolution,
    embedding size ...) differs from the recorded one is refused; without it the difference is a warning.
    """
    import latentmap
    from latentmap.checkpoint import load_prior
    from latentmap.hub import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)  # a local file, or hf:owner/repo/file.safetensors[@revision] via the Hub cache
    given = os.fspath(checkpoint)
    source = repr(given)
    prior, metadata = load_prior(path, device="cpu")
    gen_id = _identity_of(metadata, "generator", source)
    enc_id = _identity_of(metadata, "encoder", source)

    generator = latentmap.get_generator(gen_id["name"], **{**gen_id.get("options", {}), **(generator_options or {})})
    encoder = latentmap.get_encoder(enc_id["name"], **{**enc_id.get("options", {}), **(encoder_options or {})})
    if "space" in metadata:
        _adopt_space(generator, LatentSpace.from_dict(metadata["space"]), source)

    problems = [f"{line} (compared with what {source} was trained with)" for line in
                differences("generator", gen_id, generator.identity(), overridden=frozenset(generator_options or {}))
                + differences("encoder", enc_id, encoder.identity(), overridden=frozenset(encoder_options or {}))]
    shape = prior.shape
    if shape.cond_dim != encoder.embed_dim:
        problems.append(f"prior of {source} expects {shape.cond_dim}-d conditions, encoder gives {encoder.embed_dim}")
    if (shape.tokens, shape.latent_dim) != (generator.space.tokens, generator.space.dim):
        problems.append(
            f"prior of {source} generates ({shape.tokens}, {shape.latent_dim}) latents, generator "
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
                    checkpoint=given if given.startswith("hf:") else str(path), device=target)


def _image_prompts(image: Any) -> tuple[Tensor, list[str]]:
    """Image prompts given as paths, Pillow images or tensors in [-1, 1] -> ((N, 3, 224, 224), labels)."""
    from latentmap.images import load_image

    items = list(image) if isinstance(image, (list, tuple)) else [image]
    tensors, labels = [], []
    for index, item in enumerate(items):
        if isinstance(item, Tensor):
            batch = item[None] if item.ndim == 3 else item
            tensors += list(batch.float())
            labels += [f"image {index}.{i}" if batch.shape[0] > 1 else f"image {index}" for i in range(batch.shape[0])]
        else:
            tensors.append(load_image(item))
            labels.append(Path(item).name if isinstance(item, (str, os.PathLike)) else f"image {index}")
    size = max(t.shape[-1] for t in tensors)
    resized = [torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]
               if t.shape[-2:] != (size, size) else t for t in tensors]
    return torch.stack(resized), labels


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


@contextmanager
def denoising_progress(prior: Prior, *, enabled: bool) -> Iterator[dict[str, Any]]:
    """Keywords for ``prior.sample``: a ``callback`` advancing a "denoise" bar on stderr, one tick per
    sampler step; none when disabled or when the prior's ``sample`` takes no ``callback`` (the Prior
    contract does not require one)."""
    if not enabled or "callback" not in inspect.signature(prior.sample).parameters:
        yield {}
        return
    from tqdm.auto import tqdm

    with tqdm(desc="denoise", unit="step", leave=False) as bar:
        yield {"callback": lambda _state: bar.update(1)}
