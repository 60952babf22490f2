"""Few-step solvers and timestep spacings in the shapes world: accuracy against network evaluations (NFE).

For every sampler, timestep spacing and budget of network evaluations: 16 candidates for every
prompt of a prompt set (default ``bench/prompts/shapes-tune.jsonl``, the set that may be tuned on;
its truth is stored with every prompt, ``bench/prompt_sets.py``), all prompts in one batched call
of the pipeline's ``sample_latents`` (the checkpoint's text correction applied, as users get it),
for three seeds; the same seed gives every sampler the same start noise. Reported, medians over
the seeds, no re-ranking (every candidate counts; scored from the latents, no rendering):

- *colour+shape*: both right, on the prompts of group ``colour+shape``;
- *all named*: every named attribute right, on the prompts of group ``3-5``;
- *spread*: the standard deviation over a prompt's candidates, mean over prompts and latent numbers
  (accuracy without re-ranking rewards less varied candidates: read the two together);
- the difference from the reference (``--reference``, default 25-step uniform DDIM) per seed, paired
  (same start noise), and its median;
- seconds per 16 candidates (the batched call divided by the prompts; sampling only).

A sampler gets the most steps whose evaluations fit the budget: one a step for ``ddim`` and
``dpmpp_2m``; ``heun`` needs 2·steps − 2, and the NFE it used is reported.

``--fidelity N`` also measures how far each solve is from the probability-flow ODE's solution: for
the first seed and the first N candidates of every prompt, the RMS distance (normalised latent units)
to the same start noise solved with DDIM over every timestep of the model.

    python bench/solvers.py                                             # shapes-tune, runs/shapes/best.safetensors
    python bench/solvers.py --samplers ddim,dpmpp_2m --spacings uniform,trailing --nfe 4,8 --out /tmp/s.json
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
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prompt_sets import load_prompt_set

REPO = Path(__file__).resolve().parent.parent
SAMPLERS = ("ddim", "dpmpp_2m", "heun")
SCORED_GROUPS = ("colour+shape", "3-5")


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


def scores(cases: list, latents: torch.Tensor) -> dict[str, float]:
    """Colour+shape and all-named accuracy without re-ranking, and the spread, of latents (P, C, tokens, dim)."""
    from latentmap_shapes import decode_attributes

    candidates = latents.shape[1]
    decoded = {k: rearrange(v, "(p c) -> p c", c=candidates)
               for k, v in decode_attributes(rearrange(latents, "p c t d -> (p c) t d").cpu()).items()}
    hits: dict[str, list[torch.Tensor]] = {"colour_shape": [], "all_named": []}
    for p, case in enumerate(cases):
        truth = case.truth
        if case.group == "colour+shape":
            hits["colour_shape"].append((decoded["colour"][p] == truth["colour"]) & (decoded["shape"][p] == truth["shape"]))
        elif case.group == "3-5":
            right = torch.ones(candidates, dtype=torch.bool)
            for name, target in truth.items():
                right &= decoded[name][p] == target
            hits["all_named"].append(right)
    result = {k: float(torch.stack(v).float().mean()) for k, v in hits.items() if v}
    result["spread"] = float(latents.float().std(dim=1).mean())
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "shapes" / "best.safetensors")
    parser.add_argument("--prompts", default="shapes-tune", help="prompt set in bench/prompts (or a .jsonl path)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--spacings", default="uniform", help="timestep spacings (latentmap.prior.schedule.SPACINGS)")
    parser.add_argument("--nfe", default="2,4,8,25", help="network-evaluation budgets")
    parser.add_argument("--reference", default="ddim:25:uniform", help="SAMPLER:STEPS:SPACING the rows are compared with")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=None, help="default: the checkpoint recipe's")
    parser.add_argument("--fidelity", type=int, default=0, help="candidates per prompt compared with a full-ODE solve (0: off)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "solvers.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from latentmap.pipeline import load_pipeline
    from latentmap.prior.samplers import SAMPLERS as REGISTRY
    from latentmap.prior.schedule import SPACINGS

    load_before = load_average()
    started_all = time.perf_counter()
    pipeline = load_pipeline(args.checkpoint, device="cpu")
    prior = pipeline.prior
    guidance = float(pipeline.defaults().sampling.guidance) if args.guidance is None else args.guidance
    cases = [c for c in load_prompt_set(args.prompts) if c.group in SCORED_GROUPS]
    cond = pipeline.embed_prompts([case.text for case in cases]).repeat_interleave(args.candidates, dim=0)
    samplers, spacings = args.samplers.split(","), args.spacings.split(",")
    for names, registry, what in ((samplers, REGISTRY, "sampler"), (spacings, SPACINGS, "spacing")):
        unknown = [name for name in names if name not in registry]
        if unknown:
            raise SystemExit(f"unknown {what}(s) {', '.join(unknown)}; registered: {', '.join(registry)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    def draw(sampler: str, steps: int | None, spacing: str, seed: int) -> tuple[torch.Tensor, float]:
        settings = pipeline.settings(sampler=sampler, steps=steps, spacing=spacing, guidance=guidance, eta=0.0,
                                     truncation=1.0)
        started = time.perf_counter()
        latents = pipeline.sample_latents(cond, settings, seed=seed)
        return latents.reshape(len(cases), args.candidates, *latents.shape[1:]), time.perf_counter() - started

    reference = None
    if args.fidelity:
        # the first seed's start noise (the first draw of every sample call), for the first N candidates
        start = torch.randn((len(cases) * args.candidates, prior.shape.tokens, prior.shape.latent_dim),
                            generator=torch.Generator().manual_seed(seeds[0]))
        start = start.reshape(len(cases), args.candidates, *start.shape[1:])[:, : args.fidelity].flatten(0, 1)
        draws = iter([start])  # then zeros: DDIM at eta 0 draws a z every step and multiplies it by 0
        subset = cond.reshape(len(cases), args.candidates, -1)[:, : args.fidelity].flatten(0, 1)
        settings = prior.sampling(sampler="ddim", steps=None, guidance=guidance, eta=0.0)
        reference = prior.normalize_latents(
            prior.sample(prior.text_conditions(subset), settings, noise=lambda shape: next(draws, torch.zeros(shape))))

    def measure(sampler: str, steps: int, spacing: str, budget: int | None) -> dict:
        per_seed = []
        fidelity_rms = None
        for seed in seeds:
            latents, seconds = draw(sampler, steps, spacing, seed)
            per_seed.append({"seed": seed, **scores(cases, latents),
                             "seconds_per_16": seconds / len(cases) * 16 / args.candidates})
            if reference is not None and seed == seeds[0]:
                solved = prior.normalize_latents(latents[:, : args.fidelity].flatten(0, 1))
                fidelity_rms = float((solved - reference).pow(2).mean().sqrt())
        keys = [k for k in per_seed[0] if k != "seed"]
        row = {"sampler": sampler, "spacing": spacing, "nfe_budget": budget, "steps": steps,
               "nfe": evaluations(sampler, steps), **{k: statistics.median(r[k] for r in per_seed) for k in keys},
               "per_seed": per_seed}
        if fidelity_rms is not None:
            row["rms_to_ode"] = fidelity_rms
        return row

    ref_sampler, ref_steps, ref_spacing = (args.reference.split(":") + ["uniform"])[:3]
    ref = measure(ref_sampler, int(ref_steps), ref_spacing, None)
    rows = [ref]

    def report(row: dict) -> None:
        diffs = {k: [round(r[k] - q[k], 4) for r, q in zip(row["per_seed"], ref["per_seed"])]
                 for k in ("colour_shape", "all_named")}
        row["vs_reference"] = {k: {"median": statistics.median(v), "per_seed": v} for k, v in diffs.items()}
        print(f"{row['sampler']:9s} {row['spacing']:8s} {row['steps']:3d} steps ({row['nfe']:3d} NFE)  colour+shape "
              f"{row['colour_shape']:.3f} ({diffs['colour_shape']})  all named {row['all_named']:.3f} "
              f"({diffs['all_named']})  spread {row['spread']:.3f}  {row['seconds_per_16'] * 1000:6.1f} ms/16"
              + (f"  rms to ODE {row['rms_to_ode']:.3f}" if "rms_to_ode" in row else ""), flush=True)

    report(ref)
    for budget in (int(n) for n in args.nfe.split(",")):
        for sampler in samplers:
            for spacing in spacings:
                row = measure(sampler, steps_for(sampler, budget), spacing, budget)
                rows.append(row)
                report(row)
    result = {
        "command": "python bench/solvers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "checkpoint": os.path.relpath(Path(args.checkpoint).resolve(), REPO),
        "checkpoint_sha256": __import__("hashlib").sha256(Path(args.checkpoint).read_bytes()).hexdigest(),
        "checkpoint_step": pipeline.metadata.get("step"),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible (shared), {args.threads} torch thread(s), "
                   f"torch {torch.__version__}, Python {platform.python_version()}",
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "seconds": round(time.perf_counter() - started_all, 1),
        "prompts": args.prompts, "groups": {g: sum(c.group == g for c in cases) for g in SCORED_GROUPS},
        "candidates": args.candidates, "guidance": guidance, "seeds": seeds, "reference": args.reference,
        "fidelity_candidates": args.fidelity,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
