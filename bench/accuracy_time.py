"""Accuracy against wall time per 16 candidates in the shapes world, for every sampler (issue 16).

For each method (a sampler at a step count, the flow prior, clip2latent's own respaced sampler,
direct optimisation) on a prompt set whose truth is stored with every prompt
(``bench/prompts/shapes-heldout.jsonl``, read by ``bench/prompt_sets.py``):

- **accuracy**, scored from the latents' ground truth (``latentmap_shapes.decode_attributes``), of
  16 candidates per prompt, all prompts in one batched run per seed, medians over the seeds:
  *colour+shape* on the prompts that name a colour and a shape only (group ``colour+shape``) and
  *all named* on the prompts naming 3 to 5 attributes (group ``3-5``), each without re-ranking
  (every candidate counts) and with it (the candidate the CLIP score ranks first);
- **seconds per 16 candidates**: one prompt at a time, the whole path a user waits for (text
  embedding, sampling, rendering, CLIP scoring of the 16, picking the best), after one untimed
  warm-up per method, methods interleaved round by round in this one process so that the shared
  machine's load falls on all of them alike; the median over rounds. The load average is recorded.

Every seed gives every diffusion sampler the same start noise (``torch.Generator`` seeded with the
seed, which is also the global generator's stream clip2latent draws from); the flow prior's start
noise comes from the same seed.

clip2latent's sampler is the real one when this runs under the peers' virtualenv
(``bench/.peers/bin/python``, made by ``bash bench/peers/setup.sh``): clip2latent 1.0's
``LatentPrior`` (``set_timestep_skip`` + its ``p_sample_loop`` over DALLE2-pytorch 0.2.38's
``p_sample``) holding the diffusion checkpoint's weights (latentmap's importer key table run
backwards, as ``bench/peers/dalle2_weights.py`` does).
The shapes prior's latents (8-d) and conditions (64-d) are narrower than its transformer
(128-d), so the peer's ``WPlusPriorNetwork`` runs between the checkpoint's own in/out projections
(``ProjectedNetwork`` in :func:`peer_latent_prior`; clip2latent's 512-d models need none). Without the peers, latentmap's
re-implementation (sampler ``clip2latent``) stands in and the JSON says so (``clip2latent_peer``).

    bench/.peers/bin/python bench/accuracy_time.py                 # everything (~80 min at load 3-7 on the 2-core CPU)
    bench/.peers/bin/python bench/accuracy_time.py --report-only   # table + plot from the JSON
    python bench/accuracy_time.py --methods ddim:25,dpmpp_2m:4 --seeds 0 --prompts my.jsonl --out /tmp/x.json

Method specs: ``ddim:S``, ``dpmpp_2m:S``, ``heun:S``, ``ddpm:S`` (diffusion samplers at S steps;
``dpmpp_2m:4:logsnr`` etc. with a timestep spacing of ``latentmap.prior.schedule.SPACINGS``, named
``dpmpp_2m logsnr 4``; none or ``uniform``: evenly spread in t, as in the reference ``ddim 25``),
``clip2latent:S`` (S must divide the model's timesteps), ``flow-euler:S``, ``flow-heun:S``,
``flow-midpoint:S`` (the flow prior's solvers), ``distilled-euler:S`` etc. (the same solvers on the
``--flow-distilled`` checkpoint, at guidance 1: a distilled student learned its teacher's guided
solution) and ``optimise:S`` (S Adam steps on the latent
against the CLIP score from random starts, on every ``--optimise-stride``-th prompt, seeds
``--optimise-seeds``: it costs ~100x a sampler).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from prompt_sets import PromptCase, load_prompt_set

DEFAULT_METHODS = (
    "clip2latent:4,clip2latent:8,clip2latent:25,"
    "ddim:4,ddim:8,ddim:25,"
    "dpmpp_2m:2,dpmpp_2m:4,dpmpp_2m:8,dpmpp_2m:25,"
    "ddim:4:trailing,dpmpp_2m:4:trailing,dpmpp_2m:4:logsnr,dpmpp_2m:8:logsnr,"
    "heun:3,heun:5,"
    "flow-euler:1,flow-euler:2,flow-euler:4,flow-euler:8,flow-midpoint:2,flow-heun:3,"
    "distilled-euler:1,distilled-euler:2,"
    "optimise:300"
)  # slow references on request: ddim:250, clip2latent:50, clip2latent:100 (--long-nfe: on --long-seeds only)
DIFFUSION_SAMPLERS = ("ddim", "ddpm", "dpmpp_2m", "heun")
FLOW_SOLVERS = ("euler", "heun", "midpoint")
SCORED_GROUPS = ("colour+shape", "3-5")  # colour+shape accuracy on the first, all-named on the second
REFERENCE = "ddim 25"
RESULTS = BENCH / "results" / "accuracy_time.json"
PLOT = REPO / "docs" / "img" / "accuracy_time.png"
HEADING = "## Accuracy against time"

# A sampling method maps (conditions (N, D) raw text embeddings, seed) -> latents (N, tokens, dim).
SampleFn = Callable[[Tensor, int], Tensor]


# ------------------------------------------------------------------------------------------------ methods


@dataclass
class Method:
    """One point of the benchmark: how it samples, its network evaluations and the checkpoint it uses."""

    name: str  # "ddim 25", "flow euler 4", "clip2latent 25", "optimise 300"
    family: str  # the line it belongs to in the plot
    steps: int
    nfe: int  # guided network evaluations per sample (optimisation: generator+CLIP passes)
    checkpoint: str | None
    sample: SampleFn | None = None  # None: optimisation, which has its own path
    notes: dict[str, Any] = field(default_factory=dict)


def diffusion_nfe(sampler: str, steps: int) -> int:
    """Network evaluations of a diffusion sampler (Heun: two a step, one at the first and last)."""
    return max(1, 2 * steps - 2) if sampler == "heun" else steps


def flow_nfe(solver: str, steps: int) -> int:
    """Velocity evaluations of a flow solver (midpoint: two a step; Heun: two a step, the last one)."""
    return {"euler": steps, "midpoint": 2 * steps, "heun": 2 * steps - 1}[solver]


def latentmap_method(pipeline: Any, family: str, sampler: str, steps: int, guidance: float, nfe: int,
                     spacing: str | None = None) -> Method:
    """A sampler of the checkpoint's own prior (diffusion or flow), through the pipeline users call.

    ``spacing`` (diffusion only): where the steps fall (``latentmap.prior.schedule.SPACINGS``); None: the default.
    """
    placement = {} if spacing is None else {"spacing": spacing}
    settings = pipeline.settings(steps=steps, sampler=sampler, guidance=guidance, truncation=1.0, **placement)

    def sample(cond: Tensor, seed: int) -> Tensor:
        return pipeline.sample_latents(cond, settings, seed=seed)

    return Method(f"{family} {steps}", family, steps, nfe, pipeline.checkpoint, sample)


class Clip2latentPeer:
    """clip2latent 1.0's ``LatentPrior`` holding a latentmap diffusion prior's weights (peers' virtualenv only)."""

    def __init__(self, prior: Any) -> None:
        self.prior = prior
        self.model = peer_latent_prior(prior)
        self.timesteps = prior.options.timesteps

    def sample(self, cond: Tensor, seed: int, steps: int, guidance: float, normalize_cond: bool) -> Tensor:
        """clip2latent's own sampling call: ``set_timestep_skip`` then ``LatentPrior.sample`` (global RNG seeded).

        The conditions are prepared as the checkpoint's prior prepares text (its modality-gap correction,
        if its recipe has one, and unit length if ``normalize_cond``): part of the trained model, which
        clip2latent has no option for.
        """
        self.model.set_timestep_skip(self.timesteps // steps)
        if hasattr(self.prior, "text_conditions"):
            cond = self.prior.text_conditions(cond)
        embed = F.normalize(cond, dim=-1) if normalize_cond else cond.clone()  # sample() scales it in place
        torch.manual_seed(seed)  # clip2latent draws from the global generator: same stream as Generator(seed)
        return self.model.sample(embed, cond_scale=guidance, show_progress=False)


def peer_latent_prior(prior: Any) -> torch.nn.Module:
    """clip2latent's ``LatentPrior`` (DALLE2's causal transformer) with ``prior``'s weights, buffers and projections.

    The transformer's weights go through latentmap's importer key table run backwards
    (``dalle2_state_dict``, as ``bench/peers/dalle2_weights.py`` does for equal widths); the in/out
    projections a narrower latent or condition needs go to ``ProjectedNetwork``, around the peer's network.
    """
    from clip2latent.latent_prior import LatentPrior, WPlusPriorNetwork

    from latentmap.prior.clip2latent import dalle2_state_dict

    o, s = prior.options, prior.shape
    projections = {k: v for k, v in prior.state_dict().items() if k.startswith(("net.latent_in.", "net.latent_out.", "net.cond_in."))}
    state = prior.state_dict()
    condition_statistics = {k for k in state if k.startswith("cond_")}  # text correction: applied before the peer
    transformer_only = SimpleNamespace(shape=s, options=o, state_dict=lambda: {
        k: v for k, v in state.items() if k not in projections and k not in condition_statistics})
    weights = dalle2_state_dict(transformer_only, latent_stats=True)  # type: ignore[arg-type]

    class ProjectedNetwork(WPlusPriorNetwork):
        """clip2latent's w+ network between the checkpoint's projections: latent -> dim -> latent, condition -> dim."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.latent_in = torch.nn.Linear(s.latent_dim, o.dim, bias=False)
            self.latent_out = torch.nn.Linear(o.dim, s.latent_dim, bias=False)
            self.cond_in = torch.nn.Linear(s.cond_dim, o.dim, bias=False)

        def forward(self, image_embed: Tensor, diffusion_timesteps: Tensor, *, text_embed: Tensor, **kwargs: Any) -> Tensor:
            hidden = super().forward(self.latent_in(image_embed), diffusion_timesteps,
                                     text_embed=self.cond_in(text_embed), **kwargs)
            return self.latent_out(hidden)

    if s.tokens < 2:
        raise ValueError("the shapes world's prior has 3 latent tokens; a 1-token prior needs DALLE2's own network")
    net = ProjectedNetwork(dim=o.dim, num_timesteps=o.timesteps, n_latents=s.tokens, depth=o.depth,
                           dim_head=o.dim_head, heads=o.heads, ff_mult=o.ff_mult)
    peer = LatentPrior(net, image_embed_dim=s.latent_dim, timesteps=o.timesteps, cond_drop_prob=o.cond_drop_prob,
                       predict_x_start=o.objective == "x0", beta_schedule=o.schedule, condition_on_text_encodings=False,
                       image_embed_scale=1.0, num_latents=s.tokens, latent_repeats=(1,) * s.tokens,
                       latent_stats=(prior.latent_mean.detach().cpu(), prior.latent_std.detach().cpu()))
    for name, value in projections.items():
        weights[name] = value.detach().clone()
    for name in ("latent_in", "latent_out", "cond_in"):  # identity projections (equal widths) are not weights
        if f"net.{name}.weight" not in weights:
            setattr(net, name, torch.nn.Identity())
    peer.load_state_dict(weights, strict=True)
    return peer.eval()


def peer_parity(peer: Clip2latentPeer, pipeline: Any, cond: Tensor, steps: int, guidance: float) -> float:
    """Max abs difference between the peer's samples and latentmap's ``clip2latent`` sampler on the same noise."""
    prior = pipeline.prior
    theirs = peer.sample(cond, 0, steps, guidance, prior.options.normalize_cond)
    torch.manual_seed(0)
    settings = prior.sampling(sampler="clip2latent", steps=steps, guidance=guidance)
    prepared = prior.text_conditions(cond) if hasattr(prior, "text_conditions") else cond
    ours = prior.sample(prepared, settings, noise=lambda shape: torch.randn(shape))
    return float((ours - theirs.reshape(ours.shape)).abs().max())


def clip2latent_method(pipeline: Any, steps: int, guidance: float, peer: Clip2latentPeer | None) -> Method:
    """clip2latent's respaced sampler: the peer's own code if available, else latentmap's re-implementation."""
    if peer is None:
        method = latentmap_method(pipeline, "clip2latent", "clip2latent", steps, guidance, steps)
        method.notes["implementation"] = "latentmap sampler 'clip2latent' (peers not importable)"
        return method
    normalize = pipeline.prior.options.normalize_cond

    def sample(cond: Tensor, seed: int) -> Tensor:
        return peer.sample(cond, seed, steps, guidance, normalize)

    return Method(f"clip2latent {steps}", "clip2latent", steps, steps, pipeline.checkpoint, sample,
                  {"implementation": "clip2latent 1.0 LatentPrior + DALLE2-pytorch 0.2.38 (peers' virtualenv)"})


def build_methods(specs: list[str], diffusion: Any, flow: Any, guidance: float,
                  peer: Clip2latentPeer | None, distilled: Any = None) -> list[Method]:
    methods = []
    for spec in specs:
        kind, _, steps_text = spec.partition(":")
        steps_text, _, spacing = steps_text.partition(":")
        if not steps_text.isdigit() or int(steps_text) < 1:
            raise SystemExit(f"method {spec!r}: expected NAME:STEPS[:SPACING] with STEPS a positive integer")
        steps = int(steps_text)
        if spacing and kind not in DIFFUSION_SAMPLERS:
            raise SystemExit(f"method {spec!r}: a spacing is for the diffusion samplers ({', '.join(DIFFUSION_SAMPLERS)}) only")
        if kind in DIFFUSION_SAMPLERS:
            family = kind if spacing in ("", "uniform") else f"{kind} {spacing}"  # "ddim 25" stays the reference's name
            methods.append(latentmap_method(diffusion, family, kind, steps, guidance, diffusion_nfe(kind, steps),
                                            spacing or None))
        elif kind == "clip2latent":
            methods.append(clip2latent_method(diffusion, steps, guidance, peer))
        elif kind.startswith("flow-") and kind[5:] in FLOW_SOLVERS:
            if flow is None:
                print(f"(no flow checkpoint: {spec} skipped)", flush=True)
                continue
            solver = kind[5:]
            methods.append(latentmap_method(flow, f"flow {solver}", solver, steps, guidance, flow_nfe(solver, steps)))
        elif kind.startswith("distilled-") and kind[10:] in FLOW_SOLVERS:  # guidance 1: it learned the guided solution
            if distilled is None:
                print(f"(no distilled flow checkpoint: {spec} skipped)", flush=True)
                continue
            solver = kind[10:]
            methods.append(latentmap_method(distilled, f"flow distilled {solver}", solver, steps, 1.0,
                                            flow_nfe(solver, steps)))
        elif kind == "optimise":
            methods.append(Method(f"optimise {steps}", "optimise", steps, steps, None))
        else:
            raise SystemExit(f"unknown method {kind!r} in {spec!r}; expected one of "
                             f"{', '.join(DIFFUSION_SAMPLERS)}, clip2latent, flow-{{{','.join(FLOW_SOLVERS)}}}, optimise")
    return methods


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class World:
    """The encoder and generator every method shares (the diffusion checkpoint's), and the prompts."""

    pipeline: Any  # the diffusion pipeline: its encoder, generator and space serve every method
    cases: list[PromptCase]
    candidates: int
    optimise_lr: float = 0.05
    sampling_seconds: float = 0.0  # of the last run: the sampling call alone (optimisation: all of it)

    def run(self, method: Method, indices: list[int], seed: int) -> tuple[Tensor, Tensor]:
        """Latents (P, C, tokens, dim) and CLIP scores (P, C) of ``method`` for the prompts ``indices``.

        The whole path a user waits for: embed the prompts, sample, render, score every candidate.
        """
        texts = [self.cases[i].text for i in indices]
        if method.sample is None:
            return self._optimise(method, texts, seed)
        p = self.pipeline
        cond = p.embed_prompts(texts)
        began = time.perf_counter()
        latents = method.sample(repeat(cond, "p d -> (p c) d", c=self.candidates), seed).float()
        self.sampling_seconds = time.perf_counter() - began  # the prior alone: what the sampler decides
        with torch.no_grad():
            flat = p.space.expand(latents)
            images = torch.cat([p.generator.synthesize(chunk) for chunk in flat.split(256)])
        from latentmap.scoring import image_text_scores

        targets = repeat(F.normalize(cond, dim=-1), "p d -> (p c) d", c=self.candidates)
        scores = image_text_scores(p.encoder, images, targets, batch_size=256)
        c = self.candidates
        return rearrange(latents, "(p c) t d -> p c t d", c=c), rearrange(scores, "(p c) -> p c", c=c).cpu()

    def _optimise(self, method: Method, texts: list[str], seed: int) -> tuple[Tensor, Tensor]:
        from latentmap.optimize import OptimizeSettings, optimize

        settings = OptimizeSettings(steps=method.steps, lr=self.optimise_lr, init="random")
        p = self.pipeline
        began = time.perf_counter()
        result = optimize(p.generator, p.encoder, texts, settings=settings, candidates=self.candidates,
                          keep=self.candidates, seed=seed, batch_size=256, keep_images=False, progress=False)
        self.sampling_seconds = time.perf_counter() - began
        order = result.kept.argsort(dim=1)  # keep=candidates returns all, best first: back to generation order
        latents = torch.stack([result.latents[i][order[i]] for i in range(len(texts))])
        return latents, result.candidate_scores


def accuracy(cases: list[PromptCase], latents: Tensor, scores: Tensor) -> dict[str, float]:
    """Colour+shape accuracy on the colour+shape prompts, all-named on the 3-5-attribute ones; without and with re-ranking."""
    from latentmap_shapes import decode_attributes

    prompts, candidates = latents.shape[:2]
    decoded = decode_attributes(rearrange(latents, "p c t d -> (p c) t d").cpu())
    decoded = {name: rearrange(v, "(p c) -> p c", c=candidates) for name, v in decoded.items()}
    best = scores.argmax(dim=1)
    colour_shape, named = torch.zeros(prompts, candidates, dtype=torch.bool), torch.ones(prompts, candidates, dtype=torch.bool)
    for p, case in enumerate(cases):
        truth = case.truth
        for name, target in truth.items():
            named[p] &= decoded[name][p] == target
        if "colour" in truth and "shape" in truth:
            colour_shape[p] = (decoded["colour"][p] == truth["colour"]) & (decoded["shape"][p] == truth["shape"])
    rows = torch.arange(prompts)
    result: dict[str, float] = {}
    for key, table, group in (("colour_shape", colour_shape, "colour+shape"), ("all_named", named, "3-5")):
        mask = torch.tensor([case.group == group for case in cases])
        if bool(mask.any()):
            result[key] = float(table[mask].float().mean())
            result[f"{key}_reranked"] = float(table[rows, best][mask].float().mean())
    # variety among a prompt's candidates: their standard deviation, mean over prompts and latent numbers
    result["spread"] = float(latents.float().std(dim=1).mean()) if candidates > 1 else 0.0
    result["clip_score"] = float(scores.mean())
    result["clip_score_reranked"] = float(scores.max(dim=1).values.mean())
    return result


CHECKPOINT_KEYS = ("diffusion", "flow", "flow_distilled")


def checkpoint_key(family: str) -> str:
    """The setup entry naming the checkpoint a method family samples from (optimisation: the diffusion
    pipeline's encoder and generator)."""
    return "flow_distilled" if "distilled" in family else "flow" if family.startswith("flow") else "diffusion"  # "flow distilled euler"


def reusable(earlier: dict[str, Any] | None, setup: dict[str, Any], family: str) -> bool:
    """Whether a row of ``family`` measured under ``earlier`` holds under ``setup``: the same prompts,
    candidates, guidance and seeds, and the same checkpoint file (by checksum, whatever its path) for
    that family; the other families' checkpoints may differ (so rows measured before a retrain of
    another prior stay reusable)."""
    if earlier is None:
        return False

    def common(s: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in s.items() if k not in CHECKPOINT_KEYS}

    def file(s: dict[str, Any]) -> Any:
        info = s.get(checkpoint_key(family))
        return {k: v for k, v in info.items() if k != "path"} if isinstance(info, dict) else info

    return common(earlier) == common(setup) and file(earlier) == file(setup)


def load_average() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_info(pipeline: Any) -> dict[str, Any]:
    """What a figure is for: the checkpoint file, its step, its encoder's weights checksum."""
    metadata = pipeline.metadata
    return {"path": os.path.relpath(Path(pipeline.checkpoint).resolve(), REPO),
            "sha256": sha256(pipeline.checkpoint), "step": metadata.get("step"), "prior": pipeline.prior.name,
            "encoder": metadata.get("encoder", {}).get("name"),
            "encoder_sha256": metadata.get("encoder", {}).get("weights_sha256"),
            "recipe_out": ((metadata.get("recipe") or {}).get("train") or {}).get("out")}


def timing(world: World, methods: list[Method], rounds: int, optimise_rounds: int, seed: int) -> dict[str, dict[str, Any]]:
    """Seconds per 16 candidates for every method: one prompt a call, warm-up first, methods interleaved.

    Round r times prompt r (spread over the set) for every method, the order of the methods rotating
    from round to round; the median over rounds is reported with the load average during the rounds.
    """
    indices = list(range(len(world.cases)))
    chosen = indices[:: max(1, len(indices) // max(rounds, 1))][:rounds]
    seconds: dict[str, list[float]] = {m.name: [] for m in methods}
    sampling: dict[str, list[float]] = {m.name: [] for m in methods}
    for method in methods:  # warm-up
        world.run(method, [chosen[0]], seed)
    loads = []
    for r, prompt in enumerate(chosen):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for method in order:
            if method.sample is None and r >= optimise_rounds:
                continue
            started = time.perf_counter()
            world.run(method, [prompt], seed + prompt)
            seconds[method.name].append((time.perf_counter() - started) * 16 / world.candidates)
            sampling[method.name].append(world.sampling_seconds * 16 / world.candidates)
        loads.append(load_average())
        print(f"  timing round {r + 1}/{len(chosen)} (load {loads[-1]})", flush=True)
    return {name: {"seconds_per_16": statistics.median(values), "seconds_per_16_all": [round(v, 5) for v in values],
                   "sampling_seconds_per_16": statistics.median(sampling[name])}
            for name, values in seconds.items() if values}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="shapes-heldout", help="prompt set name in bench/prompts or a .jsonl path")
    parser.add_argument("--diffusion", default=str(REPO / "runs" / "shapes" / "best.safetensors"),
                        help="diffusion prior checkpoint (recipes/shapes.yaml's run)")
    parser.add_argument("--flow", default=str(REPO / "runs" / "shapes-flow" / "best.safetensors"),
                        help="flow prior checkpoint (recipes/shapes-flow.yaml's run); 'none' to skip")
    parser.add_argument("--flow-distilled", default=str(REPO / "runs" / "shapes-flow-distilled" / "best.safetensors"),
                        help="distilled flow checkpoint (recipes/shapes-flow-distilled.yaml's run); 'none' to skip")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated NAME:STEPS (see the module doc)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=None,
                        help="classifier-free guidance for every method (default: the diffusion checkpoint's recipe's)")
    parser.add_argument("--timing-rounds", type=int, default=8, help="prompts timed one at a time per method")
    parser.add_argument("--optimise-stride", type=int, default=8, help="optimisation runs on every n-th prompt")
    parser.add_argument("--optimise-seeds", default="0")
    parser.add_argument("--long-nfe", type=int, default=50,
                        help="methods above this many network evaluations (the slow references) run on --long-seeds")
    parser.add_argument("--long-seeds", default="0")
    parser.add_argument("--optimise-timing-rounds", type=int, default=2)
    parser.add_argument("--optimise-lr", type=float, default=0.05)
    parser.add_argument("--encoder-weights", default=None,
                        help="shapes-clip weights file to use instead of the installed one (the checkpoints' own, "
                             "when the installed encoder has been replaced since they were trained)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer", choices=("auto", "require", "off"), default="auto",
                        help="clip2latent's own sampler from the peers' virtualenv (auto: if importable)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse accuracy rows of --out measured on the same checkpoints and prompts")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="with --resume: also reuse rows of these result files (e.g. slow references run in parallel)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT, help="plot path ('none': no plot)")
    parser.add_argument("--report-only", action="store_true", help="only redraw the plot and print the table from --out")
    args = parser.parse_args(argv)

    if args.report_only:
        results = json.loads(args.out.read_text())
        if str(args.plot) != "none":
            plot(results, args.plot)
        print(markdown(results))
        return

    torch.set_num_threads(args.threads)
    from latentmap.pipeline import load_pipeline

    started_all = time.perf_counter()
    load_before = load_average()
    cases = [c for c in load_prompt_set(args.prompts) if c.group in SCORED_GROUPS]
    if not cases:
        raise SystemExit(f"prompt set {args.prompts!r} has no prompts in the groups {', '.join(SCORED_GROUPS)}")
    from latentmap.errors import LatentmapError

    encoder_options = {"weights": args.encoder_weights} if args.encoder_weights else None
    try:
        diffusion = load_pipeline(args.diffusion, device="cpu", encoder_options=encoder_options)
        flow = (None if args.flow == "none" or not Path(args.flow).is_file()
                else load_pipeline(args.flow, device="cpu", encoder_options=encoder_options))
        wanted = any(m.strip().startswith("distilled-") for m in args.methods.split(","))
        distilled = (None if not wanted or args.flow_distilled == "none" or not Path(args.flow_distilled).is_file()
                     else load_pipeline(args.flow_distilled, device="cpu", encoder_options=encoder_options))
    except LatentmapError as exc:  # e.g. a checkpoint trained with another encoder than the installed one
        raise SystemExit(f"{exc}; retrain with the shipped recipe (latentmap run recipes/...) or pass "
                         "--encoder-weights with the encoder it was trained with") from None
    if args.flow != "none" and flow is None:
        print(f"(flow checkpoint {args.flow} not found: flow methods skipped)", flush=True)
    if args.guidance is None:
        args.guidance = float(diffusion.defaults().sampling.guidance)
    encoder_sha = diffusion.encoder.identity().get("weights_sha256")
    for pipeline in (diffusion, flow, distilled):
        recorded = pipeline and pipeline.metadata.get("encoder", {}).get("weights_sha256")
        if pipeline is not None and recorded != encoder_sha:
            raise SystemExit(f"{pipeline.checkpoint} was trained with encoder weights {recorded}, the installed "
                             f"shapes-clip is {encoder_sha}: retrain it (latentmap run recipes/...) first")

    peer, parity = None, None
    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    if args.peer != "off" and any(s.startswith("clip2latent:") for s in specs):
        try:
            peer = Clip2latentPeer(diffusion.prior)
        except ImportError as exc:
            if args.peer == "require":
                raise SystemExit(f"clip2latent's sampler is not importable ({exc}); run under bench/.peers/bin/python")
            print(f"(clip2latent not importable: {exc}; latentmap's 'clip2latent' sampler stands in)", flush=True)
    world = World(diffusion, cases, args.candidates, args.optimise_lr)
    if peer is not None:
        parity = peer_parity(peer, diffusion, diffusion.embed_prompts([c.text for c in cases[:4]]), 4, args.guidance)
        print(f"clip2latent peer vs latentmap's clip2latent sampler, same noise: max abs diff {parity:.2e}", flush=True)
    methods = build_methods(specs, diffusion, flow, args.guidance, peer, distilled)
    seeds = [int(s) for s in args.seeds.split(",")]
    optimise_seeds = [int(s) for s in args.optimise_seeds.split(",")]
    long_seeds = [int(s) for s in args.long_seeds.split(",")]
    setup = {"prompts": args.prompts, "prompt_count": len(cases),
             "groups": {g: sum(c.group == g for c in cases) for g in SCORED_GROUPS},
             "candidates": args.candidates, "guidance": args.guidance, "seeds": seeds,
             "long_references": {"above_nfe": args.long_nfe, "seeds": long_seeds},
             "diffusion": checkpoint_info(diffusion), "flow": checkpoint_info(flow) if flow else None,
             "optimise": {"stride": args.optimise_stride, "seeds": optimise_seeds, "lr": args.optimise_lr,
                          "init": "random"}}
    if distilled is not None:  # only then: earlier results without it stay reusable (--resume)
        setup["flow_distilled"] = checkpoint_info(distilled)
    reusable_rows: list[dict[str, Any]] = []
    for path in [args.out, *args.merge] if args.resume else []:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
        kept = [r for r in earlier.get("rows", []) if reusable(earlier.get("setup"), setup, r["family"])]
        reusable_rows += kept
        if len(kept) < len(earlier.get("rows", [])):
            print(f"({path}: {len(earlier['rows']) - len(kept)} rows of other checkpoints, prompts or settings "
                  "are not reused)", flush=True)
    rows: dict[str, dict[str, Any]] = {}

    def save(extra: dict[str, Any]) -> dict[str, Any]:
        result = {
            "command": "python " + " ".join([os.path.relpath(Path(sys.argv[0]).resolve(), REPO), *sys.argv[1:]]),
            "python": sys.executable, "clip2latent_peer": peer is not None, "clip2latent_parity_max_abs": parity,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores visible (shared with other work), "
                       f"{args.threads} torch thread(s), torch {torch.__version__}, Python {platform.python_version()}",
            "encoder_sha256": encoder_sha, "setup": setup, "load_average_before": load_before, **extra,
            "rows": list(rows.values()),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(result, indent=2) + "\n")
        temporary.replace(args.out)
        return result

    for method in methods:
        old = next((r for r in reusable_rows if r["method"] == method.name), None)
        if old is not None and "per_seed" in old:
            rows[method.name] = {k: v for k, v in old.items() if "seconds_per_16" not in k}  # timed afresh
            print(f"{method.name}: reused", flush=True)
            continue
        is_optimise = method.sample is None
        indices = list(range(len(cases)))[:: args.optimise_stride] if is_optimise else list(range(len(cases)))
        per_seed = []
        long = not is_optimise and method.nfe > args.long_nfe
        for seed in (optimise_seeds if is_optimise else long_seeds if long else seeds):
            began = time.perf_counter()
            latents, scores = world.run(method, indices, seed)
            per_seed.append({"seed": seed, **accuracy([cases[i] for i in indices], latents, scores),
                             "batched_seconds": round(time.perf_counter() - began, 2)})
        keys = [k for k in per_seed[0] if k not in ("seed", "batched_seconds")]
        rows[method.name] = {"method": method.name, "family": method.family, "steps": method.steps, "nfe": method.nfe,
                             "checkpoint": method.checkpoint and os.path.relpath(Path(method.checkpoint).resolve(), REPO),
                             "prompts": len(indices), **method.notes,
                             **{k: statistics.median(r[k] for r in per_seed) for k in keys}, "per_seed": per_seed}
        row = rows[method.name]
        print(f"{method.name:18s} colour+shape {row.get('colour_shape', float('nan')):.3f} "
              f"(re-ranked {row.get('colour_shape_reranked', float('nan')):.3f})  all named "
              f"{row.get('all_named', float('nan')):.3f} (re-ranked {row.get('all_named_reranked', float('nan')):.3f})",
              flush=True)
        save({})

    if args.timing_rounds < 1:
        print(f"wrote {args.out} (accuracy only, no timing)")
        return
    print("timing, one prompt (16 candidates) a call, methods interleaved", flush=True)
    load_timing_start = load_average()
    times = timing(world, methods, args.timing_rounds, args.optimise_timing_rounds, seeds[0])
    for name, measured in times.items():
        rows[name].update(measured)
    result = save({"load_average_timing_start": load_timing_start, "load_average_after": load_average(),
                   "seconds": round(time.perf_counter() - started_all, 1)})
    result["goals"] = goals(result)
    save({k: result[k] for k in ("load_average_timing_start", "load_average_after", "seconds", "goals")})
    if str(args.plot) != "none":
        plot(result, args.plot)
    print(markdown(result))
    print(f"wrote {args.out}" + ("" if str(args.plot) == "none" else f" and {args.plot}"))


# ------------------------------------------------------------------------------------------------ goals, table, plot

METRICS = ("colour_shape", "colour_shape_reranked", "all_named", "all_named_reranked")


QUALITY = {  # what "25-step DDIM quality" is measured on: within 1 point of it on each of these
    "without re-ranking": ("colour_shape", "all_named"),
    "with and without re-ranking": METRICS,
}


def reaches(row: dict[str, Any], reference: dict[str, Any], keys: tuple[str, ...], tolerance: float = 0.01) -> bool:
    """Whether ``row`` is at most ``tolerance`` below ``reference`` on every accuracy in ``keys``."""
    return all(row.get(k, -1.0) >= reference[k] - tolerance for k in keys)


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's two accuracy/time goals, from the rows (medians over seeds)."""
    rows = {r["method"]: r for r in result["rows"]}
    out: dict[str, Any] = {}
    reference = rows.get(REFERENCE)
    if reference is None:
        return out
    at_four = {}
    for name, row in rows.items():
        if row["nfe"] == 4 and row["family"] not in ("ddim", "clip2latent", "optimise"):
            entry: dict[str, Any] = {k: round(row[k] - reference[k], 4) for k in METRICS if k in row}
            entry["within_1_point"] = all(v >= -0.01 for v in entry.values())
            # paired by seed (same start noise for every diffusion sampler): the spread of the difference
            theirs = {r["seed"]: r for r in reference["per_seed"]}
            entry["per_seed"] = {k: [round(r[k] - theirs[r["seed"]][k], 4) for r in row["per_seed"] if r["seed"] in theirs]
                                 for k in ("colour_shape", "all_named") if k in row}
            at_four[name] = entry
    out["at_4_nfe_vs_ddim_25"] = at_four
    # two clocks: the whole path a user waits for (text, sampling, rendering, scoring), and the sampling
    # call alone (what the sampler and prior decide; at the paper's sizes rendering is another matter)
    for clock in ("seconds_per_16", "sampling_seconds_per_16"):
        timed = [r for r in rows.values() if clock in r and r["family"] != "optimise"]
        for label, keys in QUALITY.items():
            quick = {}
            for family in sorted({r["family"] for r in timed}):
                reached = [r for r in timed if r["family"] == family and reaches(r, reference, keys)]
                fastest = min(reached, key=lambda r: r[clock]) if reached else None
                slowest = max((r for r in timed if r["family"] == family), key=lambda r: r["steps"])
                quick[family] = ({"method": fastest["method"], clock: fastest[clock]} if fastest else
                                 {"method": None, "not_reached_up_to": slowest["method"], clock: slowest[clock]})
            entry: dict[str, Any] = {"fastest_per_family": quick}
            c2l = quick.get("clip2latent")
            ours = [v for k, v in quick.items() if k != "clip2latent" and v["method"]]
            if c2l and ours:
                best = min(ours, key=lambda v: v[clock])
                ratio = c2l[clock] / best[clock]
                entry["speedup_vs_clip2latent"] = {
                    "ours": best["method"], "clip2latent": c2l["method"] or c2l["not_reached_up_to"],
                    "ratio": round(ratio, 2), "lower_bound": c2l["method"] is None, "met_5x": ratio >= 5}
            name = "time_to_ddim_25_quality" if clock == "seconds_per_16" else "sampling_time_to_ddim_25_quality"
            out[f"{name} ({label})"] = entry
    return out


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The table of rows (medians over seeds), in the order measured."""
    header = ("| method | steps | NFE | colour+shape | colour+shape, re-ranked | all named | all named, re-ranked "
              "| spread | s / 16 candidates | sampling s / 16 | seeds | checkpoint |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        seconds, sampling = r.get("seconds_per_16"), r.get("sampling_seconds_per_16")
        lines.append(f"| {r['method']} | {r['steps']} | {r['nfe']} | {pct(r.get('colour_shape'))} "
                     f"| {pct(r.get('colour_shape_reranked'))} | {pct(r.get('all_named'))} "
                     f"| {pct(r.get('all_named_reranked'))} | {r.get('spread', float('nan')):.2f} "
                     f"| {'-' if seconds is None else f'{seconds:.3f}'} "
                     f"| {'-' if sampling is None else f'{sampling:.4f}'} "
                     f"| {','.join(str(s['seed']) for s in r['per_seed'])}{'' if r['prompts'] == result['setup']['prompt_count'] else ' (' + str(r['prompts']) + ' prompts)'} "
                     f"| {r.get('checkpoint') or '-'} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy against sampling seconds per 16 candidates (log axis), a line per method family, both accuracies.

    The y axis is zoomed on where the methods are; a point far below (a sampler off at few steps,
    optimisation) is drawn on the bottom edge as a triangle with its value.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["rows"] if "seconds_per_16" in r]
    clock = "sampling_seconds_per_16" if all("sampling_seconds_per_16" in r for r in rows) else "seconds_per_16"
    families = list(dict.fromkeys(r["family"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), sharex=True)
    colours = plt.cm.tab20.colors
    for axis, key, title in ((axes[0], "colour_shape", "colour+shape (colour+shape prompts)"),
                             (axes[1], "all_named", "all named (3-5-attribute prompts)")):
        values = sorted(100 * r[k] for r in rows for k in (key, f"{key}_reranked") if k in r)
        middle = values[len(values) // 2]
        floor = min(v for v in values if v >= middle - 15) - 2
        for i, family in enumerate(families):
            points = sorted((r for r in rows if r["family"] == family and key in r), key=lambda r: r[clock])
            if not points:
                continue
            x = [r[clock] for r in points]
            colour = colours[i % len(colours)]
            for suffix, style, alpha in (("", "o-", 1.0), ("_reranked", "s--", 0.5)):
                y = [100 * r[f"{key}{suffix}"] for r in points]
                axis.plot(x, [max(v, floor) for v in y], style, color=colour, alpha=alpha,
                          label=family if not suffix else None)
                for xi, v in zip(x, y):
                    if v < floor:
                        axis.plot([xi], [floor], "v", color=colour, markersize=9)
                        axis.annotate(f"{v:.0f}", (xi, floor), fontsize=7, textcoords="offset points", xytext=(4, 4))
            for r in points:
                axis.annotate(str(r["steps"]), (r[clock], max(100 * r[key], floor)), fontsize=7,
                              textcoords="offset points", xytext=(3, -9))
        axis.set_ylim(floor - 1, 100.8)
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel("sampling seconds per 16 candidates" if clock != "seconds_per_16"
                        else "seconds per 16 candidates (incl. text encoding, rendering, re-ranking)")
        axis.set_ylabel("accuracy (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # one entry per family (both panels have them all)
    fig.legend(handles, labels, fontsize=8, loc="center right", title="solid: no re-ranking\ndashed: best of 16\n\u25bc below the axis",
               title_fontsize=7)
    fig.suptitle(f"Shapes world, {result['setup']['prompts']} ({result['setup']['prompt_count']} prompts), "
                 f"median of seeds {result['setup']['seeds']}; numbers: steps")
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

if __name__ == "__main__":
    main()
