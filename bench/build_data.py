"""Benchmark of build-data: wall time against the forward passes alone, peak memory, and a per-file baseline.

For each world (generator + encoder) and the same samples, batch size and shard size:
- floor: draw latents (as build-data does), synthesise, embed, results to the CPU; nothing stored;
- build-data: ``build_dataset`` into a fresh folder (shards, checksums, statistics, manifest);
- npy-per-sample: the floor loop plus ``np.save`` of every sample's latent and embedding into two
  files of their own (the one-file-per-sample layout of the original code).
One warm-up, then ``--runs`` runs of each, interleaved; medians and ratios to the floor are printed.
``--rss`` also builds 10k and 200k samples of the tiny test world in fresh subprocesses and prints
their peak resident memory (goal: the same).

    python bench/build_data.py                    # all worlds available, 3 runs
    python bench/build_data.py --worlds tiny-test --samples 20000 --rss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny test plugin

import latentmap  # noqa: E402
from latentmap.data.builder import BuildConfig, build_dataset, latent_batches, plan_shards  # noqa: E402
from latentmap.data.seeds import shard_generator  # noqa: E402


def tiny_stylegan_weights(folder: Path) -> Path:
    """The random tiny StyleGAN2 fixture (32 px, 8 layers of 32-d w) as a converted-network file."""
    from safetensors.torch import load_file, save_file

    source = REPO / "tests" / "fixtures" / "stylegan" / "sg2_tiny"
    config = json.loads((source / "config.json").read_text())
    path = folder / "sg2_tiny.safetensors"
    metadata = {"format": "latentmap-stylegan", "format_version": "1", "class": "stylegan2",
                "init_kwargs": json.dumps(config["init_kwargs"]), "source": "tests/fixtures/stylegan/sg2_tiny",
                "network": "G_ema"}
    save_file(load_file(source / "weights.safetensors"), path, metadata=metadata)
    return path


def make_world(name: str, scratch: Path):
    """(generator, encoder) of a named benchmark world, or None if its plugin is not installed."""
    if name == "tiny-test":
        import helpers_tiny

        helpers_tiny.ensure_registered()
        return latentmap.get_generator("tiny-test", space="w3"), latentmap.get_encoder("tiny-test")
    if name == "tiny-stylegan2+tiny-openclip":
        generator = latentmap.get_generator("stylegan2", weights=str(tiny_stylegan_weights(scratch)), device="cpu")
        encoder = latentmap.get_encoder(f"openclip:{REPO / 'bench' / 'tiny_clip_config.json'}", device="cpu")
        return generator, encoder
    if name == "shapes":
        try:
            return latentmap.get_generator("shapes"), latentmap.get_encoder("shapes-clip")
        except latentmap.LatentmapError as exc:
            print(f"skipping the shapes world: {exc}")
            return None
    raise SystemExit(f"unknown world {name!r}")


@torch.inference_mode()
def forward_passes(generator, encoder, samples: int, batch_size: int, shard_size: int, sink=None) -> None:
    """What build-data computes, without storing anything (``sink`` receives each batch's results)."""
    for index, count in enumerate(plan_shards(samples, shard_size)):
        for latents in latent_batches(generator, count, shard_generator(0, index), batch_size):
            latents = latents.to(generator.device)
            embeddings = encoder.embed_image(generator.synthesize(latents))
            latents, embeddings = latents.cpu(), embeddings.cpu()
            if sink is not None:
                sink(latents, embeddings)


def npy_per_sample(generator, encoder, samples: int, batch_size: int, shard_size: int, folder: Path) -> None:
    (folder / "latents").mkdir(parents=True)
    (folder / "embeddings").mkdir()
    counter = iter(range(samples))

    def save(latents, embeddings) -> None:
        for latent, embedding in zip(latents.numpy(), embeddings.numpy()):
            i = next(counter)
            np.save(folder / "latents" / f"{i:08d}.npy", latent)
            np.save(folder / "embeddings" / f"{i:08d}.npy", embedding)

    forward_passes(generator, encoder, samples, batch_size, shard_size, sink=save)


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def bench_world(name: str, args, scratch: Path) -> dict | None:
    world = make_world(name, scratch)
    if world is None:
        return None
    generator, encoder = world
    sizes = (args.samples, args.batch_size, args.shard_size)
    times: dict[str, list[float]] = {"floor": [], "build-data": [], "npy-per-sample": []}

    def run_all() -> dict[str, float]:
        out = scratch / f"{name}-run"
        shutil.rmtree(out, ignore_errors=True)
        config = BuildConfig(out=out / "shards", samples=args.samples, batch_size=args.batch_size,
                             shard_size=args.shard_size, progress=False)
        result = {
            "floor": timed(forward_passes, generator, encoder, *sizes),
            "build-data": timed(build_dataset, generator, encoder, config),
            "npy-per-sample": timed(npy_per_sample, generator, encoder, *sizes, out / "npy"),
        }
        shutil.rmtree(out, ignore_errors=True)
        return result

    run_all()  # warm-up
    for _ in range(args.runs):
        for key, seconds in run_all().items():
            times[key].append(seconds)
    medians = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n{name}: {args.samples} samples, batch {args.batch_size}, shard {args.shard_size}, {args.runs} runs")
    for key, median in medians.items():
        print(f"  {key:<15} median {median:8.3f} s  {args.samples / median:9.0f} samples/s  "
              f"x{median / medians['floor']:.3f} of floor   runs: {', '.join(f'{t:.3f}' for t in times[key])}")
    return medians


def rss_child(samples: int, folder: str) -> None:
    """Build ``samples`` of the tiny test world and print this process's peak RSS in MiB."""
    import helpers_tiny

    torch.set_num_threads(1)
    helpers_tiny.ensure_registered()
    generator, encoder = latentmap.get_generator("tiny-test", space="w3"), latentmap.get_encoder("tiny-test")
    build_dataset(generator, encoder, BuildConfig(out=Path(folder), samples=samples, batch_size=256,
                                                  shard_size=10_000, progress=False))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_rss(scratch: Path, sizes: list[int]) -> None:
    print("\npeak RSS, tiny test world, shard 10000, batch 256 (fresh process each):")
    for samples in sizes:
        folder = scratch / f"rss-{samples}"
        started = time.perf_counter()
        output = subprocess.run([sys.executable, __file__, "--rss-child", str(samples), str(folder)],
                                check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        print(f"  {samples:>7} samples: peak RSS {float(output.stdout.split()[-1]):7.1f} MiB "
              f"({time.perf_counter() - started:.1f} s)")
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="*", default=["tiny-test", "tiny-stylegan2+tiny-openclip", "shapes"])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: comparable on a shared machine)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS for 10k vs 200k samples")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[10_000, 200_000])
    parser.add_argument("--rss-child", nargs=2, metavar=("SAMPLES", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(int(args.rss_child[0]), args.rss_child[1])
        return
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs visible")
    with tempfile.TemporaryDirectory(prefix="latentmap-bench-") as scratch:
        for world in args.worlds:
            bench_world(world, args, Path(scratch))
        if args.rss:
            bench_rss(Path(scratch), args.rss_sizes)


if __name__ == "__main__":
    main()
