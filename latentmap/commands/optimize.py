"""``latentmap optimize``: direct optimisation of latents against the CLIP score (the paper's baseline)."""

from __future__ import annotations

from typing import Any

import click

from latentmap.commands.pipeline_options import (
    build_pipeline,
    checkpoint_options,
    gather_prompts,
    quiet_option,
    sampler_options,
    settings_from,
)
from latentmap.errors import LatentmapError


@click.command("optimize")
@click.argument("prompts", nargs=-1)
@click.option("--prompts-file", default=None, help="One prompt per line (a path or a packaged list).")
@click.option("--generator", "generator_name", default=None, help="Generator name (without --checkpoint).")
@click.option("--encoder", "encoder_name", default=None, help="Encoder as prefix:spec (without --checkpoint).")
@checkpoint_options(required=False)
@click.option("--init", type=click.Choice(["mean", "random", "prior"]), default="mean", show_default=True,
              help="Start from the mean latent, a random draw, or the prior's sample (needs --checkpoint).")
@click.option("--steps", "opt_steps", type=int, default=300, show_default=True, help="Optimisation steps.")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Adam learning rate.")
@click.option("--per-layer", is_flag=True, help="Optimise one latent per style layer (w+) instead of the space's.")
@click.option("--init-noise", type=float, default=0.0, show_default=True, help="Noise std added to the start.")
@click.option("--candidates", type=int, default=1, show_default=True, help="Latents optimised per prompt.")
@click.option("--keep", type=int, default=1, show_default=True, help="Best kept per prompt.")
@sampler_options(steps_flag="--prior-steps")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=8, show_default=True, help="Samples per forward/backward pass.")
@click.option("--out", type=click.Path(file_okay=False), default="optimized", show_default=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace the samples an earlier run left in --out.")
@quiet_option
def command(prompts: tuple[str, ...], prompts_file: str | None, generator_name: str | None,
            encoder_name: str | None, init: str, opt_steps: int, lr: float, per_layer: bool, init_noise: float,
            candidates: int, keep: int, seed: int, batch_size: int, out: str, overwrite: bool, quiet: bool, **kwargs: Any) -> None:
    """Optimise latents so the rendered image's CLIP score for each prompt is as high as possible.

    \b
    latentmap optimize "a smiling man" --generator stylegan2-ffhq --encoder openclip:ViT-B-32/openai --steps 300
    latentmap optimize "a smiling man" --checkpoint best.safetensors --init prior --steps 20
    """
    import latentmap
    from latentmap.optimize import OptimizeSettings, optimize
    from latentmap.config import parse_pairs, plural
    from latentmap.interfaces import warn_unknown_words
    from latentmap.options import resolve_device
    from latentmap.sample import refuse_to_replace_samples, write_samples

    refuse_to_replace_samples(out, overwrite)  # before the optimisation, not after
    texts = gather_prompts(prompts, prompts_file)
    if not texts:
        raise LatentmapError("no prompts given: pass prompts or --prompts-file")
    pipeline = None
    if kwargs.get("checkpoint"):
        if generator_name or encoder_name:
            raise LatentmapError("--checkpoint names its generator and encoder: drop --generator/--encoder")
        pipeline = build_pipeline(kwargs)
        generator, encoder = pipeline.generator, pipeline.encoder
    else:
        if init == "prior":
            raise LatentmapError("--init prior needs --checkpoint")
        if not generator_name or not encoder_name:
            raise LatentmapError("pass --generator and --encoder (or --checkpoint)")
        device = resolve_device(kwargs["device"])
        generator = latentmap.get_generator(
            generator_name, **parse_pairs(kwargs["generator_options"], flag="--generator-option")).to(device)
        encoder = latentmap.get_encoder(
            encoder_name, **parse_pairs(kwargs["encoder_options"], flag="--encoder-option")).to(device)
    warn_unknown_words(encoder, texts)
    sampler = settings_from(pipeline, kwargs)
    settings = OptimizeSettings(steps=opt_steps, lr=lr, init=init, per_layer=per_layer, init_noise=init_noise)
    result = optimize(generator, encoder, texts, settings=settings, candidates=candidates, keep=keep, seed=seed,
                      pipeline=pipeline, sampler=sampler, batch_size=batch_size, progress=not quiet)
    jsonl = write_samples(result, out, overwrite=overwrite, info={"checkpoint": pipeline.checkpoint if pipeline else None,
                                             "generator": generator.identity()["name"],
                                             "encoder": encoder.identity()["name"]})
    for label, scores in zip(result.labels, result.scores.tolist()):
        click.echo(f"{label}: best score {scores[0]:.4f}")
    click.echo(f"wrote {plural(len(texts) * keep, 'image')} to {out} ({jsonl.name}) in {result.seconds:.1f}s")
