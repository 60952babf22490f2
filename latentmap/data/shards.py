"""The shard file: one safetensors file of (latent, image embedding) pairs plus their moments.

A shard holds ``latents`` (n, tokens, dim) and ``embeddings`` (n, D) in the storage dtype, the
float64 moments of both (``latent_mean``/``latent_m2``, ``embed_mean``/``embed_m2``) computed from
the stored values, and one metadata entry ``latentmap`` with canonical JSON: format, index, count,
the build key (a fingerprint of the settings that determine the content) and a SHA-256 of the
tensors. A shard is therefore self-checking: a resumed build can tell a complete, intact shard of
this very dataset from a corrupt one or one from other settings without any side file.

Shard files contain no timestamps or host names and are byte-identical whenever their content is
(safetensors orders tensors deterministically; the single metadata key avoids its unordered map).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from latentmap.data.stats import Moments
from latentmap.errors import LatentmapError

SHARD_FORMAT = "latentmap-shard/1"
METADATA_KEY = "latentmap"
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def shard_file_name(index: int) -> str:
    """``shard-00042.safetensors``."""
    return f"shard-{index:05d}.safetensors"


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype for a ``--dtype`` name; LatentmapError for anything else."""
    if name not in STORAGE_DTYPES:
        raise LatentmapError(f"unknown storage dtype {name!r}; expected one of {', '.join(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


def content_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # hashed in place, no bytes copy
    return digest.hexdigest()


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest needs to know about one complete shard."""

    index: int
    count: int
    file: str
    sha256: str
    latent_moments: Moments
    embed_moments: Moments

    def manifest_entry(self) -> dict[str, Any]:
        return {"file": self.file, "index": self.index, "count": self.count, "sha256": self.sha256}


def encode_shard(index: int, latents: Tensor, embeddings: Tensor, *, build_key: str) -> tuple[bytes, ShardRecord]:
    """Serialise one shard (tensors already in the storage dtype); returns the file bytes and its record."""
    if latents.shape[0] != embeddings.shape[0]:
        raise ValueError(f"shard {index}: {latents.shape[0]} latents but {embeddings.shape[0]} embeddings")
    latent_moments = Moments.of(latents)
    embed_moments = Moments.of(embeddings)
    tensors = {
        "latents": latents.contiguous(),
        "embeddings": embeddings.contiguous(),
        "latent_mean": latent_moments.mean,
        "latent_m2": latent_moments.m2,
        "embed_mean": embed_moments.mean,
        "embed_m2": embed_moments.m2,
    }
    info = {
        "format": SHARD_FORMAT,
        "index": index,
        "count": int(latents.shape[0]),
        "build_key": build_key,
        "content_sha256": content_digest(tensors),
    }
    data = save_safetensors(tensors, metadata={METADATA_KEY: json.dumps(info, sort_keys=True)})
    record = ShardRecord(
        index=index,
        count=info["count"],
        file=shard_file_name(index),
        sha256=hashlib.sha256(data).hexdigest(),
        latent_moments=latent_moments,
        embed_moments=embed_moments,
    )
    return data, record


def _parse(data: bytes, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and shard info of a shard file's bytes; LatentmapError if it is not a readable shard."""
    try:
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        info = json.loads(header["__metadata__"][METADATA_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise LatentmapError(f"{path} is not a readable latentmap shard ({type(exc).__name__}: {exc})") from None
    if info.get("format") != SHARD_FORMAT:
        raise LatentmapError(f"{path} has shard format {info.get('format')!r}, expected {SHARD_FORMAT!r}")
    return tensors, info


def inspect_shard(path: Path, *, index: int, count: int, build_key: str) -> tuple[ShardRecord | None, str]:
    """Check that ``path`` is complete, intact shard ``index`` of ``count`` samples of this build.

    Returns ``(record, "")`` if so, ``(None, reason)`` otherwise (missing, unreadable, checksum
    mismatch, other settings): the caller rebuilds it.
    """
    if not path.is_file():
        return None, "missing"
    data = path.read_bytes()
    try:
        tensors, info = _parse(data, path)
    except LatentmapError as exc:
        return None, str(exc)
    if info.get("build_key") != build_key:
        return None, "built with other settings"
    if info.get("index") != index or info.get("count") != count:
        return None, f"holds shard {info.get('index')} with {info.get('count')} samples, expected {index} with {count}"
    if content_digest(tensors) != info.get("content_sha256"):
        return None, "checksum mismatch (corrupt)"
    record = ShardRecord(
        index=index,
        count=count,
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        latent_moments=Moments(count, tensors["latent_mean"], tensors["latent_m2"]),
        embed_moments=Moments(count, tensors["embed_mean"], tensors["embed_m2"]),
    )
    return record, ""


def read_shard(
    path: Path, *, expected_count: int | None = None, expected_sha256: str | None = None
) -> tuple[Tensor, Tensor]:
    """(latents, embeddings) of a shard in its storage dtype; LatentmapError naming the file if unreadable.

    With ``expected_sha256`` (the manifest's) the file's bytes are checked first: a corrupted shard is
    named, never trained on.
    """
    if not path.is_file():
        raise LatentmapError(f"shard file {path} is missing")
    data = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise LatentmapError(
            f"{path} is corrupted: its SHA-256 differs from the one in manifest.json; delete it and run "
            "build-data again with the same settings to rebuild it"
        )
    tensors, info = _parse(data, path)
    latents, embeddings = tensors["latents"], tensors["embeddings"]
    if expected_count is not None and latents.shape[0] != expected_count:
        raise LatentmapError(f"{path} holds {latents.shape[0]} samples, the manifest says {expected_count}")
    return latents, embeddings
