"""``latentmap train``: build everything a recipe names and run the training loop.

``train(recipe)`` opens the dataset (its manifest fixes the latent shape, condition size and latent
statistics), builds the prior, AdamW and the EMA, restores the newest training state with
``resume=True``, and on rank 0 loads the generator and encoder for validation. Files written under
``train.out``::

    states/state-<step>.safetensors   full training state (the newest two), for --resume
    last.safetensors                  the newest EMA prior (self-describing, for `latentmap sample`)
    best.safetensors                  the EMA prior with the best validation score (attribute accuracy where the
                                      generator knows its images' truth, else text CLIP score)
    metrics.jsonl, metrics.png        loss and validation scores; tensorboard/ if installed
    validation/step-<step>/*.png      one image grid per validation prompt
    recipe.yaml                       the recipe as resolved (overrides applied)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from latentmap.distributed import World, join_world
from latentmap.errors import LatentmapError
from latentmap.identity import require_same
from latentmap.interfaces import Encoder, Generator, Prior
from latentmap.precision import resolve_precision
from latentmap.recipe import Recipe, read_prompts
from latentmap.training.ema import EMA
from latentmap.training.loop import LoopSettings, Trainer, TrainResult
from latentmap.training.metrics import MetricsLog
from latentmap.training.optim import make_optimizer
from latentmap.atomic import remove_stale_temporaries
from latentmap.training.run_folder import RunLock
from latentmap.training.state import latest_state, load_latest_intact
from latentmap.training.text_statistics import fit_text_statistics
from latentmap.training.validation import (
    ValidationOptions, ValidationSet, condition_scale_mismatch, prepare_validation, validate,
)

__all__ = ["train", "TrainResult"]


def train(recipe: Recipe, *, resume: bool = False, validation: bool = True, progress: bool = True) -> TrainResult:
    """Train the prior a recipe describes; returns a summary. Resumes exactly with ``resume=True``."""
    if recipe.train.threads > 0:
        torch.set_num_threads(recipe.train.threads)
    world = join_world(recipe.train.device)
    lock = RunLock(recipe.train.out) if world.is_main else None  # one writer per run folder
    try:
        if lock is not None:
            lock.acquire()
        return _train(recipe, world, resume=resume, validation=validation, progress=progress)
    finally:
        if lock is not None:
            lock.release()
        world.close()


def _train(recipe: Recipe, world: World, *, resume: bool, validation: bool, progress: bool) -> TrainResult:
    t, out = recipe.train, recipe.train.out
    state_file = _find_state(out, resume)
    if t.batch_size % world.size != 0:
        raise LatentmapError(f"train.batch_size {t.batch_size} is not divisible by the {world.size} processes")
    torch.manual_seed(t.seed + world.rank)

    dataset = open_dataset(recipe, world)
    manifest = dataset.manifest
    prior = build_prior(recipe, manifest).to(world.device)
    if state_file is None:  # a resumed state restores them with the weights
        fit_text_statistics(prior, recipe, manifest, world.device)  # before the EMA copies the prior
    ema = EMA(prior, beta=t.ema_beta, every=t.ema_every, warmup=t.ema_warmup)
    optimizer = make_optimizer(prior, lr=t.lr, weight_decay=t.weight_decay, betas=t.adam_betas)

    settings = LoopSettings(
        steps=t.steps, seed=t.seed, noise_alpha=t.noise_alpha, grad_clip=t.grad_clip,
        precision=resolve_precision(t.precision, world.device, key="train.precision"), log_every=t.log_every,
        checkpoint_every=t.checkpoint_every, validate_every=recipe.validation.every, progress=progress,
    )
    identities = {"encoder": manifest.encoder, "generator": manifest.generator, "space": manifest.space}
    validate_fn = None
    if world.is_main and validation:
        validate_fn = make_validator(recipe, dataset, out, world.device, prior)

    def save(path: Path, model: Prior, extra: dict[str, Any]) -> None:
        from latentmap.checkpoint import save_prior

        save_prior(path, model, metadata={**identities, "recipe": recipe.to_dict(), "ema": True, **extra})

    trainer = Trainer(
        prior=prior, ema=ema, optimizer=optimizer, batches=dataset.batches, world=world, settings=settings,
        out=out, metrics=None, validate=validate_fn, save_prior=save,
        state_info={"prior": prior.config_dict(), "recipe": recipe.to_dict(), "dataset": dataset_identity(manifest)},
    )
    if state_file is not None:
        if world.is_main:
            remove_stale_temporaries(state_file.parent)  # half-written states of a killed run (we hold the lock)
        state_file, tensors, info, skipped = load_latest_intact(state_file.parent)
        for line in skipped:
            print(f"warning: {line}", file=sys.stderr)
        _check_compatible(info, prior, dataset_identity(manifest), state_file)
        trainer.load_state(tensors, info)
        if world.is_main and progress:
            print(f"resuming from {state_file} (step {trainer.position.step})")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False), encoding="utf-8")
        trainer.metrics = MetricsLog(
            out, resume_step=trainer.position.step if state_file is not None else None, tensorboard=t.tensorboard
        )
    try:
        return trainer.run()
    finally:
        if trainer.metrics is not None:
            trainer.metrics.close()


def _find_state(out: Path, resume: bool) -> Path | None:
    """The state to resume from; refuse to silently start over an existing run."""
    found = latest_state(out / "states")
    if resume and found is None:
        raise LatentmapError(f"nothing to resume: {out / 'states'} holds no training state")
    if not resume and found is not None:
        raise LatentmapError(
            f"{out} already holds a training run (state {found.name}); pass --resume to continue it "
            "or set another train.out"
        )
    return found if resume else None


def dataset_identity(manifest: Any) -> dict[str, Any]:
    """What a training state remembers of its dataset (the data position means nothing elsewhere)."""
    return {"samples": manifest.samples, "seed": manifest.seed, "shards": [s.get("sha256") for s in manifest.shards],
            "generator": manifest.generator.get("name"), "encoder": manifest.encoder.get("name")}


def _check_compatible(info: dict[str, Any], prior: Prior, dataset: dict[str, Any], path: Path) -> None:
    """Refuse to resume a state with a different prior or dataset (one line naming the difference)."""
    from latentmap.checkpoint import stored_prior_entry

    stored_data = info.get("dataset", dataset)
    for key in ("generator", "encoder", "samples", "seed", "shards"):
        if stored_data.get(key) != dataset.get(key):
            raise LatentmapError(
                f"cannot resume from {path}: it was trained on a different dataset ({key} differs); "
                "point data.dir at the original dataset or start a new train.out"
            )
    stored, current = stored_prior_entry(info.get("prior", {})), prior.config_dict()
    if stored.get("name") != current["name"]:
        raise LatentmapError(f"cannot resume from {path}: it trained prior {stored.get('name')!r}, "
                             f"the recipe now names {current['name']!r}")
    old = {**(stored.get("shape") or {}), **(stored.get("options") or {})}
    new = {**current["shape"], **current["options"]}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise LatentmapError(
                f"cannot resume from {path}: it was trained with prior.{key}={old.get(key)!r}, "
                f"the recipe now says {new.get(key)!r}"
            )


def open_dataset(recipe: Recipe, world: World) -> Any:
    """The shard reader for this process's share of each global batch."""
    from latentmap.data.reader import ShardDataset

    return ShardDataset(
        recipe.data.dir,
        batch_size=recipe.train.batch_size // world.size,
        seed=recipe.train.seed,
        rank=world.rank,
        world_size=world.size,
        shuffle=True,
        holdout=recipe.validation.image_conditions,
        device=world.device,
    )


def build_prior(recipe: Recipe, manifest: Any) -> Prior:
    """A fresh prior of the recipe's kind, sized by the dataset, with the dataset's latent statistics."""
    from latentmap import get_prior

    tokens, latent_dim = manifest.latent_shape
    prior = get_prior(recipe.prior.name, tokens=tokens, latent_dim=latent_dim, cond_dim=manifest.embed_dim,
                      **recipe.prior.factory_options())
    prior.set_latent_stats(manifest.latent_mean, manifest.latent_std)
    return prior


def load_models(recipe: Recipe, manifest: Any, device: torch.device) -> tuple[Generator, Encoder]:
    """The recipe's generator and encoder, checked against the ones the dataset was built with."""
    from latentmap import get_encoder, get_generator

    generator = get_generator(recipe.generator.name, **recipe.generator.factory_options())
    encoder = get_encoder(recipe.encoder.name, **recipe.encoder.factory_options())
    where = recipe.source or "recipe"
    for role, built, made in (("generator", manifest.generator, generator), ("encoder", manifest.encoder, encoder)):
        require_same(role, built, made.identity(),
                     context=f"{where}: the {role} is not the one dataset {recipe.data.dir} was built with")
    return generator.to(device), encoder.to(device)


def make_validator(recipe: Recipe, dataset: Any, out: Path, device: torch.device, prior: Prior) -> Any:
    """A ``validate(ema_model, step)`` closure for the Trainer (rank 0)."""
    v = recipe.validation
    generator, encoder = load_models(recipe, dataset.manifest, device)
    prompts = read_prompts(v.prompts)
    holdout = dataset.holdout_set() if v.image_conditions > 0 else (torch.zeros(0), torch.zeros(0))
    vset: ValidationSet = prepare_validation(encoder, prompts, holdout, image_conditions=v.image_conditions)
    mismatch = condition_scale_mismatch(vset, normalize_cond=prior.normalizes_conditions)
    if mismatch:
        print(f"warning: {mismatch}", file=sys.stderr)
    options = ValidationOptions(
        samples_per_prompt=v.samples_per_prompt, sampling=prior.sampling(v.sampling), batch_size=v.batch_size,
        seed=recipe.train.seed,
    )

    def run(model: Prior, step: int) -> dict[str, float]:
        results = validate(model, generator, encoder, vset, options, grid_dir=out / "validation" / f"step-{step:09d}")
        return {k: v for k, v in results.items() if math.isfinite(v)}

    return run
