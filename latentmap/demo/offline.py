"""Keep the demo off the internet: no analytics, no version check, no share link, no web fonts.

Gradio phones home unless told not to: a usage-analytics request and a version check when a page is
built (both off with ``GRADIO_ANALYTICS_ENABLED=False``, read when Gradio is imported and when
``Blocks`` is made), Hugging Face Hub telemetry, and a share tunnel when asked. Its themes can name
Google fonts, which the browser would fetch from Google. :func:`configure_offline` sets the
environment before Gradio is imported; :func:`offline_theme` is a theme that names system fonts only;
the launch passes ``share=False`` and no SSR (which would need Node). The browser test checks that
the page loads nothing from any host but the demo's own.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["OFFLINE_ENVIRONMENT", "configure_offline", "offline_theme"]

OFFLINE_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no analytics requests, no version check
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",  # nothing of the demo comes from the Hub (an hf: checkpoint is resolved before)
    "GRADIO_SHARE": "False",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
    "DO_NOT_TRACK": "1",
}

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "DejaVu Sans", "sans-serif"]
SYSTEM_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace"]


def configure_offline(host: str = "127.0.0.1") -> None:
    """Set :data:`OFFLINE_ENVIRONMENT` (call before importing gradio), and let Gradio's own startup
    request to the local server bypass any proxy."""
    os.environ.update(OFFLINE_ENVIRONMENT)
    bypass = [name for name in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",") if name]
    for name in ("127.0.0.1", "localhost", host):
        if name not in bypass:
            bypass.append(name)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(bypass)


def offline_theme() -> Any:
    """Gradio's default theme with system fonts only (no font files fetched from anywhere)."""
    import gradio as gr

    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS)
