"""The whole plugin API: each hook receives a ``register`` callback (or the click group).

A plugin is a module with functions decorated by ``latentmap.hookimpl`` named like these, listed
under the ``latentmap`` entry-point group. ``register(name, factory, description=..., options=...)``
records a factory: ``factory(**options)`` returns a ready object (for encoders, ``factory(spec,
**options)`` where ``spec`` is the text after ``prefix:``).
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("latentmap")
hookimpl = pluggy.HookimplMarker("latentmap")

Register = Callable[..., None]


@hookspec
def register_generators(register: Register) -> None:
    """Register generators: ``register("stylegan2-ffhq", factory, description=..., options=...)``."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register encoder families by prefix: ``register("openclip", factory)``; ``factory(spec, **options)``."""


@hookspec
def register_priors(register: Register) -> None:
    """Register priors: ``register("diffusion", factory)``; ``factory(**config)`` returns a Prior."""


@hookspec
def register_spaces(register: Register) -> None:
    """Register latent-space kinds: ``factory(layers, dim, **options)`` returns a LatentSpace."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands to the ``latentmap`` group (e.g. a converter for a plugin's file format)."""
