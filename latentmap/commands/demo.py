"""``latentmap demo``: a local web page to sample, re-rank, edit and download, for any trained prior.

Gradio is an optional extra (``pip install "latentmap[demo]"``); nothing of it, nor torch, is imported
until the command runs, so ``latentmap --help`` stays fast.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import click

from latentmap.commands.pipeline_options import build_pipeline, checkpoint_options
from latentmap.errors import LatentmapError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_checkpoint() -> str:
    """The README's shapes run, or a one-line error saying how to make it."""
    from latentmap.demo import DEFAULT_CHECKPOINT, MAKE_DEFAULT_CHECKPOINT

    if not Path(DEFAULT_CHECKPOINT).is_file():
        raise LatentmapError(
            f"no --checkpoint given and {DEFAULT_CHECKPOINT} does not exist: make it with "
            f"`{MAKE_DEFAULT_CHECKPOINT}` (about 6 minutes on a CPU) or pass --checkpoint FILE|hf:owner/repo/file"
        )
    return DEFAULT_CHECKPOINT


def require_gradio() -> None:
    """Refuse in one line, before anything is loaded, when the ``demo`` extra is not installed."""
    if importlib.util.find_spec("gradio") is None:
        raise LatentmapError('the web demo needs Gradio, which is not installed: pip install "latentmap[demo]"')


def use_threads(pipeline: Any, threads: int | None) -> None:
    """Set torch's CPU threads: ``threads``, else what the checkpoint's recipe trained with (``train.threads``:
    a small model answers faster on one thread of a small shared CPU than on several); 0 keeps torch's default."""
    if threads is None:
        recorded = ((pipeline.metadata.get("recipe") or {}).get("train") or {}).get("threads")
        threads = recorded if isinstance(recorded, int) and recorded >= 0 else 0
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


@click.command("demo")
@checkpoint_options(required=False)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, reachable from other machines).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="Port to listen on.")
@click.option("--threads", type=click.IntRange(0), default=None,
              help="CPU threads torch may use (0: torch's default) [the checkpoint recipe's train.threads, else 0].")
def command(host: str, port: int, threads: int | None, **kwargs: Any) -> None:
    """Serve a web page for a trained prior: prompt, best N of M candidates with their CLIP scores, sampling
    sliders, an image prompt, edit directions, and downloads (PNG, safetensors latents).

    Without --checkpoint it uses runs/shapes/best.safetensors, what `latentmap run recipes/shapes.yaml`
    makes. Works offline: no analytics, no share link, nothing fetched from the internet.

    \b
    latentmap demo
    latentmap demo --checkpoint runs/ffhq/best.safetensors --port 8080
    """
    require_gradio()
    from latentmap.demo.offline import configure_offline

    configure_offline(host)  # before Gradio is imported
    if kwargs["checkpoint"] is None:
        kwargs["checkpoint"] = default_checkpoint()
    pipeline = build_pipeline(kwargs)
    use_threads(pipeline, threads)

    from latentmap.demo.layout import launch
    from latentmap.demo.logic import DemoApp

    app = DemoApp(pipeline)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"latentmap demo on {where} ({pipeline.checkpoint}); Ctrl+C stops it", err=True)
    if host not in LOOPBACK:
        click.echo(f"note: listening on {host}, so other machines on the network can reach the page", err=True)
    try:
        launch(app, host=host, port=port)
    except OSError as exc:
        raise LatentmapError(f"cannot serve on {host}:{port}: {exc}") from None
    finally:
        app.close()
