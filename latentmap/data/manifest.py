"""``manifest.json``: what a dataset folder holds and how it was made.

The manifest names the generator, latent space and encoder (their identities, with weight
checksums), the seed, shard size and storage dtype, the shard list with counts and SHA-256, and
the exact latent and embedding statistics. It is written when a build starts (``complete: false``,
so a later run can refuse other settings) and rewritten, atomically, once every shard exists.
Statistics are stored as float64 JSON numbers (exact round trip); ``Manifest`` exposes them as
float32 tensors.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentmap.atomic import write_atomic
from latentmap.errors import LatentmapError
from latentmap.identity import essence

MANIFEST_NAME = "manifest.json"
DATASET_FORMAT = "latentmap-dataset/1"
STD_CORRECTION = 1  # unbiased, as torch.std and clip2latent


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the content of shard ``i`` (the sample count only decides how many)."""

    generator: dict[str, Any]
    encoder: dict[str, Any]
    space: dict[str, Any]
    seed: int
    shard_size: int
    dtype: str
    precision: str = "float32"  # compute precision of generator and encoder (data.precision)

    def to_dict(self) -> dict[str, Any]:
        settings = {
            "generator": self.generator,
            "encoder": self.encoder,
            "space": self.space,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "dtype": self.dtype,
        }
        if self.precision != "float32":  # recorded only when not the default: float32 datasets keep their key
            settings["precision"] = self.precision
        return settings

    def comparable(self) -> dict[str, Any]:
        """The settings that decide shard content, generator and encoder reduced to their identity's essence.

        The essence (latentmap.identity) leaves out where weights came from, so moving or renaming a
        weights file does not invalidate a dataset, while other weights or options do.
        """
        settings = self.to_dict()
        for kind in ("generator", "encoder"):
            settings[kind] = essence(kind, settings[kind])
        return settings

    def key(self) -> str:
        """A fingerprint stored in every shard: shards of other settings are never reused."""
        canonical = json.dumps(self.comparable(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


@dataclass
class Manifest:
    """The manifest of a complete dataset folder."""

    generator: dict[str, Any]
    encoder: dict[str, Any]
    space: dict[str, Any]
    seed: int
    samples: int
    shard_size: int
    dtype: str
    shards: list[dict[str, Any]]
    latent_mean: Tensor
    latent_std: Tensor
    embed_mean: Tensor
    embed_std: Tensor
    root: Path = field(default=Path("."))
    build: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(tokens, dim) of one latent."""
        return tuple(self.latent_mean.shape)  # type: ignore[return-value]

    @property
    def embed_dim(self) -> int:
        return int(self.embed_mean.shape[0])

    def shard_path(self, position: int) -> Path:
        """Path of the ``position``-th shard in the list."""
        return self.root / self.shards[position]["file"]

    def settings(self) -> BuildSettings:
        return BuildSettings(self.generator, self.encoder, self.space, self.seed, self.shard_size, self.dtype,
                             self.precision)


def settings_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first differing dotted key between two settings dicts, with both values, or None."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key, "<unset>") != flat_new.get(key, "<unset>"):
            return key, flat_old.get(key, "<unset>"), flat_new.get(key, "<unset>")
    return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}


def read_manifest_json(root: Path) -> dict[str, Any] | None:
    """The raw manifest of ``root`` (complete or not), None if there is none."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LatentmapError(f"{path} is not valid JSON ({exc}); move it away or use a new --out folder") from None
    if not isinstance(data, dict) or data.get("format") != DATASET_FORMAT:
        raise LatentmapError(f"{path} is not a latentmap dataset manifest (format {DATASET_FORMAT!r} expected)")
    return data


def write_manifest_json(root: Path, data: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (sorted keys, indented: diff-friendly)."""
    text = json.dumps(data, indent=1, sort_keys=True)
    write_atomic(root / MANIFEST_NAME, text.encode("utf-8"))


def start_manifest(settings: BuildSettings, samples: int) -> dict[str, Any]:
    """The manifest written when a build starts: settings only, ``complete: false``."""
    return {"format": DATASET_FORMAT, "complete": False, "samples": samples, **settings.to_dict()}


def load_manifest(root: str | Path) -> Manifest:
    """Read the manifest of a complete dataset folder; LatentmapError naming the folder otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise LatentmapError(f"dataset folder {root} does not exist; make one with `latentmap build-data`")
    data = read_manifest_json(root)
    if data is None:
        raise LatentmapError(f"{root} holds no {MANIFEST_NAME}: not a dataset folder (make one with `latentmap build-data`)")
    if not data.get("complete"):
        raise LatentmapError(
            f"{root / MANIFEST_NAME} is from a build that has not finished; "
            "run the same `latentmap build-data` command again to complete it"
        )
    try:
        stats = data["stats"]
        return Manifest(
            generator=data["generator"],
            encoder=data["encoder"],
            space=data["space"],
            seed=int(data["seed"]),
            samples=int(data["samples"]),
            shard_size=int(data["shard_size"]),
            dtype=str(data["dtype"]),
            shards=list(data["shards"]),
            latent_mean=torch.tensor(stats["latent_mean"], dtype=torch.float32),
            latent_std=torch.tensor(stats["latent_std"], dtype=torch.float32),
            embed_mean=torch.tensor(stats["embed_mean"], dtype=torch.float32),
            embed_std=torch.tensor(stats["embed_std"], dtype=torch.float32),
            root=root,
            build=dict(data.get("build", {})),
            precision=str(data.get("precision", "float32")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise LatentmapError(f"{root / MANIFEST_NAME} is incomplete or malformed: bad or missing {exc}") from None
