"""Typed options, declared once: the engine every component, recipe section and command shares.

A component (generator, encoder, latent space, prior, a prior's sampling settings) declares what it
accepts as a dataclass whose fields carry a type, a default and, through :func:`option`, a help text
and limits. Everything else is derived from that declaration: validation of a recipe section, of
``KEY=VALUE`` pairs on the command line and of a checkpoint's stored config (:func:`build_options`,
with a did-you-mean from *that* dataclass's fields), the text ``latentmap list --options`` prints and
the recipe reference in docs (:func:`describe_options`), and what is stored again (:func:`options_dict`).

Field metadata (set with :func:`option`): ``help``; ``choices`` (allowed values, or a callable giving
them, so a registry can be the single list); ``aliases`` (other spellings of a choice, e.g. an older
name, replaced by the choice on reading); ``min``/``max`` (inclusive) and ``below`` (exclusive
upper bound); ``path`` = ``"file"`` (must exist) or ``"dir"``; ``identity=False`` for options that
say where something comes from or how fast it runs (a weights file's location, batch sizes) rather
than what it computes, so they never make two otherwise equal components differ; ``placement=True``
for where it runs (device, dtype): not part of its identity and not even recorded, so a checkpoint
made on a GPU loads on a CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import yaml

from latentmap.errors import LatentmapError

__all__ = [
    "OptionInfo", "option", "build_options", "options_dict", "describe_options", "identity_options",
    "recorded_options",
    "parse_value", "parse_pairs", "suggest", "no_options",
]


def option(
    default: Any = MISSING,
    *,
    help: str = "",
    choices: Iterable[Any] | Callable[[], Iterable[Any]] | None = None,
    min: float | None = None,
    max: float | None = None,
    below: float | None = None,
    path: str | None = None,
    aliases: Mapping[str, Any] | None = None,
    identity: bool = True,
    placement: bool = False,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its help text and limits (``dataclasses.field`` with metadata)."""
    metadata: dict[str, Any] = {"help": help, "identity": identity and not placement, "placement": placement}
    if aliases:  # other spellings accepted for a choice, replaced by it before anything sees the value
        metadata["aliases"] = dict(aliases)
    for key, value in (("choices", choices), ("min", min), ("max", max), ("below", below), ("path", path)):
        if value is not None:
            metadata[key] = tuple(value) if key == "choices" and not callable(value) else value
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class no_options:  # noqa: N801  (a declaration, named for how it reads at the registration)
    """The options of a component that takes none."""


# ------------------------------------------------------------------------------------------ building
def build_options(cls: type, values: Mapping[str, Any] | None, *, where: str, owner: str = "") -> Any:
    """Validate ``values`` against dataclass ``cls`` and return an instance (defaults filled in).

    ``where`` names the source (a recipe file, ``--generator-option``, a checkpoint) and ``owner`` the
    component or section (``prior 'diffusion'``); both appear in the one-line error for an unknown
    key, a value of the wrong type or out of its limits.
    """
    if values is not None and not isinstance(values, Mapping):
        raise LatentmapError(f"{_at(where)}{owner or 'options'} must be a mapping of option: value, got {values!r}")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    label = f"{owner} " if owner else ""
    for name, value in values.items():
        if name not in fields:
            raise LatentmapError(f"{_at(where)}{label}has no option {name!r}{suggest(str(name), fields)}")
        kwargs[name] = check_value(value, hints[name], fields[name], f"{label}option {name!r}".strip(), where)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise LatentmapError(f"{_at(where)}{label}needs option {missing[0]!r}")
    return cls(**kwargs)


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def check_value(value: Any, hint: Any, f: dataclasses.Field, key: str, where: str) -> Any:
    """``value`` coerced to the field's type and checked against its limits; LatentmapError otherwise."""
    value = coerce(value, hint, key, where)
    meta = f.metadata
    if value is None:
        return value
    aliases, given = meta.get("aliases", {}), value
    if isinstance(value, str) and value in aliases:
        value = aliases[value]
    choices = meta.get("choices")
    if choices is not None:
        allowed = tuple(choices() if callable(choices) else choices)
        if value not in allowed:
            also = [name for name, target in aliases.items() if target in allowed]
            also_text = f" (or {', '.join(also)})" if also else ""
            raise LatentmapError(f"{_at(where)}{key} must be one of {', '.join(map(str, allowed))}{also_text}; "
                                 f"got {given!r}")
    if "min" in meta and value < meta["min"]:
        raise LatentmapError(f"{_at(where)}{key} must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise LatentmapError(f"{_at(where)}{key} must be <= {meta['max']}, got {value!r}")
    if "below" in meta and value >= meta["below"]:
        raise LatentmapError(f"{_at(where)}{key} must be < {meta['below']}, got {value!r}")
    return value


def coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field type; lenient only where YAML and command lines are surprising."""

    def wrong(expected: str) -> LatentmapError:
        return LatentmapError(f"{_at(where)}{key} must be {expected}, got {value!r}")

    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 1.0e6 written for a step count
            raise wrong("an integer")
        return value
    if hint is float:
        # PyYAML reads "1e-4" (no dot) as a string: accept any string Python reads as a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise wrong("a finite number")
        return float(value)
    if hint is str:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise wrong("a non-empty string")
        return value
    if hint is Path:
        if isinstance(value, Path):
            return value
        if not isinstance(value, str) or not value:
            raise wrong("a path")
        return Path(value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) or type(None) in args:  # a union: the first type that takes it
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, where)
            except LatentmapError as exc:
                errors.append((arg, exc))
        # the error of the member the value looks like (a list for list[str]), else the first member's
        fitting = [exc for arg, exc in errors if isinstance(typing.get_origin(arg) or arg, type)
                   and isinstance(value, typing.get_origin(arg) or arg)]
        raise (fitting or [exc for _, exc in errors])[0]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise wrong("a mapping")
        return dict(value)
    if origin is list:
        if isinstance(value, str) and args and args[0] is str:
            return [value]
        if isinstance(value, str) and args and args[0] is int and "," in value:
            value = [int(v) if v.strip().lstrip("-").isdigit() else v for v in value.split(",")]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise wrong("a list")
        return [coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)] if args else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong(f"a list of {len(args)} values")
        return tuple(coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"option {key} has an unsupported type {hint!r}")  # a bug in the declaration


# ------------------------------------------------------------------------------------------ reading back
def options_dict(instance: Any) -> dict[str, Any]:
    """A dataclass instance as a JSON-ready dict (paths as strings, tuples as lists)."""
    return {f.name: plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)}


def recorded_options(instance: Any) -> dict[str, Any]:
    """The options stored with what a component made (all but ``placement`` ones), enough to rebuild it."""
    return {f.name: plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)
            if not f.metadata.get("placement", False)}


def identity_options(instance: Any) -> dict[str, Any]:
    """The options that decide what a component computes (fields not marked ``identity=False``)."""
    return {f.name: plain(getattr(instance, f.name)) for f in dataclasses.fields(instance)
            if f.metadata.get("identity", True)}


def plain(value: Any) -> Any:
    """Deep copy of nested dicts/lists/tuples with Paths as strings (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class OptionInfo:
    """One declared option, for listings and generated docs."""

    name: str
    type: str
    default: Any
    help: str
    limits: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``latentmap list --json``): ``default`` is None where the option is ``required``."""
        required = self.default is MISSING
        return {"name": self.name, "type": self.type, "default": None if required else self.default,
                "required": required, "help": self.help, "limits": self.limits}

    def line(self) -> str:
        """``name (type, default X; limits): help``."""
        default = "required" if self.default is MISSING else f"default {self.default!r}"
        details = ", ".join(part for part in (self.type, default, self.limits) if part)
        return f"{self.name} ({details}): {self.help}" if self.help else f"{self.name} ({details})"


def describe_options(cls: type | None) -> list[OptionInfo]:
    """Every option ``cls`` declares, in declaration order."""
    if cls is None:
        return []
    hints = typing.get_type_hints(cls)
    infos = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not MISSING:
            default = plain(f.default)
        elif f.default_factory is not MISSING:
            default = plain(f.default_factory())
        else:
            default = MISSING
        infos.append(OptionInfo(f.name, _type_name(hints[f.name]), default, f.metadata.get("help", ""), _limits(f)))
    return infos


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    text = str(hint).replace("typing.", "").replace("pathlib.", "")
    return text.replace("NoneType", "None")


def _limits(f: dataclasses.Field) -> str:
    meta = f.metadata
    parts = []
    if "choices" in meta:
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        aliases = [f"{name} = {target}" for name, target in meta.get("aliases", {}).items() if target in choices]
        parts.append("one of " + "|".join(map(str, choices)) + (f" ({', '.join(aliases)})" if aliases else ""))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    if "below" in meta:
        parts.append(f"< {meta['below']}")
    if meta.get("path") == "file":
        parts.append("an existing file")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ text input
def parse_value(text: str) -> Any:
    """A value typed by a user, read as YAML (``0.7``, ``true``, ``[4, 4, 10]``); text if YAML fails."""
    if not text.strip():
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_pairs(pairs: Iterable[str] | None, *, flag: str = "--option") -> dict[str, Any]:
    """``["weights=/w/ffhq.pkl", "truncation=0.7"]`` -> dict, each value read by :func:`parse_value`."""
    options: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LatentmapError(f"bad {flag} {pair!r}: expected KEY=VALUE")
        options[key.strip()] = parse_value(value)
    return options


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 image``, ``2 images``, ``0 images``: a count with its noun, for messages."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"


def suggest(name: str, known: Iterable[str], *, prefix: str = "", quote: bool = True) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, else `` (known: ...)``."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        shown = f"{prefix}{close[0]}"
        return f" (did you mean {shown!r}?)" if quote else f" (did you mean {shown}?)"
    return f" (known: {', '.join(prefix + k for k in known) or 'none'})"
