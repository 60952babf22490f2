"""bench/gpu.py --dry-run: every GPU benchmark section runs at tiny sizes on the CPU and writes its tables."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = REPO / "bench" / ".peers" / "bin" / "python"
HAVE_NVIDIA = PEERS_PYTHON.is_file() or importlib.util.find_spec("clip2latent") is not None


@pytest.mark.skipif(not HAVE_NVIDIA, reason="needs NVIDIA's StyleGAN code: bash bench/peers/setup.sh")
def test_dry_run_writes_every_table(tmp_path):
    python = str(PEERS_PYTHON) if PEERS_PYTHON.is_file() else sys.executable
    env = {**os.environ, "LATENTMAP_BENCH_CACHE": str(tmp_path / "networks"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([python, str(REPO / "bench" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "gpu-dry-run.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert list(report["sections"]) == ["synthesis", "prior", "build_data"]
    assert "load_average" in report["machine"]

    synthesis = report["sections"]["synthesis"]
    assert [r["network"] for r in synthesis["results"]] == ["sg2-tiny-32", "sg3-tiny-32"]
    for result in synthesis["results"]:
        assert result["parity"] < 1e-4  # latentmap and NVIDIA agree on the same pickle
        cells = {(row["batch"], row["contender"]) for row in result["rows"]}
        for batch in (1, 2):
            assert {(batch, "nvidia float32"), (batch, "latentmap float32")} <= cells
        assert all(row["median_s"] > 0 and row["vs_nvidia_float32"] > 0 for row in result["rows"])
        for row in result["rows"]:
            if row["contender"] == "latentmap bf16":
                assert 0 < row["max_error"] < 0.1

    build = report["sections"]["build_data"]
    contenders = [row["contender"] for row in build["rows"]]
    assert contenders[:3] == ["forward only", "latentmap build-data", "clip2latent workflow"]
    for row in build["rows"][3:]:  # other precisions, where this CPU has them: embeddings close to float32's
        assert row["contender"] == "latentmap build-data bfloat16" and row["min_cosine"] > 0.99
    assert build["meta"]["embedding_cosine"] > 0.999  # both paths embed the same latents alike
    assert report["sections"]["prior"]["status"] in ("dry run: not run", "missing")

    text = (tmp_path / "gpu-dry-run.md").read_text()
    for heading in ("## StyleGAN synthesis vs NVIDIA", "## Prior sampling and training vs DALLE2-pytorch",
                    "## build-data vs clip2latent's workflow"):
        assert heading in text
    assert "| network | batch | contender | median s / batch |" in text
    assert ("| contender | median s | s / sample | x forward only | speed-up vs clip2latent | "
            "embedding cosine to float32 |") in text
