"""bench/accuracy_time.py: its scoring on latents of known truth, and a tiny end-to-end run (structure, ranges)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("accuracy_time", REPO / "bench" / "accuracy_time.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_time"] = module
    spec.loader.exec_module(module)
    return module


def _prompt_file(path: Path) -> Path:
    rows = [
        {"prompt": "a red circle", "attributes": {"colour": "red", "shape": "circle"}, "group": "colour+shape"},
        {"prompt": "a large blue star on the left", "group": "3-5",
         "attributes": {"size": "large", "colour": "blue", "shape": "star", "position": "left"}},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_accuracy_counts_hits_per_group_with_and_without_reranking(bench, tmp_path):
    from latentmap_shapes import latents_with_attributes
    from prompt_sets import load_prompt_set

    cases = load_prompt_set(str(_prompt_file(tmp_path / "p.jsonl")))
    g = torch.Generator().manual_seed(0)
    # prompt 0 (red circle): 4 of 16 right; prompt 1 (large blue star, left): 8 of 16 right, 4 more miss only the size
    red_circle = latents_with_attributes({"colour": 0, "shape": 0}, 4, generator=g)
    green_circle = latents_with_attributes({"colour": 3, "shape": 0}, 12, generator=g)
    full = {"colour": 5, "shape": 3, "position": 3}
    right = latents_with_attributes({**full, "size": 1}, 8, generator=g)
    small = latents_with_attributes({**full, "size": 0}, 8, generator=g)
    latents = torch.stack([torch.cat([green_circle, red_circle]), torch.cat([small, right])])
    scores = torch.zeros(2, 16)
    scores[0, 15] = 1.0  # a red circle ranked first
    scores[1, 0] = 1.0  # a small star ranked first: wrong size
    result = bench.accuracy(cases, latents, scores)
    assert result["colour_shape"] == pytest.approx(4 / 16)
    assert result["colour_shape_reranked"] == 1.0
    assert result["all_named"] == pytest.approx(8 / 16)
    assert result["all_named_reranked"] == 0.0


def test_tiny_run_writes_the_results_json(bench, tmp_path):
    import latentmap
    from latentmap.checkpoint import save_prior
    from latentmap.interfaces import PriorShape
    from latentmap.prior import DiffusionPrior

    generator = latentmap.get_generator("shapes")
    encoder = latentmap.get_encoder("shapes-clip")
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorShape(tokens=3, latent_dim=8, cond_dim=encoder.embed_dim),
                           DiffusionPrior.Options(dim=16, depth=1, heads=2, dim_head=8, timesteps=20,
                                                  normalize_cond=True)).eval()
    checkpoint = tmp_path / "tiny.safetensors"
    save_prior(checkpoint, prior, metadata={"generator": generator.identity(), "encoder": encoder.identity(),
                                            "space": generator.space.to_dict(), "step": 0, "recipe": {}})
    out = tmp_path / "result.json"
    bench.main(["--prompts", str(_prompt_file(tmp_path / "p.jsonl")), "--diffusion", str(checkpoint), "--flow", "none",
                "--methods", "ddim:2,dpmpp_2m:2:trailing", "--seeds", "0", "--candidates", "4", "--timing-rounds", "1",
                "--peer", "off", "--out", str(out), "--plot", "none"])
    result = json.loads(out.read_text())
    assert [row["method"] for row in result["rows"]] == ["ddim 2", "dpmpp_2m trailing 2"]
    assert result["setup"]["prompt_count"] == 2 and result["setup"]["seeds"] == [0]
    assert result["encoder_sha256"] == encoder.identity()["weights_sha256"]
    assert result["setup"]["diffusion"]["encoder_sha256"] == result["encoder_sha256"]
    for row in result["rows"]:
        assert row["nfe"] == 2 and [s["seed"] for s in row["per_seed"]] == [0]
        for key in ("colour_shape", "colour_shape_reranked", "all_named", "all_named_reranked"):
            assert 0.0 <= row[key] <= 1.0
        assert row["seconds_per_16"] > 0
    assert len(result["load_average_before"]) == 3
