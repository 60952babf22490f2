"""build-data as users run it, in subprocesses: kill -9 then resume, and a 2-process torchrun build.

Both compare against an uninterrupted one-process build of the same settings, shard file by shard
file (same batch size and one CPU thread each, so the bytes must match exactly).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentmap.config import plural

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
COMMON = ["--generator", "tiny-test", "--encoder", "tiny-test", "--space", "w3", "--dtype", "float16", "-q"]

pytestmark = pytest.mark.slow


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")])
    env["LATENTMAP_PLUGIN_MODULES"] = "helpers_tiny"
    env["LATENTMAP_LOAD_PLUGINS"] = ""  # only the tiny test plugin: fast start-up
    env["OMP_NUM_THREADS"] = "1"
    return env


def build_data(*args: str, launcher: list[str] | None = None, **popen) -> subprocess.Popen:
    command = (launcher or [sys.executable]) + ["-m", "latentmap", "build-data", *COMMON, *args]
    return subprocess.Popen(command, env=environment(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.glob("shard-*.safetensors"))}


def manifest_content(root: Path) -> dict:
    data = json.loads((root / "manifest.json").read_text())
    data.pop("build")  # time, host, world size: the only fields allowed to differ
    return data


def test_kill_9_at_a_random_moment_then_resume_equals_an_uninterrupted_build(tmp_path):
    sizes = ["--samples", "4000", "--shard-size", "400", "--batch-size", "50"]
    reference = build_data(*sizes, "--out", str(tmp_path / "reference"))
    finish(reference)

    out = tmp_path / "killed"
    victim = build_data(*sizes, "--out", str(out), "-G", "delay=0.02")  # 80 batches: ~2 s or more
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.safetensors"))) < 1:
        assert victim.poll() is None, victim.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))
    assert victim.poll() is None, "the build finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    complete_before = len(list(out.glob("shard-*.safetensors")))
    assert 1 <= complete_before < 10

    output = finish(build_data(*sizes, "--out", str(out)))
    assert f"reused {plural(complete_before, 'complete shard')}" in output
    assert not list(out.glob(".*tmp-*"))  # temporaries of the killed process were cleaned up
    assert shard_bytes(out) == shard_bytes(tmp_path / "reference")
    assert manifest_content(out) == manifest_content(tmp_path / "reference")


def test_two_process_torchrun_build_equals_the_one_process_build(tmp_path):
    sizes = ["--samples", "2300", "--shard-size", "500", "--batch-size", "64"]
    single = build_data(*sizes, "--out", str(tmp_path / "single"))
    finish(single)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    output = finish(build_data(*sizes, "--out", str(tmp_path / "torchrun"), "--device", "cpu", launcher=launcher))
    assert "2 processes" in output
    manifest = json.loads((tmp_path / "torchrun" / "manifest.json").read_text())
    assert manifest["build"]["world_size"] == 2
    assert shard_bytes(tmp_path / "torchrun") == shard_bytes(tmp_path / "single")
    assert manifest_content(tmp_path / "torchrun") == manifest_content(tmp_path / "single")
