"""Recipes: one YAML file that says how to build a dataset, train a prior and sample from it.

A recipe names the generator (and its latent space), the encoder, the dataset folder, the prior's
configuration and the training, validation and sampling settings. ``load_recipe`` validates it
completely before any work starts: an unknown key, a value of the wrong type or a missing file is
reported as one line naming the key and the recipe file. Defaults are the paper's (clip2latent,
Appendix A.2), so a recipe only spells out what differs.

Relative paths in the file resolve against the recipe's own folder (so a recipe means the same thing
whatever the working directory); relative paths given on the command line with ``--set`` resolve
against the working directory, as any command-line path does. Validation prompt files also fall back
to the copies packaged in ``latentmap/prompts/``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from latentmap.errors import LatentmapError

PACKAGED_PROMPTS = Path(__file__).resolve().parent / "prompts"

# Field metadata keys: "path" = "file" (must exist) | "dir" (resolved, need not exist);
# "choices" = allowed values; "min"/"max" = inclusive bounds; "max_open" = exclusive upper bound.


@dataclass
class GeneratorSection:
    """The frozen generator: a registered name, its latent space and factory options."""

    name: str = "stylegan2-ffhq"
    space: str | None = None  # None: the generator's own default space
    options: dict[str, Any] = field(default_factory=dict)

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for ``get_generator(name, ...)``: the options, plus ``space`` if set."""
        return {**({"space": self.space} if self.space is not None else {}), **self.options}


@dataclass
class EncoderSection:
    """The frozen encoder, as ``prefix:spec`` (e.g. ``openclip:ViT-B-32/openai``), and its options."""

    name: str = "openclip:ViT-B-32/openai"
    options: dict[str, Any] = field(default_factory=dict)

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for ``get_encoder(name, ...)``."""
        return dict(self.options)


@dataclass
class DataSection:
    """The dataset of (latent, image embedding) pairs: where it lives and how build-data makes it."""

    dir: Path = field(default=Path("data"), metadata={"path": "dir"})
    samples: int = field(default=1_000_000, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    shard_size: int = field(default=10_000, metadata={"min": 1})
    seed: int = 0
    dtype: str = field(default="float16", metadata={"choices": ("float16", "bfloat16", "float32")})
    device: str = "auto"


@dataclass
class PriorSection:
    """The prior's configuration; latent size, token count and condition size come from the data."""

    name: str = "diffusion"
    dim: int = field(default=512, metadata={"min": 1})
    depth: int = field(default=12, metadata={"min": 1})
    heads: int = field(default=12, metadata={"min": 1})
    dim_head: int = field(default=64, metadata={"min": 1})
    ff_mult: int = field(default=4, metadata={"min": 1})
    timesteps: int = field(default=1000, metadata={"min": 1})
    schedule: str = field(default="cosine", metadata={"choices": ("cosine", "linear")})
    objective: str = field(default="x0", metadata={"choices": ("x0", "noise")})
    cond_drop_prob: float = field(default=0.2, metadata={"min": 0.0, "max_open": 1.0})
    normalize_cond: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for ``get_prior(name, ...)`` (without the data-derived sizes)."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("name", "options")}
        options.update(self.options)
        return options


@dataclass
class TrainSection:
    """Optimiser, EMA, augmentation and bookkeeping of the training loop."""

    out: Path = field(default=Path("runs"), metadata={"path": "dir"})
    steps: int = field(default=1_000_000, metadata={"min": 1})
    batch_size: int = field(default=512, metadata={"min": 1})
    lr: float = field(default=1.0e-4, metadata={"min": 0.0})
    weight_decay: float = field(default=1.0e-2, metadata={"min": 0.0})
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_beta: float = field(default=0.9999, metadata={"min": 0.0, "max_open": 1.0})
    ema_every: int = field(default=10, metadata={"min": 1})
    ema_warmup: bool = True
    noise_alpha: float = field(default=1.0, metadata={"min": 0.0})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})
    seed: int = 0
    device: str = "auto"
    precision: str = field(default="auto", metadata={"choices": ("auto", "fp32", "bf16")})
    threads: int = field(default=0, metadata={"min": 0})  # CPU threads for torch; 0: torch's default
    log_every: int = field(default=100, metadata={"min": 1})
    checkpoint_every: int = field(default=10_000, metadata={"min": 1})
    tensorboard: bool = True


@dataclass
class ValidationSection:
    """Checkpoint selection by CLIP score, on text prompts and on held-out image embeddings."""

    prompts: Path = field(default=PACKAGED_PROMPTS / "face-val.txt", metadata={"path": "file"})
    samples_per_prompt: int = field(default=4, metadata={"min": 1})
    every: int = field(default=5000, metadata={"min": 1})
    image_conditions: int = field(default=64, metadata={"min": 0})
    steps: int = field(default=25, metadata={"min": 1})
    sampler: str = field(default="ddim", metadata={"choices": ("ddim", "ddpm")})
    guidance: float = 1.0
    batch_size: int = field(default=64, metadata={"min": 1})


@dataclass
class SampleSection:
    """Defaults for ``latentmap sample`` with this recipe's checkpoint."""

    prompts: list[str] = field(default_factory=list)
    candidates: int = field(default=16, metadata={"min": 1})
    keep: int = field(default=4, metadata={"min": 1})
    steps: int = field(default=25, metadata={"min": 1})
    sampler: str = field(default="ddim", metadata={"choices": ("ddim", "ddpm")})
    guidance: float = 1.0
    truncation: float = 1.0
    out: Path | None = field(default=None, metadata={"path": "dir"})  # None: <train.out>/samples


@dataclass
class Recipe:
    """A whole validated recipe. ``source`` is the YAML file it came from (None if built in code)."""

    generator: GeneratorSection = field(default_factory=GeneratorSection)
    encoder: EncoderSection = field(default_factory=EncoderSection)
    data: DataSection = field(default_factory=DataSection)
    prior: PriorSection = field(default_factory=PriorSection)
    train: TrainSection = field(default_factory=TrainSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    sample: SampleSection = field(default_factory=SampleSection)
    source: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-ready nested dict (paths as absolute strings), stored in checkpoints."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            values = {}
            for f in dataclasses.fields(SECTIONS[section]):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, Path):
                    value = str(value)
                elif value is None:
                    pass
                elif isinstance(value, tuple):
                    value = list(value)
                elif isinstance(value, (dict, list)):
                    value = _plain(value)
                values[f.name] = value
            out[section] = values
        return out


SECTIONS: dict[str, type] = {
    "generator": GeneratorSection,
    "encoder": EncoderSection,
    "data": DataSection,
    "prior": PriorSection,
    "train": TrainSection,
    "validation": ValidationSection,
    "sample": SampleSection,
}

# Keys a recipe must set itself: there is no sensible default for where data and runs live.
REQUIRED = ("generator.name", "data.dir", "train.out")


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    ``overrides`` are ``section.key=value`` strings (``train.batch_size=128``,
    ``generator.options.truncation=0.7``); values are parsed as YAML scalars/lists.
    Raises ``LatentmapError`` naming the key and the file for anything invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise LatentmapError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LatentmapError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    raw = _resolve_file_paths(raw, path.resolve().parent, path)
    for override in overrides:
        _apply_override(raw, override, path)
    return recipe_from_dict(raw, source=path)


def recipe_from_dict(raw: dict[str, Any], *, source: str | Path | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a nested dict (e.g. a checkpoint's stored recipe) into a ``Recipe``.

    Relative paths resolve against ``base_dir`` (default: the working directory).
    """
    where = str(source) if source is not None else "recipe"
    if base_dir is not None:
        raw = _resolve_file_paths(raw, base_dir, where)
    for key in REQUIRED:
        section, name = key.split(".")
        if not isinstance(raw.get(section), dict) or name not in raw[section]:
            raise LatentmapError(f"{where}: missing required key {key!r}")
    sections = {}
    for section, value in raw.items():
        if section not in SECTIONS:
            raise LatentmapError(f"{where}: unknown key {section!r}{_suggest(section, SECTIONS)}")
        if not isinstance(value, dict):
            raise LatentmapError(f"{where}: {section} must be a mapping, got {value!r}")
        sections[section] = _build_section(SECTIONS[section], value, section, where)
    recipe = Recipe(**sections, source=Path(source) if source is not None else None)
    if recipe.sample.out is None:
        recipe.sample.out = recipe.train.out / "samples"
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=3e-4"`` -> (["train", "lr"], 0.0003). Values are YAML (lists, numbers, strings)."""
    if "=" not in text:
        raise LatentmapError(f"--set expects section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise LatentmapError(f"--set expects section.key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def resolve_prompts_file(value: str | Path, base_dir: Path) -> Path | None:
    """Find a prompts file: relative to ``base_dir``, then among the packaged prompt files."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for candidate in (base_dir / path, PACKAGED_PROMPTS / path, PACKAGED_PROMPTS / path.name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def read_prompts(path: str | Path) -> list[str]:
    """Non-empty, stripped lines of a prompts file (lines starting with ``#`` are comments)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise LatentmapError(f"prompts file {path} holds no prompts")
    return prompts


# --------------------------------------------------------------------------------------------
# Internals


def _field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _resolve_file_paths(raw: dict[str, Any], base_dir: Path, where: Any) -> dict[str, Any]:
    """Copy of ``raw`` with every relative path field made absolute against ``base_dir``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, cls in SECTIONS.items():
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        for name, f in _field_map(cls).items():
            kind = f.metadata.get("path")
            value = values.get(name)
            if kind is None or not isinstance(value, str) or not value:
                continue
            if kind == "file":
                found = resolve_prompts_file(value, base_dir)
                values[name] = str(found) if found is not None else _MissingFile(value, base_dir)
            else:
                p = Path(value).expanduser()
                values[name] = str(p if p.is_absolute() else (base_dir / p).resolve())
    return out


@dataclass(frozen=True)
class _MissingFile:
    """A file path that did not resolve; reported when its section is validated."""

    value: str
    base_dir: Path


def _apply_override(raw: dict[str, Any], text: str, where: Path) -> None:
    try:
        parts, value = parse_override(text)
    except LatentmapError as exc:
        raise LatentmapError(f"{exc} (recipe {where})") from None
    section, name = parts[0], parts[1]
    if section not in SECTIONS:
        raise LatentmapError(f"--set {text}: unknown key {section!r}{_suggest(section, SECTIONS)} (recipe {where})")
    fields = _field_map(SECTIONS[section])
    if name not in fields:
        raise LatentmapError(f"--set {text}: unknown key {section}.{name}{_suggest(name, fields, section)} (recipe {where})")
    values = raw.setdefault(section, {})
    if not isinstance(values, dict):
        raise LatentmapError(f"{where}: {section} must be a mapping")
    if len(parts) > 2:
        if name != "options":
            raise LatentmapError(f"--set {text}: {section}.{name} has no sub-keys (recipe {where})")
        target = values.setdefault("options", {}) or {}
        values["options"] = target
        for part in parts[2:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        return
    kind = fields[name].metadata.get("path")
    if kind and isinstance(value, str) and value:
        value = _resolve_file_paths({section: {name: value}}, Path.cwd(), "--set")[section][name]
    values[name] = value


def _build_section(cls: type, values: dict[str, Any], section: str, where: str) -> Any:
    fields = _field_map(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in fields:
            raise LatentmapError(f"{where}: unknown key {key!r}{_suggest(name, fields, section)}")
        kwargs[name] = _check_value(value, hints[name], fields[name], key, where)
    return cls(**kwargs)


def _check_value(value: Any, hint: Any, f: dataclasses.Field, key: str, where: str) -> Any:
    if isinstance(value, _MissingFile):
        raise LatentmapError(
            f"{where}: {key}: file not found: {value.value} (looked in {value.base_dir} and {PACKAGED_PROMPTS})"
        )
    value = _coerce(value, hint, key, where)
    meta = f.metadata
    if value is None:
        return value
    if "choices" in meta and value not in meta["choices"]:
        raise LatentmapError(f"{where}: {key} must be one of {', '.join(meta['choices'])}; got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise LatentmapError(f"{where}: {key} must be >= {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise LatentmapError(f"{where}: {key} must be <= {meta['max']}, got {value!r}")
    if "max_open" in meta and value >= meta["max_open"]:
        raise LatentmapError(f"{where}: {key} must be < {meta['max_open']}, got {value!r}")
    return value


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check ``value`` against the field type; lenient only where YAML itself is surprising."""

    def wrong(expected: str) -> LatentmapError:
        return LatentmapError(f"{where}: {key} must be {expected}, got {value!r}")

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
        if not isinstance(value, str) or not value:
            raise wrong("a non-empty string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise wrong("a path")
        return Path(value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if type(None) in args:  # an optional field: None, or a value of the other type
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, where)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise wrong("a mapping")
        return dict(value)
    if origin is list:
        if isinstance(value, str) and args[0] is str:
            return [value]
        if not isinstance(value, list):
            raise wrong("a list")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise wrong(f"a list of {len(args)} numbers")
        return tuple(_coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))
    raise TypeError(f"recipe field {key} has an unsupported type {hint!r}")  # a bug in this module


def _suggest(name: str, known: Iterable[str], section: str | None = None) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    prefix = f"{section}." if section else ""
    if close:
        return f" (did you mean {prefix}{close[0]}?)"
    return f" (known: {', '.join(prefix + k for k in known)})"


def _plain(value: Any) -> Any:
    """Deep copy of nested dicts/lists with Paths as strings (JSON-ready)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
