"""Known public StyleGAN networks, and building a generator from options.

Weights are resolved by ``latentmap.weights.resolve_weights``: ``weights=`` option, then the
entry's environment variable, then the cache, then a download (with progress and, where known,
a SHA-256 check). No SHA-256 is pinned for these files yet (we could not verify one offline), so
cached copies are trusted as they are; set ``sha256`` here once measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from latentmap import LatentmapError, option
from latentmap_stylegan.options import StyleGANOptions


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

@dataclass
class ZooOptions(StyleGANOptions):
    """Options of a zoo entry: a StyleGAN generator whose weights come from the shared cache."""

    weights: str | None = option(None, identity=False,
                                 help="override the weights file (default: env var, then cache, then download)")
    cache_dir: str | None = option(None, identity=False,
                                   help="weights cache folder (default $LATENTMAP_CACHE or ~/.cache/latentmap)")


def build_generator(kind: str, name: str, options: StyleGANOptions):
    """A ``StyleGANGenerator`` of ``kind`` from ``options.weights``; one-line errors for bad choices."""
    from latentmap_stylegan.converted import load_network  # the networks (torch) only when one is built
    from latentmap_stylegan.generator import StyleGANGenerator

    if options.weights is None:
        raise LatentmapError(
            f"generator {name!r} needs weights=PATH (an NVIDIA network .pkl or a file made by 'latentmap convert-stylegan')"
        )
    loaded = load_network(options.weights, network_key=options.network)
    if loaded.kind != kind:
        raise LatentmapError(f"{options.weights} holds a {loaded.kind} network; use generator {loaded.kind!r}, not {name!r}")
    return StyleGANGenerator(loaded.network, options, name=name, kind=kind)


def build_zoo_generator(name: str, options: ZooOptions):
    """A zoo entry's generator, weights resolved through the shared weights cache."""
    from latentmap import resolve_weights

    entry = ZOO[name]
    path = resolve_weights(name, filename=entry.filename, url=entry.url, sha256=entry.sha256,
                           env_var=entry.env_var, path=options.weights, cache_dir=options.cache_dir)
    generator = build_generator(entry.kind, name, replace(options, weights=str(path)))
    if generator.resolution != entry.resolution or generator.space.layers != entry.layers:
        raise LatentmapError(
            f"{path} is a {generator.resolution}-px network with {generator.space.layers} style layers, but "
            f"{name!r} is {entry.resolution} px with {entry.layers}; use generator {entry.kind!r} with weights={path}"
        )
    return generator
