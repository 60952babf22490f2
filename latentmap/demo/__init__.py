"""``latentmap demo``: a local web page for a trained prior, and the logic behind it.

The page (Gradio, the optional extra ``latentmap[demo]``) is a thin layout in
:mod:`latentmap.demo.layout`; everything it does is plain Python in :mod:`latentmap.demo.logic`
(validate what the page sends, sample, re-rank, edit, write the downloads), testable without a
browser or Gradio. :mod:`latentmap.demo.offline` keeps the page from reaching the internet.

Importing this package imports neither Gradio nor torch; import the modules for those.
"""

from __future__ import annotations

__all__ = ["DEFAULT_CHECKPOINT", "MAKE_DEFAULT_CHECKPOINT"]

# The README's main job writes this checkpoint; the demo uses it when no --checkpoint is given.
DEFAULT_CHECKPOINT = "runs/shapes/best.safetensors"
MAKE_DEFAULT_CHECKPOINT = "latentmap run recipes/shapes.yaml"
