"""Training speed: steps/s of the real training step, fed by the shard reader vs in-memory tensors.

For each prior size (``small``: the shapes-world prior; ``paper``: clip2latent's 48.8M-parameter
prior) a dataset is built with the tiny test world (the generator and encoder do not matter to the
reader, only the latent/embedding sizes do), then the same training step (LAFITE noise, loss,
backward, clipping, AdamW, EMA) runs with batches from ``ShardDataset`` and from tensors already in
memory. Warm-up steps first, then several timed runs; the median is reported with the reader's cost
as a share of the step time (goal: <= 5%).

    python bench/train_speed.py                      # both configs, CPU
    python bench/train_speed.py --configs small --steps 50 --runs 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CONFIGS = {
    # name: (prior options, latent space/dim of the tiny generator, embed dim, batch size)
    "small": (dict(dim=128, depth=4, heads=4, dim_head=32, timesteps=1000), ("w3", 8), 64, 256),
    "paper": (dict(dim=512, depth=12, heads=12, dim_head=64, timesteps=1000), ("w", 512), 512, 64),
}


def build_data(root: Path, space: str, dim: int, embed_dim: int, samples: int) -> Path:
    import helpers_tiny

    import latentmap
    from latentmap.data.builder import BuildConfig, build_dataset

    helpers_tiny.ensure_registered()
    generator = latentmap.get_generator("tiny-test", space=space, dim=dim)
    encoder = latentmap.get_encoder(f"tiny-test:{embed_dim}")
    build_dataset(generator, encoder, BuildConfig(out=root, samples=samples, batch_size=1024, shard_size=4096,
                                                  dtype="float16", progress=False))
    return root


def make_trainer(prior_options: dict, dataset, batch_size: int):
    from latentmap import get_prior
    from latentmap.distributed import World
    from latentmap.training.ema import EMA
    from latentmap.training.loop import LoopSettings, Trainer
    from latentmap.training.optim import make_optimizer

    tokens, latent_dim = dataset.manifest.latent_shape
    torch.manual_seed(0)
    prior = get_prior("diffusion", latent_dim=latent_dim, tokens=tokens, cond_dim=dataset.manifest.embed_dim,
                      **prior_options)
    prior.set_latent_stats(dataset.manifest.latent_mean, dataset.manifest.latent_std)
    ema = EMA(prior, beta=0.9999, every=10)
    optimizer = make_optimizer(prior, lr=1e-4, weight_decay=1e-2, betas=(0.9, 0.999))
    return Trainer(prior=prior, ema=ema, optimizer=optimizer, batches=dataset.batches, world=World(),
                   settings=LoopSettings(steps=10**9, progress=False), out=Path(tempfile.mkdtemp()), metrics=None)


def in_memory_batches(dataset, count: int):
    """``count`` batches read once, replayed from memory (the reader's cost removed)."""
    stream = dataset.batches(0)
    cached = [next(stream) for _ in range(count)]

    def batches(epoch: int, start: int = 0):
        yield from cached[start:]
        while True:
            yield from cached

    return batches


def timed(trainer, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step over ``steps`` steps, the batch fetch included.

    CPU time (all threads of this process) is the steadier measure on a shared machine: it does not
    count the time other processes hold the cores.
    """
    stream = trainer._batch_stream()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        trainer.train_step(*next(stream))
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def time_reader(dataset, batches: int) -> float:
    """CPU seconds per batch of the reader alone (a fresh epoch: shard loading, shuffling, casting)."""
    stream = dataset.batches(1)
    start = time.process_time()
    for _ in range(batches):
        next(stream)
    return (time.process_time() - start) / batches


def bench(name: str, steps: int, warmup: int, runs: int, work: Path) -> dict:
    from latentmap.data.reader import ShardDataset

    prior_options, (space, dim), embed_dim, batch = CONFIGS[name]
    samples = min(batch * (steps * runs + warmup * 2) + batch, 16 * 1024)  # epochs repeat beyond this
    root = build_data(work / name, space, dim, embed_dim, samples)
    dataset = ShardDataset(root, batch_size=batch, seed=0)
    reader_trainer = make_trainer(prior_options, dataset, batch)
    memory_trainer = make_trainer(prior_options, dataset, batch)
    memory_trainer.batches = in_memory_batches(dataset, 8)
    params = sum(p.numel() for p in reader_trainer.prior.parameters())
    timed(reader_trainer, warmup)
    timed(memory_trainer, warmup)
    reader, memory = [], []
    for _ in range(runs):  # interleaved, so machine load affects both alike
        reader.append(timed(reader_trainer, steps))
        memory.append(timed(memory_trainer, steps))
    r_wall, m_wall = statistics.median(t[0] for t in reader), statistics.median(t[0] for t in memory)
    r_cpu, m_cpu = statistics.median(t[1] for t in reader), statistics.median(t[1] for t in memory)
    alone = statistics.median(time_reader(dataset, min(steps * runs, dataset.batches_per_epoch)) for _ in range(3))
    return {"config": name, "params": params, "batch": batch, "reader_steps_per_s": 1 / r_wall,
            "memory_steps_per_s": 1 / m_wall, "reader_share": (r_cpu - m_cpu) / r_cpu,
            "reader_alone_share": alone / r_cpu, "runs": runs, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,paper")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (paper config: a quarter)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CPU")
    print("| config | params | batch | steps/s, shard reader (wall) | steps/s, in memory (wall) "
          "| reader cost, CPU time: difference | reader alone / step |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.configs.split(","):
            steps = args.steps if name != "paper" else max(2, args.steps // 4)
            warmup = args.warmup if name != "paper" else 2
            row = bench(name, steps, warmup, args.runs, Path(work))
            print(f"| {row['config']} | {row['params'] / 1e6:.2f} M | {row['batch']} | "
                  f"{row['reader_steps_per_s']:.2f} | {row['memory_steps_per_s']:.2f} | "
                  f"{100 * row['reader_share']:+.1f}% | {100 * row['reader_alone_share']:.2f}% |", flush=True)


if __name__ == "__main__":
    main()
