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
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

import yaml

from latentmap.config import build_options, check_value, option, options_dict, parse_value, plain, suggest
from latentmap.errors import LatentmapError, UnknownNameError
from latentmap.precision import AUTO, BFLOAT16, FLOAT32, precision_option

PACKAGED_PROMPTS = Path(__file__).resolve().parent / "prompts"

# Field metadata (latentmap.config.option): "path" = "file" (must exist) | "dir" (resolved, need not
# exist); "choices" = allowed values; "min"/"max" = inclusive bounds; "below" = exclusive upper bound.


@dataclass
class ComponentSection:
    """A registered component named by ``name`` and its own options, validated against its declaration.

    In YAML the options sit beside the name (``prior: {name: diffusion, depth: 6}``); ``options``
    holds them as the component's options dataclass, defaults filled in.
    """

    name: str
    options: Any = None

    KIND: ClassVar[str] = ""

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for ``latentmap.get_<kind>(name, ...)``."""
        return options_dict(self.options) if self.options is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.factory_options()}


@dataclass
class GeneratorSection(ComponentSection):
    """The frozen generator: a registered name and its options (``space`` among them)."""

    name: str = "stylegan2-ffhq"
    KIND: ClassVar[str] = "generators"


@dataclass
class EncoderSection(ComponentSection):
    """The frozen encoder, as ``prefix:spec`` (e.g. ``openclip:ViT-B-32/openai``), and its options."""

    name: str = "openclip:ViT-B-32/openai"
    KIND: ClassVar[str] = "encoders"


@dataclass
class PriorSection(ComponentSection):
    """The prior to train; latent size, token count and condition size come from the data."""

    name: str = "diffusion"
    KIND: ClassVar[str] = "priors"


COMPONENT_SECTIONS = {"generator": GeneratorSection, "encoder": EncoderSection, "prior": PriorSection}


@dataclass
class DataSection:
    """The dataset of (latent, image embedding) pairs: where it lives and how build-data makes it."""

    dir: Path = option(Path("data"), path="dir", help="dataset folder (required)")
    samples: int = option(1_000_000, min=1, help="(latent, embedding) pairs to build")
    batch_size: int = option(64, min=1, help="build-data batch (generator + encoder)")
    shard_size: int = option(10_000, min=1, help="pairs per shard file")
    seed: int = option(0, help="build seed (shard i draws from its own stream)")
    dtype: str = option("float16", choices=("float16", "bfloat16", "float32"),
                        help="storage precision (training always reads float32)")
    device: str = option("auto", help="build-data device: auto, cpu, cuda, cuda:N")
    precision: str = precision_option(FLOAT32,
                                      help="generator and encoder compute precision (autocast; refused where the "
                                           "device has no native support; see data.md for its effect on embeddings)")


@dataclass
class TrainSection:
    """Optimiser, EMA, augmentation and bookkeeping of the training loop."""

    out: Path = option(Path("runs"), path="dir", help="run folder (required)")
    steps: int = option(1_000_000, min=1, help="optimiser steps")
    batch_size: int = option(512, min=1, help="global batch (split evenly over torchrun processes)")
    lr: float = option(1.0e-4, min=0.0, help="AdamW learning rate")
    weight_decay: float = option(1.0e-2, min=0.0, help="AdamW weight decay (none on vectors: gains, learned query)")
    adam_betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas")
    ema_beta: float = option(0.9999, min=0.0, below=1.0, help="EMA decay of the weights (see training.md)")
    ema_every: int = option(10, min=1, help="steps between EMA updates")
    ema_warmup: bool = option(True, help="warm the EMA decay up from 0 (see training.md)")
    noise_alpha: float = option(1.0, min=0.0, help="LAFITE pseudo-text noise on the conditions (0 disables)")
    text_corpus: Path | list[str] | None = option(None, path="file",
                                                 help="prompts (a file or a list) whose text embeddings, with the "
                                                      "training images' embeddings and never paired with them, give "
                                                      "the statistics of prior.text_correction")
    grad_clip: float = option(1.0, min=0.0, help="max gradient L2 norm (0 disables)")
    seed: int = option(0, help="initialisation, data order and every random draw of training")
    device: str = option("auto", help="auto (GPU if any), cpu, cuda, cuda:N")
    precision: str = precision_option(AUTO, choices=(AUTO, FLOAT32, BFLOAT16),
                                      help="auto: bfloat16 autocast on a GPU that has it natively, float32 elsewhere "
                                           "(bfloat16 is refused where the device has no native support)")
    threads: int = option(0, min=0, help="CPU threads torch may use (0: torch's default; on a small shared CPU "
                                          "1 is often much faster, see benchmarks.md)")
    log_every: int = option(100, min=1, help="steps per metrics line")
    checkpoint_every: int = option(10_000, min=1, help="steps per training state and last.safetensors")
    tensorboard: bool = option(True, help="also log to out/tensorboard/ when TensorBoard is installed")


@dataclass
class ValidationSection:
    """Checkpoint selection: attribute accuracy on the text prompts where the generator knows its images' truth
    (an AttributeWorld), else their CLIP score; CLIP score on held-out image embeddings and held-out loss too."""

    prompts: Path | list[str] = option(PACKAGED_PROMPTS / "face-val.txt", path="file",
                                       help="text prompts scored at each validation: a file (relative, or a packaged "
                                            "list) or a list of prompts")
    samples_per_prompt: int = option(4, min=1, help="samples per prompt")
    every: int = option(5000, min=1, help="steps between validations (and always at the last step)")
    image_conditions: int = option(64, min=0, help="held-out dataset samples (never trained on) used as image conditions")
    batch_size: int = option(64, min=1, help="sampling and rendering batch")
    sampling: Any = option(None, help="the prior's sampling settings (see the prior's own table below)")


@dataclass
class SampleSection:
    """Defaults for ``latentmap sample`` with this recipe's checkpoint."""

    prompts: list[str] = option(default_factory=list, help="prompts to sample (empty: the validation prompts)")
    candidates: int = option(16, min=1, help="candidates generated per prompt, re-ranked by CLIP score")
    keep: int = option(4, min=1, help="best candidates kept per prompt")
    truncation: float = option(1.0, help="truncation psi toward the mean of the training latents (1: none)")
    sampling: Any = option(None, help="the prior's sampling settings (see the prior's own table below)")
    out: Path | None = option(None, path="dir", help="output folder (default: <train.out>/samples)")


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
            value = getattr(self, section)
            if isinstance(value, ComponentSection):
                out[section] = value.to_dict()
                continue
            values = {}
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                values[f.name] = options_dict(item) if dataclasses.is_dataclass(item) else plain(item)
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
# Sections whose ``sampling`` key holds the prior's sampling settings.
SAMPLING_SECTIONS = ("validation", "sample")
# Keys of the layout before components owned their options: where each now lives.
MOVED_SAMPLING_KEYS = ("steps", "sampler", "guidance", "eta")


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    ``overrides`` are ``section.key=value`` strings (``train.batch_size=128``,
    ``generator.truncation=0.7``, ``sample.sampling.steps=10``); values are parsed as YAML scalars/lists.
    Raises ``LatentmapError`` naming the key and the file for anything invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise LatentmapError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(read_text(path, "recipe"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise LatentmapError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise LatentmapError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    raw = _upgrade_layout(raw, path)
    raw = _resolve_file_paths(raw, path.resolve().parent, path)
    for override in overrides:
        _apply_override(raw, override, path)
    return recipe_from_dict(raw, source=path)


def recipe_from_dict(raw: dict[str, Any], *, source: str | Path | None = None, base_dir: Path | None = None) -> Recipe:
    """Validate a nested dict (e.g. a checkpoint's stored recipe) into a ``Recipe``.

    Relative paths resolve against ``base_dir`` (default: the working directory). Component sections
    are validated against what their named component declares, through the plugin registries.
    """
    where = str(source) if source is not None else "recipe"
    raw = _upgrade_layout(raw, where)
    if base_dir is not None:
        raw = _resolve_file_paths(raw, base_dir, where)
    for key in REQUIRED:
        section, name = key.split(".")
        if not isinstance(raw.get(section), dict) or name not in raw[section]:
            raise LatentmapError(f"{where}: missing required key {key!r}")
    for section, value in raw.items():
        if section not in SECTIONS:
            raise LatentmapError(f"{where}: unknown key {section!r}{_did_you_mean(section, SECTIONS)}")
        if not isinstance(value, dict):
            raise LatentmapError(f"{where}: {section} must be a mapping, got {value!r}")
    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():  # plain sections first: their mistakes need no plugin to be named
        if section not in COMPONENT_SECTIONS:
            sections[section] = _build_section(cls, raw.get(section) or {}, section, where)
    for section, cls in COMPONENT_SECTIONS.items():
        sections[section] = _build_component(cls, raw.get(section) or {}, section, where)
    sampling_class = _sampling_class(sections["prior"].name)
    for section in SAMPLING_SECTIONS:
        given = (raw.get(section) or {}).get("sampling")
        owner = f"{section}.sampling (prior {sections['prior'].name!r})"
        sections[section].sampling = build_options(sampling_class, given, where=where, owner=owner)
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
    return parts, parse_value(value)


def resolve_prompts_file(value: str | Path, base_dir: Path) -> Path | None:
    """Find a prompts file: relative to ``base_dir``, then among the packaged prompt files."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path if path.is_file() else None
    for candidate in (base_dir / path, PACKAGED_PROMPTS / path, PACKAGED_PROMPTS / path.name):
        if candidate.is_file():
            return candidate.resolve()
    return None


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file users give; one line naming the file if it is unreadable or not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LatentmapError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise LatentmapError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_prompts(path: str | Path | list[str]) -> list[str]:
    """Non-empty, stripped lines of a prompts file (lines starting with ``#`` are comments); given a list
    (``validation.prompts: [a red circle, a blue star]``), its non-empty prompts."""
    if isinstance(path, (list, tuple)):
        prompts = [str(prompt).strip() for prompt in path if str(prompt).strip()]
        if not prompts:
            raise LatentmapError("an empty list of prompts: give at least one")
        return prompts
    lines = read_text(Path(path), "prompts file").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise LatentmapError(f"prompts file {path} holds no prompts")
    return prompts


# --------------------------------------------------------------------------------------------
# Internals


def _did_you_mean(name: str, known: Iterable[str], section: str | None = None) -> str:
    """`` (did you mean train.batch_size?)`` in the recipe's dotted-key style."""
    return suggest(name, known, prefix=f"{section}." if section else "", quote=False)


def _field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _upgrade_layout(raw: dict[str, Any], where: Any) -> dict[str, Any]:
    """A recipe in the layout before components owned their options, moved to today's, with a warning.

    Then: ``options:`` nested in generator/encoder/prior sections, ``steps``/``sampler``/``guidance``/``eta``
    directly in validation and sample. Now: options beside ``name:``, sampling settings under ``sampling:``.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    moved = []
    for section in COMPONENT_SECTIONS:
        values = out.get(section)
        if isinstance(values, dict) and isinstance(values.get("options"), dict):
            nested = values.pop("options")
            values.update({k: v for k, v in nested.items() if k not in values})
            moved.append(f"{section}.options.* -> {section}.*")
    for section in SAMPLING_SECTIONS:
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        old = [key for key in MOVED_SAMPLING_KEYS if key in values]
        if old:
            sampling = dict(values.get("sampling") or {})
            for key in old:
                sampling.setdefault(key, values.pop(key))
            values["sampling"] = sampling
            moved.append(f"{section}.{{{','.join(old)}}} -> {section}.sampling.*")
    if moved:
        warnings.warn(f"{where}: recipe in the old layout, read as the new one ({'; '.join(moved)}); "
                      "see docs/recipes.md", RecipeLayoutWarning, stacklevel=3)
    return out


class RecipeLayoutWarning(UserWarning):
    """A recipe written in an older layout was read by moving its keys to where they live now."""


def _resolve_file_paths(raw: dict[str, Any], base_dir: Path, where: Any) -> dict[str, Any]:
    """Copy of ``raw`` with every relative path field made absolute against ``base_dir``."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, cls in SECTIONS.items():
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        if section in COMPONENT_SECTIONS:
            _resolve_component_paths(values, COMPONENT_SECTIONS[section], base_dir)
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


def _resolve_component_paths(values: dict[str, Any], cls: type, base_dir: Path) -> None:
    """Make a component's path options (declared ``path="file"``) absolute where the file is found in ``base_dir``.

    A value that names no file there is left as written: the component reads it as it always
    could (against the working directory, or as a name such as a model-zoo entry) and reports a
    missing file itself. An unknown component name is left for validation to report.
    """
    from latentmap.plugins import resolve

    try:
        declared = resolve(cls.KIND, values.get("name", cls().name)).options
    except (UnknownNameError, LatentmapError):
        return
    if declared is None:
        return
    for name, f in _field_map(declared).items():
        value = values.get(name)
        if f.metadata.get("path") != "file" or not isinstance(value, str) or not value:
            continue
        candidate = Path(value).expanduser()
        if not candidate.is_absolute() and (base_dir / candidate).is_file():
            values[name] = str((base_dir / candidate).resolve())


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
        raise LatentmapError(f"--set {text}: unknown key {section!r}{_did_you_mean(section, SECTIONS)} (recipe {where})")
    values = raw.setdefault(section, {})
    if not isinstance(values, dict):
        raise LatentmapError(f"{where}: {section} must be a mapping")
    if section in COMPONENT_SECTIONS:  # the component checks its own options when the recipe is validated
        if name == "options" and len(parts) > 2:  # the old layout: generator.options.truncation=0.7
            parts = [section, *parts[2:]]
        target = values
        for part in parts[1:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
        return
    fields = _field_map(SECTIONS[section])
    if section in SAMPLING_SECTIONS and name in MOVED_SAMPLING_KEYS and len(parts) == 2:
        warnings.warn(f"--set {text}: {section}.{name} now lives at {section}.sampling.{name}; read as that",
                      RecipeLayoutWarning, stacklevel=3)
        parts, name = [section, "sampling", name], "sampling"
    if name not in fields:
        raise LatentmapError(f"--set {text}: unknown key {section}.{name}{_did_you_mean(name, fields, section)} (recipe {where})")
    if len(parts) > 2:
        if name != "sampling":
            raise LatentmapError(f"--set {text}: {section}.{name} has no sub-keys (recipe {where})")
        target = values.setdefault("sampling", {}) or {}
        values["sampling"] = target
        target[parts[-1]] = value
        return
    kind = fields[name].metadata.get("path")
    if kind and isinstance(value, str) and value:
        value = _resolve_file_paths({section: {name: value}}, Path.cwd(), "--set")[section][name]
    values[name] = value


def _build_component(cls: type, values: dict[str, Any], section: str, where: str) -> ComponentSection:
    """A component section: its ``name`` resolved in the registry, the rest validated as that component's options."""
    from latentmap.plugins import validate_options

    values = dict(values)
    name = values.pop("name", cls().name)
    if not isinstance(name, str) or not name:
        raise LatentmapError(f"{where}: {section}.name must be a registered {section} name, got {name!r}")
    try:
        options = validate_options(cls.KIND, name, values, where=where)
    except UnknownNameError as exc:
        raise LatentmapError(f"{where}: {section}.name: {exc}") from None
    return cls(name=name, options=options)


def _sampling_class(prior_name: str) -> type:
    from latentmap.plugins import resolve

    return resolve("priors", prior_name).sampling


def _build_section(cls: type, values: dict[str, Any], section: str, where: str) -> Any:
    fields = _field_map(cls)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in fields:
            raise LatentmapError(f"{where}: unknown key {key!r}{_did_you_mean(name, fields, section)}")
        if name == "sampling":  # validated against the prior's declaration once the prior is known
            continue
        if isinstance(value, _MissingFile):
            raise LatentmapError(
                f"{where}: {key}: file not found: {value.value} (looked in {value.base_dir} and {PACKAGED_PROMPTS})"
            )
        kwargs[name] = check_value(value, hints[name], fields[name], key, where)
    return cls(**kwargs)
