"""build-data: draw latents, synthesise, embed the images, write shards of (latent, embedding) pairs.

The loop keeps the generator and the encoder busy on whole batches while a writer thread casts,
summarises, checksums and writes complete shards (a bounded queue, so memory stays at a couple of
shards). Shard ``i`` of ``n`` samples draws its latents from its own random stream in fixed chunks
of ``LATENT_CHUNK`` samples, so its latents do not depend on ``--batch-size``, on which process built
it, or on an interruption; its embeddings then equal any other build's up to the float rounding of
batched matrix products (bit-for-bit with the same batch size and device).

Before anything is written, the requested precision is checked against the device
(latentmap.precision: generator and encoder then run under autocast) and a batch size whose
forward pass would not fit in memory is refused in one line (latentmap.data.memory).

A re-run continues: every existing shard is checked (its build key, index, count and content
checksum) and reused if intact, rebuilt otherwise. Under torchrun rank ``r`` builds the shards
``i % world == r``; rank 0 writes the final manifest once every rank is done.
"""

from __future__ import annotations

import dataclasses
import platform
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from latentmap.atomic import remove_stale_temporaries, write_atomic
from latentmap.config import plural
from latentmap.data.manifest import (
    STD_CORRECTION,
    BuildSettings,
    read_manifest_json,
    settings_difference,
    start_manifest,
    write_manifest_json,
)
from latentmap.data.previews import (
    CONTACT_SHEET,
    PREVIEW_COUNT,
    render_first,
    save_contact_sheet,
    save_shard_preview,
    thumbnails,
)
from latentmap.data.memory import available_bytes, check_batch_fits, current_bytes, measure_footprint
from latentmap.data.seeds import seeded_generator, shard_generator
from latentmap.data.shards import ShardRecord, encode_shard, inspect_shard, read_shard, shard_file_name, storage_dtype
from latentmap.data.stats import Moments, merge_all
from latentmap.distributed import World, join_world
from latentmap.errors import LatentmapError
from latentmap.identity import require_same
from latentmap.interfaces import Encoder, Generator
from latentmap.precision import canonical_precision
from latentmap.precision_models import with_precision
from latentmap.recipe import DataSection

if TYPE_CHECKING:
    from latentmap.recipe import Recipe

# Latents are drawn in chunks of this many samples (the last one of a shard smaller): fixed, so the
# random stream of a shard is consumed identically whatever the batch size.
LATENT_CHUNK = 1024
# Complete shards waiting for the writer; bounds memory while compute runs ahead of the disk.
MAX_PENDING_SHARDS = 2
SETTINGS_CHECK_ORDER = ("space", "seed", "shard_size", "dtype", "precision", "generator", "encoder")
# Settings a manifest may lack (written before they existed, or left out at their default).
SETTING_DEFAULTS = {"precision": "float32"}
# The defaults of a build are the recipe's (the ``data`` section), for every way of starting one.
DATA_DEFAULTS = DataSection()


@dataclass
class BuildConfig:
    """What to build and where (the generator and encoder come separately, ready on their device)."""

    out: Path
    samples: int
    batch_size: int = DATA_DEFAULTS.batch_size
    shard_size: int = DATA_DEFAULTS.shard_size
    seed: int = DATA_DEFAULTS.seed
    dtype: str = DATA_DEFAULTS.dtype
    precision: str = DATA_DEFAULTS.precision
    save_images: bool = False
    progress: bool = True
    check_memory: bool = True  # measure the models' memory and refuse a batch that will not fit
    overlap: bool = True  # write shards in a thread while the next is computed (False: serially, same bytes)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("samples", "batch_size", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise LatentmapError(f"build-data: {name} must be a positive integer, got {value!r}")
        storage_dtype(self.dtype)
        # one spelling (bf16 -> bfloat16) before the precision enters the build key
        self.precision = canonical_precision(self.precision, key="data.precision")


@dataclass
class BuildSummary:
    """What a build did (this process's share, plus the dataset totals)."""

    out: Path
    samples: int
    shards: int
    built_shards: int
    built_samples: int
    reused_shards: int
    seconds: float
    bytes_on_disk: int
    world_size: int = 1
    rebuilt: list[tuple[int, str]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.built_samples / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The one-paragraph summary printed at the end of a build."""
        lines = [
            f"dataset {self.out}: {plural(self.samples, 'sample')} in {plural(self.shards, 'shard')}, "
            f"{self.bytes_on_disk / 1e6:,.1f} MB",
            f"this run: built {plural(self.built_shards, 'shard')} ({plural(self.built_samples, 'sample')}) in "
            f"{self.seconds:,.1f} s ({self.samples_per_second:,.0f} samples/s), "
            f"reused {plural(self.reused_shards, 'complete shard')}"
            + (f", {self.world_size} processes" if self.world_size > 1 else ""),
        ]
        for index, reason in self.rebuilt:
            lines.append(f"rebuilt shard {index}: {reason}")
        return "\n".join(lines)


def plan_shards(samples: int, shard_size: int) -> list[int]:
    """Sample counts of the shards: full shards, then the remainder."""
    full, rest = divmod(samples, shard_size)
    return [shard_size] * full + ([rest] if rest else [])


def latent_batches(
    generator: Generator, count: int, rng: torch.Generator, batch_size: int, chunk: int = LATENT_CHUNK
) -> Iterator[Tensor]:
    """Batches of ``count`` latents drawn from ``rng`` in fixed chunks, re-cut to ``batch_size``."""
    pending: list[Tensor] = []
    buffered = drawn = 0
    while drawn < count or buffered:
        while buffered < batch_size and drawn < count:
            size = min(chunk, count - drawn)
            pending.append(generator.sample_latents(size, generator=rng))
            buffered += size
            drawn += size
        joined = pending[0] if len(pending) == 1 else torch.cat(pending)
        batch, rest = joined[:batch_size], joined[batch_size:]
        pending = [rest] if rest.shape[0] else []
        buffered = rest.shape[0]
        yield batch


class MomentTable:
    """Every shard's moments in one float64 block allocated before the build starts.

    Keeping thousands of small per-shard tensors alive between large temporary batches fragments the
    C heap (measured: +3 MB resident per 10k-sample shard); one up-front block keeps memory flat.
    """

    def __init__(self, shards: int, latent_shape: tuple[int, ...], embed_dim: int) -> None:
        self.latent_mean = torch.zeros(shards, *latent_shape, dtype=torch.float64)
        self.latent_m2 = torch.zeros_like(self.latent_mean)
        self.embed_mean = torch.zeros(shards, embed_dim, dtype=torch.float64)
        self.embed_m2 = torch.zeros_like(self.embed_mean)

    def adopt(self, record: ShardRecord) -> ShardRecord:
        """``record`` with its moments copied into this table (its own tensors can then be freed)."""
        i = record.index
        self.latent_mean[i].copy_(record.latent_moments.mean)
        self.latent_m2[i].copy_(record.latent_moments.m2)
        self.embed_mean[i].copy_(record.embed_moments.mean)
        self.embed_m2[i].copy_(record.embed_moments.m2)
        return dataclasses.replace(
            record,
            latent_moments=Moments(record.count, self.latent_mean[i], self.latent_m2[i]),
            embed_moments=Moments(record.count, self.embed_mean[i], self.embed_m2[i]),
        )


@dataclass
class _ShardJob:
    index: int
    latents: list[Tensor]
    embeddings: list[Tensor]
    previews: Tensor | None


class ShardWriter:
    """A thread that encodes and writes complete shards while the main thread computes the next.

    A failure in the thread (a full disk) is re-raised in the main thread by ``submit``/``close``.
    """

    def __init__(
        self, root: Path, build_key: str, table: MomentTable, *, max_pending: int = MAX_PENDING_SHARDS,
        threaded: bool = True,
    ) -> None:
        self.root = root
        self.build_key = build_key
        self.table = table
        self.records: list[ShardRecord] = []
        self.bytes_written = 0
        self.threaded = threaded
        self._queue: queue.Queue[_ShardJob | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="latentmap-shard-writer", daemon=True)
        if threaded:
            self._thread.start()

    def submit(self, job: _ShardJob) -> None:
        if not self.threaded:  # serial: write now, in the caller's thread
            self._write(job)
            return
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> list[ShardRecord]:
        """Wait for every submitted shard to be on disk; returns their records."""
        if not self.threaded:
            return self.records
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
        return self.records

    def close_quietly(self) -> None:
        """``close`` for an error path: finish what was submitted, never raise."""
        try:
            self.close()
        except BaseException:  # noqa: BLE001  (the caller is already raising)
            pass

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is not None:
                continue  # keep draining so the main thread never blocks on a dead writer
            try:
                self._write(job)
            except BaseException as exc:  # noqa: BLE001  (handed to the main thread)
                self._error = exc

    def _write(self, job: _ShardJob) -> None:
        latents = torch.cat(job.latents)
        embeddings = torch.cat(job.embeddings)
        data, record = encode_shard(job.index, latents, embeddings, build_key=self.build_key)
        write_atomic(self.root / record.file, data)
        self.bytes_written += len(data)
        self.records.append(self.table.adopt(record))
        if job.previews is not None:
            save_shard_preview(self.root, record.file, job.previews)


def _check_same_settings(out: Path, settings: BuildSettings) -> dict[str, Any] | None:
    """The existing manifest of ``out`` if its settings match, None if there is none; refuse otherwise."""
    existing = read_manifest_json(out)
    if existing is None:
        return None
    wanted = {**SETTING_DEFAULTS, **settings.comparable()}
    required = [name for name in wanted if name not in SETTING_DEFAULTS]
    if all(name in existing for name in required):
        values = {name: existing[name] for name in required}
        values.update({name: existing.get(name, default) for name, default in SETTING_DEFAULTS.items()})
        recorded = {**SETTING_DEFAULTS, **BuildSettings(**values).comparable()}
    else:
        recorded = {**SETTING_DEFAULTS, **existing}
    for name in SETTINGS_CHECK_ORDER:  # simple settings first: "seed=0, not 1" reads better than a checksum
        if name in ("generator", "encoder") and isinstance(existing.get(name), dict):
            require_same(name, existing[name], getattr(settings, name),
                         context=f"{out} holds a dataset built with another {name}; choose a new --out folder")
            continue
        difference = settings_difference({name: recorded.get(name)}, {name: wanted[name]})
        if difference is None:
            continue
        key, old, new = difference
        raise LatentmapError(
            f"{out} holds a dataset built with {key}={old!r}, not {new!r}; "
            "choose a new --out folder, or repeat the original settings to resume"
        )
    return existing


def _already_complete(out: Path, samples: int) -> bool:
    """True if ``out`` holds a finished dataset of ``samples`` (a re-run will only verify it)."""
    try:
        existing = read_manifest_json(out) if out.is_dir() else None
    except LatentmapError:
        return False
    return bool(existing and existing.get("complete") and existing.get("samples") == samples)


def check_memory(generator: Generator, encoder: Encoder, batch_size: int) -> None:
    """Refuse, before the build starts, a batch size whose forward pass will not fit in the device's memory.

    Measures the models' peak memory on probe samples from a stream of their own (the dataset is not
    affected); see latentmap.data.memory. Skipped where memory cannot be measured or told.
    """
    if batch_size == 1:
        return
    footprint = measure_footprint(generator, encoder, seeded_generator("latentmap-memory-probe"))
    available = available_bytes(generator.device)
    if footprint is None or available is None:
        return
    check_batch_fits(batch_size, footprint, available=available, current=current_bytes(generator.device),
                     resolution=generator.resolution)


def _compute_shard(
    generator: Generator,
    encoder: Encoder,
    index: int,
    count: int,
    config: BuildConfig,
    dtype: torch.dtype,
    bar: Any,
) -> _ShardJob:
    """Generate and embed shard ``index``: whole batches on the models' device, results on the CPU."""
    rng = shard_generator(config.seed, index)
    latent_parts: list[Tensor] = []
    embed_parts: list[Tensor] = []
    previews: list[Tensor] = []
    kept = 0
    with torch.inference_mode():
        for latents in latent_batches(generator, count, rng, config.batch_size):
            latents = latents.to(generator.device)
            images = generator.synthesize(latents)
            embeddings = encoder.embed_image(images)
            latent_parts.append(latents.to(dtype).cpu())
            embed_parts.append(embeddings.to(dtype).cpu())
            if config.save_images and kept < PREVIEW_COUNT:
                previews.append(thumbnails(images[: PREVIEW_COUNT - kept]))
                kept += previews[-1].shape[0]
            bar.update(latents.shape[0])
    return _ShardJob(index, latent_parts, embed_parts, torch.cat(previews) if previews else None)


def build_dataset(
    generator: Generator,
    encoder: Encoder,
    config: BuildConfig,
    *,
    world: World | None = None,
) -> BuildSummary:
    """Build (or resume, or verify and repair) the dataset ``config.out``; see the module docstring."""
    world = world or World()
    started = time.perf_counter()
    dtype = storage_dtype(config.dtype)
    generator, encoder = with_precision(generator, encoder, config.precision, key="data.precision (--precision)")
    settings = BuildSettings(
        generator=generator.identity(),
        encoder=encoder.identity(),
        space=generator.space.to_dict(),
        seed=config.seed,
        shard_size=config.shard_size,
        dtype=config.dtype,
        precision=config.precision,
    )
    build_key = settings.key()
    out = config.out
    if out.exists() and not out.is_dir():
        raise LatentmapError(f"--out {out} is a file, expected a folder")
    if config.check_memory and not _already_complete(out, config.samples):
        check_memory(generator, encoder, config.batch_size)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    existing = _check_same_settings(out, settings)
    if existing is None and any(out.iterdir()) and not any(out.glob("shard-*.safetensors")):
        raise LatentmapError(f"--out {out} is not empty and holds no dataset; choose a new or empty folder")
    world.barrier()  # every rank has checked the folder before rank 0 changes it
    if world.is_main:
        remove_stale_temporaries(out)
        if existing is None or existing.get("samples") != config.samples or not existing.get("complete"):
            write_manifest_json(out, start_manifest(settings, config.samples))
    world.barrier()

    counts = plan_shards(config.samples, config.shard_size)
    mine = [index for index in range(len(counts)) if world.owns_shard(index)]
    table = MomentTable(len(counts), (generator.space.tokens, generator.space.dim), encoder.embed_dim)
    records: dict[int, ShardRecord] = {}
    rebuilt: list[tuple[int, str]] = []
    to_build: list[int] = []
    for index in mine:
        record, reason = inspect_shard(out / shard_file_name(index), index=index, count=counts[index], build_key=build_key)
        if record is not None:
            records[index] = table.adopt(record)
        else:
            to_build.append(index)
            if reason != "missing":
                rebuilt.append((index, reason))

    my_total = sum(counts[i] for i in mine)
    bar = tqdm(
        total=my_total,
        initial=my_total - sum(counts[i] for i in to_build),
        unit="samples",
        unit_scale=True,
        desc=f"build-data {out.name}" + (f" rank {world.rank}/{world.size}" if world.size > 1 else ""),
        disable=not config.progress or not world.is_main,
        dynamic_ncols=True,
    )
    writer = ShardWriter(out, build_key, table, threaded=config.overlap)
    build_started = time.perf_counter()
    try:
        for index in to_build:
            writer.submit(_compute_shard(generator, encoder, index, counts[index], config, dtype, bar))
    except BaseException:
        writer.close_quietly()  # Ctrl-C or a model error: still write the shards already computed
        raise
    finally:
        bar.close()
    new_records = writer.close()
    build_seconds = time.perf_counter() - build_started
    records.update({record.index: record for record in new_records})

    world.barrier()
    if world.is_main:
        _finalise(out, generator, settings, config, counts, records, table, build_key, world, time.perf_counter() - started)
    built_shards, built_samples, reused_shards, seconds = world.total(
        [len(to_build), sum(counts[i] for i in to_build), len(mine) - len(to_build), build_seconds]
    )
    return BuildSummary(
        out=out,
        samples=config.samples,
        shards=len(counts),
        built_shards=int(built_shards),
        built_samples=int(built_samples),
        reused_shards=int(reused_shards),
        seconds=seconds / world.size,  # the mean wall time of the ranks, which ran in parallel
        bytes_on_disk=sum((out / shard_file_name(i)).stat().st_size for i in range(len(counts))),
        world_size=world.size,
        rebuilt=rebuilt,
    )


def build_data(
    data: DataSection,
    generator: str,
    encoder: str,
    *,
    generator_options: Mapping[str, Any] | None = None,
    encoder_options: Mapping[str, Any] | None = None,
    save_images: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """``latentmap build-data`` as a function: the dataset ``data`` describes, of a registered generator and encoder.

    Joins torchrun's world if there is one (each process then builds its share of the shards on its
    own device), loads the generator and encoder there and builds, resumes or repairs ``data.dir``.
    """
    import latentmap

    world = join_world(data.device)
    try:
        generator_model = latentmap.get_generator(generator, **(generator_options or {})).to(world.device)
        encoder_model = latentmap.get_encoder(encoder, **(encoder_options or {})).to(world.device)
        config = BuildConfig(
            out=data.dir, samples=data.samples, batch_size=data.batch_size, shard_size=data.shard_size,
            seed=data.seed, dtype=data.dtype, precision=data.precision, save_images=save_images, progress=progress,
        )
        return build_dataset(generator_model, encoder_model, config, world=world)
    finally:
        world.close()


def build_data_from_recipe(recipe: Recipe, *, progress: bool = True) -> BuildSummary:
    """``build_data`` of a recipe's ``generator``, ``encoder`` and ``data`` sections."""
    return build_data(
        recipe.data, recipe.generator.name, recipe.encoder.name, generator_options=recipe.generator.factory_options(),
        encoder_options=recipe.encoder.factory_options(), progress=progress,
    )


def _finalise(
    out: Path,
    generator: Generator,
    settings: BuildSettings,
    config: BuildConfig,
    counts: list[int],
    records: dict[int, ShardRecord],
    table: MomentTable,
    build_key: str,
    world: World,
    seconds: float,
) -> None:
    """Rank 0, after every rank is done: verify other ranks' shards, merge statistics, write the manifest."""
    ordered: list[ShardRecord] = []
    for index, count in enumerate(counts):
        record = records.get(index)
        if record is None:
            record, reason = inspect_shard(out / shard_file_name(index), index=index, count=count, build_key=build_key)
            if record is None:
                raise LatentmapError(f"shard {out / shard_file_name(index)} is not complete after the build: {reason}")
            record = table.adopt(record)
        ordered.append(record)
    latent = merge_all(r.latent_moments for r in ordered)
    embed = merge_all(r.embed_moments for r in ordered)
    manifest = start_manifest(settings, config.samples)
    manifest.update(
        complete=True,
        shards=[r.manifest_entry() for r in ordered],
        latent_shape=list(latent.mean.shape),
        embed_dim=int(embed.mean.shape[0]),
        stats={
            "std_correction": STD_CORRECTION,
            "latent_mean": latent.mean.tolist(),
            "latent_std": latent.std(STD_CORRECTION).tolist(),
            "embed_mean": embed.mean.tolist(),
            "embed_std": embed.std(STD_CORRECTION).tolist(),
        },
        build={
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "world_size": world.size,
            "seconds": round(seconds, 3),
            "torch": torch.__version__,
        },
    )
    if config.save_images and not (out / CONTACT_SHEET).exists():
        latents, _ = read_shard(out / shard_file_name(0))
        title = f"{settings.generator.get('name', 'generator')} / {settings.space.get('name', '')}: first {min(PREVIEW_COUNT, counts[0])} samples"
        save_contact_sheet(out, render_first(generator, latents), title)
    write_manifest_json(out, manifest)
