"""``latentmap import-clip2latent``: convert a released clip2latent prior into a latentmap checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from latentmap.checkpoint import save_prior
from latentmap.prior.clip2latent import DEFAULT_ENCODER, DEFAULT_GENERATOR, import_clip2latent


@click.command("import-clip2latent")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="clip2latent run yaml (gives latent_repeats, schedule, objective); inferred from the weights if absent.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@click.option("--weights", type=click.Choice(["ema", "online"]), default="ema", show_default=True,
              help="Which weight copy becomes the prior; the other is kept in the file under its name as a prefix.")
@click.option("--generator", default=DEFAULT_GENERATOR, show_default=True, help="Generator the prior was trained for.")
@click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, help="Encoder whose embeddings condition it.")
def command(checkpoint: Path, config_path: Path | None, out_path: Path, weights: str, generator: str, encoder: str) -> None:
    """Import a clip2latent CHECKPOINT (.ckpt) without running any code from it (torch weights_only load)."""
    prior, metadata, extra = import_clip2latent(
        checkpoint, config=config_path, weights=weights, generator=generator, encoder=encoder
    )
    save_prior(out_path, prior, metadata=metadata, extra_tensors=extra)
    shape, options = prior.shape, prior.options
    click.echo(
        f"wrote {out_path}: {weights} weights, {shape.tokens} latent token(s) of {shape.latent_dim}, depth {options.depth}, "
        f"{options.timesteps} timesteps, space {metadata['space']['name']} {metadata['space']['repeats']}"
    )
