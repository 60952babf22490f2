"""StyleGAN3 synthesis speed: latentmap's network vs a straightforward unfused version of the same layers.

Network: the LHQ-256 StyleGAN3-T shape (``lhq-256-stylegan3-t-25Mimg.pkl``: w 512, 256 px,
channel_base 32768, channel_max 512, 3x3 convs, 16 ws), random weights. Both contenders read the
*same* module's parameters and the script checks that they produce the same images first.

The baseline is what one writes straight from the paper and NVIDIA's reference code: a Python loop
over the batch; for each sample the modulated, demodulated weight is built and applied with
``conv2d``; ``filtered_lrelu`` is the literal sequence (bias, zero insertion, pad, depthwise FIR
passes at the upsampled rate, leaky ReLU, gain and clamp as separate ops, depthwise FIR, decimation).
latentmap's version modulates activations instead of weights (one convolution for the whole batch)
and runs ``filtered_lrelu`` as polyphase banded matrix products over cache-sized channel groups.

    python bench/stylegan3_synthesis.py --batches 1,8 --reps 3 --threads 2

Reports the median wall-clock seconds and, because the machines these run on are shared, also the
median *process CPU* seconds (less sensitive to other jobs); ratios are taken within the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from latentmap_stylegan.sg3_resample import filtered_lrelu_reference
from latentmap_stylegan.stylegan3 import StyleGAN3Generator, SynthesisLayer

LHQ_256_T = dict(
    z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3, mapping_kwargs={"num_layers": 2},
    channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
)  # fmt: skip


def lhq_shaped_generator() -> StyleGAN3Generator:
    """StyleGAN3-T with LHQ-256's shape and random weights (magnitude EMAs set to plausible values)."""
    torch.manual_seed(0)
    G = StyleGAN3Generator(**LHQ_256_T).eval().requires_grad_(False)
    with torch.no_grad():  # one training-mode pass calibrates magnitude_ema so activations stay O(1)
        for name in G.synthesis.layer_names:
            getattr(G.synthesis, name).magnitude_ema_beta = 0.0
        G(torch.randn(4, 512), update_emas=True)
    return G


# ------------------------------------------------------------------------------------------------
# The unfused baseline: same parameters, textbook operations, one sample at a time.


def baseline_layer(layer: SynthesisLayer, x: torch.Tensor, w: torch.Tensor, style_rms: torch.Tensor | None) -> torch.Tensor:
    """One sample (1, in, H, W) through a StyleGAN3 layer, op by op."""
    styles = layer.affine(w)[0]  # (in,)
    weight = layer.weight
    if layer.is_torgb:
        weight = weight * styles.view(1, -1, 1, 1) / math.sqrt(layer.in_channels * layer.conv_kernel**2)
    else:
        weight = weight / weight.square().mean(dim=[1, 2, 3], keepdim=True).sqrt()
        weight = weight * (styles / style_rms).view(1, -1, 1, 1)
        weight = weight / torch.sqrt(weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
    weight = weight / layer.magnitude_ema.sqrt()
    x = F.conv2d(x, weight, padding=layer.conv_kernel - 1)
    return filtered_lrelu_reference(
        x, layer.up_filter, layer.down_filter, layer.bias,
        up=layer.up_factor, down=layer.down_factor, padding=layer.padding,
        gain=1.0 if layer.is_torgb else math.sqrt(2), slope=1.0 if layer.is_torgb else 0.2, clamp=layer.conv_clamp,
    )  # fmt: skip


def baseline_synthesis(G: StyleGAN3Generator, ws: torch.Tensor) -> torch.Tensor:
    synthesis = G.synthesis
    layers = [getattr(synthesis, name) for name in synthesis.layer_names]
    # NVIDIA normalises styles by their RMS over the whole batch (it cancels in demodulation).
    style_rms = [layer.affine(ws[:, i + 1]).square().mean().sqrt() for i, layer in enumerate(layers)]
    images = []
    for b in range(ws.shape[0]):
        x = synthesis.input(ws[b : b + 1, 0])
        for i, layer in enumerate(layers):
            x = baseline_layer(layer, x, ws[b : b + 1, i + 1], style_rms[i])
        images.append(x * synthesis.output_scale)
    return torch.cat(images)


# ------------------------------------------------------------------------------------------------


def timed(fn, warmup: int, reps: int) -> tuple[float, float, list[float]]:
    """Median wall seconds, median process-CPU seconds, and the wall times."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G = lhq_shaped_generator().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with torch.no_grad():
        ws = G.mapping(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)).to(device))
        fast, slow = G.synthesis(ws), baseline_synthesis(G, ws)
        rel = ((fast - slow).abs().max() / slow.abs().max()).item()
    print(f"fast vs baseline max difference: {rel:.2e} of the output range (max |x| {slow.abs().max().item():.3f})")
    assert rel < 1e-4, "the contenders disagree"

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        with torch.no_grad():
            ws = G.mapping(torch.randn(batch, 512, generator=torch.Generator().manual_seed(2)).to(device))
            contenders = {"latentmap": lambda: (G.synthesis(ws), sync())}
            if not args.no_baseline:
                contenders["unfused baseline"] = lambda: (baseline_synthesis(G, ws), sync())
            for name, fn in contenders.items():
                wall, cpu, walls = timed(fn, args.warmup, args.reps)
                rows.append({"batch": batch, "contender": name, "median_s": wall, "median_cpu_s": cpu,
                             "times_s": walls, "images_per_s": batch / wall})
                print(f"batch {batch:2d} {name:<17} wall {wall:8.2f} s ({batch / wall:6.3f} img/s)  cpu {cpu:8.2f} s  runs {['%.2f' % t for t in walls]}", flush=True)

    print()
    print("| batch | contender | median wall s / batch | images/s | CPU s / batch | speed-up (wall) | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        base = next((r for r in rows if r["batch"] == row["batch"] and r["contender"] == "unfused baseline"), None)
        ratio = f"{base['median_s'] / row['median_s']:.2f}x" if base else "-"
        ratio_cpu = f"{base['median_cpu_s'] / row['median_cpu_s']:.2f}x" if base else "-"
        print(f"| {row['batch']} | {row['contender']} | {row['median_s']:.2f} | {row['images_per_s']:.3f} | {row['median_cpu_s']:.2f} | {ratio} | {ratio_cpu} |")
    if args.json:
        meta = {"network": "stylegan3-t lhq-256 shape", "threads": args.threads, "device": str(device),
                "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
