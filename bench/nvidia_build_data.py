"""build-data at real sizes against clip2latent's way of making the same (latent, CLIP image embedding) pairs.

Same networks on both sides (nvidia_nets.py): a random StyleGAN2 config-F 1024 px pickle made by
NVIDIA's code, and a random ViT-B-32 (OpenAI's architecture) in open_clip; same samples, batch size
and folder/shard size; one process, contenders interleaved, medians of ``--runs`` after a small warm-up.

* ``forward only``: latentmap's generator + encoder on the batches build-data draws, nothing stored
  (the floor build-data is measured against);
* ``latentmap build-data``: ``build_dataset`` into a fresh folder (memory check, shards, checksums,
  statistics, manifest);
* ``clip2latent workflow``: clip2latent's data generation, done with NVIDIA's generator and open_clip:
  ``G.mapping`` of the folder's z, then per batch ``G.synthesis``, area-resize to 256, clip2latent's
  CLIP input (area-resize to 224, its double normalisation), ``encode_image``, one ``.npy`` per sample
  for the latent and for the embedding written by a thread pool, then each folder packed into a tar
  (its make_webdataset step). NVIDIA's noise is ``const`` (as latentmap's default) so both sides make
  pairs of the same distribution.

It also checks that both sides embed the same pixels alike (cosine of latentmap's and the clip2latent
path's embeddings for the same latents) and, with ``--rss``, measures the peak resident memory of
latentmap's build at two dataset sizes in fresh processes (goal: flat).

    bench/.peers/bin/python bench/nvidia_build_data.py --samples 24 --batch-size 4 --shard-size 12 --runs 2 \
        --threads 2 --precisions bfloat16
    bench/.peers/bin/python bench/nvidia_build_data.py --rss-only --rss 12 36 --batch-size 4 --shard-size 12
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nvidia_nets
import timing

import latentmap
from latentmap.data.builder import (
    BuildConfig,
    build_dataset,
    latent_batches,
    plan_shards,
)
from latentmap.data.seeds import shard_generator

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip2latent_embed(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """clip2latent's image embedding, from its description: area 256, then area to the model's size (224),
    normalise, clamp to [0, 1], normalise again."""
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    images = F.interpolate(images, (256, 256), mode="area")
    size = model.visual.image_size  # 224 for ViT-B-32
    pixels = F.interpolate(images, tuple(size) if isinstance(size, (tuple, list)) else (size, size), mode="area")
    pixels = ((0.5 * pixels + 0.5 - mean) / std).clamp(0, 1)
    return model.encode_image((pixels - mean) / std)


def clip2latent_workflow(G: torch.nn.Module, clip: torch.nn.Module, samples: int, batch_size: int, folder_size: int,
                         out: Path, device: torch.device, seed: int = 0, workers: int = 16) -> None:
    """Folders of one .npy per latent and per embedding, written by a thread pool, then one tar per folder."""
    raw, tars = out / "raw", out / "webdataset"
    raw.mkdir(parents=True)
    tars.mkdir()
    torch.manual_seed(seed)
    with torch.no_grad(), ThreadPoolExecutor(workers) as pool:
        for folder_index, count in enumerate(plan_shards(samples, folder_size)):
            folder = raw / f"{folder_index:05d}"
            folder.mkdir()
            w_all = G.mapping(torch.randn(count, G.z_dim, device=device), None)
            for batch_index, start in enumerate(range(0, count, batch_size)):
                w = w_all[start : start + batch_size]
                images = G.synthesis(w, noise_mode="const")
                features = clip2latent_embed(clip, images).cpu().numpy()
                latents = w[:, 0, :].cpu().numpy()

                def save(i: int, latent: np.ndarray, feature: np.ndarray, base: int = start) -> None:
                    stem = folder / f"{folder.name}{base + i:04d}"
                    np.save(stem.with_suffix(".latent.npy"), latent)
                    np.save(stem.with_suffix(".img_feat.npy"), feature)

                list(pool.map(save, range(len(latents)), latents, features))
            with tarfile.open(tars / f"{folder.name}.tar", "w") as tar:
                for path in sorted(folder.rglob("*")):
                    tar.add(path)


@torch.inference_mode()
def forward_only(generator: Any, encoder: Any, samples: int, batch_size: int, shard_size: int) -> None:
    """What build-data computes (its latent draws, synthesis, embedding, results on the CPU), nothing stored."""
    for index, count in enumerate(plan_shards(samples, shard_size)):
        for latents in latent_batches(generator, count, shard_generator(0, index), batch_size):
            encoder.embed_image(generator.synthesize(latents.to(generator.device))).cpu()


def same_pixels_check(generator: Any, encoder: Any, G: torch.nn.Module, clip: torch.nn.Module, device: torch.device) -> float:
    """Lowest cosine between latentmap's embeddings and the clip2latent path's for the same 2 latents."""
    with torch.no_grad():
        latents = generator.sample_latents(2, generator=torch.Generator().manual_seed(5)).to(device)
        ours = encoder.embed_image(generator.synthesize(latents))
        theirs = clip2latent_embed(clip, G.synthesis(latents.expand(-1, G.num_ws, -1), noise_mode="const"))
    return F.cosine_similarity(ours, theirs.float(), dim=-1).min().item()


def rss_child(args: argparse.Namespace) -> None:
    """Build ``--samples`` pairs in this fresh process and print its peak RSS (MiB) and build time."""
    torch.set_num_threads(args.threads)
    generator, encoder = load_latentmap_side(args.device)
    started = time.perf_counter()
    build_dataset(generator, encoder, BuildConfig(out=Path(args.rss_child), samples=args.samples,
                                                  batch_size=args.batch_size, shard_size=args.shard_size, progress=False))
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": time.perf_counter() - started}))


def load_latentmap_side(device: str, network: str = "sg2-ffhq-1024", tiny_clip: bool = False):
    generator = nvidia_nets.load_latentmap(nvidia_nets.nvidia_pickle(network), device=device)
    spec, options = nvidia_nets.encoder_spec(nvidia_nets.random_vit_b32(tiny=tiny_clip))
    return generator, latentmap.get_encoder(spec, device=device, **options)


def rss_at_sizes(args: argparse.Namespace, sizes: list[int], scratch: Path) -> list[dict[str, Any]]:
    rows = []
    for samples in sizes:
        folder = scratch / f"rss-{samples}"
        command = [sys.executable, __file__, "--rss-child", str(folder), "--samples", str(samples), "--batch-size",
                   str(args.batch_size), "--shard-size", str(args.shard_size), "--threads", str(args.threads),
                   "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(output.stdout.strip().splitlines()[-1])
        rows.append({"samples": samples, **result})
        print(f"  {samples:>5} samples: peak RSS {result['peak_rss_mib']:8.1f} MiB ({result['seconds']:.1f} s)", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def embedding_agreement(reference: Path, other: Path) -> dict[str, float]:
    """Cosine between the stored embeddings of two builds of the same pairs (min and mean)."""
    from latentmap.data.manifest import load_manifest
    from latentmap.data.shards import read_shard

    def embeddings(root: Path) -> torch.Tensor:
        manifest = load_manifest(root)
        return torch.cat([read_shard(root / entry["file"])[1] for entry in manifest.shards]).float()

    cosine = F.cosine_similarity(embeddings(reference), embeddings(other), dim=-1)
    return {"min_cosine": cosine.min().item(), "mean_cosine": cosine.mean().item()}


def run(*, samples: int, batch_size: int, shard_size: int, runs: int, device: str = "cpu", network: str = "sg2-ffhq-1024",
        tiny_clip: bool = False, warmup_samples: int | None = None, rss_sizes: list[int] | None = None,
        precisions: tuple[str, ...] = (), args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Medians of the three contenders (what bench/gpu.py calls); ``rss_sizes`` also measures peak memory."""
    target = torch.device(device)
    generator, encoder = load_latentmap_side(device, network, tiny_clip)
    G = nvidia_nets.load_nvidia(nvidia_nets.nvidia_pickle(network), device=device)
    clip = nvidia_nets.open_clip_model(nvidia_nets.random_vit_b32(tiny=tiny_clip)).to(target)
    cosine = same_pixels_check(generator, encoder, G, clip, target)
    print(f"same latents, latentmap vs the clip2latent path: embedding cosine >= {cosine:.6f}", flush=True)
    sync = timing.sync_for(target)
    with tempfile.TemporaryDirectory(prefix="latentmap-bench-") as scratch_name:
        scratch = Path(scratch_name)

        def contenders(count: int) -> dict[str, Any]:
            def ours(precision: str = "float32") -> None:
                out = scratch / f"latentmap-{precision}"
                shutil.rmtree(out, ignore_errors=True)
                build_dataset(generator, encoder, BuildConfig(out=out, samples=count, batch_size=batch_size,
                                                              shard_size=shard_size, progress=False,
                                                              precision=precision))

            def theirs() -> None:
                out = scratch / "clip2latent"
                shutil.rmtree(out, ignore_errors=True)
                clip2latent_workflow(G, clip, count, batch_size, shard_size, out, target)

            chosen = {"forward only": lambda: forward_only(generator, encoder, count, batch_size, shard_size),
                      "latentmap build-data": ours, "clip2latent workflow": theirs}
            for precision in precisions:
                chosen[f"latentmap build-data {precision}"] = lambda precision=precision: ours(precision)
            return chosen

        timing.interleaved(contenders(warmup_samples or batch_size), warmup=1, reps=0, sync=sync)
        print("warm-up done", flush=True)
        cpu: dict[str, list[float]] = {}
        load_before = timing.load_average()
        times = timing.interleaved(contenders(samples), warmup=0, reps=runs, sync=sync, cpu=cpu,
                                   report=lambda name, seconds: print(f"  {name}: {seconds:.1f} s", flush=True))
        load_after = timing.load_average()
        agreement = {precision: embedding_agreement(scratch / "latentmap-float32", scratch / f"latentmap-{precision}")
                     for precision in precisions}
        rss = rss_at_sizes(args, rss_sizes, scratch) if rss_sizes and args is not None else []
    medians = {name: timing.median(values) for name, values in times.items()}
    cpu_medians = {name: timing.median(values) for name, values in cpu.items()}
    rows = [{"contender": name, "median_s": seconds, "s_per_sample": seconds / samples,
             "vs_forward_only": seconds / medians["forward only"],
             "speedup_vs_clip2latent": medians["clip2latent workflow"] / seconds, "times_s": times[name],
             "cpu_median_s": cpu_medians[name], "cpu_speedup_vs_clip2latent": cpu_medians["clip2latent workflow"]
             / cpu_medians[name], "cpu_times_s": cpu[name],
             **agreement.get(name.rsplit(" ", 1)[-1] if name.startswith("latentmap build-data ") else "", {})}
            for name, seconds in medians.items()]
    meta = {"machine": timing.machine(target), "device": device, "network": network, "samples": samples,
            "batch_size": batch_size, "shard_size": shard_size, "runs": runs, "embedding_cosine": cosine,
            "load_before": load_before, "load_after": load_after}
    return {"meta": meta, "rows": rows, "rss": rss, "markdown": markdown(rows, rss, meta)}


def markdown(rows: list[dict[str, Any]], rss: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    table = timing.markdown_table(
        ["contender", "median s", "s / sample", "x forward only", "speed-up vs clip2latent", "CPU s",
         "CPU-time speed-up vs clip2latent", "embedding cosine to float32"],
        [[r["contender"], f"{r['median_s']:.1f}", f"{r['s_per_sample']:.3f}", f"{r['vs_forward_only']:.3f}",
          f"**{r['speedup_vs_clip2latent']:.2f}x**", f"{r['cpu_median_s']:.1f}",
          f"**{r['cpu_speedup_vs_clip2latent']:.2f}x**",
          f"min {r['min_cosine']:.5f}, mean {r['mean_cosine']:.5f}" if "min_cosine" in r else "-"] for r in rows])
    lines = [table, "", f"- {meta['samples']} samples, batch {meta['batch_size']}, shard/folder {meta['shard_size']}, "
             f"{meta['runs']} runs; same latents embed alike on both paths (cosine >= {meta['embedding_cosine']:.6f}); "
             f"load average {meta['load_before']} before, {meta['load_after']} after the timed runs"]
    if rss:
        lines.append("- peak RSS of latentmap's build (fresh process): " + ", ".join(
            f"{r['samples']} samples {r['peak_rss_mib']:.0f} MiB" for r in rss))
    lines.append(f"- machine: {meta['machine']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=24, help="latentmap shard size = clip2latent folder size")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rss", type=int, nargs="*", metavar="SAMPLES",
                        help="peak RSS of latentmap's build at these sizes, fresh processes (e.g. --rss 16 64)")
    parser.add_argument("--precisions", nargs="*", default=[], choices=["bfloat16", "float16"],
                        help="also time latentmap's build in these precisions (and compare its embeddings with float32)")
    parser.add_argument("--rss-only", action="store_true", help="only the peak-RSS measurement (--rss sizes)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    torch.set_num_threads(args.threads)
    if args.rss_only:
        with tempfile.TemporaryDirectory(prefix="latentmap-bench-") as scratch:
            print(f"peak RSS of latentmap's build, batch {args.batch_size}, shard {args.shard_size} (fresh processes):")
            rows = rss_at_sizes(args, args.rss or [args.shard_size, 3 * args.shard_size], Path(scratch))
        print(json.dumps({"rss": rows, "load_average": timing.load_average()}))
        return
    timing.report(run(samples=args.samples, batch_size=args.batch_size, shard_size=args.shard_size, runs=args.runs,
                      device=args.device, rss_sizes=args.rss, precisions=tuple(args.precisions), args=args), args.json)


if __name__ == "__main__":
    main()
