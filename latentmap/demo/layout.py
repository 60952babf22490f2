"""The demo page in Gradio: controls, their events, and nothing else.

Every event handler is a few lines that call :class:`~latentmap.demo.logic.DemoApp` and put its
:class:`~latentmap.demo.session.View` into the components; the tab's :class:`DemoSession` lives in a
``gr.State``, so each browser tab has its own. A ``LatentmapError`` (bad input) becomes ``gr.Error``
with its one-line message; any other exception a one-line ``gr.Error`` naming its type, its
traceback only in the server's console. All events share one concurrency slot: the pipeline is
shared, so requests take turns.

Import :func:`latentmap.demo.offline.configure_offline` first (the command does), so Gradio is
imported with analytics off.
"""

from __future__ import annotations

import functools
import html
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from latentmap.demo.inputs import GenerateRequest, read_upload
from latentmap.demo.logic import DemoApp
from latentmap.demo.offline import offline_theme
from latentmap.demo.session import DemoSession, View
from latentmap.errors import LatentmapError

__all__ = ["DISPLAY_SIDE", "build_page", "launch"]

DISPLAY_SIDE = 256  # small generators' images are enlarged (nearest neighbour) to this size on the page
GALLERY_COLUMNS = 4
GALLERY_ROW = 190  # pixels a row of images takes on a desktop screen; the gallery fits its rows, at most
GALLERY_MAX_ROWS = 3  # this many (then it scrolls)
CACHE_CLEANUP = (3600, 86400)  # every hour, Gradio deletes the files it served more than a day ago
CONCURRENCY = "pipeline"  # every event queues for the one shared pipeline
CSS = """
#status { min-height: 2.5em; }
#gallery img { image-rendering: pixelated; }
"""
log = logging.getLogger("latentmap.demo")


def _shown(message: str) -> gr.Error:
    """A ``gr.Error`` whose text is ``message`` as plain text (Gradio renders error messages as HTML)."""
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def _guarded(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with its errors turned into one-line page messages (never a stack trace on the page)."""

    @functools.wraps(handler)  # Gradio reads the signature (its gr.Progress argument) through the wrapper
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except LatentmapError as exc:
            raise _shown(str(exc)) from None
        except Exception as exc:  # a bug: one line on the page, the traceback in the console
            log.error("demo request failed:\n%s", traceback.format_exc())
            first = (str(exc).strip().splitlines() or [""])[0]
            raise _shown(f"internal error: {type(exc).__name__}: {first}"[:300]) from None

    return run


def _enlarged(image: Any) -> Any:
    from PIL import Image

    side = min(image.size)
    if side >= DISPLAY_SIDE:
        return image
    scale = -(-DISPLAY_SIDE // side)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _outputs(session: DemoSession, view: View) -> tuple[Any, ...]:
    """Values for [state, gallery, status, images download, latents download]."""
    gallery = [(_enlarged(image), caption) for image, caption in zip(view.images, view.captions)]
    rows = -(-len(gallery) // GALLERY_COLUMNS)
    return (session, gr.Gallery(value=gallery, height=min(rows, GALLERY_MAX_ROWS) * GALLERY_ROW + 40), view.status,
            gr.DownloadButton(value=str(view.images_file), interactive=True),
            gr.DownloadButton(value=str(view.latents_file), interactive=True))


def build_page(app: DemoApp) -> gr.Blocks:
    """The page for ``app``: prompt, settings, image prompt, gallery, downloads and edit direction."""
    limits = app.limits
    start = app.initial_request()
    with gr.Blocks(title="latentmap demo", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as page:
        session = gr.State(None)
        gr.Markdown(f"## latentmap: text to image through a diffusion prior\n{app.describe()}")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="Prompt", placeholder="what to draw, e.g. a blue star", lines=1, max_lines=3,
                                    max_length=limits.prompt_chars, elem_id="prompt")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                show = gr.Slider(1, limits.show, value=start.show, step=1, label="Show best", elem_id="show")
                candidates = gr.Slider(1, limits.candidates, value=start.candidates, step=1, label="Candidates",
                                       info="sampled, then re-ranked by CLIP score", elem_id="candidates")
                steps = gr.Slider(*limits.steps, value=start.steps, step=1, label="Steps", elem_id="steps")
                guidance = gr.Slider(*limits.guidance, value=start.guidance, step=0.1, label="Guidance",
                                     info="classifier-free guidance scale", elem_id="guidance")
                truncation = gr.Slider(*limits.truncation, value=start.truncation, step=0.05, label="Truncation",
                                       info="toward the mean latent (1: none)", elem_id="truncation")
                seed = gr.Number(value=start.seed, precision=0, minimum=limits.seed[0], maximum=limits.seed[1],
                                 label="Seed", elem_id="seed")
                with gr.Accordion("Image prompt", open=False):
                    upload = gr.File(label="Image prompt", file_types=["image"], type="filepath", elem_id="upload")
                    preview = gr.Image(label="Image prompt as read", interactive=False, height=160,
                                       elem_id="upload-preview")
                    generate_image = gr.Button("Generate from image", elem_id="generate-image")
            with gr.Column(scale=3):
                status = gr.Markdown("Type a prompt and press Generate.", elem_id="status")
                gallery = gr.Gallery(label="Best candidates, with their CLIP scores", columns=GALLERY_COLUMNS,
                                     format="png", object_fit="contain", height=GALLERY_ROW + 40, elem_id="gallery")
                with gr.Row():
                    images_file = gr.DownloadButton("Download images (.zip of PNGs)", interactive=False,
                                                    elem_id="download-images")
                    latents_file = gr.DownloadButton("Download latents (.safetensors)", interactive=False,
                                                     elem_id="download-latents")
                with gr.Group():
                    gr.Markdown("**Edit direction**: from a positive and a negative prompt; the strength moves "
                                "the current latents along it.")
                    with gr.Row():
                        positive = gr.Textbox(label="Positive prompt", placeholder="toward this prompt",
                                              elem_id="positive")
                        negative = gr.Textbox(label="Negative prompt", placeholder="away from this prompt",
                                              elem_id="negative")
                    discover = gr.Button("Discover direction", elem_id="discover")
                    strength = gr.Slider(*limits.strength, value=0.0, step=0.25, label="Edit strength",
                                         elem_id="strength")

        settings = [show, candidates, steps, guidance, truncation, seed]
        outputs = [session, gallery, status, images_file, latents_file]
        events = dict(concurrency_limit=1, concurrency_id=CONCURRENCY)

        @_guarded
        def on_generate(state, text, show_n, count, steps_n, scale, psi, seed_n, edit,
                        progress=gr.Progress(track_tqdm=True)):
            request = GenerateRequest(text, show_n, count, steps_n, scale, psi, seed_n)
            return _outputs(*app.generate(request, session=state, strength=edit, progress=True))

        @_guarded
        def on_generate_image(state, path, show_n, count, steps_n, scale, psi, seed_n, edit,
                              progress=gr.Progress(track_tqdm=True)):
            picture = read_upload(path, limits)
            request = GenerateRequest("", show_n, count, steps_n, scale, psi, seed_n)
            return _outputs(*app.generate(request, image=picture, image_name=Path(path).name, session=state,
                                          strength=edit, progress=True))

        @_guarded
        def on_upload(path):
            return None if path is None else read_upload(path, limits)

        @_guarded
        def on_discover(state, plus, minus, edit, progress=gr.Progress(track_tqdm=True)):
            new, view = app.discover(state, plus, minus, strength=edit, progress=True)
            if view is None:
                return (new, gr.skip(), f"direction {new.direction_label} found: generate images to edit them",
                        gr.skip(), gr.skip())
            return _outputs(new, view)

        @_guarded
        def on_strength(state, edit):
            return _outputs(*app.set_strength(state, edit))

        generate.click(on_generate, [session, prompt, *settings, strength], outputs, api_name="generate", **events)
        prompt.submit(on_generate, [session, prompt, *settings, strength], outputs, api_visibility="private", **events)
        generate_image.click(on_generate_image, [session, upload, *settings, strength], outputs,
                             api_name="generate_image", **events)
        upload.change(on_upload, [upload], [preview], api_name="upload", **events)
        discover.click(on_discover, [session, positive, negative, strength], outputs, api_name="discover", **events)
        strength.input(on_strength, [session, strength], outputs, api_name="strength", trigger_mode="always_last",
                       show_progress="minimal", **events)
    return page


def launch(app: DemoApp, *, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the page on ``host:port`` until interrupted: no share link, no SSR, no analytics (the
    command prints the address; Gradio's own banner would suggest a share link)."""
    page = build_page(app)
    page.queue(default_concurrency_limit=1)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, ssr_mode=False, pwa=False,
                mcp_server=False, show_error=False, quiet=True, footer_links=[], enable_monitoring=False,
                max_file_size=app.limits.upload_bytes, theme=offline_theme(), css=CSS)
