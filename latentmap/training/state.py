"""Full training state on disk, for exact resume: one safetensors file, no pickle.

Tensors (model, EMA, optimiser moments, RNG states) go in the safetensors body under prefixed names;
everything else (step, data position, EMA counters, optimiser hyper-parameters, best score, the
recipe) goes in the file's metadata as one JSON string under ``"state"``. Files are written to a
temporary name, flushed, fsynced and renamed, so a crash mid-write leaves the previous state intact;
``latest_state`` only ever sees complete files.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from latentmap.atomic import replace_atomically
from latentmap.errors import LatentmapError

STATE_FORMAT = "latentmap-train-state"
STATE_VERSION = 1
STATE_NAME = re.compile(r"^state-(\d{9})\.safetensors$")


def state_path(folder: Path, step: int) -> Path:
    """``folder/state-000001000.safetensors``: names sort by step."""
    return folder / f"state-{step:09d}.safetensors"


def latest_state(folder: Path) -> Path | None:
    """The newest complete state file in ``folder`` (None if there is none)."""
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if STATE_NAME.match(p.name))
    return found[-1] if found else None


def load_latest_intact(folder: Path) -> tuple[Path, dict[str, Tensor], dict[str, Any], list[str]]:
    """The newest training state that reads back whole: (path, tensors, info, lines about newer broken ones).

    A kill or a full disk can leave the newest state truncated; an older intact one is still a
    valid place to resume from, so it is used and the broken ones are named.
    """
    found = sorted((p for p in folder.iterdir() if STATE_NAME.match(p.name)), reverse=True) if folder.is_dir() else []
    skipped: list[str] = []
    for path in found:
        try:
            tensors, info = load_state(path)
        except LatentmapError as exc:
            skipped.append(f"{path.name} is unreadable ({exc}); using an older state")
            continue
        return path, tensors, info, skipped
    detail = f" ({'; '.join(skipped)})" if skipped else ""
    raise LatentmapError(f"nothing to resume: {folder} holds no readable training state{detail}")


def prune_states(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` state files."""
    found = sorted(p for p in folder.iterdir() if STATE_NAME.match(p.name))
    for old in found[:-keep] if keep > 0 else found:
        old.unlink(missing_ok=True)


def save_state(path: Path, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    """Write a training state: ``tensors`` by name, ``info`` as JSON metadata."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **info}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {"state": json.dumps(payload)}
    replace_atomically(path, lambda temp: save_file(contiguous, str(temp), metadata=metadata))


def load_state(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a training state written by ``save_state``: (tensors, info)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error type for malformed files
        raise LatentmapError(f"cannot read training state {path}: {exc}") from None
    try:
        info = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError):
        raise LatentmapError(f"{path} is not a latentmap training state (no 'state' metadata)") from None
    if info.get("format") != STATE_FORMAT:
        raise LatentmapError(f"{path} is not a latentmap training state (format {info.get('format')!r})")
    return tensors, info


def split_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors named ``prefix.*``, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def add_prefix(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


# --------------------------------------------------------------------------------------------
# Optimiser state: torch's state_dict holds tensors and plain values mixed; split them.


def optimizer_to_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, JSON) that ``optimizer_from_state`` turns back into the same state_dict."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_state(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})


# --------------------------------------------------------------------------------------------
# Random number generators of torch (CPU and CUDA), numpy and Python.


def rng_to_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The global RNG states as (tensors, JSON)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = value
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(internal, dtype=torch.int64)
    info = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}
    return tensors, info


def rng_from_state(tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = info["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = info["python"]
    random.setstate((version, tuple(int(v) for v in tensors["python"].tolist()), gauss_next))
