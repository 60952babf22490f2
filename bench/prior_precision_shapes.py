"""Does bf16 sampling cost accuracy? Shapes-world colour+shape and all-named accuracy, fp32 vs bf16, same seeds.

Draws exactly what ``bench/shapes_steps.py`` draws (one prompt at a time, seed = prompt index,
``--candidates`` each, every candidate counted, no re-ranking) once with ``precision: fp32`` and once
with ``precision: bf16``, and reports both accuracies and how far the bf16 latents are from fp32's.

    python bench/prior_precision_shapes.py --checkpoint runs/shapes/last.safetensors
    python bench/prior_precision_shapes.py --checkpoint ckpt.safetensors --encoder-weights shapes_clip-4a7b.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_common import prompt_cases, sample_hits  # noqa: E402

RUNS = ((25, "ddim"), (12, "dpmpp_2m"), (4, "dpmpp_2m"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--encoder-weights", default=None,
                        help="the shapes-clip weights the checkpoint was trained with, if not the shipped ones")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=16)
    args = parser.parse_args()

    from latentmap.pipeline import load_pipeline
    from latentmap.sample import sample_from_conditions

    torch.set_num_threads(1)
    encoder_options = {"weights": args.encoder_weights} if args.encoder_weights else None
    pipeline = load_pipeline(args.checkpoint, device="cpu", encoder_options=encoder_options)
    cases = prompt_cases()
    cond = pipeline.embed_prompts([case.text for case in cases])
    print("| sampler | steps | precision | colour+shape | all named | latents vs fp32: max abs / rel. RMS |")
    print("| --- | ---: | --- | ---: | ---: | --- |")
    for steps, sampler in RUNS:
        reference = None
        for precision in ("fp32", "bf16"):
            settings = pipeline.settings(steps=steps, sampler=sampler, guidance=args.guidance, precision=precision)
            latents = torch.stack([
                sample_from_conditions(pipeline, cond[p : p + 1], cond[p : p + 1], [case.text],
                                       candidates=args.candidates, keep=1, settings=settings, seed=p,
                                       keep_images=False, keep_candidates=True, progress=False).candidate_per_layer[0]
                for p, case in enumerate(cases)
            ])
            hits = sample_hits(cases, latents)
            gap = "" if reference is None else (
                f"{(latents - reference).abs().max():.2e} / {(latents - reference).norm() / reference.norm():.2e}")
            reference = latents if reference is None else reference
            print(f"| {sampler} | {steps} | {precision} | {hits['colour_shape'].float().mean():.3f} | "
                  f"{hits['all_named'].float().mean():.3f} | {gap} |", flush=True)


if __name__ == "__main__":
    main()
