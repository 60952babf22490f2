"""Does the method work? Text-to-image accuracy in the shapes world, where the truth of every image is known.

Stages (each resumable: finished work in the cache folder or the results JSON is reused):

1. ``data``  -- one dataset of the shapes recipe (``latentmap build-data recipes/shapes.yaml``), built once;
2. ``train`` -- one prior per LAFITE noise level ``alpha`` at the recipe's size (``train.noise_alpha``),
   no validation, the final EMA weights (``last.safetensors``) are the ones evaluated: nothing is
   selected on the benchmark's prompts except "the best alpha" below, as the issue asks;
3. ``eval``  -- every setting below over the fixed prompt set of ``shapes_common`` (64 prompts),
   ``--candidates`` (16) text-conditioned samples per prompt, one prompt at a time (so seconds per
   prompt are comparable across methods, as in the paper's timing script):

   - ``random``: random latents (chance level; "with re-ranking" is CLIP picking the best of 16 random);
   - ``alpha=A``: the prior trained with noise level A, DDIM 25 steps, guidance 1;
   - ``best alpha, guidance G, steps S``: G in {1, 2, 4}, S in {4, 25, 250} (the best alpha is the
     one with the highest colour+shape accuracy without re-ranking);
   - ``optimise``: direct CLIP optimisation of each of the 16 candidates (random start, Adam, 300
     steps, ``latentmap.optimize``) -- the paper's baseline;
   - ``prior + optimise``: the same, started from the best prior's samples (``--refine-steps``).

For each: colour+shape accuracy and all-named-attributes accuracy, without and with re-ranking
(best of the 16 by CLIP score), mean CLIP score, seconds per prompt. Results go to a JSON file that
``bench/shapes_report.py`` renders into docs/benchmarks.md and plots.

    python bench/shapes_benchmark.py                       # everything (hours on a shared 2-core CPU)
    python bench/shapes_benchmark.py --stage train --alphas 0,1.0
    python bench/shapes_benchmark.py --stage eval --only random,alpha
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
    """The generator and encoder every setting shares, and the prompts' text embeddings."""

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

    def render_scores(self, latents: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CLIP scores (N,) of latents (N, tokens, dim) rendered, against one raw text embedding (D,)."""
        from latentmap.scoring import image_text_scores

        with torch.no_grad():
            images = self.generator.synthesize(latents)
        targets = repeat(torch.nn.functional.normalize(target, dim=-1), "d -> n d", n=latents.shape[0])
        return image_text_scores(self.encoder, images, targets)


def run_per_prompt(world: World, one_prompt: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                   label: str, quiet: bool) -> dict[str, Any]:
    """Call ``one_prompt(p) -> (latents (C, tokens, dim), scores (C,))`` for every prompt, timing each.

    The first prompt is run once untimed first (warm-up), as the paper's timing script does.
    """
    from tqdm.auto import tqdm

    one_prompt(0)
    latents, scores, seconds = [], [], []
    for p in tqdm(range(len(world.cases)), desc=label, unit="prompt", disable=quiet, leave=False):
        started = time.perf_counter()
        z, s = one_prompt(p)
        seconds.append(time.perf_counter() - started)
        latents.append(z.cpu())
        scores.append(s.cpu())
    result = summarise(world.cases, torch.stack(latents), torch.stack(scores))
    result["seconds_per_prompt"] = statistics.median(seconds)
    result["seconds_per_prompt_mean"] = statistics.fmean(seconds)
    return result


def random_setting(world: World, args: argparse.Namespace) -> dict[str, Any]:
    def one(p: int):
        rng = torch.Generator().manual_seed(args.seed + p)
        latents = world.generator.sample_latents(args.candidates, generator=rng)
        return latents, world.render_scores(latents, world.text[p])

    return run_per_prompt(world, one, "random", args.quiet)


def prior_setting(world: World, args: argparse.Namespace, checkpoint: Path, *, steps: int, guidance: float,
                  label: str) -> dict[str, Any]:
    from latentmap.pipeline import SamplerSettings, load_pipeline
    from latentmap.sample import sample_from_conditions

    pipeline = load_pipeline(checkpoint, device="cpu", encoder_options=_encoder_options(args))
    settings = SamplerSettings(steps=steps, sampler="ddim", guidance=guidance, truncation=1.0)

    def one(p: int):
        case = world.cases[p]
        cond = pipeline.embed_prompts([case.text])
        result = sample_from_conditions(pipeline, cond, cond, [case.text], candidates=args.candidates, keep=1,
                                        settings=settings, seed=args.seed + p, batch_size=args.candidates,
                                        keep_images=False, keep_candidates=True, progress=False)
        return result.candidate_per_layer[0], result.candidate_scores[0]

    return run_per_prompt(world, one, label, args.quiet)


def optimise_setting(world: World, args: argparse.Namespace, *, steps: int, init: str, label: str,
                     checkpoint: Path | None = None) -> dict[str, Any]:
    from latentmap.optimize import OptimizeSettings, optimize
    from latentmap.pipeline import SamplerSettings, load_pipeline

    pipeline = None
    if init == "prior":
        pipeline = load_pipeline(checkpoint, device="cpu", encoder_options=_encoder_options(args))
    settings = OptimizeSettings(steps=steps, lr=args.optimise_lr, init=init)
    sampler = SamplerSettings(steps=25, sampler="ddim", guidance=1.0)

    def one(p: int):
        case = world.cases[p]
        result = optimize(world.generator, world.encoder, [case.text], settings=settings,
                          candidates=args.candidates, keep=args.candidates, seed=args.seed + p, pipeline=pipeline,
                          sampler=sampler, batch_size=args.candidates, keep_images=False, progress=False)
        # keep=candidates returns every candidate, best first; re-order into generation order
        order = result.kept[0].argsort()
        return result.latents[0][order], result.candidate_scores[0]

    return run_per_prompt(world, one, label, args.quiet)


def _encoder_options(args: argparse.Namespace) -> dict[str, Any] | None:
    # the checkpoint records the encoder it was trained with (incl. a custom weights file)
    return None


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
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
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
    only = set(args.only.split(",")) if args.only else {"random", "alpha", "grid", "optimise"}

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
        record("random", {"kind": "random"}, lambda: random_setting(world, args))
    if "alpha" in only:
        for alpha in args.alphas:
            checkpoint = prior_dir(args, alpha) / "last.safetensors"
            if not checkpoint.is_file():
                print(f"    (no prior for alpha={alpha:g} yet; skipped)")
                continue
            record(f"alpha={alpha:g}", {"kind": "prior", "alpha": alpha, "steps": 25, "guidance": 1.0},
                   lambda: prior_setting(world, args, checkpoint, steps=25, guidance=1.0, label=f"alpha={alpha:g}"))
    if {"grid", "optimise"} & only:
        alpha = best_alpha(results, args.alphas)
        results["best_alpha"] = alpha
        checkpoint = prior_dir(args, alpha) / "last.safetensors"
    if "grid" in only:
        for guidance in GUIDANCES:
            for steps in STEPS:
                record(f"best alpha, guidance {guidance:g}, steps {steps}",
                       {"kind": "prior", "alpha": alpha, "steps": steps, "guidance": guidance},
                       lambda: prior_setting(world, args, checkpoint, steps=steps, guidance=guidance,
                                             label=f"g{guidance:g} s{steps}"))
    if "optimise" in only:
        # optimisation costs ~100x the prior per prompt: it runs on every n-th prompt (--optimise-stride),
        # and the prior is re-measured on exactly those prompts for the comparison
        subset = world.subset(args.optimise_stride)
        prompts = len(subset.cases)
        record("prior, optimisation prompts",
               {"kind": "prior", "alpha": alpha, "steps": 25, "guidance": 1.0, "prompts": prompts},
               lambda: prior_setting(subset, args, checkpoint, steps=25, guidance=1.0, label="prior (subset)"))
        record(f"optimise {args.optimise_steps}",
               {"kind": "optimise", "init": "random", "optimise_steps": args.optimise_steps, "lr": args.optimise_lr,
                "prompts": prompts},
               lambda: optimise_setting(subset, args, steps=args.optimise_steps, init="random", label="optimise"))
        record(f"prior + optimise {args.refine_steps}",
               {"kind": "prior+optimise", "init": "prior", "alpha": alpha, "optimise_steps": args.refine_steps,
                "lr": args.optimise_lr, "prompts": prompts},
               lambda: optimise_setting(subset, args, steps=args.refine_steps, init="prior", checkpoint=checkpoint,
                                        label="prior+optimise"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("data", "train", "eval", "all"), default="all")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/latentmap-shapes-bench"),
                        help="dataset and priors (reused between runs)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "shapes.json")
    parser.add_argument("--encoder", default=None, help="encoder spec (default: the shipped shapes-clip)")
    parser.add_argument("--samples", type=int, default=50_000, help="dataset size")
    parser.add_argument("--train-steps", type=int, default=3000, help="training steps per prior (recipe: 3000)")
    parser.add_argument("--alphas", type=lambda s: tuple(float(a) for a in s.split(",")), default=ALPHAS)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--optimise-steps", type=int, default=300)
    parser.add_argument("--optimise-stride", type=int, default=4,
                        help="optimisation settings run on every n-th prompt (they cost ~100x the prior's)")
    parser.add_argument("--refine-steps", type=int, default=50, help="optimisation steps after the prior")
    parser.add_argument("--optimise-lr", type=float, default=0.05)
    parser.add_argument("--only", default=None, help="eval only these groups: random,alpha,grid,optimise")
    parser.add_argument("--force", action="store_true", help="re-run settings already in the results file")
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
