"""Finding weight files for every plugin: an explicit path, an environment variable, the cache, or a download.

Resolution order (first hit wins):

1. ``path=`` given by the caller (a CLI option or a recipe key): used as is.
2. ``env_var`` (e.g. ``LATENTMAP_STYLEGAN2_FFHQ``) naming a file: used as is.
3. The cache: ``<cache>/<name>/<filename>`` where ``<cache>`` is ``cache_dir=``, ``$LATENTMAP_CACHE`` or
   ``~/.cache/latentmap``. Checked against ``sha256`` when one is known.
4. A download from ``url`` into the cache (written under a temporary name, hashed while streaming,
   renamed only when complete and verified). ``LATENTMAP_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbids it.

Files the user names explicitly (1 and 2) are not checksum-verified: a fine-tuned or converted file is a
legitimate choice. Files latentmap put in its own cache are, and a file that fails the check is moved
aside (``*.sha256-mismatch``) and never used. Every failure is one ``LatentmapError`` line saying which
file is missing, where to get it and where to put it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from latentmap.errors import LatentmapError

__all__ = ["cache_root", "copy_into_cache", "downloads_disabled", "resolve_weights", "sha256_file"]

CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0
OFFLINE_ENV_VARS = ("LATENTMAP_OFFLINE", "HF_HUB_OFFLINE")

_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weights cache folder: ``cache_dir``, else ``$LATENTMAP_CACHE``, else ``~/.cache/latentmap``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LATENTMAP_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "latentmap"


def downloads_disabled() -> bool:
    """True when ``LATENTMAP_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return any(os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"} for var in OFFLINE_ENV_VARS)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks.

    Memoised on (absolute path, size, mtime) so repeated ``identity()`` calls on a multi-GB checkpoint
    cost one ``stat``; any change to the file changes the key and forces a re-hash.
    """
    file = Path(path).expanduser().resolve()
    try:
        stat = file.stat()
    except OSError as exc:
        raise LatentmapError(f"cannot checksum {file}: {exc.strerror or exc}") from None
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def resolve_weights(
    name: str,
    *,
    filename: str,
    url: str | None = None,
    sha256: str | None = None,
    env_var: str | None = None,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a local path to the weights ``filename`` of the model ``name``; download if needed and allowed.

    ``name`` labels the model in messages and names its cache sub-folder; ``sha256`` (hex) verifies
    cached and downloaded files. Raises ``LatentmapError`` (one line) when no file can be found.
    """
    if path is not None:
        return _existing_file(Path(path).expanduser(), f"weights file for {name!r} given as path={str(path)!r}")
    if env_var and os.environ.get(env_var):
        env_path = Path(os.environ[env_var]).expanduser()
        return _existing_file(env_path, f"weights file for {name!r} given by ${env_var}={str(env_path)!r}")

    target = cache_root(cache_dir) / _safe_dirname(name) / filename
    expected = sha256.lower() if sha256 else None
    mismatch_note = ""
    if target.is_file():
        if expected is None:
            return target
        actual = sha256_file(target)
        if actual == expected:
            return target
        aside = _move_aside(target)
        mismatch_note = f" (the cached copy had SHA-256 {actual}, expected {expected}; moved to {aside})"

    how_to_provide = _how_to_provide(target, env_var, url)
    if url is None:
        raise LatentmapError(f"weights for {name!r} not found: {filename} is not in the cache{mismatch_note}; {how_to_provide}")
    if downloads_disabled():
        raise LatentmapError(
            f"weights for {name!r} not found and downloads are disabled (LATENTMAP_OFFLINE/HF_HUB_OFFLINE): "
            f"{filename} is missing{mismatch_note}; {how_to_provide}"
        )
    return _download(name, url, target, expected, how_to_provide)


def _existing_file(file: Path, described: str) -> Path:
    if file.is_file():
        return file
    problem = "is a directory, not a file" if file.is_dir() else "does not exist"
    raise LatentmapError(f"{described} {problem}")


def _safe_dirname(name: str) -> str:
    """A cache sub-folder name from a model name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or "weights"


def _how_to_provide(target: Path, env_var: str | None, url: str | None) -> str:
    source = f"download it from {url}" if url else "obtain the file"
    alternative = f", or set {env_var}=/path/to/file" if env_var else ", or pass its path explicitly"
    return f"{source} and put it at {target}{alternative}"


def _move_aside(file: Path) -> Path:
    """Rename a file that failed its checksum so it is never used again but can still be inspected."""
    aside = file.with_name(file.name + ".sha256-mismatch")
    os.replace(file, aside)
    return aside


def _download(name: str, url: str, target: Path, expected: str | None, how_to_provide: str) -> Path:
    """Stream ``url`` to a temporary file next to ``target``, hashing as it goes; rename when verified."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "latentmap"})
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {target.name}") as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise LatentmapError(f"weights for {name!r} not found and the download of {url} failed ({reason}); {how_to_provide}") from None

    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        aside = target.with_name(target.name + ".sha256-mismatch")
        os.replace(partial, aside)
        raise LatentmapError(
            f"checksum mismatch for {name!r}: {url} downloaded to {aside} has SHA-256 {actual}, expected {expected}; "
            "the file was kept aside and not used"
        )
    os.replace(partial, target)
    stat = target.stat()
    with _hash_lock:
        _hash_cache[(str(target.resolve()), stat.st_size, stat.st_mtime_ns)] = actual
    return target


def copy_into_cache(
    name: str, source: str | os.PathLike, *, filename: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Copy a local file into the cache where ``resolve_weights(name, filename=...)`` will find it."""
    src = _existing_file(Path(source).expanduser(), f"file to cache for {name!r}")
    target = cache_root(cache_dir) / _safe_dirname(name) / (filename or src.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    shutil.copyfile(src, partial)
    os.replace(partial, target)
    return target
