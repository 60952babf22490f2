"""One browser tab's state: what it generated last, and the edit direction it discovered.

The page keeps one :class:`DemoSession` per tab (Gradio's ``gr.State``) and the logic returns a new
one for every change instead of mutating it, so two tabs, or two requests of one tab, never share
latents. The pipeline itself is shared and read-only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["DemoSession", "View", "new_session_id"]


def new_session_id() -> str:
    """A random id naming a tab's download folder."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class DemoSession:
    """What one tab shows: the kept latents of its last request, best first, and its edit direction.

    ``latents`` (N, tokens, dim) are what the prior produced; ``per_layer`` (N, layers, dim) what was
    rendered at strength 0; ``target`` (1, D) what the scores compare images with (the prompt's text
    embedding, or the image prompt's embedding); ``scores`` (N,) the kept scores at strength 0.
    """

    id: str = field(default_factory=new_session_id)
    label: str = ""
    kind: str = "text"  # "text" or "image"
    seed: int = 0
    candidates: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    latents: Tensor | None = None
    per_layer: Tensor | None = None
    target: Tensor | None = None
    scores: Tensor | None = None
    direction: Any = None  # latentmap.edit.Direction
    direction_label: str = ""
    strength: float = 0.0

    @property
    def has_images(self) -> bool:
        return self.per_layer is not None


@dataclass(frozen=True)
class View:
    """What the page shows for a session: images best first, their scores and captions, a status
    line, and the two files its download buttons offer."""

    images: list[Any]
    scores: list[float]
    captions: list[str]
    status: str
    images_file: Any = None  # Path of a .zip of PNGs
    latents_file: Any = None  # Path of a .safetensors file
