"""A two-colour test world where text and images agree, so CLIP scores mean something.

``colour-test`` renders an 8x8 image whose top half has the colour ``tanh`` of the first three
numbers of the mean latent over style layers 0-1, and whose bottom half that of layers 2-3
(4 layers of 4-d latents; spaces ``w``, ``w3`` = (1, 1, 2), ``w+``). The ``colour-test`` encoder
embeds an image as its mean RGB (3-d) and a prompt as the RGB of the colour words it names, so
the cosine between them is high exactly when the image shows the prompt's colour. The generator
knows the truth of what it renders (``decode_attributes``) and what a prompt asks for
(``prompt_attributes``), for evaluation's attribute accuracy.

Unlike ``helpers_tiny`` (random weights, no text-image agreement) this world lets tests check that
re-ranking, optimisation and directions move images toward what a prompt says. Register in
process with ``ensure_registered()``, or in a subprocess with ``LATENTMAP_PLUGIN_MODULES=helpers_colour``.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import latentmap
from latentmap.config import build_options, option
from latentmap.hookspecs import hookimpl
from latentmap.interfaces import Encoder, Generator

LAYERS = 4
DIM = 4
PALETTE = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "cyan": (-1.0, 1.0, 1.0),
    "magenta": (1.0, -1.0, 1.0),
}
NAMES = tuple(PALETTE)
PALETTE_RGB = torch.tensor([PALETTE[n] for n in NAMES])


@dataclass
class ColourGeneratorOptions:
    """Options of the ``colour-test`` generator."""

    space: str = option("w", help="w, w3 or w+")


class ColourGenerator(Generator):
    """Latents -> two-colour 8x8 images: top half from layers 0-1, bottom half from layers 2-3."""

    name = "colour-test"
    resolution = 8

    def __init__(self, options: ColourGeneratorOptions | None = None, **values: Any) -> None:
        """``options`` as the registry validated them, or keywords (``ColourGenerator(space="w3")``)."""
        options = options or build_options(ColourGeneratorOptions, values, where="ColourGenerator")
        self.space = latentmap.get_space(options.space, layers=LAYERS, dim=DIM)
        self._device = torch.device("cpu")

    def sample_latents(self, n: int, *, generator: torch.Generator) -> Tensor:
        return torch.randn(n, self.space.tokens, DIM, generator=generator).to(self._device)

    def mean_latent(self) -> Tensor:
        return torch.zeros(self.space.tokens, DIM, device=self._device)

    def halves(self, per_layer: Tensor) -> tuple[Tensor, Tensor]:
        """RGB (B, 3) in [-1, 1] of the top and bottom halves."""
        return torch.tanh(per_layer[:, :2, :3].mean(1)), torch.tanh(per_layer[:, 2:, :3].mean(1))

    def synthesize_layers(self, per_layer: Tensor) -> Tensor:
        top, bottom = self.halves(per_layer.to(self._device))
        half = self.resolution // 2
        return torch.cat([top[:, :, None, None].expand(-1, -1, half, self.resolution),
                          bottom[:, :, None, None].expand(-1, -1, half, self.resolution)], dim=2)

    def decode_attributes(self, latents: Tensor) -> dict[str, Tensor]:
        """The palette colour nearest to the top half (class index into NAMES)."""
        per_layer = latents if latents.shape[1] == LAYERS else self.space.expand(latents)
        top, _ = self.halves(per_layer.to(self._device))
        return {"colour": torch.cdist(top.cpu(), PALETTE_RGB).argmin(dim=1)}

    def prompt_attributes(self, prompt: str) -> dict[str, int]:
        words = prompt.lower().split()
        named = [NAMES.index(w) for w in words if w in PALETTE]
        return {"colour": named[0]} if named else {}

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "ColourGenerator":
        self._device = torch.device(device)
        return self


class ColourEncoder(Encoder):
    """Images -> mean RGB; text -> the mean RGB of its colour words (3-d embeddings)."""

    name = "colour-test"
    embed_dim = 3

    def __init__(self, spec: str) -> None:
        self._device = torch.device("cpu")

    def embed_image(self, images: Tensor, *, normalize: bool = False) -> Tensor:
        out = images.float().mean(dim=(2, 3))
        return F.normalize(out, dim=-1) if normalize else out

    def embed_text(self, prompts: list[str], *, normalize: bool = False) -> Tensor:
        rows = []
        for prompt in prompts:
            named = [PALETTE[w] for w in prompt.lower().replace(",", " ").split() if w in PALETTE]
            rows.append(torch.tensor(named).mean(0) if named else torch.zeros(3))
        out = 0.6 * torch.stack(rows).to(self._device)
        return F.normalize(out, dim=-1) if normalize else out

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> "ColourEncoder":
        self._device = torch.device(device)
        return self


@hookimpl
def register_generators(register: Any) -> None:
    register("colour-test", ColourGenerator, description="two-colour 8x8 test world (4 layers of 4-d latents)",
             options=ColourGeneratorOptions)


@hookimpl
def register_encoders(register: Any) -> None:
    register("colour-test", ColourEncoder, description="mean-RGB image / colour-word text embedder for tests")


def ensure_registered() -> None:
    """Register this module as a plugin in this process (idempotent)."""
    import sys

    from latentmap.plugins import register_module, registrations

    if "colour-test" not in registrations("generators"):
        register_module(sys.modules[__name__], name="helpers_colour")


FIXTURE = Path(__file__).parent / "fixtures" / "sample" / "colour-w3.safetensors"


@functools.lru_cache(maxsize=None)
def colour_checkpoint() -> Path:
    """The shipped prior checkpoint of this world (``python tests/helpers_colour.py`` remakes it).

    If it no longer loads (the checkpoint format changed), a fresh one is trained for this session.
    """
    from latentmap.checkpoint import load_prior
    from latentmap.errors import LatentmapError

    ensure_registered()
    try:
        load_prior(FIXTURE)
        return FIXTURE
    except (LatentmapError, RuntimeError, OSError):
        return train_colour_checkpoint(Path(tempfile.mkdtemp(prefix="latentmap-colour-")) / FIXTURE.name)


def train_colour_checkpoint(path: Path, space: str = "w3", steps: int = 300) -> Path:
    """Train a small DiffusionPrior on this world (20-30 s on a busy CPU) and save it at ``path``.

    Its recipe's sample section sets small defaults (8 candidates, keep 2, 10 DDIM steps).
    """
    from latentmap.checkpoint import save_prior
    from latentmap.prior.diffusion import DiffusionPrior

    ensure_registered()
    generator = latentmap.get_generator("colour-test", space=space)
    encoder = latentmap.get_encoder("colour-test")
    rng = torch.Generator().manual_seed(0)
    latents = generator.sample_latents(8192, generator=rng)
    embeddings = encoder.embed_image(generator.synthesize(latents))
    torch.manual_seed(0)
    prior = DiffusionPrior.create(latent_dim=DIM, tokens=generator.space.tokens, cond_dim=3, dim=32, depth=2, heads=2,
                                  dim_head=16, timesteps=100)
    prior.set_latent_stats(latents.mean(0), latents.std(0))
    optimizer = torch.optim.AdamW(prior.parameters(), lr=2e-3)
    for _ in range(steps):
        index = torch.randint(0, latents.shape[0], (256,), generator=rng)
        loss = prior.loss(latents[index], embeddings[index], generator=rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    save_prior(path, prior, metadata={
        "encoder": encoder.identity(),
        "generator": generator.identity(),
        "space": generator.space.to_dict(),
        "recipe": {"sample": {"candidates": 8, "keep": 2, "truncation": 1.0,
                              "sampling": {"steps": 10, "sampler": "ddim", "guidance": 1.0}}},
    })
    return path


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(train_colour_checkpoint(FIXTURE))
