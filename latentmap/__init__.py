"""latentmap: text-to-image for any pretrained generator, through a diffusion prior over its latents.

The public API returns ready objects by name; plugins provide the names.
"""

from __future__ import annotations

from typing import Any

from latentmap.errors import LatentmapError, UnknownNameError
from latentmap.hookspecs import hookimpl
from latentmap.interfaces import Encoder, Generator, LatentSpace, Prior
from latentmap.plugins import list_plugins, register_module

__version__ = "0.1.0"

__all__ = [
    "Encoder", "Generator", "LatentSpace", "LatentmapError", "Prior", "UnknownNameError", "__version__",
    "get_encoder", "get_generator", "get_prior", "get_space", "hookimpl", "list_plugins", "register_module",
    "load_pipeline", "load_prior", "save_prior", "load_recipe", "build_dataset",
]

# Heavier entry points, imported on first use so ``import latentmap`` stays light. The task modules
# themselves are the rest of the API: ``latentmap.sample``, ``latentmap.edit``, ``latentmap.optimize``,
# ``latentmap.evaluate``, ``latentmap.train`` (e.g. ``latentmap.sample.sample(pipeline, ["a red circle"])``).
_LAZY = {
    "load_pipeline": "latentmap.pipeline",
    "load_prior": "latentmap.checkpoint",
    "save_prior": "latentmap.checkpoint",
    "load_recipe": "latentmap.recipe",
    "build_dataset": "latentmap.data.builder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'latentmap' has no attribute {name!r}")


def get_generator(name: str, **options: Any) -> Generator:
    """A ready generator, e.g. ``get_generator("stylegan2-ffhq", space="w3")``."""
    from latentmap.plugins import build

    generator = build("generators", name, **options)
    _remember(generator, name, options)
    return generator


def get_encoder(name: str, **options: Any) -> Encoder:
    """A ready encoder from ``prefix:spec``, e.g. ``get_encoder("openclip:ViT-B-32/openai")``."""
    from latentmap.plugins import build

    prefix, _, spec = name.partition(":")
    encoder = build("encoders", prefix, spec, **options)
    _remember(encoder, name, options)
    return encoder


def get_prior(name: str = "diffusion", **options: Any) -> Prior:
    """A new (untrained) prior, e.g. ``get_prior("diffusion", latent_dim=512, tokens=3, cond_dim=512)``."""
    from latentmap.plugins import build

    return build("priors", name, **options)


def get_space(name: str, *, layers: int, dim: int, **options: Any) -> LatentSpace:
    """A latent space of kind ``name`` ("w", "w3", "w+", ...) for a generator with ``layers`` style layers."""
    from latentmap.plugins import build

    return build("spaces", name, layers, dim, **options)


# Where an object runs is not part of what it is: a checkpoint made on a GPU must load on a CPU.
PLACEMENT_OPTIONS = frozenset({"device", "dtype"})


def _remember(obj: Any, name: str, options: dict[str, Any]) -> None:
    """Record how an object was asked for, so identities and checkpoints can rebuild it."""
    try:
        obj.registry_name = name
        obj.registry_options = {
            k: (str(v) if not isinstance(v, (int, float, bool, str, type(None))) else v)
            for k, v in options.items()
            if k not in PLACEMENT_OPTIONS
        }
    except AttributeError:
        pass
