"""The Table-1 protocol: scores with and without re-ranking, timing present, attribute accuracy via the world."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import helpers_colour
from latentmap.checkpoint import load_prior, save_prior
from latentmap.cli import cli
from latentmap.evaluate import AttributeWorld, attribute_accuracy, evaluate, prefixed
from latentmap.pipeline import load_pipeline

PROMPTS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def pipeline():
    helpers_colour.ensure_registered()
    return load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")


def test_prefix_is_joined_with_one_space():
    assert prefixed(["a man"], "A photograph of") == ["A photograph of a man"]
    assert prefixed(["a man"], None) == ["a man"]


def test_report_scores_and_attribute_accuracy(pipeline):
    report = evaluate(pipeline, PROMPTS, prefix="a photo of a", candidates=8, settings=pipeline.settings(steps=10),
                      seed=0, progress=False)
    assert report["prompts"] == 4 and report["candidates"] == 8
    assert report["clip_score_reranked"] > report["clip_score"] > 0.5
    per_prompt = report["per_prompt"]
    assert [p["prompt"] for p in per_prompt] == [f"a photo of a {p}" for p in PROMPTS]
    assert report["clip_score"] == pytest.approx(sum(p["mean_score"] for p in per_prompt) / 4, abs=1e-5)
    assert isinstance(report["seconds_per_prompt"], float) and report["seconds_per_prompt"] > 0
    accuracy = report["attribute_accuracy"]
    assert set(accuracy) == {"colour", "all"}
    assert accuracy["colour"] > 0.6  # chance: 1/6
    assert report["attribute_accuracy_reranked"]["colour"] >= 0.75
    json.dumps(report)  # JSON-ready


def test_batching_prompts_does_not_change_the_method(pipeline):
    one = evaluate(pipeline, PROMPTS[:2], prefix=None, candidates=4, settings=pipeline.settings(steps=5), seed=3,
                   warmup=False, progress=False)
    both = evaluate(pipeline, PROMPTS[:2], prefix=None, candidates=4, settings=pipeline.settings(steps=5), seed=3,
                    prompts_per_batch=2, warmup=False, progress=False)
    assert both["prompts_per_batch"] == 2
    assert abs(one["clip_score"] - both["clip_score"]) < 0.1  # different noise, same distribution


class _FakeWorld:
    def decode_attributes(self, latents):
        return {"colour": latents[:, 0, 0].long(), "size": latents[:, 0, 1].long()}

    def prompt_attributes(self, prompt):
        wanted = {}
        if "red" in prompt:
            wanted["colour"] = 0
        if "big" in prompt:
            wanted["size"] = 1
        return wanted


def test_attribute_accuracy_counts_only_named_attributes():
    world = _FakeWorld()
    assert isinstance(world, AttributeWorld)
    # prompt 0 "big red": samples (colour, size) = (0,1) ok, (0,0) size wrong; prompt 1 names nothing
    latents = torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]]], [[[5.0, 5.0]], [[5.0, 5.0]]]])
    result = attribute_accuracy(world, ["a big red thing", "a thing"], latents)
    assert result == {"colour": 1.0, "size": 0.5, "all": 0.5}
    assert attribute_accuracy(world, ["a thing"], latents[1:]) is None


def test_worlds_without_attributes_report_scores_only(pipeline, tmp_path):
    import helpers_tiny
    import latentmap

    helpers_tiny.ensure_registered()
    prior, metadata = load_prior(helpers_colour.colour_checkpoint())
    generator = latentmap.get_generator("tiny-test", space="w3", dim=4)
    encoder = latentmap.get_encoder("tiny-test:3")
    path = tmp_path / "tiny.safetensors"
    save_prior(path, prior, metadata={**{k: v for k, v in metadata.items() if k not in ("format", "version", "prior", "extra_tensors")},
                                      # identity options = how it was asked for, so the checkpoint can rebuild it
                                      "generator": {**generator.identity(), "options": {"space": "w3", "dim": 4}},
                                      "encoder": encoder.identity(),
                                      "space": generator.space.to_dict()})
    loaded = load_pipeline(path)
    report = evaluate(loaded, ["anything"], candidates=2, settings=loaded.settings(steps=3),
                      progress=False)
    assert "attribute_accuracy" not in report
    assert -1.0 <= report["clip_score"] <= report["clip_score_reranked"] <= 1.0


def test_cli_eval_prints_and_writes_the_report(pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red\n# a comment\nblue\n")
    report = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", pipeline.checkpoint, "--prompts-file", str(prompts),
                                      "--prefix", "", "--candidates", "4", "--steps", "5", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "CLIP score (best of 4)" in result.output and "attribute accuracy" in result.output
    data = json.loads(report.read_text())
    assert data["prompts"] == 2 and data["prefix"] is None and data["settings"]["steps"] == 5


def test_cli_eval_bad_input(pipeline, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["eval", "--checkpoint", pipeline.checkpoint, "--prompts-file", "nope.txt"])
    assert result.exit_code == 2 and "prompts file 'nope.txt' not found" in result.output
    not_prior = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(not_prior))
    result = runner.invoke(cli, ["eval", "--checkpoint", str(not_prior), "--prompts-file", "face-val.txt"])
    assert result.exit_code == 2 and "model.safetensors" in result.output and "Traceback" not in result.output


def test_cli_eval_json_is_the_report(pipeline, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("red\nblue\n")
    report = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", pipeline.checkpoint, "--prompts-file", str(prompts),
                                      "--candidates", "2", "--steps", "3", "--report", str(report), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == json.loads(report.read_text())
    assert document["prompts"] == 2 and document["candidates"] == 2 and document["settings"]["steps"] == 3
    assert document["clip_score_reranked"] >= document["clip_score"] > 0
    assert [p["prompt"] for p in document["per_prompt"]] == ["A photograph of red", "A photograph of blue"]
    assert "eval" in result.stderr  # the progress bar, on stderr
    quiet = CliRunner().invoke(cli, ["eval", "--checkpoint", pipeline.checkpoint, "--prompts-file", str(prompts),
                                     "--candidates", "2", "--steps", "3", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and "CLIP score (best of 2)" in quiet.stdout
