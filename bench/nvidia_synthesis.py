"""StyleGAN synthesis: latentmap against NVIDIA's own code, same pickle, same process, interleaved.

Networks (random weights of the published shapes, pickled by NVIDIA's code; see nvidia_nets.py):
StyleGAN2 config F at 1024 px (FFHQ) and StyleGAN3-T at 256 px (LHQ). For each network and batch:

* ``nvidia float32``: NVIDIA's ``G.synthesis`` (on a GPU with its custom CUDA ops, compiled with nvcc at
  first use; on the CPU, or if that compile fails, NVIDIA's own reference path, which the table says);
* ``latentmap float32``: latentmap's network loaded from the same pickle;
* ``latentmap bf16`` (and ``fp16`` on a GPU): the same under the precision option's autocast, with its
  error against latentmap float32 (max and mean absolute difference, as a share of the image range 2);
* ``nvidia bf16``/``fp16``: NVIDIA's code under the same autocast, on a GPU only (on the CPU its layers
  assert float32 inputs under autocast).

Rounds: ``--warmup`` untimed and ``--reps`` timed at the first batch size, one timed round fewer (at
least one) and no warm-up at the larger ones. Parity of the two float32 outputs is checked first (max difference as a share of the output's max).
Run under the peers' python:

    bench/.peers/bin/python bench/nvidia_synthesis.py --networks sg2-ffhq-1024 sg3-t-256 --batches 1 8 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nvidia_nets
import timing

from latentmap.precision import autocast as autocast_for

HALF_PRECISIONS = {"cpu": ("bfloat16",), "cuda": ("bfloat16", "float16")}


def nvidia_ops_path(device: torch.device) -> str:
    """Which implementation NVIDIA's custom ops used: their CUDA plugins or their reference (pure PyTorch) path."""
    if device.type != "cuda":
        return "reference path (CPU)"
    nvidia_nets.import_nvidia()  # puts NVIDIA's code on sys.path
    from torch_utils.ops import bias_act, filtered_lrelu, upfirdn2d

    compiled = [name for name, module in (("bias_act", bias_act), ("upfirdn2d", upfirdn2d),
                                          ("filtered_lrelu", filtered_lrelu)) if getattr(module, "_plugin", None) is not None]
    return f"CUDA plugins ({', '.join(compiled)})" if compiled else "reference path (CUDA plugins failed to compile)"


def bench_network(name: str, batches: list[int], *, device: torch.device, reps: int, warmup: int,
                  folder: Path | None = None) -> dict[str, Any]:
    """Rows of one network: median seconds per batch of every contender, ratios and errors."""
    path = nvidia_nets.nvidia_pickle(name, folder=folder)
    nvidia = nvidia_nets.load_nvidia(path, device=str(device))
    ours = nvidia_nets.load_latentmap(path, device=str(device)).network
    sync = timing.sync_for(device)
    force_fp32 = device.type == "cpu"  # NVIDIA's fp16 layers are meant for the GPU
    synth_kwargs = {"noise_mode": "const"} | ({"force_fp32": True} if force_fp32 else {})
    rows = []
    with torch.no_grad():
        z = torch.randn(2, nvidia.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
        ws = nvidia.mapping(z, None)
        reference, mine = nvidia.synthesis(ws, **synth_kwargs).float(), ours.synthesis(ws, noise_mode="const").float()
        parity = ((reference - mine).abs().max() / reference.abs().max()).item()
        for position, batch in enumerate(batches):
            z = torch.randn(batch, nvidia.z_dim, generator=torch.Generator().manual_seed(2)).to(device)
            ws = nvidia.mapping(z, None)
            contenders = {
                "nvidia float32": lambda: nvidia.synthesis(ws, **synth_kwargs),
                "latentmap float32": lambda: ours.synthesis(ws, noise_mode="const"),
            }
            errors: dict[str, tuple[float, float]] = {}
            full = ours.synthesis(ws, noise_mode="const").float().clamp(-1, 1)
            for precision in HALF_PRECISIONS.get(device.type, ()):
                def ours_half(precision: str = precision) -> torch.Tensor:
                    with autocast_for(precision, device):
                        return ours.synthesis(ws, noise_mode="const")

                def nvidia_half(precision: str = precision) -> torch.Tensor:
                    with autocast_for(precision, device):
                        return nvidia.synthesis(ws, **synth_kwargs)

                short = "bf16" if precision == "bfloat16" else "fp16"
                difference = (ours_half().float().clamp(-1, 1) - full).abs()
                errors[f"latentmap {short}"] = (difference.max().item() / 2, difference.mean().item() / 2)
                contenders[f"latentmap {short}"] = ours_half
                if device.type != "cuda":
                    continue  # NVIDIA's half-precision path is its GPU fp16 layers; its CPU code asserts float32
                try:
                    nvidia_half()
                    contenders[f"nvidia {short}"] = nvidia_half
                except Exception as exc:
                    print(f"{name}: NVIDIA's code does not run under {precision} autocast here: {type(exc).__name__}: {exc}")
            # the first batch size's rounds warm the kernels up; larger batches get one round fewer (they are long)
            cpu: dict[str, list[float]] = {}
            load_before = timing.load_average()
            times = timing.interleaved(contenders, warmup=warmup if position == 0 else 0,
                                       reps=reps if position == 0 else max(1, reps - 1), sync=sync, cpu=cpu)
            load_after = timing.load_average()
            base, cpu_base = timing.median(times["nvidia float32"]), timing.median(cpu["nvidia float32"])
            for contender, values in times.items():
                seconds, cpu_seconds = timing.median(values), timing.median(cpu[contender])
                row = {"network": name, "resolution": nvidia.img_resolution, "batch": batch, "contender": contender,
                       "median_s": seconds, "images_per_s": batch / seconds, "vs_nvidia_float32": base / seconds,
                       "cpu_median_s": cpu_seconds, "cpu_vs_nvidia_float32": cpu_base / cpu_seconds,
                       "times_s": values, "cpu_times_s": cpu[contender], "load_before": load_before,
                       "load_after": load_after}
                if contender in errors:
                    row["max_error"], row["mean_error"] = errors[contender]
                rows.append(row)
                print(f"{name} batch {batch} {contender:<18} median {seconds:8.3f} s  x{base / seconds:5.2f} of NVIDIA float32"
                      f"  (CPU {cpu_seconds:8.3f} s  x{cpu_base / cpu_seconds:5.2f}; load {load_before} -> {load_after})"
                      + (f"  error max {errors[contender][0]:.2%} mean {errors[contender][1]:.3%}" if contender in errors else ""),
                      flush=True)
    return {"network": name, "description": nvidia_nets.SHAPES[name].description, "parity": parity,
            "nvidia_ops": nvidia_ops_path(device), "rows": rows}


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md's 'StyleGAN synthesis vs NVIDIA' section."""
    rows = []
    for result in results:
        for row in result["rows"]:
            error = (f"max {row['max_error']:.2%}, mean {row['mean_error']:.3%}" if "max_error" in row else "-")
            rows.append([result["description"], row["batch"], row["contender"], f"{row['median_s']:.3f}",
                         f"{row['images_per_s']:.3f}", f"{row['vs_nvidia_float32']:.2f}x",
                         f"{row['cpu_median_s']:.3f}", f"**{row['cpu_vs_nvidia_float32']:.2f}x**", error])
    table = timing.markdown_table(["network", "batch", "contender", "median s / batch", "images/s",
                                   "vs NVIDIA float32", "median CPU s / batch", "CPU time vs NVIDIA float32",
                                   "error vs float32 (share of range)"], rows)
    notes = [f"- {r['description']}: float32 parity with NVIDIA {r['parity']:.1e} of the output max; "
             f"NVIDIA's ops: {r['nvidia_ops']}" for r in results]
    return "\n".join([table, "", *notes, f"- machine: {meta['machine']}"])


def run(networks: list[str], batches: list[int], *, device: str = "cpu", reps: int = 3, warmup: int = 1,
        folder: Path | None = None) -> dict[str, Any]:
    """Every network's results plus the machine description (what bench/gpu.py calls)."""
    target = torch.device(device)
    results = [bench_network(name, batches, device=target, reps=reps, warmup=warmup, folder=folder) for name in networks]
    meta = {"machine": timing.machine(target), "device": str(target), "reps": reps, "warmup": warmup}
    return {"meta": meta, "results": results, "markdown": markdown(results, meta)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", default=["sg2-ffhq-1024", "sg3-t-256"], choices=list(nvidia_nets.SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timing.report(run(args.networks, args.batches, device=args.device, reps=args.reps, warmup=args.warmup), args.json)


if __name__ == "__main__":
    main()
