"""Prior checkpoints: one self-describing safetensors file, no pickle.

The tensors are the prior's state dict (parameters, schedule buffers, latent statistics; the
trainer passes its EMA model so these are EMA weights) plus optional extra tensors under their
own names (e.g. the raw online weights under ``online.``). The safetensors metadata holds one
JSON document under the key ``latentmap``::

    {"format": "latentmap-prior", "version": 1, "prior": {...PriorConfig...},
     "encoder": {...}, "generator": {...}, "space": {...}, "recipe": {...}, ...,
     "extra_tensors": [names]}

``load_prior`` needs nothing but the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from latentmap.atomic import replace_atomically
from latentmap.errors import LatentmapError
from latentmap.prior.diffusion import DiffusionPrior, PriorConfig

FORMAT = "latentmap-prior"
VERSION = 1
METADATA_KEY = "latentmap"


def _plain_tensor(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous().clone()


def save_prior(
    path: str | os.PathLike,
    prior: DiffusionPrior,
    *,
    metadata: dict[str, Any],
    extra_tensors: dict[str, Tensor] | None = None,
) -> None:
    """Write ``prior`` (pass the EMA model) and its metadata to one safetensors file, atomically.

    ``metadata`` should carry ``encoder``, ``generator`` and ``space`` identities and the
    ``recipe``; anything JSON-serialisable is kept. ``extra_tensors`` (e.g. ``{"online.net...": t}``)
    are stored beside the prior's own and must not reuse its names.
    """
    tensors = {name: _plain_tensor(t) for name, t in prior.state_dict().items()}
    extra = {name: _plain_tensor(t) for name, t in (extra_tensors or {}).items()}
    clash = sorted(set(tensors) & set(extra))
    if clash:
        raise LatentmapError(f"extra tensor {clash[0]!r} has the same name as a prior tensor; use a prefix such as 'online.'")
    reserved = {"format", "version", "prior", "extra_tensors"} & set(metadata)
    if reserved:
        raise LatentmapError(f"metadata key {sorted(reserved)[0]!r} is reserved for the checkpoint format")
    document = {
        "format": FORMAT,
        "version": VERSION,
        "prior": prior.config_dict(),
        **metadata,
        "extra_tensors": sorted(extra),
    }
    try:
        text = json.dumps(document, sort_keys=True)
    except TypeError as exc:
        raise LatentmapError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    replace_atomically(path, lambda temp: save_file({**tensors, **extra}, str(temp), metadata={METADATA_KEY: text}))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a latentmap prior checkpoint; a LatentmapError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"prior checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception:
        raise LatentmapError(f"{str(path)!r} is not a latentmap prior checkpoint (not a safetensors file)") from None
    if raw is None:
        raise LatentmapError(f"{str(path)!r} is not a latentmap prior checkpoint (no {METADATA_KEY!r} metadata)")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError:
        raise LatentmapError(f"{str(path)!r}: checkpoint metadata is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise LatentmapError(f"{str(path)!r} is not a latentmap prior checkpoint (format is not {FORMAT!r})")
    if document.get("version") != VERSION:
        raise LatentmapError(f"{str(path)!r}: unsupported checkpoint version {document.get('version')!r}, expected {VERSION}")
    if not isinstance(document.get("prior"), dict):
        raise LatentmapError(f"{str(path)!r}: checkpoint metadata has no 'prior' config")
    return document


def load_prior(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[DiffusionPrior, dict[str, Any]]:
    """Rebuild the prior stored in ``path``: (prior in eval mode on ``device``, metadata dict)."""
    document = read_metadata(path)
    config = PriorConfig.from_dict(document["prior"])
    prior = DiffusionPrior(config)
    expected = set(prior.state_dict())
    extra = set(document.get("extra_tensors", []))
    tensors: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        stored = set(handle.keys())
        for name in sorted(stored - extra):
            if name not in expected:
                raise LatentmapError(f"{str(path)!r}: unexpected tensor {name!r} for a prior with this config")
            tensors[name] = handle.get_tensor(name)
    missing = sorted(expected - set(tensors))
    if missing:
        raise LatentmapError(f"{str(path)!r}: missing tensor {missing[0]!r}")
    prior.load_state_dict(tensors, strict=True)
    return prior.to(device).eval(), document


def load_extra_tensors(path: str | os.PathLike, *, prefix: str = "") -> dict[str, Tensor]:
    """The extra tensors saved beside the prior (those whose names start with ``prefix``)."""
    document = read_metadata(path)
    names = [n for n in document.get("extra_tensors", []) if n.startswith(prefix)]
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in names}


def check_identity(metadata: dict[str, Any], role: str, identity: dict[str, Any] | None) -> None:
    """Raise if the checkpoint was trained for a different ``role`` (encoder/generator/space).

    Compares every key both identities record (name, checksum, dims ...); absent keys are not
    held against either side.
    """
    if identity is None:
        return
    stored = metadata.get(role)
    if not isinstance(stored, dict):
        return
    for key in sorted(set(stored) & set(identity)):
        if stored[key] != identity[key]:
            raise LatentmapError(
                f"checkpoint was trained for {role} {key}={stored[key]!r}, but {identity[key]!r} was requested"
            )
