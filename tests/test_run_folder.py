"""Users' folders are safe: train writes only into run folders, one writer at a time; faults lose nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentmap.atomic import replace_atomically
from latentmap.errors import LatentmapError
from latentmap.training.run_folder import MARKER, RunLock, check_run_folder
from latentmap.training.state import load_latest_intact, save_state, state_path


def test_a_folder_of_the_users_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("mine\n")
    with pytest.raises(LatentmapError, match=r"already holds files latentmap did not write \(recipe\.yaml\)"):
        check_run_folder(tmp_path)
    assert (tmp_path / "recipe.yaml").read_text() == "mine\n"
    afile = tmp_path / "recipe.yaml"
    with pytest.raises(LatentmapError, match="is a file, not a folder"):
        check_run_folder(afile)
    check_run_folder(tmp_path / "new")  # new and empty folders are fine
    (tmp_path / "old-run" / "states").mkdir(parents=True)
    (tmp_path / "old-run" / "metrics.jsonl").write_text("")
    check_run_folder(tmp_path / "old-run")  # a run made before the marker existed


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunLock(out):
        assert (out / MARKER).is_file()
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from latentmap.training.run_folder import "
             "RunLock; RunLock(Path(sys.argv[1])).acquire()", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        assert holder.returncode != 0
        assert f"train.out {out} is in use by process" in holder.stderr
    with RunLock(out):  # released: the next run may take it
        pass


def test_a_killed_holder_releases_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = ("import os, sys; from pathlib import Path; from latentmap.training.run_folder import RunLock; "
            "RunLock(Path(sys.argv[1])).acquire(); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(out)], timeout=120)
    with RunLock(out):  # the kernel dropped the dead process's lock
        pass


def test_resume_uses_the_newest_intact_state(tmp_path: Path) -> None:
    folder = tmp_path / "states"
    for step in (100, 200):
        save_state(state_path(folder, step), {"w": torch.full((4,), float(step))}, {"step": step})
    newest = state_path(folder, 200)
    newest.write_bytes(newest.read_bytes()[:40])  # a kill or a full disk mid-write
    path, tensors, info, skipped = load_latest_intact(folder)
    assert path == state_path(folder, 100) and info["step"] == 100 and float(tensors["w"][0]) == 100.0
    assert len(skipped) == 1 and skipped[0].startswith("state-000000200.safetensors is unreadable")


def test_a_full_disk_in_the_safetensors_writer_is_one_line(tmp_path: Path) -> None:
    class SafetensorError(Exception):  # what safetensors raises instead of OSError
        pass

    def write(temp: Path) -> None:
        temp.write_bytes(b"partial")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    target = tmp_path / "last.safetensors"
    with pytest.raises(LatentmapError, match=r"no space left on device while writing .*last\.safetensors"):
        replace_atomically(target, write)
    assert list(tmp_path.iterdir()) == []  # no temporary left behind

