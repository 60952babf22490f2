"""Colour+shape accuracy of a shapes-world prior at several sampler settings, on the samples `latentmap eval` draws.

`latentmap eval --prompts-file shapes-eval-64.txt` reports accuracy per attribute and for "all named
attributes" (colour+shape for the 32 prompts naming a colour and a shape, colour+shape+position for
the 32 that also name a position). This adds *colour+shape* over all 64 (the measure of
docs/benchmarks.md's shapes tables) by drawing exactly eval's samples: one prompt at a time with seed
``--seed`` + prompt index, ``--candidates`` each, every candidate counted (no re-ranking). Its
all-named column therefore equals eval's "all" for the same settings: a check that the samples match.

    python bench/shapes_steps.py --checkpoint runs/shapes-flow/last.safetensors --steps 1,2,4,8 --samplers euler,heun
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_common import prompt_cases, sample_hits  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--steps", default="1,2,4,8", help="comma-separated step counts")
    parser.add_argument("--samplers", default="euler", help="comma-separated sampler names of the prior")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from latentmap.pipeline import load_pipeline
    from latentmap.sample import sample_from_conditions

    torch.set_num_threads(1)
    pipeline = load_pipeline(args.checkpoint, device="cpu")
    cases = prompt_cases()
    cond = pipeline.embed_prompts([case.text for case in cases])
    print("| sampler | steps | colour+shape | all named |\n| --- | ---: | ---: | ---: |")
    for sampler in args.samplers.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            settings = pipeline.settings(steps=steps, sampler=sampler, guidance=args.guidance)
            latents = torch.stack([
                sample_from_conditions(pipeline, cond[p : p + 1], cond[p : p + 1], [case.text], candidates=args.candidates,
                                       keep=1, settings=settings, seed=args.seed + p, keep_images=False,
                                       keep_candidates=True, progress=False).candidate_per_layer[0]
                for p, case in enumerate(cases)
            ])
            hits = sample_hits(cases, latents)
            print(f"| {sampler} | {steps} | {hits['colour_shape'].float().mean():.3f} | "
                  f"{hits['all_named'].float().mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
