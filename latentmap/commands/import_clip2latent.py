"""``latentmap import-clip2latent``: convert a released clip2latent prior into a latentmap checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from latentmap.commands.pipeline_options import quiet_option
from latentmap.prior import CLIP2LATENT_ENCODER, CLIP2LATENT_GENERATOR


@click.command("import-clip2latent")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="clip2latent run yaml (gives latent_repeats, schedule, objective); inferred from the weights if absent.")
@click.option("--out", "out_path", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@click.option("--weights", type=click.Choice(["ema", "online"]), default="ema", show_default=True,
              help="Which weight copy becomes the prior; the other is kept in the file under its name as a prefix.")
@click.option("--generator", default=CLIP2LATENT_GENERATOR, show_default=True, help="Generator the prior was trained for.")
@click.option("--encoder", default=CLIP2LATENT_ENCODER, show_default=True, help="Encoder whose embeddings condition it.")
@quiet_option
def command(checkpoint: Path, config_path: Path | None, out_path: Path, weights: str, generator: str, encoder: str,
            quiet: bool) -> None:
    """Import a clip2latent CHECKPOINT (.ckpt) without running any code from it (torch weights_only load)."""
    from latentmap.checkpoint import save_prior
    from latentmap.config import plural
    from latentmap.prior.clip2latent import import_clip2latent

    del quiet  # the import shows no progress; the flag is accepted so a script can pass --quiet to any command
    prior, metadata, extra = import_clip2latent(
        checkpoint, config=config_path, weights=weights, generator=generator, encoder=encoder
    )
    save_prior(out_path, prior, metadata=metadata, extra_tensors=extra)
    shape, options = prior.shape, prior.options
    click.echo(
        f"wrote {out_path}: {weights} weights, {plural(shape.tokens, 'latent token')} of {shape.latent_dim}, depth {options.depth}, "
        f"{options.timesteps} timesteps, space {metadata['space']['name']} {metadata['space']['repeats']}"
    )
