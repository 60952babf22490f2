"""The training run folder (``train.out``): latentmap writes only into folders it owns, one writer at a time.

A folder is a run folder when it holds latentmap's marker file (or, for runs made before the marker,
a ``states/`` folder). ``train`` refuses any other non-empty folder, so ``train.out: .`` can never
replace a user's own ``recipe.yaml`` or ``metrics.jsonl``. While a run trains, it holds an exclusive
lock on ``.lock`` in the folder (an OS lock, released by the kernel even when the process is killed),
so a second ``train`` on the same folder stops and says which process holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from latentmap.errors import LatentmapError

MARKER = ".latentmap-run"
LOCK = ".lock"


def _describe(path: Path) -> str:
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    return shown


def check_run_folder(out: Path) -> None:
    """Refuse ``out`` unless it is new, empty, or a latentmap run folder (one line naming it)."""
    if out.exists() and not out.is_dir():
        raise LatentmapError(f"train.out {out} is a file, not a folder; choose a folder for the run")
    if not out.is_dir() or (out / MARKER).is_file() or (out / "states").is_dir():
        return
    if any(out.iterdir()):
        raise LatentmapError(
            f"train.out {out} already holds files latentmap did not write ({_describe(out)}); "
            "choose a new or empty folder for the run"
        )


class RunLock:
    """An exclusive claim on a run folder for the life of a training process (``with RunLock(out):``)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.handle: IO[str] | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        check_run_folder(self.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            handle = open(self.out / LOCK, "a+", encoding="utf-8")
        except OSError as exc:
            raise LatentmapError(f"cannot write to train.out {self.out}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LatentmapError(
                f"train.out {self.out} is in use by {holder}; wait for that run to end or choose another train.out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        marker = self.out / MARKER
        if not marker.is_file():
            marker.write_text(json.dumps({"written_by": "latentmap train"}) + "\n", encoding="utf-8")

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
