"""The latentmap side of bench/gpu.py's StyleGAN sections, for a machine without the peers' virtualenv.

NVIDIA's StyleGAN code (inside the clip2latent wheel) lives in ``bench/.peers``, which CI and a fresh
GPU machine do not have. There bench/gpu.py still times every latentmap path of its synthesis and
build-data sections, on networks of the same shapes (``nvidia_nets.SHAPES``) built by latentmap's own
StyleGAN classes with random weights (saved in latentmap's converted format and loaded by its loader,
as a converted NVIDIA file would be), and marks the peer rows "not run". The prior section needs
nothing from here: ``bench/prior_peers.py`` skips its DALLE2 rows itself when DALLE2 is absent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import nvidia_build_data
import nvidia_nets
import nvidia_synthesis
import timing
import torch
from safetensors.torch import save_file

import latentmap
from latentmap.data.builder import BuildConfig, build_dataset
from latentmap.data.manifest import load_manifest
from latentmap.precision import autocast, precision_problem

NOT_RUN = "not run: the peers are not importable (no bench/.peers; bash bench/peers/setup.sh makes it)"


def latentmap_network(name: str, folder: Path, *, seed: int = 0) -> Path:
    """``name``'s shape built by latentmap's StyleGAN classes with random weights, as a converted .safetensors file
    (cached in ``folder``); noise strengths and ``w_avg`` set as ``nvidia_nets.nvidia_pickle`` sets them."""
    from latentmap_stylegan.stylegan2 import StyleGAN2Generator
    from latentmap_stylegan.stylegan3 import StyleGAN3Generator

    shape = nvidia_nets.SHAPES[name]
    path = Path(folder) / f"{name}-latentmap-seed{seed}.safetensors"
    if path.is_file():
        return path
    width = 512 if shape.resolution > 32 else 32  # z and w sizes, as nvidia_pickle chooses them
    kwargs = dict(z_dim=width, c_dim=0, w_dim=width, img_resolution=shape.resolution, img_channels=3,
                  mapping_kwargs={"num_layers": shape.mapping_layers}, **shape.synthesis)
    network_class = StyleGAN2Generator if shape.kind == "stylegan2" else StyleGAN3Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = network_class(**kwargs).eval()
        with torch.no_grad():
            for key, param in G.named_parameters():
                if key.endswith("noise_strength"):
                    param.fill_(0.1)
            G.mapping.w_avg.copy_(G.mapping(torch.randn(256, G.z_dim), None)[:, 0].mean(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in G.state_dict().items()}, str(path), metadata={
        "format": "latentmap-stylegan", "format_version": "1", "class": shape.kind,
        "init_kwargs": json.dumps(kwargs, sort_keys=True), "source": "bench/gpu_without_peers.py", "network": "G_ema"})
    return path


def native_half_precisions(device: torch.device) -> tuple[str, ...]:
    """The half precisions nvidia_synthesis times on this device type that this device runs natively."""
    return tuple(p for p in nvidia_synthesis.HALF_PRECISIONS.get(device.type, ()) if precision_problem(p, device) is None)


def synthesis(networks: list[str], batches: list[int], *, device: str, reps: int, warmup: int,
              folder: Path) -> dict[str, Any]:
    """latentmap's synthesis rows of ``nvidia_synthesis.run`` (float32 and the native half precisions, with their
    error against float32); NVIDIA's rows are listed as not run."""
    target = torch.device(device)
    sync = timing.sync_for(target)
    results = []
    for name in networks:
        ours = nvidia_nets.load_latentmap(latentmap_network(name, folder), device=device).network
        rows: list[dict[str, Any]] = []
        with torch.no_grad():
            for position, batch in enumerate(batches):
                z = torch.randn(batch, ours.z_dim, generator=torch.Generator().manual_seed(2)).to(target)
                ws = ours.mapping(z, None)
                full = ours.synthesis(ws, noise_mode="const").float()
                contenders = {"latentmap float32": lambda ws=ws: ours.synthesis(ws, noise_mode="const")}
                errors: dict[str, tuple[float, float]] = {}
                for precision in native_half_precisions(target):
                    def half(precision: str = precision, ws: torch.Tensor = ws) -> torch.Tensor:
                        with autocast(precision, target):
                            return ours.synthesis(ws, noise_mode="const")

                    short = "bf16" if precision == "bfloat16" else "fp16"
                    difference = (half().float().clamp(-1, 1) - full.clamp(-1, 1)).abs()
                    errors[f"latentmap {short}"] = (difference.max().item() / 2, difference.mean().item() / 2)
                    contenders[f"latentmap {short}"] = half
                times = timing.interleaved(contenders, warmup=warmup if position == 0 else 0,
                                           reps=reps if position == 0 else max(1, reps - 1), sync=sync)
                base = timing.median(times["latentmap float32"])
                rows.append({"network": name, "batch": batch, "contender": "nvidia float32", "status": NOT_RUN})
                for contender, values in times.items():
                    seconds = timing.median(values)
                    row = {"network": name, "resolution": ours.img_resolution, "batch": batch, "contender": contender,
                           "median_s": seconds, "images_per_s": batch / seconds, "vs_latentmap_float32": base / seconds,
                           "times_s": values, "output_std": full.std().item() if contender == "latentmap float32" else None}
                    if contender in errors:
                        row["max_error"], row["mean_error"] = errors[contender]
                    rows.append(row)
        results.append({"network": name, "description": nvidia_nets.SHAPES[name].description, "rows": rows})
    meta = {"machine": timing.machine(target), "device": str(target), "reps": reps, "warmup": warmup}
    return {"meta": meta, "results": results, "markdown": synthesis_markdown(results, meta)}


def synthesis_markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    rows = []
    for result in results:
        for row in result["rows"]:
            if "status" in row:
                rows.append([result["description"], row["batch"], row["contender"], "not run", "-", "-", "-"])
                continue
            error = f"max {row['max_error']:.2%}, mean {row['mean_error']:.3%}" if "max_error" in row else "-"
            rows.append([result["description"], row["batch"], row["contender"], f"{row['median_s']:.3f}",
                         f"{row['images_per_s']:.2f}", f"{row['vs_latentmap_float32']:.2f}x", error])
    table = timing.markdown_table(["network", "batch", "contender", "median s / batch", "images/s",
                                   "vs latentmap float32", "error vs float32 (share of range)"], rows)
    return "\n".join([table, "", f"- NVIDIA's rows {NOT_RUN}; networks: the same shapes built by latentmap's "
                      "StyleGAN classes (random weights)", f"- machine: {meta['machine']}"])


def build_data(*, samples: int, batch_size: int, shard_size: int, runs: int, network: str, device: str,
               folder: Path, tiny_clip: bool = False, precisions: tuple[str, ...] = ()) -> dict[str, Any]:
    """latentmap's rows of ``nvidia_build_data.run`` (forward only, build-data in float32 and ``precisions``, with the
    embeddings' cosine to float32's); clip2latent's workflow, which needs NVIDIA's generator, is listed as not run."""
    target = torch.device(device)
    generator = nvidia_nets.load_latentmap(latentmap_network(network, folder), device=device)
    spec, options = nvidia_nets.encoder_spec(nvidia_nets.random_vit_b32(folder, tiny=tiny_clip))
    encoder = latentmap.get_encoder(spec, device=device, **options)
    with tempfile.TemporaryDirectory(prefix="latentmap-bench-") as scratch_name:
        scratch = Path(scratch_name)

        def ours(precision: str = "float32") -> None:
            out = scratch / f"latentmap-{precision}"
            shutil.rmtree(out, ignore_errors=True)
            build_dataset(generator, encoder, BuildConfig(out=out, samples=samples, batch_size=batch_size,
                                                          shard_size=shard_size, progress=False, precision=precision))

        contenders = {"forward only": lambda: nvidia_build_data.forward_only(generator, encoder, samples, batch_size,
                                                                             shard_size),
                      "latentmap build-data": ours}
        for precision in precisions:
            contenders[f"latentmap build-data {precision}"] = lambda precision=precision: ours(precision)
        times = timing.interleaved(contenders, warmup=1, reps=runs, sync=timing.sync_for(target))
        built = load_manifest(scratch / "latentmap-float32")
        agreement = {precision: nvidia_build_data.embedding_agreement(scratch / "latentmap-float32",
                                                                      scratch / f"latentmap-{precision}")
                     for precision in precisions}
    medians = {name: timing.median(values) for name, values in times.items()}
    rows: list[dict[str, Any]] = [
        {"contender": name, "median_s": seconds, "s_per_sample": seconds / samples,
         "vs_forward_only": seconds / medians["forward only"], "times_s": times[name],
         **agreement.get(name.rsplit(" ", 1)[-1] if name.startswith("latentmap build-data ") else "", {})}
        for name, seconds in medians.items()]
    rows.append({"contender": "clip2latent workflow", "status": NOT_RUN})
    meta = {"machine": timing.machine(target), "device": device, "network": network, "samples": samples,
            "batch_size": batch_size, "shard_size": shard_size, "runs": runs, "built_samples": built.samples,
            "built_shards": len(built.shards)}
    return {"meta": meta, "rows": rows, "markdown": build_data_markdown(rows, meta)}


def build_data_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    table = timing.markdown_table(
        ["contender", "median s", "s / sample", "x forward only", "embedding cosine to float32"],
        [[r["contender"], "not run", "-", "-", "-"] if "status" in r else
         [r["contender"], f"{r['median_s']:.2f}", f"{r['s_per_sample']:.3f}", f"{r['vs_forward_only']:.3f}",
          f"min {r['min_cosine']:.5f}, mean {r['mean_cosine']:.5f}" if "min_cosine" in r else "-"] for r in rows])
    return "\n".join([table, "", f"- {meta['samples']} samples, batch {meta['batch_size']}, shard {meta['shard_size']}, "
                      f"{meta['runs']} runs; clip2latent's workflow {NOT_RUN}", f"- machine: {meta['machine']}"])
