"""The generic latent-space kinds of style-based generators: ``w``, ``w3`` and ``w+``.

They only say how a few latent tokens are repeated over a generator's style layers, so they
belong to the core; a plugin can register other kinds through ``register_spaces``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from latentmap.config import option
from latentmap.errors import LatentmapError

if TYPE_CHECKING:
    from latentmap.interfaces import LatentSpace


def _space(name: str, dim: int, repeats: tuple[int, ...]) -> LatentSpace:
    from latentmap.interfaces import LatentSpace  # here: the plugin loads (for the CLI) without torch

    return LatentSpace(name, dim, repeats)


def w_space(layers: int, dim: int) -> LatentSpace:
    """One latent repeated over every layer (the paper's default)."""
    return _space("w", dim, (layers,))


def w3_split(layers: int) -> tuple[int, int, int]:
    """Coarse / middle / fine layer counts: (4, 4, 10) for 18 layers, the same proportions elsewhere.

    StyleGAN2-FFHQ-1024's 18 layers split as the paper did; other counts keep about 2/9 of the
    layers each for coarse and middle (at least one) and give the rest to the fine token.
    """
    if layers < 3:
        raise LatentmapError(f"space 'w3' needs a generator with at least 3 style layers, this one has {layers}")
    coarse = max(1, round(layers * 4 / 18))
    middle = max(1, round(layers * 4 / 18))
    return coarse, middle, layers - coarse - middle


@dataclass
class W3Options:
    """Options of the ``w3`` space."""

    split: list[int] | None = option(None, help="layer counts of the coarse, middle and fine tokens, e.g. 4,4,10 "
                                                  "(default: (4, 4, 10) for 18 layers, the same proportions elsewhere)")


def w3_space(layers: int, dim: int, split: Sequence[int] | W3Options | None = None) -> LatentSpace:
    """Three independent latents for coarse, middle and fine layers."""
    split = split.split if isinstance(split, W3Options) else split
    repeats = tuple(int(s) for s in split) if split is not None else w3_split(layers)
    if len(repeats) != 3 or sum(repeats) != layers or min(repeats) < 1:
        raise LatentmapError(
            f"space 'w3' split {list(repeats)} must be three positive layer counts summing to {layers}"
        )
    return _space("w3", dim, repeats)


def w_plus_space(layers: int, dim: int) -> LatentSpace:
    """One latent per layer."""
    return _space("w+", dim, (1,) * layers)


BUILTIN_SPACES = {
    "w": (w_space, "one latent repeated over every style layer (paper default)", None),
    "w3": (w3_space, "three latents: coarse, middle, fine layers ((4, 4, 10) for 18 layers)", W3Options),
    "w+": (w_plus_space, "one latent per style layer", None),
}


from latentmap.hookspecs import hookimpl  # noqa: E402  (the core registers its spaces like any plugin)


@hookimpl
def register_spaces(register) -> None:
    for name, (factory, description, options) in BUILTIN_SPACES.items():
        register(name, factory, description=description, options=options)
