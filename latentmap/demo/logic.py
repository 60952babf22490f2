"""The demo page's behaviour as plain functions: request in, images, scores and a message out.

:class:`DemoApp` wraps one loaded :class:`~latentmap.pipeline.Pipeline` (shared by every tab) and
answers the page's four actions, each taking the tab's :class:`DemoSession` and returning a new one
with the :class:`View` to show:

- :meth:`DemoApp.generate`: a text or image prompt -> the best ``show`` of ``candidates`` samples,
  re-ranked by CLIP score;
- :meth:`DemoApp.discover`: a positive and a negative prompt -> an edit direction (difference of the
  prior's mean latents for each, :func:`latentmap.edit.discover_direction`);
- :meth:`DemoApp.set_strength`: re-render the current latents moved along the direction, re-scored;
- downloads are written with every view (a zip of PNGs and a safetensors file of latents).

Bad input raises :class:`~latentmap.demo.inputs.DemoInputError` (a ``LatentmapError``) with a one-line
message; the layout shows it on the page. Nothing here imports Gradio.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from latentmap.demo.downloads import download_stem, write_images_zip, write_latents
from latentmap.demo.inputs import (
    DemoInputError,
    GenerateRequest,
    Limits,
    checked_request,
    read_number,
    read_prompt,
)
from latentmap.demo.session import DemoSession, View
from latentmap.edit import apply_direction, discover_direction
from latentmap.images import load_image, tensor_to_pil
from latentmap.pipeline import Pipeline, SamplerSettings
from latentmap.sample import sample_from_conditions
from latentmap.scoring import image_text_scores

__all__ = ["DIRECTION_SAMPLES", "DemoApp"]

DIRECTION_SAMPLES = 64  # latents per side when discovering a direction (the same noise on both sides)
IMAGE_PROMPT_SIDE = 512  # uploads are shrunk to at most this many pixels a side before embedding


class DemoApp:
    """The demo's logic around one pipeline; ``downloads`` is where the download files go (default:
    a fresh temporary folder, removed by :meth:`close`)."""

    def __init__(self, pipeline: Pipeline, *, limits: Limits | None = None, downloads: str | Path | None = None):
        self.pipeline = pipeline
        self.limits = limits or Limits()
        self._own_downloads = downloads is None
        self.downloads = Path(downloads) if downloads is not None else Path(tempfile.mkdtemp(prefix="latentmap-demo-"))
        self.sampling_fields = frozenset(f.name for f in fields(pipeline.prior.Sampling))
        timesteps = getattr(getattr(pipeline.prior, "options", None), "timesteps", None)
        if isinstance(timesteps, int) and timesteps < self.limits.steps[1]:  # no more steps than the prior has
            self.limits = replace(self.limits, steps=(self.limits.steps[0], timesteps))

    # -- what the page starts with ----------------------------------------------------------------
    def initial_request(self) -> GenerateRequest:
        """The checkpoint recipe's sample settings (candidates, keep, steps, guidance, truncation), within limits."""
        defaults = self.pipeline.defaults()
        section = self.pipeline.recipe_sample()
        sampling = defaults.sampling
        candidates = min(int(section["candidates"]), self.limits.candidates)
        return GenerateRequest(
            prompt="",
            show=min(int(section["keep"]), self.limits.show, candidates),
            candidates=candidates,
            steps=int(getattr(sampling, "steps", None) or 25),
            guidance=float(getattr(sampling, "guidance", 1.0)),
            truncation=float(defaults.truncation),
            seed=0,
        )

    def describe(self) -> str:
        """One line naming the checkpoint, its generator and encoder, for the page's header."""
        pipe = self.pipeline
        return (f"checkpoint `{pipe.checkpoint}`: generator {pipe.generator.name} "
                f"({pipe.generator.resolution} px), encoder {pipe.encoder.name}, prior "
                f"{type(pipe.prior).__name__}, on {pipe.device}")

    # -- actions --------------------------------------------------------------------------------
    def generate(self, request: GenerateRequest, *, image: Any = None, image_name: str = "image",
                 session: DemoSession | None = None, strength: float = 0.0,
                 progress: bool = False) -> tuple[DemoSession, View]:
        """Sample ``request.candidates`` latents for the prompt (or for ``image``, a Pillow image, when
        given), keep the best ``request.show`` by CLIP score. The tab's direction (in ``session``) is
        kept and applied at ``strength``, so a new prompt shows the same edit."""
        request = checked_request(request, self.limits, needs_prompt=image is None)
        strength = read_number("Edit strength", strength, *self.limits.strength)
        settings = self._settings(request)
        pipe = self.pipeline
        started = time.perf_counter()
        if image is not None:
            picture = image.copy()
            picture.thumbnail((IMAGE_PROMPT_SIDE, IMAGE_PROMPT_SIDE))
            cond = pipe.embed_images(load_image(picture)[None])
            label, kind = image_name, "image"
        else:
            cond = pipe.embed_prompts([request.prompt])
            label, kind = request.prompt, "text"
        result = sample_from_conditions(pipe, cond, cond, [label], kind=kind, candidates=request.candidates,
                                        keep=request.show, settings=settings, seed=request.seed,
                                        progress=progress)
        seconds = time.perf_counter() - started
        previous = session or DemoSession()
        new = DemoSession(
            id=previous.id, label=label, kind=kind, seed=request.seed, candidates=request.candidates,
            settings=settings.to_dict(), latents=result.latents[0], per_layer=result.per_layer[0],
            target=cond[:1].detach().cpu(), scores=result.scores[0],
            direction=previous.direction, direction_label=previous.direction_label,
            strength=strength if previous.direction is not None else 0.0,
        )
        if new.strength == 0.0:  # what was just rendered: no need to render again
            images = [tensor_to_pil(picture) for picture in result.images[0]]
            view = self._view(new, images, [float(s) for s in result.scores[0]])
        else:
            view = self.view(new)
        what = "image variations of " if kind == "image" else ""
        status = (f"{what}{label!r}: best {request.show} of {request.candidates} candidates "
                  f"(seed {request.seed}; {self._describe_settings(settings)}) in {seconds:.2f} s")
        return new, replace(view, status=status + self._edit_note(new))

    def discover(self, session: DemoSession | None, positive: Any, negative: Any, *, strength: float = 0.0,
                 progress: bool = False) -> tuple[DemoSession, View | None]:
        """An edit direction from ``positive`` and ``negative`` prompts, sampled with the tab's last
        settings (the checkpoint's without one); the tab's images re-rendered at ``strength`` (None
        when it has no images yet)."""
        positive = read_prompt(positive, self.limits, label="Positive prompt")
        negative = read_prompt(negative, self.limits, label="Negative prompt")
        if positive == negative:
            raise DemoInputError("Positive and negative prompts are the same: a direction needs two different prompts")
        strength = read_number("Edit strength", strength, *self.limits.strength)
        session = session or DemoSession()
        settings = self._session_settings(session)
        chosen = self.pipeline.settings(where="demo settings", **self._sampling_changes(settings))
        direction = discover_direction(self.pipeline, positive, negative, samples=DIRECTION_SAMPLES, seed=session.seed,
                                       settings=chosen, progress=progress)
        label = f"{positive!r} - {negative!r}"
        new = replace(session, direction=direction, direction_label=label, strength=strength)
        norm = float(direction.vector.norm())
        if not new.has_images:
            return new, None
        view = self.view(new)
        return new, replace(view, status=f"direction {label} found (norm {norm:.2f}); strength {strength:+g}")

    def set_strength(self, session: DemoSession | None, strength: Any) -> tuple[DemoSession, View]:
        """The tab's images with its latents moved ``strength`` times along its direction, re-scored."""
        strength = read_number("Edit strength", strength, *self.limits.strength)
        if session is None or not session.has_images:
            raise DemoInputError("nothing to edit yet: generate images first")
        if session.direction is None:
            raise DemoInputError("no edit direction yet: type a positive and a negative prompt and press Discover")
        new = replace(session, strength=strength)
        view = self.view(new)
        return new, replace(view, status=f"edit {new.direction_label} at strength {strength:+g}")

    # -- rendering ------------------------------------------------------------------------------
    def edited_per_layer(self, session: DemoSession) -> torch.Tensor:
        """The session's per-layer latents (N, layers, dim) moved along its direction at its strength."""
        if session.direction is None or session.strength == 0.0:
            return session.per_layer
        direction = session.direction
        direction.check(self.pipeline.generator)
        offset = direction.per_layer(self.pipeline.space)
        return apply_direction(session.per_layer, offset.to(session.per_layer), [session.strength])[0]

    def view(self, session: DemoSession) -> View:
        """Render the session's latents (edited at its strength) and score them against its target."""
        per_layer = self.edited_per_layer(session)
        rendered = self.pipeline.render(per_layer)
        targets = F.normalize(session.target.float(), dim=-1).expand(rendered.shape[0], -1)
        scores = image_text_scores(self.pipeline.encoder, rendered, targets).cpu()
        images = [tensor_to_pil(picture) for picture in rendered]
        return self._view(session, images, [float(s) for s in scores], per_layer=per_layer)

    def _view(self, session: DemoSession, images: list[Any], scores: list[float],
              per_layer: torch.Tensor | None = None) -> View:
        per_layer = session.per_layer if per_layer is None else per_layer
        metric = "similarity" if session.kind == "image" else "CLIP"
        captions = [f"#{rank} · {metric} {score:.3f}" for rank, score in enumerate(scores, start=1)]
        info = {
            "prompt": session.label, "kind": session.kind, "seed": session.seed, "candidates": session.candidates,
            "settings": session.settings, "checkpoint": self.pipeline.checkpoint,
            "edit": ({"direction": session.direction_label, "strength": session.strength,
                      "direction_info": {k: v for k, v in session.direction.info.items() if k != "settings"}}
                     if session.direction is not None and session.strength != 0.0 else None),
        }
        folder = self.downloads / session.id
        for old in folder.glob("*"):  # the page already holds its copies (Gradio copies what it serves)
            old.unlink()
        stem = download_stem(session.label, session.seed, session.strength)
        images_file = write_images_zip(folder / f"{stem}-images.zip", images, scores, info)
        latents_file = write_latents(folder / f"{stem}-latents.safetensors", session.latents, per_layer, scores, info)
        return View(images=images, scores=scores, captions=captions, status="",
                    images_file=images_file, latents_file=latents_file)

    # -- settings -------------------------------------------------------------------------------
    def _sampling_changes(self, values: dict[str, Any]) -> dict[str, Any]:
        """The page's steps and guidance, for the prior settings it declares (a prior without guidance
        ignores that slider), with truncation."""
        changes = {key: values[key] for key in ("steps", "guidance") if key in self.sampling_fields and key in values}
        return {**changes, "truncation": values["truncation"]} if "truncation" in values else changes

    def _settings(self, request: GenerateRequest) -> SamplerSettings:
        changes = self._sampling_changes({"steps": request.steps, "guidance": request.guidance,
                                          "truncation": request.truncation})
        return self.pipeline.settings(where="demo settings", **changes)

    def _session_settings(self, session: DemoSession) -> dict[str, Any]:
        if session.settings:
            return session.settings
        return self.pipeline.defaults().to_dict()

    @staticmethod
    def _describe_settings(settings: SamplerSettings) -> str:
        values = settings.to_dict()
        parts = [f"{key} {values[key]}" for key in ("sampler", "steps", "guidance", "truncation") if key in values]
        return ", ".join(parts)

    @staticmethod
    def _edit_note(session: DemoSession) -> str:
        if session.direction is None or session.strength == 0.0:
            return ""
        return f"; edited along {session.direction_label} at strength {session.strength:+g}"

    def close(self) -> None:
        """Remove the download folder if this app made it."""
        if self._own_downloads:
            shutil.rmtree(self.downloads, ignore_errors=True)
