"""bench/gpu.py --dry-run: every GPU benchmark section runs at tiny sizes on the CPU and writes its tables.

The first test needs no peers (what CI has): every latentmap row of the three sections runs and the
peer rows are marked not run. The second runs the peers' rows too, where the peers' virtualenv exists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentmap.precision import precision_problem

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = REPO / "bench" / ".peers" / "bin" / "python"
HAVE_NVIDIA = PEERS_PYTHON.is_file() or importlib.util.find_spec("clip2latent") is not None
NATIVE_BF16 = precision_problem("bfloat16", "cpu") is None
HEADINGS = ("## StyleGAN synthesis vs NVIDIA", "## Prior sampling and training vs DALLE2-pytorch",
            "## build-data vs clip2latent's workflow")


def dry_run(python: str, out: Path, *extra: str) -> tuple[dict, str, str]:
    """Run the dry run; (its JSON report, its markdown, its stdout)."""
    env = {**os.environ, "LATENTMAP_BENCH_CACHE": str(out / "networks"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([python, str(REPO / "bench" / "gpu.py"), "--dry-run", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu-dry-run.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert list(report["sections"]) == ["synthesis", "prior", "build_data"]
    assert "load_average" in report["machine"]
    text = (out / "gpu-dry-run.md").read_text()
    assert all(heading in text for heading in HEADINGS)
    return report, text, done.stdout


def check_prior_rows(prior: dict) -> None:
    """latentmap's rows of prior_peers.py: bf16 close to fp32 yet really reduced, training lowers the loss."""
    rows = {(row["what"], row["variant"]): row for row in prior["result"]["rows"]}
    assert 0 < rows["guided step", "latentmap bf16"]["rel_rms_diff"] < 2e-2
    assert rows["guided step", "latentmap fp32 (default)"]["rel_rms_diff"] < 1e-5  # the condition cache: same output
    sampled = [row for (what, variant), row in rows.items() if what.startswith("sample") and variant.endswith("bf16")]
    assert sampled and all(0 < row["rel_rms_diff"] < 2e-2 for row in sampled)
    trained = [row for (what, variant), row in rows.items() if what.startswith("training step")
               and variant.startswith("latentmap")]
    assert len(trained) == 3 and all(row["loss_last"] < row["loss_first"] for row in trained)


@pytest.mark.slow
def test_dry_run_without_the_peers_runs_every_latentmap_row(tmp_path):
    report, text, stdout = dry_run(sys.executable, tmp_path, "--no-peers")
    assert report["peers"] is False
    assert "the peers (NVIDIA's StyleGAN code, DALLE2-pytorch) are not importable (--no-peers)" in stdout
    assert "their rows were not run" in text

    synthesis = report["sections"]["synthesis"]
    assert synthesis["status"] == "ran (latentmap rows only)"
    assert [r["network"] for r in synthesis["results"]] == ["sg2-tiny-32", "sg3-tiny-32"]
    for result in synthesis["results"]:
        cells = {(row["batch"], row["contender"]): row for row in result["rows"]}
        expected = {"latentmap float32", "nvidia float32"} | ({"latentmap bf16"} if NATIVE_BF16 else set())
        assert set(cells) == {(batch, contender) for batch in (1, 2) for contender in expected}
        for batch in (1, 2):
            assert cells[batch, "nvidia float32"]["status"].startswith("not run: the peers are not importable")
            full = cells[batch, "latentmap float32"]
            assert full["median_s"] > 0 and full["output_std"] > 0.01  # a real image came out
            if NATIVE_BF16:
                assert 0 < cells[batch, "latentmap bf16"]["max_error"] < 0.1  # bfloat16 ran, close to float32
    assert "| tiny StyleGAN2, 32 px (dry run) | 1 | nvidia float32 | not run |" in text

    prior = report["sections"]["prior"]
    assert prior["status"] == "ran (latentmap rows only)" and prior["result"]["peer"] is None
    check_prior_rows(prior)

    build = report["sections"]["build_data"]
    assert build["status"] == "ran (latentmap rows only)"
    rows = {row["contender"]: row for row in build["rows"]}
    assert list(rows) == ["forward only", "latentmap build-data", *(["latentmap build-data bfloat16"] * NATIVE_BF16),
                          "clip2latent workflow"]
    assert rows["clip2latent workflow"]["status"].startswith("not run")
    assert (build["meta"]["built_samples"], build["meta"]["built_shards"]) == (8, 2)
    assert rows["latentmap build-data"]["vs_forward_only"] > 0
    if NATIVE_BF16:
        assert rows["latentmap build-data bfloat16"]["min_cosine"] > 0.99


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_NVIDIA, reason="needs the peers' virtualenv: bash bench/peers/setup.sh")
def test_dry_run_with_the_peers_writes_every_table(tmp_path):
    python = str(PEERS_PYTHON) if PEERS_PYTHON.is_file() else sys.executable
    report, text, _ = dry_run(python, tmp_path)
    assert report["peers"] is True

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

    prior = report["sections"]["prior"]
    assert prior["status"] == "ran" and prior["result"]["peer"] is not None
    check_prior_rows(prior)
    assert any("DALLE2" in row["variant"] for row in prior["result"]["rows"])

    assert "| network | batch | contender | median s / batch |" in text
    assert ("| contender | median s | s / sample | x forward only | speed-up vs clip2latent | CPU s | "
            "CPU-time speed-up vs clip2latent | embedding cosine to float32 |") in text
