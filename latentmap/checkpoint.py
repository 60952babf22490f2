"""Prior checkpoints: one self-describing safetensors file, no pickle.

The tensors are the prior's state dict (parameters, schedule buffers, latent statistics; the
trainer passes its EMA model so these are EMA weights) plus optional extra tensors under their
own names (e.g. the raw online weights under ``online.``). The safetensors metadata holds one
JSON document under the key ``latentmap``::

    {"format": "latentmap-prior", "version": 2,
     "prior": {"name": "diffusion", "shape": {"tokens": .., "latent_dim": .., "cond_dim": ..}, "options": {...}},
     "encoder": {...}, "generator": {...}, "space": {...}, "recipe": {...}, ...,
     "extra_tensors": [names]}

``load_prior`` needs nothing but the file and the plugin that registered the prior's name: it
rebuilds any prior, built-in or third-party, through the prior registry. Version 1 files (written
before priors were pluggable, always the diffusion prior with one flat config) still load.
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
from latentmap.data.shards import content_digest
from latentmap.errors import LatentmapError, UnknownNameError
from latentmap.interfaces import Prior, PriorShape

FORMAT = "latentmap-prior"
VERSION = 2
READABLE_VERSIONS = (1, 2)
METADATA_KEY = "latentmap"


def _plain_tensor(t: Tensor) -> Tensor:
    return t.detach().to("cpu").contiguous().clone()


def save_prior(
    path: str | os.PathLike,
    prior: Prior,
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
    reserved = {"format", "version", "prior", "extra_tensors", "prior_tensors_sha256"} & set(metadata)
    if reserved:
        raise LatentmapError(f"metadata key {sorted(reserved)[0]!r} is reserved for the checkpoint format")
    document = {
        "format": FORMAT,
        "version": VERSION,
        "prior": prior.config_dict(),
        "prior_tensors_sha256": content_digest(tensors),  # a corrupted file is refused, not sampled from
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
    if document.get("version") not in READABLE_VERSIONS:
        raise LatentmapError(
            f"{str(path)!r}: unsupported checkpoint version {document.get('version')!r}, expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))} (a newer latentmap wrote it?)"
        )
    if not isinstance(document.get("prior"), dict):
        raise LatentmapError(f"{str(path)!r}: checkpoint metadata has no 'prior' config")
    document["prior"] = stored_prior_entry(document["prior"])
    return document


def stored_prior_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A stored prior description as ``{name, shape, options}``.

    Files written before priors were pluggable (checkpoint version 1, training states of then) hold
    the diffusion prior's flat config: it is split into shape and options.
    """
    if "name" in entry or not entry:
        return entry
    shape_keys = ("tokens", "latent_dim", "cond_dim")
    return {"name": "diffusion", "shape": {k: entry.get(k) for k in shape_keys},
            "options": {k: v for k, v in entry.items() if k not in shape_keys}}


def build_stored_prior(entry: Any, *, source: str) -> Prior:
    """A fresh prior of the kind a checkpoint (or training state) records: name, shape and options."""
    from latentmap import get_prior
    from latentmap.plugins import registrations

    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise LatentmapError(f"{source}: the stored prior has no registered 'name'")
    name = entry["name"]
    try:
        shape = PriorShape.from_dict(entry.get("shape") or {})
        return get_prior(name, **shape.to_dict(), **(entry.get("options") or {}))
    except UnknownNameError:
        installed = ", ".join(sorted(registrations("priors"))) or "none"
        raise LatentmapError(
            f"{source} holds a {name!r} prior, but no installed plugin registers prior {name!r} "
            f"(installed priors: {installed}); install the plugin that provides it"
        ) from None
    except LatentmapError as exc:
        raise LatentmapError(f"{source}: {exc}") from None


def load_prior(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[Prior, dict[str, Any]]:
    """Rebuild the prior stored in ``path`` through the registry: (prior in eval mode on ``device``, metadata)."""
    document = read_metadata(path)
    prior = build_stored_prior(document["prior"], source=repr(str(path)))
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
    recorded = document.get("prior_tensors_sha256")
    if recorded is not None and content_digest(tensors) != recorded:
        raise LatentmapError(f"{str(path)!r} is corrupted: its tensors do not match the checksum it was saved with")
    prior.load_state_dict(tensors, strict=True)
    return prior.to(device).eval(), document


def load_extra_tensors(path: str | os.PathLike, *, prefix: str = "") -> dict[str, Tensor]:
    """The extra tensors saved beside the prior (those whose names start with ``prefix``)."""
    document = read_metadata(path)
    names = [n for n in document.get("extra_tensors", []) if n.startswith(prefix)]
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        return {name: handle.get_tensor(name) for name in names}
