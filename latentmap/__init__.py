"""latentmap: text-to-image for any pretrained generator, through a diffusion prior over its latents.

The public API returns ready objects by name; plugins provide the names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latentmap.errors import LatentmapError, UnknownNameError
from latentmap.hookspecs import hookimpl

if TYPE_CHECKING:
    from latentmap.interfaces import Encoder, Generator, LatentSpace, Prior, PriorShape
    from latentmap.plugins import list_plugins, register_module

__version__ = "0.1.0"

__all__ = [
    "Encoder", "Generator", "LatentSpace", "LatentmapError", "Prior", "PriorShape", "UnknownNameError", "__version__",
    "get_encoder", "get_generator", "get_prior", "get_space", "hookimpl", "list_plugins", "register_module",
    "load_pipeline", "load_prior", "save_prior", "load_recipe", "build_dataset",
    # the plugin API: what a plugin needs besides the contracts (docs/plugins.md, "Helpers for plugins")
    "option", "build_options", "registered_names", "resolve_weights", "sha256_file", "downloads_disabled", "fetch_hub_file",
    "write_atomic", "replace_atomically", "identity_differences", "PriorNetwork", "TransformerPrior",
    "TransformerPriorOptions",
]

# Everything else is imported on first use, so ``import latentmap`` (and ``latentmap --help``) never
# imports torch: the contracts, the plugin registry and the heavier entry points. The task modules
# themselves are the rest of the API: ``latentmap.sample``, ``latentmap.edit``, ``latentmap.optimize``,
# ``latentmap.evaluate``, ``latentmap.train`` (e.g. ``latentmap.sample.sample(pipeline, ["a red circle"])``).
_LAZY = {
    "Encoder": "latentmap.interfaces",
    "Generator": "latentmap.interfaces",
    "LatentSpace": "latentmap.interfaces",
    "Prior": "latentmap.interfaces",
    "PriorShape": "latentmap.interfaces",
    "list_plugins": "latentmap.plugins",
    "register_module": "latentmap.plugins",
    "load_pipeline": "latentmap.pipeline",
    "load_prior": "latentmap.checkpoint",
    "save_prior": "latentmap.checkpoint",
    "load_recipe": "latentmap.recipe",
    "build_dataset": "latentmap.data.builder",
    "option": "latentmap.config",
    "build_options": "latentmap.config",
    "resolve_weights": "latentmap.weights",
    "sha256_file": "latentmap.weights",
    "downloads_disabled": "latentmap.weights",
    "fetch_hub_file": "latentmap.hub",
    "write_atomic": "latentmap.atomic",
    "replace_atomically": "latentmap.atomic",
    "identity_differences": "latentmap.identity:differences",
    "PriorNetwork": "latentmap.prior.network",
    "TransformerPrior": "latentmap.prior.transformer_prior",
    "TransformerPriorOptions": "latentmap.prior.transformer_prior",
}


# The task modules, reachable as attributes after a plain ``import latentmap`` (imported on first use).
_TASK_MODULES = ("sample", "edit", "optimize", "evaluate", "train", "pipeline", "checkpoint", "recipe")


def __getattr__(name: str) -> Any:
    if name in _TASK_MODULES:
        import importlib

        return importlib.import_module(f"latentmap.{name}")
    if name in _LAZY:
        import importlib

        module, _, attribute = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)
    raise AttributeError(f"module 'latentmap' has no attribute {name!r}")


def get_generator(name: str, **options: Any) -> Generator:
    """A ready generator, e.g. ``get_generator("stylegan2-ffhq", space="w3")``."""
    from latentmap.plugins import build

    return build("generators", name, options=options)


def get_encoder(name: str, **options: Any) -> Encoder:
    """A ready encoder from ``prefix:spec``, e.g. ``get_encoder("openclip:ViT-B-32/openai")``."""
    from latentmap.plugins import build

    return build("encoders", name, name.partition(":")[2], options=options)


def get_prior(name: str = "diffusion", *, tokens: int, latent_dim: int, cond_dim: int, **options: Any) -> Prior:
    """A new (untrained) prior, e.g. ``get_prior("diffusion", tokens=3, latent_dim=512, cond_dim=512, depth=6)``."""
    from latentmap.interfaces import PriorShape
    from latentmap.plugins import build

    shape = PriorShape.from_dict({"tokens": tokens, "latent_dim": latent_dim, "cond_dim": cond_dim})
    return build("priors", name, shape, options=options)


def get_space(name: str, *, layers: int, dim: int, **options: Any) -> LatentSpace:
    """A latent space of kind ``name`` ("w", "w3", "w+", ...) for a generator with ``layers`` style layers."""
    from latentmap.plugins import build

    return build("spaces", name, layers, dim, options=options)


def registered_names(kind: str) -> list[str]:
    """The names registered for ``kind`` ("generators", "encoders", "priors", "spaces"), sorted."""
    from latentmap.plugins import registrations

    return sorted(registrations(kind))
