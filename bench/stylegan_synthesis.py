"""StyleGAN2 synthesis speed: latentmap's network vs a straightforward unfused version of the same layers.

Network: StyleGAN2 config F shape (w 512, channel_base 32768, channel_max 512, conv_clamp 256,
skip architecture) at ``--resolution`` (1024 = FFHQ), random weights. Both contenders read the
*same* module's parameters and the script checks they produce the same images first.

The baseline is what one writes straight from the paper: a Python loop over the batch; for each
sample the style-modulated, demodulated weight is built and applied with ``conv2d``; an upsampling
layer inserts zeros, convolves at the full resolution and applies the 2-D FIR filter; the image
path upsamples by zero insertion + 2-D FIR; noise, bias, activation, gain and clamp are separate
out-of-place ops.

    python bench/stylegan_synthesis.py --resolution 1024 --batches 1,8 --reps 3 --threads 2

Prints a markdown table (median seconds per batch, images/s, speed-up) and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from latentmap_stylegan import stylegan2 as sg2
from latentmap_stylegan.ops import upfirdn2d, upsample2d
from latentmap_stylegan.stylegan2 import StyleGAN2Generator


def config_f(resolution: int) -> StyleGAN2Generator:
    """Config-F shaped generator with random weights (and non-zero noise strengths)."""
    torch.manual_seed(0)
    G = StyleGAN2Generator(
        z_dim=512, c_dim=0, w_dim=512, img_resolution=resolution, img_channels=3,
        mapping_kwargs={"num_layers": 8}, channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
    ).eval().requires_grad_(False)
    for name, param in G.named_parameters():
        if name.endswith("noise_strength"):
            param.fill_(0.1)
    return G


# ------------------------------------------------------------------------------------------------
# The unfused baseline: same parameters, textbook operations.


def baseline_layer(layer: sg2.SynthesisLayer, x: torch.Tensor, w: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """One sample (1, in, H, W) through a SynthesisLayer, op by op."""
    styles = layer.affine(w)  # (1, in)
    weight = layer.weight * styles.view(1, -1, 1, 1)
    weight = weight / torch.sqrt(weight.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
    if layer.up == 2:
        # transposed conv == zero insertion + full-resolution conv with the flipped kernel
        x = upfirdn2d(x, None, up=2, padding=(2, 1, 2, 1))
        x = F.conv2d(x, weight.flip([2, 3]))
        x = upfirdn2d(x, layer.resample_filter, padding=1, gain=4)
    else:
        x = F.conv2d(x, weight, padding=1)
    if layer.use_noise:
        x = x + layer.noise_const * layer.noise_strength
    x = x + layer.bias.view(1, -1, 1, 1)
    x = F.leaky_relu(x, 0.2)
    x = x * (math.sqrt(2) * gain)
    if layer.conv_clamp is not None:
        x = torch.clamp(x, -layer.conv_clamp * gain, layer.conv_clamp * gain)
    return x


def baseline_torgb(layer: sg2.ToRGBLayer, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    styles = layer.affine(w) * layer.weight_gain
    x = F.conv2d(x, layer.weight * styles.view(1, -1, 1, 1))
    x = x + layer.bias.view(1, -1, 1, 1)
    return torch.clamp(x, -layer.conv_clamp, layer.conv_clamp) if layer.conv_clamp is not None else x


def baseline_synthesis(G: StyleGAN2Generator, ws: torch.Tensor) -> torch.Tensor:
    """Skip architecture, one sample at a time."""
    images = []
    for b in range(ws.shape[0]):
        x = img = None
        w_idx = 0
        for res in G.synthesis.block_resolutions:
            block = getattr(G.synthesis, f"b{res}")
            block_ws = ws[b : b + 1, w_idx : w_idx + block.num_conv + block.num_torgb]
            w_idx += block.num_conv
            k = 0
            if block.in_channels == 0:
                x = block.const.unsqueeze(0)
            else:
                x = baseline_layer(block.conv0, x, block_ws[:, k])
                k += 1
            x = baseline_layer(block.conv1, x, block_ws[:, k])
            k += 1
            if img is not None:
                img = upsample2d(img, block.resample_filter)
            y = baseline_torgb(block.torgb, x, block_ws[:, k])
            img = y if img is None else img + y
        images.append(img)
    return torch.cat(images)


# ------------------------------------------------------------------------------------------------


def interleaved_medians(contenders: dict, warmup: int, reps: int) -> dict[str, list[float]]:
    """Time every contender once per round, rounds repeated: shared-machine noise hits all alike."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds at batch 1 (one fewer at larger batches)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="also time latentmap under bfloat16 autocast")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G = config_f(args.resolution).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    with torch.no_grad():
        ws = G.mapping(torch.randn(2, 512, generator=torch.Generator().manual_seed(1)).to(device))
        fast, slow = G.synthesis(ws), baseline_synthesis(G, ws)
        rel = ((fast - slow).abs().max() / slow.abs().max()).item()
    print(f"fast vs baseline max difference: {rel:.2e} of the output range")
    assert rel < 1e-4, "the contenders disagree"

    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        with torch.no_grad():
            ws = G.mapping(torch.randn(batch, 512, generator=torch.Generator().manual_seed(2)).to(device))

            def run(fn, autocast=None):
                def call():
                    with (torch.autocast(device.type, dtype=autocast) if autocast else nullcontext()):
                        fn(ws)
                    sync()
                return call

            contenders = {"latentmap": run(G.synthesis)}
            if args.bf16:
                contenders["latentmap bf16 autocast"] = run(G.synthesis, torch.bfloat16)
            if not args.no_baseline:
                contenders["unfused baseline"] = run(lambda w: baseline_synthesis(G, w))
            reps = args.reps if batch == 1 else max(1, args.reps - 1)
            warmup = args.warmup if batch == 1 else 0  # batch-1 rounds already warmed the kernels up
            times = interleaved_medians(contenders, warmup, reps)
            results = {name: statistics.median(t) for name, t in times.items()}
            for name, med in results.items():
                rows.append({"batch": batch, "contender": name, "median_s": med, "times_s": times[name],
                             "images_per_s": batch / med})
                print(f"batch {batch:2d} {name:<26} median {med:8.3f} s  ({batch / med:6.3f} img/s)  "
                      f"runs {['%.2f' % t for t in times[name]]}", flush=True)
            if "unfused baseline" in results:
                for name, med in results.items():
                    if name != "unfused baseline":
                        print(f"batch {batch:2d} {name} speed-up vs baseline: {results['unfused baseline'] / med:.2f}x")

    print()
    print(f"| batch | contender | median s / batch | images/s | vs baseline |")
    print("|---|---|---|---|---|")
    for row in rows:
        base = next((r["median_s"] for r in rows if r["batch"] == row["batch"] and r["contender"] == "unfused baseline"), None)
        ratio = f"{base / row['median_s']:.2f}x" if base else "-"
        print(f"| {row['batch']} | {row['contender']} | {row['median_s']:.2f} | {row['images_per_s']:.3f} | {ratio} |")
    if args.json:
        meta = {"resolution": args.resolution, "threads": args.threads, "device": str(device),
                "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
