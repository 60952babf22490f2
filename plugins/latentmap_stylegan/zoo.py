"""Known public StyleGAN networks, and building a generator from options.

Weights are resolved by ``latentmap.weights.resolve_weights``: ``weights=`` option, then the
entry's environment variable, then the cache, then a download (with progress and, where known,
a SHA-256 check). No SHA-256 is pinned for these files yet (we could not verify one offline), so
cached copies are trusted as they are; set ``sha256`` here once measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentmap.errors import LatentmapError


@dataclass(frozen=True)
class ZooEntry:
    """One well-known network: what it is and where its weights come from."""

    kind: str
    filename: str
    url: str
    env_var: str
    resolution: int
    layers: int
    description: str
    sha256: str | None = None


ZOO: dict[str, ZooEntry] = {
    "stylegan2-ffhq": ZooEntry(
        kind="stylegan2",
        filename="stylegan2-ffhq-1024x1024.pkl",
        url="https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl",
        env_var="LATENTMAP_STYLEGAN2_FFHQ",
        resolution=1024,
        layers=18,
        description="NVIDIA StyleGAN2 config-F FFHQ 1024x1024 (18 style layers, w 512; the paper's faces)",
    ),
    "stylegan3-lhq": ZooEntry(
        kind="stylegan3",
        filename="lhq-256-stylegan3-t-25Mimg.pkl",
        url="https://huggingface.co/justinpinkney/stylegan3-t-lhq-256/resolve/main/lhq-256-stylegan3-t-25Mimg.pkl",
        env_var="LATENTMAP_STYLEGAN3_LHQ",
        resolution=256,
        layers=16,
        description="StyleGAN3-T LHQ landscapes 256x256 by J. Pinkney (16 style layers, w 512; the paper's landscapes)",
    ),
}

GENERATOR_OPTIONS = {
    "weights": "a NVIDIA network .pkl (read without running code) or a converted .safetensors",
    "space": "w (default), w3 or w+",
    "split": "w3 only: layer counts for coarse,middle,fine (default 4,4,10 for 18 layers)",
    "truncation": "psi toward w_avg for sample_latents (default 1.0: none, as the paper's data)",
    "network": "which network of a .pkl: G_ema (default) or G",
    "noise_mode": "const (default), random or none",
    "device": "cpu, cuda, cuda:1 ... (default: cuda when available)",
    "dtype": "float32 (default), bfloat16 or float16: synthesis under autocast",
}
ZOO_OPTIONS = {**GENERATOR_OPTIONS, "weights": "override the weights file (default: cache / env var / download)",
               "cache_dir": "weights cache folder (default $LATENTMAP_CACHE or ~/.cache/latentmap)"}


def build_generator(kind: str, name: str, *, weights: str | Path | None = None, network: str = "G_ema",
                    **options: Any):
    """A ``StyleGANGenerator`` of ``kind`` from a weights file; one-line errors for bad choices."""
    from latentmap_stylegan.converted import load_network
    from latentmap_stylegan.generator import StyleGANGenerator

    if weights is None:
        raise LatentmapError(
            f"generator {name!r} needs weights=PATH (an NVIDIA network .pkl or a file made by 'latentmap convert-stylegan')"
        )
    loaded = load_network(weights, network_key=network)
    if loaded.kind != kind:
        raise LatentmapError(f"{weights} holds a {loaded.kind} network; use generator {loaded.kind!r}, not {name!r}")
    return StyleGANGenerator(loaded.network, name=name, kind=kind, weights=str(weights), **options)


def build_zoo_generator(name: str, *, weights: str | Path | None = None, cache_dir: str | None = None,
                        **options: Any):
    """A zoo entry's generator, weights resolved through the shared weights cache."""
    from latentmap.weights import resolve_weights

    entry = ZOO[name]
    path = resolve_weights(name, filename=entry.filename, url=entry.url, sha256=entry.sha256,
                           env_var=entry.env_var, path=weights, cache_dir=cache_dir)
    generator = build_generator(entry.kind, name, weights=path, **options)
    if generator.resolution != entry.resolution or generator.space.layers != entry.layers:
        raise LatentmapError(
            f"{path} is a {generator.resolution}-px network with {generator.space.layers} style layers, but "
            f"{name!r} is {entry.resolution} px with {entry.layers}; use generator {entry.kind!r} with weights={path}"
        )
    return generator
