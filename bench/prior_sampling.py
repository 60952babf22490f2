"""Benchmark the diffusion prior at the paper's config: guided sampling and training speed.

Compares, in the same run, one guided step computed in ONE batched network pass (what
``DiffusionPrior`` does) with the same network evaluated in two separate passes per step (what
DALLE2-pytorch's sampler does). Reports seconds per step (median of several runs after warm-up),
seconds per sample for several step counts (measured, or extrapolated from the per-step median
where a full run would take too long; extrapolated rows are marked), and training steps/s.

    python bench/prior_sampling.py                     # CPU, batch 16, guidance 2.0
    python bench/prior_sampling.py --device cuda --full-limit 600

latentmap alone: the comparison with DALLE2-pytorch 0.2.38 itself, on the same weights in one
process, is ``bench/prior_peers.py`` (docs/benchmarks.md, "Prior").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from latentmap.interfaces import PriorShape
from latentmap.prior import DiffusionPrior

PAPER_SHAPE = PriorShape(tokens=1, latent_dim=512, cond_dim=512)  # one w of StyleGAN2, CLIP ViT-B/32


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn, device: str, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device) for _ in range(runs))


def interleaved_medians(fn_a, fn_b, device: str, runs: int, warmup: int) -> tuple[float, float]:
    """Median times of two functions timed alternately (A, B, A, B, ...) so load drift hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(timed(fn_a, device))
        times_b.append(timed(fn_b, device))
    return statistics.median(times_a), statistics.median(times_b)


def two_pass_denoise(prior: DiffusionPrior, x_t, t, cond, guidance: float):
    """The baseline: conditional and null passes as two separate network calls."""
    batch = x_t.shape[0]
    keep = torch.ones(batch, dtype=torch.bool, device=x_t.device)
    conditional = prior.net(x_t, t, cond, keep)
    null = prior.net(x_t, t, cond, ~keep)
    return prior.predict_x0(x_t, t, null + (conditional - null) * guidance)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--steps", default="4,25,250,1000", help="step counts to report")
    parser.add_argument("--runs", type=int, default=11, help="timed repetitions of a single step")
    parser.add_argument("--full-limit", type=float, default=60.0,
                        help="run a full sample only if it is predicted to take less than this many seconds")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    torch.manual_seed(0)
    prior = DiffusionPrior(PAPER_SHAPE).to(device).eval()  # paper config: 48,767,872 parameters
    cond = torch.randn(args.batch, 512, device=device)
    x_t = torch.randn(args.batch, 1, 512, device=device)
    t = torch.full((args.batch,), 500, device=device, dtype=torch.long)

    results: dict = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu {platform.machine()}",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "guidance": args.guidance,
        "parameters": sum(p.numel() for p in prior.parameters()),
    }
    with torch.no_grad():
        batched_step, two_pass_step = interleaved_medians(
            lambda: prior.denoise(x_t, t, cond, guidance=args.guidance),
            lambda: two_pass_denoise(prior, x_t, t, cond, args.guidance),
            device, args.runs, 2,
        )
    results["step_s"] = {"batched": batched_step, "two_pass": two_pass_step, "ratio": batched_step / two_pass_step}

    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        predicted = batched_step * steps
        if predicted <= args.full_limit:
            generator = torch.Generator(device=device).manual_seed(0)
            seconds = timed(
                lambda: prior.sample(cond, prior.sampling(steps=steps, guidance=args.guidance), generator=generator), device
            )
            measured = True
        else:
            seconds, measured = predicted, False
        rows.append({
            "steps": steps,
            "batched_s_per_batch": seconds,
            "batched_s_per_sample": seconds / args.batch,
            "two_pass_s_per_sample_extrapolated": two_pass_step * steps / args.batch,
            "measured": measured,
        })
    results["sampling"] = rows

    train_prior = DiffusionPrior(PAPER_SHAPE).to(device).train()
    optimizer = torch.optim.AdamW(train_prior.parameters(), lr=1e-4, weight_decay=1e-2)
    latents = torch.randn(args.train_batch, 1, 512, device=device)
    conds = torch.randn(args.train_batch, 512, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def train_step():
        loss = train_prior.loss(latents, conds, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_seconds = median_time(train_step, device, max(3, args.runs // 2), 1)
    results["train"] = {"batch": args.train_batch, "s_per_step": train_seconds, "steps_per_s": 1 / train_seconds}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
