"""The options of the ``stylegan2`` and ``stylegan3`` generators, declared without importing torch
(the plugin's ``__init__`` registers them, and loading plugins for ``latentmap --help`` must stay light)."""

from __future__ import annotations

from dataclasses import dataclass

from latentmap import option

DTYPE_NAMES = ("float32", "bfloat16", "float16")
NOISE_MODES = ("const", "random", "none")


def space_names() -> list[str]:
    """The registered latent spaces (the registry is the one list)."""
    import latentmap

    return latentmap.registered_names("spaces")


@dataclass
class StyleGANOptions:
    """Options of the ``stylegan2`` and ``stylegan3`` generators (any network file)."""

    weights: str | None = option(None, identity=False, path="file",
                                 help="a NVIDIA network .pkl (read without running code) or a converted .safetensors")
    space: str = option("w", choices=space_names, help="the latent space: w (one w), w3 (coarse, middle, fine) or w+")
    split: list[int] | None = option(None, help="w3 only: layer counts for coarse,middle,fine (default 4,4,10 for 18 layers)")
    truncation: float = option(1.0, help="psi toward w_avg for sample_latents (1.0: none, as the paper's data)")
    network: str = option("G_ema", help="which network of a .pkl: G_ema or G")
    noise_mode: str = option("const", choices=NOISE_MODES, help="synthesis noise")
    device: str | None = option(None, placement=True, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    dtype: str = option("float32", choices=DTYPE_NAMES, placement=True,
                        help="synthesis under autocast in this precision (float32: none)")
