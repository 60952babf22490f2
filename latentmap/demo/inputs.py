"""What the demo page may send, checked: every value a browser (or a hand-made request) gives.

A web page's sliders keep honest users in range, but anything can be posted to the server by hand:
a float where a count belongs, 10^9 candidates, NaN guidance, a text file as the image prompt. Each
check here turns such a value into a :class:`DemoInputError` whose message is one line naming the
field as the page labels it, the value received and what is allowed, so the page shows it instead
of a stack trace. Nothing here imports torch or Gradio.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from latentmap.errors import LatentmapError

__all__ = [
    "DemoInputError",
    "GenerateRequest",
    "Limits",
    "checked_request",
    "read_integer",
    "read_number",
    "read_prompt",
    "read_upload",
]


class DemoInputError(LatentmapError):
    """Input from the page that cannot be used; the message is shown on the page as it is."""


@dataclass(frozen=True)
class Limits:
    """The ranges the page's controls offer, and the only values the logic accepts."""

    candidates: int = 64  # most candidates sampled per request (the best ``show`` of them are kept)
    show: int = 16  # most images shown
    steps: tuple[int, int] = (1, 200)
    guidance: tuple[float, float] = (0.0, 20.0)
    truncation: tuple[float, float] = (0.0, 2.0)
    strength: tuple[float, float] = (-10.0, 10.0)
    seed: tuple[int, int] = (0, 2**31 - 1)
    prompt_chars: int = 500
    image_side: int = 8192  # longest side of an uploaded image, in pixels
    upload_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class GenerateRequest:
    """One press of Generate: the prompt and the settings of the page's controls."""

    prompt: str = ""
    show: int = 4
    candidates: int = 16
    steps: int = 25
    guidance: float = 1.0
    truncation: float = 1.0
    seed: int = 0


def _as_float(label: str, value: Any) -> float:
    if isinstance(value, bool) or value is None:
        raise DemoInputError(f"{label} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{label} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise DemoInputError(f"{label} must be a finite number, got {value!r}")
    return number


def read_number(label: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in [low, high], or a one-line error naming ``label``."""
    number = _as_float(label, value)
    if not low <= number <= high:
        raise DemoInputError(f"{label} must be between {low:g} and {high:g}, got {number:g}")
    return number


def read_integer(label: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (``16.0`` is 16, ``16.5`` is refused), or a one-line error."""
    number = _as_float(label, value)
    if number != int(number):
        raise DemoInputError(f"{label} must be a whole number, got {number:g}")
    if not low <= number <= high:
        raise DemoInputError(f"{label} must be a whole number from {low} to {high}, got {number:g}")
    return int(number)


def read_prompt(text: Any, limits: Limits, *, label: str = "Prompt") -> str:
    """A non-empty prompt of at most ``limits.prompt_chars`` characters, stripped."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise DemoInputError(f"{label} must be text, got {type(text).__name__}")
    prompt = " ".join(text.split())
    if not prompt:
        raise DemoInputError(f"{label} is empty: type what to draw, e.g. 'a blue star'")
    if len(prompt) > limits.prompt_chars:
        raise DemoInputError(f"{label} is {len(prompt)} characters long; at most {limits.prompt_chars} are accepted")
    return prompt


def checked_request(request: GenerateRequest, limits: Limits, *, needs_prompt: bool = True) -> GenerateRequest:
    """``request`` with every value checked against ``limits`` and converted to its type.

    ``needs_prompt=False`` for image prompts, whose text box may be empty. Showing more images than
    there are candidates is not an error: the page's two sliders move independently, so ``show`` is
    capped at ``candidates``.
    """
    candidates = read_integer("Candidates", request.candidates, 1, limits.candidates)
    show = read_integer("Show best", request.show, 1, limits.show)
    return replace(
        request,
        prompt=read_prompt(request.prompt, limits) if needs_prompt else str(request.prompt or "").strip(),
        show=min(show, candidates),
        candidates=candidates,
        steps=read_integer("Steps", request.steps, *limits.steps),
        guidance=read_number("Guidance", request.guidance, *limits.guidance),
        truncation=read_number("Truncation", request.truncation, *limits.truncation),
        seed=read_integer("Seed", request.seed, *limits.seed),
    )


def read_upload(path: str | os.PathLike | None, limits: Limits) -> Any:
    """The uploaded file at ``path`` as an RGB Pillow image, or a one-line error naming the file.

    Refuses a missing upload, a file over ``limits.upload_bytes``, anything Pillow cannot read as an
    image, and images with a side over ``limits.image_side`` (checked from the header, before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    if path is None or str(path) == "":
        raise DemoInputError("no image uploaded: drop an image file on 'Image prompt' first")
    file = Path(path)
    name = file.name
    if not file.is_file():
        raise DemoInputError(f"uploaded file {name!r} is gone; upload it again")
    size = file.stat().st_size
    if size > limits.upload_bytes:
        raise DemoInputError(f"uploaded file {name!r} is {size / 2**20:.1f} MB; at most "
                             f"{limits.upload_bytes / 2**20:.0f} MB are accepted")
    try:
        with Image.open(file) as opened:
            width, height = opened.size
            if max(width, height) > limits.image_side:
                raise DemoInputError(f"uploaded image {name!r} is {width}x{height} pixels; at most "
                                     f"{limits.image_side} pixels a side are accepted")
            opened.load()
            return opened.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
        raise DemoInputError(f"uploaded file {name!r} is not an image (expected PNG, JPEG, WebP, GIF or BMP)") from None
