"""One rule for "is this the same generator / encoder?": build-data resume, train, the pipeline and imports.

An identity is the JSON a component's ``identity()`` returns: ``name`` (for encoders ``prefix:spec``),
``options`` (how it was asked for, enough to rebuild it), usually ``weights_sha256``, and facts such
as resolution, space or embedding size. Two components are the same when their *essences* agree:

- the registered name (an encoder's prefix); the full name too, unless both record a weights checksum;
- the weights checksum, where both record one (it decides, not where the file lies);
- every other recorded fact, except those that only say where the weights came from;
- the options the component declares as part of its identity (not ``identity=False`` ones such as a
  weights path or a batch size, nor ``placement`` ones such as the device).

Keys recorded by only one side are not held against either, so older files stay comparable.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from latentmap.errors import LatentmapError, UnknownNameError

__all__ = ["essence", "differences", "require_same", "checksum"]

# Facts that say where weights came from, not what they are (the checksum stands for them).
LOCATION_KEYS = frozenset({"weights", "weights_file", "spec"})
CHECKSUM_KEYS = ("weights_sha256", "sha256")  # "sha256": what shapes-clip recorded before the name was one
KINDS = {"generator": "generators", "encoder": "encoders"}


def checksum(identity: dict[str, Any]) -> str | None:
    """The weights checksum an identity records, if any."""
    for key in CHECKSUM_KEYS:
        if isinstance(identity.get(key), str):
            return identity[key]
    return None


def _registered_name(kind: str, name: str) -> str:
    return name.partition(":")[0] if kind == "encoder" else name


def _identity_fields(kind: str, name: str) -> set[str] | None:
    """The option names ``name`` declares as part of its identity; None if no installed plugin knows it."""
    from latentmap.plugins import resolve

    try:
        declared = resolve(KINDS[kind], name).options
    except (UnknownNameError, LatentmapError):
        return None
    if declared is None:
        return set()
    return {f.name for f in dataclasses.fields(declared) if f.metadata.get("identity", True)}


def _canonical(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def essence(kind: str, identity: dict[str, Any], *, with_checksum_peer: bool | None = None) -> dict[str, Any]:
    """What decides what a component computes (see the module docstring), JSON-canonical.

    ``with_checksum_peer`` says whether the other side of a comparison records a checksum too
    (None: judge by this side alone); only then does the checksum stand for the full name.
    """
    name = str(identity.get("name", ""))
    digest = checksum(identity)
    both_checksums = digest is not None and (with_checksum_peer if with_checksum_peer is not None else True)
    result: dict[str, Any] = {"name": _registered_name(kind, name) if both_checksums else name}
    if digest is not None:
        result["weights_sha256"] = digest
    skipped = {"name", "options", *CHECKSUM_KEYS} | (LOCATION_KEYS if both_checksums else set())
    for key, value in identity.items():
        if key not in skipped:
            result[key] = value
    fields = _identity_fields(kind, name)
    options = identity.get("options") or {}
    if fields and isinstance(options, dict):
        kept = {k: v for k, v in options.items() if k in fields}
        if kept:
            result["options"] = kept
    return _canonical(result)


def differences(
    kind: str, recorded: dict[str, Any], current: dict[str, Any], *, overridden: frozenset[str] = frozenset()
) -> list[str]:
    """The ways ``current`` differs from ``recorded``, as lines, the checksum first.

    ``overridden`` names options the user changed on purpose (e.g. ``truncation`` at sampling time):
    neither the option nor a fact of the same name is compared.
    """
    peer = checksum(recorded) is not None and checksum(current) is not None
    old = essence(kind, recorded, with_checksum_peer=peer)
    new = essence(kind, current, with_checksum_peer=peer)
    lines = []
    if "weights_sha256" in old and "weights_sha256" in new and old["weights_sha256"] != new["weights_sha256"]:
        lines.append(f"{kind} weights differ: recorded weights_sha256 {old['weights_sha256'][:16]}..., "
                     f"got {new['weights_sha256'][:16]}...")
    for key in sorted(set(old) & set(new) - {"weights_sha256", "options"} - overridden):
        if old[key] != new[key]:
            lines.append(f"{kind} {key} differs: recorded {old[key]!r}, got {new[key]!r}")
    old_options, new_options = old.get("options", {}), new.get("options", {})
    for key in sorted(set(old_options) & set(new_options) - overridden):
        if old_options[key] != new_options[key]:
            lines.append(f"{kind} option {key!r} differs: recorded {old_options[key]!r}, got {new_options[key]!r}")
    return lines


def require_same(
    kind: str, recorded: dict[str, Any], current: dict[str, Any], *, context: str,
    overridden: frozenset[str] = frozenset(),
) -> None:
    """Raise one line (``context``: the first difference) unless the two identities are the same component."""
    found = differences(kind, recorded, current, overridden=overridden)
    if found:
        raise LatentmapError(f"{context}: {found[0]}")
