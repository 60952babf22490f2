"""Real-size random networks in NVIDIA's own format, for benchmarks against NVIDIA's StyleGAN code.

NVIDIA's StyleGAN2/3 code ships inside the ``clip2latent`` wheel of the peers' virtualenv
(``bench/.peers``, made by ``bench/peers/setup.sh``); this module IMPORTS it from there (nothing is
copied into latentmap) to build random-weight networks of the published shapes, pickles them with
NVIDIA's own ``torch_utils.persistence`` (the format of NVIDIA's released files) into a cache folder
outside the repository, and loads the same file on both sides:

* ``sg2-ffhq-1024``: StyleGAN2 config F, 1024 px, 18 ws (the shape of ``stylegan2-ffhq-1024x1024.pkl``);
* ``sg3-t-256``: StyleGAN3-T, 256 px, 16 ws (the shape of the paper's LHQ-256 generator);
* ``sg2-tiny-32`` / ``sg3-tiny-32``: tiny versions for ``bench/gpu.py --dry-run``.

Run under ``bench/.peers/bin/python`` (it has latentmap, NVIDIA's code and the same torch).
"""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LATENTMAP_BENCH_CACHE", Path.home() / ".cache" / "latentmap-bench"))


@dataclass(frozen=True)
class NetworkShape:
    """One benchmark network: NVIDIA's class and constructor arguments."""

    kind: str  # stylegan2 | stylegan3
    resolution: int
    mapping_layers: int
    synthesis: dict[str, Any]
    description: str

    @property
    def module(self) -> str:
        return "training.networks_stylegan2" if self.kind == "stylegan2" else "training.networks_stylegan3"


SHAPES: dict[str, NetworkShape] = {
    "sg2-ffhq-1024": NetworkShape("stylegan2", 1024, 8, dict(channel_base=32768, channel_max=512, num_fp16_res=4,
                                                              conv_clamp=256), "StyleGAN2 config F, FFHQ 1024 px"),
    "sg3-t-256": NetworkShape("stylegan3", 256, 2, dict(channel_base=32768, channel_max=512, num_fp16_res=4,
                                                         conv_clamp=256), "StyleGAN3-T, LHQ 256 px"),
    "sg2-tiny-32": NetworkShape("stylegan2", 32, 2, dict(channel_base=512, channel_max=32, num_fp16_res=0,
                                                          conv_clamp=256), "tiny StyleGAN2, 32 px (dry run)"),
    "sg3-tiny-32": NetworkShape("stylegan3", 32, 2, dict(channel_base=1024, channel_max=32, num_fp16_res=0,
                                                          conv_clamp=256, num_layers=6), "tiny StyleGAN3-T, 32 px (dry run)"),
}


def nvidia_code_folder() -> Path:
    """``clip2latent/stylegan3`` of the installed clip2latent wheel (NVIDIA's StyleGAN code)."""
    try:
        import clip2latent
    except ImportError:
        raise SystemExit("NVIDIA's StyleGAN code is not importable: run this under bench/.peers/bin/python "
                         "(made by `bash bench/peers/setup.sh`)") from None
    return Path(list(clip2latent.__path__)[0]) / "stylegan3"  # a namespace package: no __file__


def import_nvidia() -> dict[str, Any]:
    """NVIDIA's modules (``legacy``, ``dnnlib``, the two network modules), from the wheel."""
    folder = str(nvidia_code_folder())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    import importlib

    return {name: importlib.import_module(name) for name in
            ("legacy", "dnnlib", "torch_utils.persistence", "training.networks_stylegan2", "training.networks_stylegan3")}


def nvidia_pickle(name: str, *, seed: int = 0, folder: Path | None = None) -> Path:
    """The path of ``name``'s random network pickle (built with NVIDIA's code on first use, then cached)."""
    shape = SHAPES[name]
    folder = Path(folder or CACHE)
    path = folder / f"{name}-seed{seed}.pkl"
    if path.is_file():
        return path
    modules = import_nvidia()
    Generator = modules[shape.module].Generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = Generator(z_dim=512 if shape.resolution > 32 else 32, c_dim=0, w_dim=512 if shape.resolution > 32 else 32,
                      img_resolution=shape.resolution, img_channels=3,
                      mapping_kwargs={"num_layers": shape.mapping_layers}, **shape.synthesis).eval()
        with torch.no_grad():  # non-zero noise strengths and a w_avg, as a trained network has
            for key, param in G.named_parameters():
                if key.endswith("noise_strength"):
                    param.fill_(0.1)
            G.mapping.w_avg.copy_(G.mapping(torch.randn(256, G.z_dim), None)[:, 0].mean(0))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle:
        # NVIDIA's files hold G, D and G_ema; G is G_ema here (pickled once) and D a small stand-in
        # (a discriminator plays no part in synthesis and would only make the file bigger).
        D = modules["training.networks_stylegan2"].MappingNetwork(z_dim=8, c_dim=0, w_dim=8, num_ws=None, num_layers=1)
        pickle.dump({"G": G, "D": D, "G_ema": G, "training_set_kwargs": None, "augment_pipe": None}, handle)
    tmp.replace(path)
    return path


def load_nvidia(path: Path, device: str = "cpu") -> torch.nn.Module:
    """NVIDIA's network from the pickle, by NVIDIA's own loader (``legacy.load_network_pkl``)."""
    modules = import_nvidia()
    with open(path, "rb") as handle:
        G = modules["legacy"].load_network_pkl(handle)["G_ema"]
    return G.eval().requires_grad_(False).to(device)


def load_latentmap(path: Path, device: str = "cpu", **options: Any):
    """latentmap's generator from the same pickle (read safely, no NVIDIA code run)."""
    import latentmap

    kind = "stylegan2" if "sg2" in path.name else "stylegan3"
    return latentmap.get_generator(kind, weights=str(path), device=device, **options)


def random_vit_b32(folder: Path | None = None, *, seed: int = 0, tiny: bool = False) -> Path:
    """A random ViT-B-32 (OpenAI's architecture, QuickGELU) as safetensors; ``tiny``: a 2-layer 64-wide one.

    ``pretrained`` weights cannot be downloaded here: the speed of a random network of the same shape
    is the speed of the real one.
    """
    import json

    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder or CACHE)
    name = "vit-tiny" if tiny else "vit-b-32"
    path = folder / f"{name}-seed{seed}.safetensors"
    config_path = folder / f"{name}-config.json"
    if path.is_file() and config_path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config("ViT-B-32")
    if tiny:
        config = {"embed_dim": 32, "quick_gelu": True,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
    else:
        config = {**config, "quick_gelu": True}
    config_path.write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CLIP(**{k: v for k, v in config.items() if k != "quick_gelu"}, quick_gelu=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def encoder_spec(weights: Path) -> tuple[str, dict[str, Any]]:
    """latentmap's encoder spec and options for a file made by ``random_vit_b32``: clip2latent's preprocessing
    (area-resize to 256, then 224, its double normalisation), so both sides embed the same pixels."""
    config_path = weights.parent / (weights.name.split("-seed")[0] + "-config.json")
    return f"openclip:{config_path}", {"weights": str(weights), "preprocess": "clip2latent-double-norm",
                                       "presize": 256, "quick_gelu": True}


def open_clip_model(weights: Path) -> torch.nn.Module:
    """open_clip's own model with the weights of ``weights`` (the peer side's CLIP)."""
    import json

    import open_clip
    from safetensors.torch import load_file

    config_path = weights.parent / (weights.name.split("-seed")[0] + "-config.json")
    config = json.loads(config_path.read_text())["model_cfg"]
    model = open_clip.CLIP(**{k: v for k, v in config.items() if k != "quick_gelu"}, quick_gelu=True)
    model.load_state_dict(load_file(weights))
    return model.eval().requires_grad_(False)
