"""The pickle-free file format for StyleGAN networks: safetensors + JSON metadata.

``latentmap convert-stylegan network.pkl out.safetensors`` writes it once; from then on the
network loads with no pickle at all. The tensors are the network's ``state_dict()`` under
NVIDIA's key names; the metadata holds ``format``, ``format_version``, ``class`` (stylegan2 or
stylegan3), ``init_kwargs`` (JSON: NVIDIA's constructor keyword arguments), and where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from latentmap import LatentmapError, replace_atomically
from latentmap_stylegan.pickle_loader import LoadedNetwork, build_network, fill_network, to_plain

FORMAT = "latentmap-stylegan"
FORMAT_VERSION = "1"
KINDS = ("stylegan2", "stylegan3")


def save_converted(loaded: LoadedNetwork, path: str | Path, *, source: str = "", network_key: str = "") -> Path:
    """Write ``loaded``'s weights and constructor kwargs to ``path`` (.safetensors)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in loaded.network.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": loaded.kind,
        "init_kwargs": json.dumps(to_plain(loaded.init_kwargs), sort_keys=True),
        "source": source,
        "network": network_key,
    }
    return replace_atomically(path, lambda temp: save_file(tensors, str(temp), metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a converted file, checked to be ours; one-line errors otherwise."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LatentmapError(f"{path} is not a readable safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise LatentmapError(
            f"{path} is a safetensors file but not a converted StyleGAN network "
            f"(metadata 'format' is {metadata.get('format')!r}, expected {FORMAT!r}; make one with "
            f"'latentmap convert-stylegan network.pkl {Path(path).name}')"
        )
    if metadata.get("class") not in KINDS:
        raise LatentmapError(f"{path}: metadata 'class' is {metadata.get('class')!r}, expected one of {KINDS}")
    return metadata


def load_converted(path: str | Path) -> LoadedNetwork:
    """Build the network stored in a converted file (no pickle involved)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise LatentmapError(f"converted network {file} does not exist")
    metadata = read_metadata(file)
    try:
        init_kwargs: dict[str, Any] = json.loads(metadata.get("init_kwargs", ""))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a huge number, too deep
        raise LatentmapError(f"{file}: metadata 'init_kwargs' is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(init_kwargs, dict):
        raise LatentmapError(f"{file}: metadata 'init_kwargs' must be a JSON object")
    try:
        init_kwargs = to_plain(init_kwargs)  # the same bounds as a pickle's kwargs (depth, size, 64-bit ints)
    except LatentmapError as exc:
        raise LatentmapError(f"{file}: {exc}") from None
    kind = metadata["class"]
    with safe_open(str(file), framework="pt") as handle:
        # The kwargs are checked against the stored shapes before the network is allocated.
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        network = build_network(kind, init_kwargs, str(file), shapes)
        network = fill_network(network, lambda name, target: target.copy_(handle.get_tensor(name)))
    return LoadedNetwork(network=network, kind=kind, init_kwargs=init_kwargs,
                         extras={"source": metadata.get("source", ""), "network": metadata.get("network", "")})


def load_network(path: str | Path, *, network_key: str = "G_ema") -> LoadedNetwork:
    """A StyleGAN network from a ``.pkl`` (read safely) or a converted ``.safetensors``."""
    file = Path(path).expanduser()
    if file.suffix.lower() == ".safetensors":
        return load_converted(file)
    from latentmap_stylegan.pickle_loader import load_network_pickle

    return load_network_pickle(file, key=network_key)


def tensors_sha256(network: torch.nn.Module) -> str:
    """SHA-256 over the network's tensors (name, dtype, shape, bytes; sorted by name).

    The same for an NVIDIA pickle and its converted file, so identities survive conversion.
    """
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
