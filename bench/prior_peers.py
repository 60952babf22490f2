"""latentmap's diffusion prior against DALLE2-pytorch 0.2.38 (and clip2latent 1.0's sampler): speed and agreement.

One process, the same weights on both sides (copied through the importer's key table run backwards,
``bench/peers/dalle2_weights.py``), the paper config (dim 512, depth 12, heads 12, dim_head 64,
1000 timesteps, one 512-d w latent token, 512-d conditions, as recipes/ffhq.yaml), random
initialisation (seed 0). Every figure is a median over interleaved runs after warm-up; the load
average is recorded before and after.

Rows:
- guided step (batch B, guidance g): DALLE2's ``DiffusionPrior.p_sample`` (two network passes) vs
  latentmap's guided x0 estimate as its samplers call it (one batched pass): without any cache; with the
  condition cache but a timestep token per null row; the default (condition cache and one timestep
  token shared by the null rows), in fp32 and bf16 (bf16: autocast held across steps, as ``sample`` does);
  for B different conditions, and for one prompt's B candidates (rows with one condition share their
  timestep token too).
- sampling, 4 and 25 steps: clip2latent's ``LatentPrior`` timestep-skip sampler (over DALLE2's
  prior) vs latentmap's ``sample`` with the same algorithm (sampler ``clip2latent``, fed the same
  noise: the quality column is then parity) and with its default sampler, fp32 and bf16.
- training step (batch 64): DALLE2's ``DiffusionPriorTrainer`` (loss, backward, clipping, AdamW,
  EMA) vs latentmap's ``Trainer.train_step`` (the same, LAFITE noise off), with the same optimiser
  settings, at latentmap's defaults and with bf16 autocast. Quality: the loss over the timed steps on a
  learnable synthetic task (latent = a fixed linear map of the condition).

Quality columns: for samples, max |difference| and relative RMS difference from the fp32 reference
named in the row, and the mean cosine to it; for training, the mean loss of the first and last steps.

    bench/.peers/bin/python bench/prior_peers.py                      # CPU, full
    bench/.peers/bin/python bench/prior_peers.py --quick --threads 1  # a few minutes on a loaded CPU
    python bench/prior_peers.py --device cuda --quick                 # GPU; without the peers' venv the
                                                                      # peer rows are skipped (noted in the JSON)

Writes bench/results/prior_peers-<device>[-quick].json (or --out) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "peers"))

from latentmap.interfaces import PriorShape  # noqa: E402
from latentmap.prior import DiffusionPrior  # noqa: E402
from latentmap.precision import autocast as precision_context  # noqa: E402

PAPER_SHAPE = PriorShape(tokens=1, latent_dim=512, cond_dim=512)


# ----------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, runs: int, warmup: int
) -> dict[str, tuple[float, float]]:
    """(wall, CPU) median seconds of each function, timed round-robin (A, B, C, A, B, C ...) after ``warmup`` rounds.

    CPU time (this process, all threads) is the steadier measure on a shared machine: it leaves out
    the time other processes hold the cores. On a GPU only the wall time means anything.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    return {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
            for name, values in times.items()}


def timing(name: str, medians: dict[str, tuple[float, float]], peer: str) -> dict[str, Any]:
    """A row's time fields: wall and CPU seconds and the peer's time over this one's (>1: faster than the peer)."""
    wall, cpu = medians[name]
    row: dict[str, Any] = {"seconds": wall, "cpu_seconds": cpu, "speedup_vs_dalle2": None, "cpu_speedup_vs_dalle2": None}
    if peer in medians:
        row["speedup_vs_dalle2"] = medians[peer][0] / wall
        row["cpu_speedup_vs_dalle2"] = medians[peer][1] / cpu if cpu > 0 else None
    return row


def agreement(sample: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How close a sample batch is to a reference batch: max |diff|, relative RMS diff, mean cosine."""
    a, b = sample.detach().float().reshape(reference.shape[0], -1), reference.detach().float().reshape(reference.shape[0], -1)
    return {
        "max_abs_diff": float((a - b).abs().max()),
        "rel_rms_diff": float((a - b).norm() / b.norm()),
        "mean_cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean()),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------- peers
def peer_modules(prior: DiffusionPrior) -> tuple[Any, Callable[[], Any]] | None:
    """(DALLE2 DiffusionPrior with the same weights, a factory of clip2latent LatentPriors), or None without the peers."""
    try:
        from dalle2_weights import dalle2_prior
    except ImportError:
        return None
    try:
        return dalle2_prior(prior), lambda: dalle2_prior(prior, latent_prior=True)
    except ImportError:
        return None


# ----------------------------------------------------------------------------------------- rows
def step_rows(prior, peer, args, device, one_prompt: bool = False) -> list[dict[str, Any]]:
    """One whole ancestral step each: guided x0 estimate, posterior mean, noise (as DALLE2's ``p_sample``).

    ``one_prompt``: the batch is one condition's candidates (as ``latentmap sample`` batches a prompt's
    candidates), else B different conditions.
    """
    batch, g = args.batch, args.guidance
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 512, generator=gen).to(device)
    cond = torch.randn(batch, 512, generator=gen).to(device)
    if one_prompt:
        cond = cond[:1].repeat(batch, 1)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    fns: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, torch.Tensor] = {}
    if peer is not None:
        name = "DALLE2-pytorch 0.2.38 p_sample"
        fns[name] = lambda: peer.p_sample(x[:, 0], t, text_cond={"text_embed": cond}, cond_scale=g, clip_denoised=False)
        with torch.no_grad():
            outputs[name] = peer.net.forward_with_cond_scale(x[:, 0], t, text_embed=cond, cond_scale=g)
    variants = {
        "latentmap fp32, no cache (one batched pass)": ("fp32", "none"),
        "latentmap fp32, condition cache, a timestep token per row": ("fp32", "per-row"),
        "latentmap fp32 (default)": ("fp32", "shared"),
        "latentmap bf16": ("bf16", "shared"),
    }
    # A disabled autocast held around everything keeps autocast's cache of bf16 weights alive between
    # the bf16 calls (as inside one ``sample`` call, where the weights are cast once for all steps).
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for name, (precision, cache) in variants.items():
            with precision_context(precision, device):
                if cache == "per-row":
                    denoise = denoiser_without_shared_timestep(prior, cond, g)
                else:
                    denoise = prior.guided_denoiser(cond, g, cache=cache == "shared")
                outputs[name] = denoise(x, t)

            def step(denoise=denoise, precision=precision):
                with precision_context(precision, device):
                    x0 = denoise(x, t)
                mean, _, log_variance = prior.posterior(x0, x, t)
                return mean + (0.5 * log_variance).exp() * torch.randn_like(x)

            fns[name] = step
        medians = interleaved(fns, device, args.runs, args.warmup)
    reference = outputs["latentmap fp32, no cache (one batched pass)"]
    what = f"guided step, one prompt x {batch} candidates" if one_prompt else "guided step"
    return [{"what": what, "variant": name, **timing(name, medians, "DALLE2-pytorch 0.2.38 p_sample"),
             "quality_vs": "latentmap fp32 network output", **agreement(outputs[name], reference)}
            for name in medians]


def denoiser_without_shared_timestep(prior: DiffusionPrior, cond: torch.Tensor, guidance: float):
    """``prior.guided_denoiser(cond, guidance)`` with the condition cache but each null row computing its own
    timestep token (``share_timestep=False``): the default path less its newest saving, for the ablation row."""
    ones = torch.ones(cond.shape[0], dtype=torch.bool, device=cond.device)
    keep, conds = torch.cat((ones, ~ones)), torch.cat((cond, cond))
    cache = prior.net.condition_cache(conds, keep, share_timestep=False)

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        conditional, null = prior.net(torch.cat((x_t, x_t)), torch.cat((t, t)), conds, keep, cache).chunk(2)
        return prior.predict_x0(x_t, t, null + (conditional - null) * guidance)

    return denoise


def sampling_rows(prior, peers, args, device) -> list[dict[str, Any]]:
    batch, g = args.batch, args.guidance
    cond = torch.randn(batch, 512, generator=torch.Generator().manual_seed(2)).to(device)
    rows = []
    for steps in args.steps:
        fns: dict[str, Callable[[], Any]] = {}
        outputs: dict[str, torch.Tensor] = {}
        seed = 1000 + steps

        def ours(sampler: str, precision: str, steps: int = steps, seed: int = seed):
            def run():
                torch.manual_seed(seed)  # noise from the global stream, as DALLE2 draws it: same noise both sides
                return prior.sample(cond, prior.sampling(steps=steps, guidance=g, sampler=sampler, precision=precision))
            return run

        if peers is not None:
            latent_prior = peers[1]()
            latent_prior.set_timestep_skip(prior.options.timesteps // steps)

            def theirs(seed: int = seed, latent_prior=latent_prior):
                torch.manual_seed(seed)
                return latent_prior.p_sample_loop((batch, 512), {"text_embed": cond}, cond_scale=g, show_progress=False)

            fns["clip2latent 1.0 LatentPrior (DALLE2 0.2.38), skip sampler"] = theirs
        fns["latentmap, sampler clip2latent, fp32"] = ours("clip2latent", "fp32")
        default_sampler = prior.sampling().sampler
        fns[f"latentmap, {default_sampler} (default), fp32"] = ours(default_sampler, "fp32")
        fns[f"latentmap, {default_sampler}, bf16"] = ours(default_sampler, "bf16")
        fns["latentmap, sampler clip2latent, bf16"] = ours("clip2latent", "bf16")
        with torch.no_grad():
            for name, fn in fns.items():
                outputs[name] = fn()
            medians = interleaved(fns, device, args.sample_runs, 1)
        peer_name = "clip2latent 1.0 LatentPrior (DALLE2 0.2.38), skip sampler"
        for name in medians:
            reference = "latentmap, sampler clip2latent, fp32" if "clip2latent" in name else f"latentmap, {default_sampler} (default), fp32"
            if name == "latentmap, sampler clip2latent, fp32" and peer_name in medians:
                reference = peer_name
            rows.append({"what": f"sample, {steps} steps", "variant": name, **timing(name, medians, peer_name),
                         "quality_vs": reference, **agreement(outputs[name], outputs[reference])})
    return rows


def training_rows(prior_state, peer_available, args, device) -> list[dict[str, Any]]:
    from latentmap.distributed import World
    from latentmap.training.ema import EMA
    from latentmap.training.loop import LoopSettings, Trainer
    from latentmap.training.optim import make_optimizer

    batch = args.train_batch
    gen = torch.Generator().manual_seed(3)
    mapping = torch.randn(512, 512, generator=gen) / 512**0.5
    batches = []
    for _ in range(4):
        cond = torch.randn(batch, 512, generator=gen)
        latents = (cond @ mapping)[:, None] + 0.1 * torch.randn(batch, 1, 512, generator=gen)
        batches.append((latents.to(device), cond.to(device)))
    settings = dict(lr=1e-4, weight_decay=1e-2, betas=(0.9, 0.999))  # eps 1e-8, clip 1.0, EMA 0.9999 every 10

    def fresh_prior() -> DiffusionPrior:
        p = DiffusionPrior(PAPER_SHAPE).to(device)
        p.load_state_dict(prior_state)
        return p.train()

    variants: dict[str, Callable[[int], float]] = {}
    out = Path(tempfile.mkdtemp())

    def latentmap_variant(precision: str, fused: bool | None):
        p = fresh_prior()
        trainer = Trainer(prior=p, ema=EMA(p, beta=0.9999, every=10), optimizer=make_optimizer(p, **settings, fused=fused),
                          batches=lambda epoch, start: iter(()), world=World(device=device),
                          settings=LoopSettings(steps=10**9, noise_alpha=0.0, grad_clip=1.0, precision=precision,
                                                progress=False), out=out, metrics=None)
        return lambda i: trainer.train_step(*batches[i % len(batches)])[0]

    if peer_available:
        from dalle2_pytorch.train import DiffusionPriorTrainer
        from dalle2_weights import dalle2_prior

        peer = dalle2_prior(fresh_prior()).train()
        peer_trainer = DiffusionPriorTrainer(peer, lr=settings["lr"], wd=settings["weight_decay"], eps=1e-8,
                                             max_grad_norm=1.0, ema_beta=0.9999, ema_update_every=10).to(device)

        def peer_step(i: int) -> float:
            latents, cond = batches[i % len(batches)]
            loss = peer_trainer(text_embed=cond.clone(), image_embed=latents[:, 0].clone())
            peer_trainer.update()
            return loss

        variants["DALLE2-pytorch 0.2.38 DiffusionPriorTrainer"] = peer_step
    variants["latentmap fp32, AdamW not fused"] = latentmap_variant("fp32", False)
    variants["latentmap fp32 (default)"] = latentmap_variant("fp32", None)
    variants["latentmap bf16 autocast"] = latentmap_variant("bf16", None)

    losses: dict[str, list[float]] = {name: [] for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(args.train_warmup + args.train_runs):
        for name, step in variants.items():
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            losses[name].append(float(step(i)))
            sync(device)
            if i >= args.train_warmup:
                times[name].append((time.perf_counter() - start, time.process_time() - cpu))
    medians = {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
               for name, values in times.items()}
    k = max(1, len(next(iter(losses.values()))) // 4)
    return [{"what": f"training step, batch {batch}", "variant": name,
             **timing(name, medians, "DALLE2-pytorch 0.2.38 DiffusionPriorTrainer"),
             "loss_first": statistics.mean(losses[name][:k]), "loss_last": statistics.mean(losses[name][-k:]),
             "losses": losses[name]} for name in medians]


# ----------------------------------------------------------------------------------------- main
def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| what | variant | wall (median) | CPU time (median) | vs DALLE2, wall | vs DALLE2, CPU | quality |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = " | ".join(f"{r[key]:.2f}x" if r.get(key) else "-" for key in ("speedup_vs_dalle2", "cpu_speedup_vs_dalle2"))
        if "losses" in r:
            quality = f"loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}"
        else:
            quality = (f"max {r['max_abs_diff']:.1e}, rel RMS {r['rel_rms_diff']:.1e}, cos {r['mean_cosine']:.6f} "
                       f"vs {r['quality_vs']}")
        lines.append(f"| {r['what']} | {r['variant']} | {1000 * r['seconds']:.1f} ms | {1000 * r['cpu_seconds']:.1f} ms "
                     f"| {ratio} | {quality} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="fewer runs and training steps (~2 min on a GPU)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--steps", default="4,25", help="sampling step counts (must divide 1000)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--only", default="step,sample,train", help="which parts: step, sample, train")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/prior_peers-<device>[-quick].json)")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.runs, args.warmup = (5, 2) if args.quick else (15, 3)
    args.sample_runs = 2 if args.quick else 5
    args.train_runs, args.train_warmup = (3, 1) if args.quick else (8, 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    parts = set(args.only.split(","))

    torch.manual_seed(0)
    prior = DiffusionPrior(PAPER_SHAPE).to(device).eval()
    peers = peer_modules(prior)
    result: dict[str, Any] = {
        "command": " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO))
                             else Path(sys.executable).name, *sys.argv]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu {platform.processor() or platform.machine()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch, "guidance": args.guidance, "train_batch": args.train_batch,
        "parameters": sum(p.numel() for p in prior.parameters()),
        "peer": "dalle2-pytorch 0.2.38 + clip2latent 1.0" if peers else None,
        "load_average_before": load_average(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if peers is not None:
        from dalle2_weights import compare

        result["same_weights_check"] = compare(prior, peers[0], guidance=args.guidance)
    rows: list[dict[str, Any]] = []
    if "step" in parts:
        rows += step_rows(prior, peers[0] if peers else None, args, device)
        rows += step_rows(prior, peers[0] if peers else None, args, device, one_prompt=True)
        print(markdown(rows), flush=True)
    if "sample" in parts:
        rows += sampling_rows(prior, peers, args, device)
    if "train" in parts:
        state = {k: v.detach().clone() for k, v in prior.state_dict().items()}
        del prior
        rows += training_rows(state, peers is not None, args, device)
    result["rows"] = rows
    result["load_average_after"] = load_average()
    out = args.out or REPO / "bench" / "results" / f"prior_peers-{args.device}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}; wrote {out}")


if __name__ == "__main__":
    main()
