"""Accuracy and candidate spread of shapes-world priors at several sampler settings, on a prompt set, against a reference.

The tuning bench of the flow prior (docs/flow.md): it measures what ``bench/accuracy_time.py`` measures
(same prompts, scoring, seeds and start noise: it imports that script's ``World`` and ``accuracy``) but
without the timing, and with a guidance per method, so that guidance, solver and step count can be
chosen on ``shapes-tune`` and the held-out set kept for the final report. Per method and seed: 16
candidates per prompt, all prompts in one batch; *colour+shape* on the colour+shape prompts, *all
named* on the 3-5-attribute prompts, without re-ranking (every candidate counts) and re-ranked (the
best of 16 by CLIP score); *spread* is the candidates' standard deviation (mean over prompts and latent
numbers): accuracy without re-ranking rewards low variety, so read the two together. Medians over the
seeds; the difference to the reference row (default ``ddim:25``) is paired by seed.

Method specs: ``KIND:STEPS`` or ``KIND:STEPS@GUIDANCE`` (default guidance: ``--guidance``). Kinds:
``ddim``, ``ddpm``, ``dpmpp_2m``, ``heun`` (the diffusion checkpoint's samplers), ``flow-euler``,
``flow-midpoint``, ``flow-heun`` (the flow checkpoint's solvers) and ``student-euler`` etc. (the same
solvers on the ``--student`` checkpoint, e.g. a distilled flow prior).

    python bench/shapes_steps.py --flow runs/shapes-flow/best.safetensors \\
        --methods ddim:25@2,flow-euler:1@2,flow-euler:2@2,flow-euler:4@2,flow-euler:8@2,flow-midpoint:2@2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from accuracy_time import (
    DIFFUSION_SAMPLERS,
    FLOW_SOLVERS,
    SCORED_GROUPS,
    World,
    accuracy,
    diffusion_nfe,
    flow_nfe,
    latentmap_method,
    load_average,
    sha256,
)
from prompt_sets import load_prompt_set

KEYS = ("colour_shape", "all_named", "colour_shape_reranked", "all_named_reranked", "spread")


def parse_spec(spec: str, default_guidance: float) -> tuple[str, int, float]:
    """``KIND:STEPS[@GUIDANCE]`` -> (kind, steps, guidance)."""
    head, _, guidance = spec.partition("@")
    kind, _, steps = head.partition(":")
    if not steps.isdigit() or int(steps) < 1:
        raise SystemExit(f"method {spec!r}: expected KIND:STEPS[@GUIDANCE] with STEPS a positive integer")
    try:
        return kind, int(steps), float(guidance) if guidance else default_guidance
    except ValueError:
        raise SystemExit(f"method {spec!r}: guidance {guidance!r} is not a number") from None


def build(spec: str, default_guidance: float, pipelines: dict[str, Any]) -> Any:
    kind, steps, guidance = parse_spec(spec, default_guidance)
    if kind in DIFFUSION_SAMPLERS:
        method = latentmap_method(pipelines["diffusion"], kind, kind, steps, guidance, diffusion_nfe(kind, steps))
    else:
        family, _, solver = kind.partition("-")
        if family not in ("flow", "student") or solver not in FLOW_SOLVERS:
            raise SystemExit(f"unknown method kind {kind!r}; expected {', '.join(DIFFUSION_SAMPLERS)}, "
                             f"flow-{{{','.join(FLOW_SOLVERS)}}} or student-{{{','.join(FLOW_SOLVERS)}}}")
        if pipelines.get(family) is None:
            raise SystemExit(f"method {spec!r} needs --{family}")
        method = latentmap_method(pipelines[family], f"{family} {solver}", solver, steps, guidance, flow_nfe(solver, steps))
    method.name = f"{method.name} g{guidance:g}"
    return method


def sampling_seconds(methods: list[Any], world: World, rounds: int, candidates: int) -> list[float]:
    """Median seconds of each method's sampling of ``candidates`` latents for one prompt (the prior alone).

    One untimed warm-up each, then ``rounds`` rounds in which every method samples once, in an order
    that rotates each round, so that the shared machine's load falls on all of them alike.
    """
    import time

    cond = world.pipeline.embed_prompts([world.cases[0].text]).repeat(candidates, 1)
    for method in methods:
        method.sample(cond, 0)
    seconds: list[list[float]] = [[] for _ in methods]
    for r in range(rounds):
        order = list(range(len(methods)))
        order = order[r % len(order):] + order[: r % len(order)]
        for i in order:
            began = time.perf_counter()
            methods[i].sample(cond, r)
            seconds[i].append(time.perf_counter() - began)
    return [statistics.median(values) for values in seconds]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="shapes-tune", help="prompt set in bench/prompts (tune on shapes-tune only)")
    parser.add_argument("--diffusion", default=str(REPO / "runs" / "shapes" / "best.safetensors"),
                        help="diffusion checkpoint: its encoder, generator and space serve every method, and its samplers")
    parser.add_argument("--flow", default=str(REPO / "runs" / "shapes-flow" / "best.safetensors"))
    parser.add_argument("--student", default=None, help="a second flow checkpoint (e.g. distilled): methods student-*")
    parser.add_argument("--methods", default="ddim:25,flow-euler:1,flow-euler:2,flow-euler:4,flow-euler:8")
    parser.add_argument("--reference", default="ddim:25", help="the spec the others are compared with (must be in --methods)")
    parser.add_argument("--guidance", type=float, default=2.0, help="guidance of specs without @GUIDANCE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--timing-rounds", type=int, default=0,
                        help="also time the sampling alone (16 candidates of one prompt, no rendering or scoring): "
                             "rounds after a warm-up, methods interleaved, median")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    from latentmap.pipeline import load_pipeline

    load_before = load_average()
    pipelines: dict[str, Any] = {"diffusion": load_pipeline(args.diffusion, device="cpu")}
    for family in ("flow", "student"):
        path = getattr(args, family)
        pipelines[family] = load_pipeline(path, device="cpu") if path and Path(path).is_file() else None
    cases = [c for c in load_prompt_set(args.prompts) if c.group in SCORED_GROUPS]
    world = World(pipelines["diffusion"], cases, args.candidates)
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    reference = build(args.reference, args.guidance, pipelines).name
    rows: list[dict[str, Any]] = []
    for spec in specs:
        method = build(spec, args.guidance, pipelines)
        per_seed = []
        for seed in seeds:
            latents, scores = world.run(method, list(range(len(cases))), seed)
            per_seed.append({"seed": seed, **accuracy(cases, latents, scores)})
        row = {"method": method.name, "nfe": method.nfe,
               "checkpoint": os.path.relpath(Path(method.checkpoint).resolve(), REPO),
               **{k: statistics.median(r[k] for r in per_seed) for k in KEYS}, "per_seed": per_seed}
        rows.append(row)
        print(f"{row['method']:24s} nfe {row['nfe']:2d}  c+s {100 * row['colour_shape']:5.1f}  all {100 * row['all_named']:5.1f}"
              f"  re-ranked {100 * row['colour_shape_reranked']:5.1f} / {100 * row['all_named_reranked']:5.1f}"
              f"  spread {row['spread']:.2f}", flush=True)
    if args.timing_rounds > 0:
        methods = [build(spec, args.guidance, pipelines) for spec in specs]
        for row, seconds in zip(rows, sampling_seconds(methods, world, args.timing_rounds, args.candidates)):
            row["sampling_ms_per_16"] = round(1000 * seconds, 2)
            print(f"{row['method']:24s} sampling {1000 * seconds:.1f} ms / 16 candidates (median)")
    ref = next((r for r in rows if r["method"] == reference), None)
    print(f"\nprompts {args.prompts} ({len(cases)}), seeds {args.seeds}, {args.candidates} candidates; load "
          f"{load_before} -> {load_average()}")
    for name, pipeline in pipelines.items():
        if pipeline is not None:
            print(f"{name}: {os.path.relpath(Path(pipeline.checkpoint).resolve(), REPO)} sha256 "
                  f"{sha256(pipeline.checkpoint)[:12]} step {pipeline.metadata.get('step')}")
    timed = args.timing_rounds > 0
    print("\n| method | NFE | colour+shape | all named | Δ vs reference (c+s / all) | re-ranked (c+s / all) | spread |"
          + (" sampling ms / 16 |" if timed else ""))
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if timed else ""))
    for r in rows:
        delta = "-"
        if ref is not None:
            theirs = {s["seed"]: s for s in ref["per_seed"]}
            d = [statistics.median(100 * (s[k] - theirs[s["seed"]][k]) for s in r["per_seed"]) for k in ("colour_shape", "all_named")]
            delta = f"{d[0]:+.1f} / {d[1]:+.1f}"
        print(f"| {r['method']} | {r['nfe']} | {100 * r['colour_shape']:.1f} | {100 * r['all_named']:.1f} | {delta} "
              f"| {100 * r['colour_shape_reranked']:.1f} / {100 * r['all_named_reranked']:.1f} | {r['spread']:.2f} |"
              + (f" {r['sampling_ms_per_16']:.1f} |" if timed else ""))
    if args.out:
        args.out.write_text(json.dumps({"prompts": args.prompts, "seeds": seeds, "load_before": load_before,
                                        "load_after": load_average(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
