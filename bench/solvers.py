"""Few-step solvers in the shapes world: text-to-latent accuracy against network evaluations (NFE).

For each sampler and each budget of network evaluations, 16 candidates for every prompt of
``latentmap/prompts/shapes-eval-64.txt`` (the 64 prompts of ``shapes_common``, all in one batched
``DiffusionPrior.sample`` call), for three seeds; the same seed gives every sampler the same start
noise. Reported, medians over the seeds:

- *colour+shape* and *all named*: accuracy of every candidate, no re-ranking (``shapes_common``);
- seconds per 16 candidates (one prompt's worth): the batched call's time divided by the prompts.

A sampler gets the most steps whose evaluations fit the budget: one a step for ``ddim`` and
``dpmpp_2m``; ``heun`` needs 2·steps − 2, and the NFE it used is reported.

``--fidelity N`` also measures how far each solve is from the probability-flow ODE's solution: for
the first seed and the first N candidates of every prompt, the RMS distance (normalised latent units)
to the same start noise solved with DDIM over every timestep of the model.

    python bench/solvers.py --checkpoint runs/shapes/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes_common import prompt_cases, sample_hits

REPO = Path(__file__).resolve().parent.parent
SAMPLERS = ("ddim", "dpmpp_2m", "heun")


def evaluations(sampler: str, steps: int) -> int:
    """Network evaluations of ``sampler`` in ``steps`` steps (Heun: two a step, one at the first and last)."""
    return max(1, 2 * steps - 2) if sampler == "heun" else steps


def steps_for(sampler: str, budget: int) -> int:
    """The most steps of ``sampler`` whose evaluations fit ``budget``."""
    steps = 1
    while evaluations(sampler, steps + 1) <= budget:
        steps += 1
    return steps


def load_average() -> list[str] | None:
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--nfe", default="2,4,8,25", help="network-evaluation budgets")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--fidelity", type=int, default=0, help="candidates per prompt compared with a full-ODE solve (0: off)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "solvers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from latentmap.pipeline import load_pipeline
    from latentmap.prior.samplers import SAMPLERS as REGISTRY

    load_before = load_average()
    started_all = time.perf_counter()
    prior = (pipeline := load_pipeline(args.checkpoint, device="cpu")).prior
    cases = prompt_cases()
    cond = pipeline.embed_prompts([case.text for case in cases]).repeat_interleave(args.candidates, dim=0)
    samplers = args.samplers.split(",")
    unknown = [name for name in samplers if name not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown sampler(s) {', '.join(unknown)}; registered: {', '.join(REGISTRY)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    def draw(sampler: str, steps: int | None, seed: int) -> tuple[torch.Tensor, float]:
        settings = prior.sampling(sampler=sampler, steps=steps, guidance=args.guidance, eta=0.0)
        started = time.perf_counter()
        latents = prior.sample(cond, settings, generator=torch.Generator().manual_seed(seed))
        return latents.reshape(len(cases), args.candidates, *latents.shape[1:]), time.perf_counter() - started

    reference = None
    if args.fidelity:
        # the first seed's start noise (the first draw of every sample call), for the first N candidates
        start = torch.randn((len(cases) * args.candidates, prior.shape.tokens, prior.shape.latent_dim),
                            generator=torch.Generator().manual_seed(seeds[0]))
        start = start.reshape(len(cases), args.candidates, *start.shape[1:])[:, : args.fidelity].flatten(0, 1)
        draws = iter([start])  # then zeros: DDIM at eta 0 draws a z every step and multiplies it by 0
        subset = cond.reshape(len(cases), args.candidates, -1)[:, : args.fidelity].flatten(0, 1)
        settings = prior.sampling(sampler="ddim", steps=None, guidance=args.guidance, eta=0.0)
        reference = prior.normalize_latents(
            prior.sample(subset, settings, noise=lambda shape: next(draws, torch.zeros(shape))))

    rows = []
    for budget in (int(n) for n in args.nfe.split(",")):
        for sampler in samplers:
            steps = steps_for(sampler, budget)
            per_seed = []
            for seed in seeds:
                latents, seconds = draw(sampler, steps, seed)
                hits = sample_hits(cases, latents)
                per_seed.append({
                    "colour_shape": float(hits["colour_shape"].float().mean()),
                    "all_named": float(hits["all_named"].float().mean()),
                    "seconds_per_16": seconds / len(cases) * 16 / args.candidates,
                })
                if reference is not None and seed == seeds[0]:
                    solved = prior.normalize_latents(latents[:, : args.fidelity].flatten(0, 1))
                    fidelity_rms = float((solved - reference).pow(2).mean().sqrt())
            row = {"sampler": sampler, "nfe_budget": budget, "steps": steps, "nfe": evaluations(sampler, steps),
                   **{key: statistics.median(r[key] for r in per_seed) for key in per_seed[0]}, "per_seed": per_seed}
            if reference is not None:
                row["rms_to_ode"] = fidelity_rms
            rows.append(row)
            print(f"NFE {budget:3d}  {sampler:9s} {steps:3d} steps ({row['nfe']:3d} NFE)  colour+shape "
                  f"{row['colour_shape']:.3f}  all named {row['all_named']:.3f}  {row['seconds_per_16'] * 1000:6.1f} ms/16"
                  + (f"  rms to ODE {row['rms_to_ode']:.3f}" if reference is not None else ""), flush=True)
    result = {
        "command": "python bench/solvers.py " + " ".join(sys.argv[1:]),
        "checkpoint": str(args.checkpoint),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible (shared), {args.threads} torch thread(s), "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "seconds": round(time.perf_counter() - started_all, 1),
        "prompts": len(cases), "candidates": args.candidates, "guidance": args.guidance, "seeds": seeds,
        "fidelity_candidates": args.fidelity,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
