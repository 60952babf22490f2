"""Does the method work? Text-to-image accuracy in the shapes world, where the truth of every image is known.

Stages (each resumable: finished work in the cache folder or the results JSON is reused):

1. ``data``  -- one dataset of the shapes recipe (``latentmap build-data recipes/shapes.yaml``), built once;
2. ``train`` -- one prior per LAFITE noise level ``alpha`` at the recipe's size (``train.noise_alpha``),
   no validation, the final EMA weights (``last.safetensors``) are the ones evaluated: nothing is
   selected on the benchmark's prompts except "the best alpha" below, as the issue asks;
3. ``eval``  -- every setting below over the fixed prompt set of ``shapes_common`` (64 prompts),
   ``--candidates`` (16) text-conditioned samples per prompt, all prompts in one batched run (for
   accuracy, and its time divided by the prompts), plus ``--timing-prompts`` prompts run one at a
   time after a warm-up (seconds per prompt as the paper's timing script measures it):

   - ``random``: random latents (chance level; "with re-ranking" is CLIP picking the best of 16 random);
   - ``alpha=A``: the prior trained with noise level A, DDIM 25 steps, guidance 1;
   - ``best alpha, guidance G, steps S``: steps S in {4, 25, 250} at guidance 1, and guidance G in
     {1, 2, 4} at 25 steps (the best alpha is the one with the highest colour+shape accuracy
     without re-ranking; its own row is the 25-step, guidance-1 point of both sweeps);
   - ``optimise``: direct CLIP optimisation of each of the 16 candidates (random start, Adam, 300
     steps, ``latentmap.optimize``) -- the paper's baseline;
   - ``prior + optimise``: the same, started from the best prior's samples (``--refine-steps``).
   Optimisation costs ~100x the prior per prompt, so both run on every 7th prompt
   (``--optimise-stride``: 10 prompts, every shape and colour), and the best prior is measured
   again on exactly those prompts.

For each: colour+shape accuracy and all-named-attributes accuracy, without and with re-ranking
(best of the 16 by CLIP score), mean CLIP score, seconds per prompt. Results go to a JSON file that
``bench/shapes_report.py`` renders into docs/benchmarks.md and plots.

    python bench/shapes_benchmark.py                       # everything (hours on a shared 2-core CPU)
    python bench/shapes_benchmark.py --stage train --alphas 0,1.0
    python bench/shapes_benchmark.py --stage eval --only random,alpha   # groups: random,alpha,grid,direct,refine
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
from typing import Any, Callable

import torch
from einops import rearrange, repeat

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shapes_common import GROUPS, PromptCase, prompt_cases, summarise  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "shapes.yaml"
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
GUIDANCES = (1.0, 2.0, 4.0)
STEPS = (4, 25, 250)
GROUPS_OF_SETTINGS = ("random", "alpha", "grid", "direct", "refine")


# ------------------------------------------------------------------------------------------------
# data and training


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides every stage shares: the cached dataset and the encoder."""
    overrides = [f"data.dir={args.cache / 'data'}", f"data.samples={args.samples}"]
    if args.encoder:
        overrides.append(f"encoder.name={args.encoder}")
    return overrides


def build_data(args: argparse.Namespace) -> dict[str, Any]:
    """Build (or verify and reuse) the benchmark dataset; returns its manifest summary."""
    from latentmap.cli import cli

    started = time.perf_counter()
    argv = ["build-data", str(RECIPE), *sum((["--set", o] for o in recipe_overrides(args)), [])]
    try:
        cli.main(argv, standalone_mode=False)
    except SystemExit as exc:  # pragma: no cover - click exits on errors
        if exc.code:
            raise
    manifest = json.loads((args.cache / "data" / "manifest.json").read_text())
    return {"samples": manifest.get("samples"), "seconds_this_run": round(time.perf_counter() - started, 1)}


def prior_dir(args: argparse.Namespace, alpha: float) -> Path:
    return args.cache / f"prior-alpha{alpha:g}-steps{args.train_steps}"


def train_prior(args: argparse.Namespace, alpha: float) -> dict[str, Any]:
    """Train (or resume, or reuse) the prior for noise level ``alpha``; returns its training summary."""
    from latentmap.recipe import load_recipe
    from latentmap.train import train
    from latentmap.training.state import latest_state

    out = prior_dir(args, alpha)
    summary_file = out / "bench-summary.json"
    if summary_file.is_file() and (out / "last.safetensors").is_file():
        return json.loads(summary_file.read_text())
    overrides = [*recipe_overrides(args), f"train.out={out}", f"train.noise_alpha={alpha}",
                 f"train.steps={args.train_steps}", "train.device=cpu", "train.tensorboard=false"]
    recipe = load_recipe(RECIPE, overrides)
    resume = latest_state(out / "states") is not None
    started = time.perf_counter()
    result = train(recipe, resume=resume, validation=False, progress=not args.quiet)
    summary = {"alpha": alpha, "steps": result.steps, "final_loss": result.final_loss,
               "seconds": round(time.perf_counter() - started, 1), "resumed": resume}
    summary_file.write_text(json.dumps(summary, indent=2))
    return summary


# ------------------------------------------------------------------------------------------------
# evaluation


class World:
    """The generator and encoder every setting shares, the prompts and their raw text embeddings."""

    def __init__(self, args: argparse.Namespace, cases: list[PromptCase]) -> None:
        import latentmap

        self.cases = cases
        self.generator = latentmap.get_generator("shapes")
        self.encoder = latentmap.get_encoder(args.encoder or "shapes-clip")
        self.text = self.encoder.embed_text([case.text for case in cases]).float()

    def subset(self, stride: int) -> "World":
        """The same models on every ``stride``-th prompt."""
        part = object.__new__(World)
        part.cases, part.generator, part.encoder = self.cases[::stride], self.generator, self.encoder
        part.text = self.text[::stride]
        return part

    def render_scores(self, latents: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """CLIP scores (P, C) of latents (P, C, tokens, dim) rendered, against raw text embeddings (P, D)."""
        from latentmap.scoring import image_text_scores

        candidates = latents.shape[1]
        flat = rearrange(latents, "p c t d -> (p c) t d")
        with torch.no_grad():
            images = torch.cat([self.generator.synthesize(chunk) for chunk in flat.split(256)])
        unit = repeat(torch.nn.functional.normalize(targets, dim=-1), "p d -> (p c) d", c=candidates)
        return rearrange(image_text_scores(self.encoder, images, unit, batch_size=256), "(p c) -> p c", c=candidates)


# A method maps (world, prompt indices, seed) -> (latents (P, C, tokens, dim), CLIP scores (P, C)).
Method = Callable[[World, list[int], int], tuple[torch.Tensor, torch.Tensor]]


def measure(world: World, method: Method, args: argparse.Namespace, label: str, *, timing: bool) -> dict[str, Any]:
    """Accuracy and CLIP scores of ``method`` over every prompt, and its time per prompt.

    Accuracy comes from one batched run over all prompts (seed ``args.seed``). Time per prompt is
    reported two ways: the batched run's total divided by the prompts, and (``timing=True``) the
    median over ``--timing-prompts`` prompts run one at a time after a warm-up, like the paper's
    timing script; both include text embedding, sampling, rendering and scoring 16 candidates.
    """
    indices = list(range(len(world.cases)))
    result: dict[str, Any] = {}
    if timing:
        chosen = indices[:: max(1, len(indices) // args.timing_prompts)][: args.timing_prompts]
        method(world, chosen[:1], args.seed)  # warm-up
        seconds = []
        for p in chosen:
            started = time.perf_counter()
            method(world, [p], args.seed + p)
            seconds.append(time.perf_counter() - started)
        result["seconds_per_prompt_single"] = statistics.median(seconds)
    if not args.quiet:
        print(f"    {label}: batched run over {len(indices)} prompts", flush=True)
    started = time.perf_counter()
    latents, scores = method(world, indices, args.seed)
    result["seconds_per_prompt"] = (time.perf_counter() - started) / len(indices)
    return {**summarise(world.cases, latents.cpu(), scores.cpu()), **result}


def random_method(args: argparse.Namespace) -> Method:
    def run(world: World, indices: list[int], seed: int):
        rng = torch.Generator().manual_seed(seed)
        latents = world.generator.sample_latents(len(indices) * args.candidates, generator=rng)
        latents = rearrange(latents, "(p c) t d -> p c t d", c=args.candidates)
        text = world.encoder.embed_text([world.cases[p].text for p in indices]).float()  # as every method does
        return latents, world.render_scores(latents, text)

    return run


def prior_method(args: argparse.Namespace, checkpoint: Path, *, steps: int, guidance: float) -> Method:
    from latentmap.pipeline import load_pipeline
    from latentmap.sample import sample_from_conditions

    pipeline = load_pipeline(checkpoint, device="cpu")
    settings = pipeline.settings(steps=steps, sampler="ddim", guidance=guidance, truncation=1.0)

    def run(world: World, indices: list[int], seed: int):
        texts = [world.cases[p].text for p in indices]
        cond = pipeline.embed_prompts(texts)
        result = sample_from_conditions(pipeline, cond, cond, texts, candidates=args.candidates, keep=1,
                                        settings=settings, seed=seed, batch_size=256, keep_images=False,
                                        keep_candidates=True, progress=False)
        return result.candidate_per_layer, result.candidate_scores

    return run


def optimise_method(args: argparse.Namespace, *, steps: int, init: str, checkpoint: Path | None = None) -> Method:
    from latentmap.optimize import OptimizeSettings, optimize
    from latentmap.pipeline import load_pipeline

    pipeline = load_pipeline(checkpoint, device="cpu") if init == "prior" else None
    settings = OptimizeSettings(steps=steps, lr=args.optimise_lr, init=init)
    sampler = pipeline.settings(steps=25, sampler="ddim", guidance=1.0) if pipeline is not None else None

    def run(world: World, indices: list[int], seed: int):
        texts = [world.cases[p].text for p in indices]
        result = optimize(world.generator, world.encoder, texts, settings=settings, candidates=args.candidates,
                          keep=args.candidates, seed=seed, pipeline=pipeline, sampler=sampler, batch_size=128,
                          keep_images=False, progress=not args.quiet)
        # keep=candidates returns every candidate, best first: put them back in generation order
        order = result.kept.argsort(dim=1)
        latents = torch.stack([result.latents[p][order[p]] for p in range(len(indices))])
        return latents, result.candidate_scores

    return run


# ------------------------------------------------------------------------------------------------
# driver


def machine() -> str:
    return (f"{platform.machine()} CPU ({os.cpu_count()} cores visible, shared), {torch.get_num_threads()} torch "
            f"thread(s), torch {torch.__version__}, Python {platform.python_version()}")


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"settings": {}, "training": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results``, merged into what the file holds now (other processes may have added settings)."""
    current = load_results(path)
    merged = {**current, **{k: v for k, v in results.items() if k not in ("settings", "training", "commands")}}
    merged["settings"] = {**current.get("settings", {}), **results.get("settings", {})}
    merged["training"] = {**current.get("training", {}), **results.get("training", {})}
    merged["commands"] = list(dict.fromkeys([*current.get("commands", []), *results.get("commands", [])]))
    results.update(merged)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(merged, indent=2) + "\n")
    temporary.replace(path)


def best_alpha(results: dict[str, Any], alphas: tuple[float, ...]) -> float:
    """The alpha whose prior has the highest colour+shape accuracy without re-ranking (ties: smaller)."""
    scored = [(results["settings"][f"alpha={a:g}"]["colour_shape"], -a, a) for a in alphas
              if f"alpha={a:g}" in results["settings"]]
    if not scored:
        raise SystemExit("no alpha setting evaluated yet: run --stage eval --only alpha first")
    return max(scored)[2]


def evaluate(args: argparse.Namespace, results: dict[str, Any]) -> None:
    cases = prompt_cases(GROUPS)[:: args.stride]
    world = World(args, cases)
    only = set(args.only.split(",")) if args.only else set(GROUPS_OF_SETTINGS)
    if only - set(GROUPS_OF_SETTINGS):
        raise SystemExit(f"--only takes some of {','.join(GROUPS_OF_SETTINGS)}")

    def record(name: str, info: dict[str, Any], run: Callable[[], dict[str, Any]]) -> None:
        if name in results["settings"] and not args.force:
            return
        print(f"--- {name}", flush=True)
        metrics = run()
        results["settings"][name] = {**info, **metrics}
        save_results(args.results, results)
        print(f"    colour+shape {metrics['colour_shape']:.3f} (re-ranked {metrics['colour_shape_reranked']:.3f}), "
              f"all named {metrics['all_named']:.3f} (re-ranked {metrics['all_named_reranked']:.3f}), "
              f"{metrics['seconds_per_prompt']:.3f} s/prompt", flush=True)

    if "random" in only:
        record("random", {"kind": "random"}, lambda: measure(world, random_method(args), args, "random", timing=True))
    if "alpha" in only:
        for alpha in args.alphas:
            checkpoint = prior_dir(args, alpha) / "last.safetensors"
            if not checkpoint.is_file():
                print(f"    (no prior for alpha={alpha:g} yet; skipped)")
                continue
            record(f"alpha={alpha:g}", {"kind": "prior", "alpha": alpha, "steps": 25, "guidance": 1.0},
                   lambda: measure(world, prior_method(args, checkpoint, steps=25, guidance=1.0), args,
                                   f"alpha={alpha:g}", timing=True))
    if {"grid", "refine"} & only:
        alpha = best_alpha(results, args.alphas)
        results["best_alpha"] = alpha
        checkpoint = prior_dir(args, alpha) / "last.safetensors"
    if "grid" in only:
        # two sweeps from the best alpha's default (DDIM 25 steps, guidance 1, which is its alpha row):
        # steps at guidance 1, and guidance at 25 steps
        base = results["settings"][f"alpha={alpha:g}"]
        for steps, guidance in [(s, 1.0) for s in STEPS] + [(25, g) for g in GUIDANCES if g != 1.0]:
            name = f"best alpha, guidance {guidance:g}, steps {steps}"
            info = {"kind": "prior", "alpha": alpha, "steps": steps, "guidance": guidance}
            if (steps, guidance) == (25, 1.0):
                results["settings"][name] = {**base, **info}
                continue
            record(name, info, lambda: measure(world, prior_method(args, checkpoint, steps=steps, guidance=guidance),
                                               args, f"g{guidance:g} s{steps}", timing=True))
    # optimisation costs ~100x the prior per prompt: it runs on every n-th prompt (--optimise-stride),
    # and the prior is re-measured on exactly those prompts for the comparison
    subset = world.subset(args.optimise_stride)
    prompts = len(subset.cases)
    if "direct" in only:
        record(f"optimise {args.optimise_steps}",
               {"kind": "optimise", "init": "random", "optimise_steps": args.optimise_steps, "lr": args.optimise_lr,
                "prompts": prompts},
               lambda: measure(subset, optimise_method(args, steps=args.optimise_steps, init="random"), args,
                               "optimise", timing=False))
    if "refine" in only:
        record("prior, optimisation prompts",
               {"kind": "prior", "alpha": alpha, "steps": 25, "guidance": 1.0, "prompts": prompts},
               lambda: measure(subset, prior_method(args, checkpoint, steps=25, guidance=1.0), args,
                               "prior (subset)", timing=False))
        record(f"prior + optimise {args.refine_steps}",
               {"kind": "prior+optimise", "init": "prior", "alpha": alpha, "optimise_steps": args.refine_steps,
                "lr": args.optimise_lr, "prompts": prompts},
               lambda: measure(subset, optimise_method(args, steps=args.refine_steps, init="prior",
                                                       checkpoint=checkpoint), args, "prior+optimise", timing=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("data", "train", "eval", "all"), default="all")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/latentmap-shapes-bench"),
                        help="dataset and priors (reused between runs)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "shapes.json")
    parser.add_argument("--encoder", default=None, help="encoder spec (default: the shipped shapes-clip)")
    parser.add_argument("--samples", type=int, default=50_000, help="dataset size")
    parser.add_argument("--train-steps", type=int, default=2000, help="training steps per prior (recipe: 2000)")
    parser.add_argument("--alphas", type=lambda s: tuple(float(a) for a in s.split(",")), default=ALPHAS)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--optimise-steps", type=int, default=300)
    parser.add_argument("--optimise-stride", type=int, default=7,
                        help="optimisation settings run on every n-th prompt (they cost ~100x the prior's)")
    parser.add_argument("--refine-steps", type=int, default=50, help="optimisation steps after the prior")
    parser.add_argument("--optimise-lr", type=float, default=0.05)
    parser.add_argument("--only", default=None, help="eval only these groups of settings: " + ",".join(GROUPS_OF_SETTINGS))
    parser.add_argument("--force", action="store_true", help="re-run settings already in the results file")
    parser.add_argument("--timing-prompts", type=int, default=4, help="prompts timed one at a time per setting")
    parser.add_argument("--stride", type=int, default=1, help="every n-th prompt only (quick trial runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = load_results(args.results)
    results["machine"] = machine()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    results.setdefault("commands", [])
    if command not in results["commands"]:
        results["commands"].append(command)
    results["config"] = {"samples": args.samples, "train_steps": args.train_steps, "candidates": args.candidates,
                         "encoder": args.encoder or "shapes-clip", "seed": args.seed,
                         "prompts": len(prompt_cases(GROUPS)[:: args.stride]), "optimise_lr": args.optimise_lr,
                         "optimise_stride": args.optimise_stride}
    if args.stage in ("data", "all"):
        results["dataset"] = build_data(args)
        if args.stage == "all":
            save_results(args.results, results)
    if args.stage in ("train", "all"):
        # summaries live next to each prior (so trainings may run in parallel processes)
        for alpha in args.alphas:
            print(f"--- training the prior for alpha={alpha:g}", flush=True)
            train_prior(args, alpha)
    if args.stage in ("eval", "all"):
        manifest = json.loads((args.cache / "data" / "manifest.json").read_text())
        results["dataset"] = {"samples": manifest.get("samples"), "encoder": manifest.get("encoder")}
        for alpha in args.alphas:
            summary = prior_dir(args, alpha) / "bench-summary.json"
            if summary.is_file():
                results["training"][f"{alpha:g}"] = json.loads(summary.read_text())
        evaluate(args, results)
        save_results(args.results, results)


if __name__ == "__main__":
    main()
