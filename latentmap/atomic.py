"""Crash-safe file writes for everything latentmap saves: a temporary name, fsync, rename, fsync of the folder.

A reader (or a resumed build) therefore sees either the complete old file, the complete new file or
no file, never a half-written one, even after ``kill -9`` or a power cut. A full disk is reported as
one clear error and leaves no partial file behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from latentmap.errors import LatentmapError

TEMP_MARK = ".tmp-"
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under before the rename (hidden, per process)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def replace_atomically(path: str | os.PathLike, write: Callable[[Path], None], *, size: int | None = None) -> Path:
    """Have ``write`` fill a temporary file beside ``path``, then make it ``path`` durably and atomically.

    ``write`` receives the temporary path (safetensors' ``save_file`` fits as is, so large tensors
    are streamed rather than held twice as bytes). The parent folder is created if needed. A full
    disk or an I/O error becomes one LatentmapError naming ``path`` and leaves no temporary behind.
    """
    path = Path(path)
    temp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temp)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno in _NO_SPACE:
            raise _no_space(path, size) from None
        raise LatentmapError(f"cannot write {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        temp.unlink(missing_ok=True)
        if type(exc).__name__ != "SafetensorError":  # safetensors reports I/O failures with its own type
            raise
        if "no space left" in str(exc).lower() or "os error 28" in str(exc).lower():
            raise _no_space(path, size) from None
        raise LatentmapError(f"cannot write {path}: {exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def _no_space(path: Path, size: int | None) -> LatentmapError:
    amount = f" ({size / 1e6:.1f} MB)" if size is not None else ""
    return LatentmapError(
        f"no space left on device while writing {path}{amount}; free some space and run the same command again to resume"
    )


def write_atomic(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` durably and atomically; LatentmapError on a full disk or I/O error."""

    def write(temp: Path) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    replace_atomically(path, write, size=len(data))


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files left by interrupted writes in ``folder``; returns how many."""
    removed = 0
    for stale in folder.glob(f".*{TEMP_MARK}*"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
