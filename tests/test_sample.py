"""Sampling from a trained prior: re-ranking, determinism, truncation, style mixing, outputs, CLI errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import helpers_colour
from latentmap.cli import cli
from latentmap.errors import LatentmapError
from latentmap.images import load_image
from latentmap.pipeline import load_pipeline
from latentmap.sample import sample, write_samples
from latentmap.scoring import image_text_scores



@pytest.fixture(scope="module")
def pipeline():
    helpers_colour.ensure_registered()
    return load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")


def test_reranking_keeps_the_best_candidates(pipeline):
    result = sample(pipeline, ["red", "blue"], candidates=8, keep=3, seed=0, progress=False)
    expected = torch.sort(result.candidate_scores, dim=1, descending=True).values[:, :3]
    torch.testing.assert_close(result.scores, expected)
    # the kept images really score what the result says, against their own prompt
    flat_images = result.images.flatten(0, 1)
    targets = pipeline.embed_prompts(["red", "blue"]).repeat_interleave(3, dim=0)
    rescored = image_text_scores(pipeline.encoder, flat_images, targets).view(2, 3)
    torch.testing.assert_close(rescored, result.scores, atol=1e-5, rtol=0)
    assert (result.scores[:, 0] >= result.candidate_scores.mean(dim=1)).all()


def test_prompt_colour_is_rendered_above_chance(pipeline):
    result = sample(pipeline, ["green"], candidates=16, keep=4, seed=1, progress=False)
    decoded = pipeline.generator.decode_attributes(result.per_layer[0])["colour"]
    accuracy = (decoded == helpers_colour.NAMES.index("green")).float().mean().item()
    assert accuracy >= 0.75  # chance is 1/6
    assert result.scores.min().item() > 0.8


def test_same_seed_same_samples_other_seed_differs(pipeline):
    first = sample(pipeline, ["yellow"], candidates=4, keep=2, seed=5, keep_images=False, progress=False)
    again = sample(pipeline, ["yellow"], candidates=4, keep=2, seed=5, keep_images=False, progress=False)
    other = sample(pipeline, ["yellow"], candidates=4, keep=2, seed=6, keep_images=False, progress=False)
    assert torch.equal(first.latents, again.latents)
    assert torch.equal(first.candidate_scores, again.candidate_scores)
    assert not torch.allclose(first.latents, other.latents)


def test_checkpoint_recipe_sets_defaults(pipeline):
    defaults = pipeline.defaults()
    assert (defaults.sampling.steps, defaults.sampling.sampler) == (10, "ddim")


def test_truncation_zero_gives_the_mean_latent(pipeline):
    result = sample(pipeline, ["cyan"], candidates=3, keep=1, settings=pipeline.settings(steps=5, truncation=0.0),
                    keep_images=False, progress=False)
    torch.testing.assert_close(result.latents[0, 0], pipeline.prior.latent_mean.cpu())


def test_style_mixing_replaces_only_the_chosen_layers(pipeline):
    settings = pipeline.settings(steps=5)
    plain = sample(pipeline, ["red"], candidates=4, keep=4, settings=settings, seed=2, progress=False)
    mixed = sample(pipeline, ["red"], candidates=4, keep=4, settings=settings, seed=2, mix_layers="2-3", mix_seed=9,
                   progress=False)
    # re-ranking may order them differently: compare per candidate index
    order_plain, order_mixed = plain.kept[0].argsort(), mixed.kept[0].argsort()
    plain_layers, mixed_layers = plain.per_layer[0][order_plain], mixed.per_layer[0][order_mixed]
    assert torch.equal(plain_layers[:, :2], mixed_layers[:, :2])
    assert not torch.allclose(plain_layers[:, 2:], mixed_layers[:, 2:])
    plain_images, mixed_images = plain.images[0][order_plain], mixed.images[0][order_mixed]
    assert torch.equal(plain_images[:, :, :4], mixed_images[:, :, :4])  # top half (layers 0-1) unchanged


def test_image_prompt_samples_look_like_the_image(pipeline, tmp_path):
    red = torch.tensor([0.8, -0.8, -0.8])[:, None, None].expand(3, 8, 8)
    result = sample(pipeline, images=red[None], image_labels=["red.png"], candidates=8, keep=2, progress=False)
    assert result.kind == "image"
    assert result.scores.min().item() > 0.8


def test_write_samples_round_trips_images_and_latents(pipeline, tmp_path):
    result = sample(pipeline, ["red", "magenta"], candidates=4, keep=2, seed=3, progress=False)
    jsonl = write_samples(result, tmp_path, info={"checkpoint": "x"})
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 4
    assert [line["prompt"] for line in lines] == ["red", "red", "magenta", "magenta"]
    assert lines[0]["seed"] == 3 and lines[0]["settings"]["steps"] == 10
    for line in lines:
        latents = load_file(str(tmp_path / line["latent_file"]))
        per_layer = latents["per_layer"][line["latent_index"]][None]
        rendered = pipeline.generator.synthesize(per_layer)[0]
        assert (load_image(tmp_path / line["image"]) - rendered).abs().max().item() <= 1 / 127.5 + 1e-6
        assert abs(line["score"] - result.scores[line["prompt_index"], line["rank"]].item()) < 1e-5
        assert (tmp_path / line["image"]).parent.joinpath("sheet.png").is_file()


def test_bad_counts_are_one_line_errors(pipeline):
    from latentmap.errors import LatentmapError

    with pytest.raises(LatentmapError, match="--keep must be between 1 and --candidates"):
        sample(pipeline, ["red"], candidates=2, keep=3, progress=False)
    with pytest.raises(LatentmapError, match="no prompts given"):
        sample(pipeline, [], progress=False)


# -- command line --------------------------------------------------------------------------------
def test_cli_sample_writes_outputs(pipeline, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "red", "blue", "--candidates", "4",
                                      "--keep", "2", "--seed", "1", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = (out / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert (out / "000-red" / "sheet.png").is_file() and (out / "001-blue" / "rank-1.png").is_file()


def test_cli_sample_empty_prompt_list(pipeline, tmp_path):
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "no prompts given" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "--prompts-file", str(empty)])
    assert result.exit_code == 2
    assert "holds no prompts" in result.output


def test_cli_sample_refuses_a_file_that_is_not_a_prior(tmp_path):
    helpers_colour.ensure_registered()
    bogus = tmp_path / "notes.safetensors"
    bogus.write_bytes(b"this is not a checkpoint")
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(bogus), "red"])
    assert result.exit_code == 2
    assert "notes.safetensors" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(tmp_path / "missing.safetensors"), "red"])
    assert result.exit_code == 2 and "missing.safetensors" in result.output


def test_cli_image_prompt(pipeline, tmp_path):
    from latentmap.images import save_png

    save_png(torch.tensor([-0.8, 0.8, -0.8])[:, None, None].expand(3, 8, 8), tmp_path / "green.png")
    out = tmp_path / "variations"
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "--image",
                                      str(tmp_path / "green.png"), "--candidates", "4", "--keep", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = json.loads((out / "samples.jsonl").read_text())
    assert line["image_prompt"] == "green.png" and line["prompt"] is None and line["score"] > 0.8
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "red", "--image",
                                      str(tmp_path / "green.png")])
    assert result.exit_code == 2 and "not both" in result.output


def test_a_string_is_one_prompt_everywhere(pipeline):
    """``sample(pipe, "a blue star")`` once ran nine one-letter prompts."""
    result = sample(pipeline, "cyan", candidates=2, keep=1, settings=pipeline.settings(steps=3), progress=False)
    assert result.labels == ["cyan"] and result.latents.shape[0] == 1
    generated = pipeline("cyan", n=2, candidates=3, steps=3)
    assert generated.prompts == ["cyan"] and len(generated.images) == 2 and generated.images[0].mode == "RGB"
    assert generated.grid().size[0] >= 2 * 8
    with pytest.raises(LatentmapError, match="has no option 'stpes'"):
        pipeline("cyan", stpes=3)


def test_non_finite_settings_are_refused(pipeline):
    for flag in (["--guidance", "nan"], ["--truncation", "inf"]):
        result = CliRunner().invoke(cli, ["sample", "--checkpoint", str(pipeline.checkpoint), "red", *flag])
        assert result.exit_code == 2 and "finite number" in result.output, result.output


# -- scripting: --json, --quiet, progress on stderr ------------------------------------------------
def test_cli_sample_json_is_all_of_stdout_and_progress_goes_to_stderr(pipeline, tmp_path):
    out = tmp_path / "out"
    args = ["sample", "--checkpoint", pipeline.checkpoint, "red", "--candidates", "2", "--keep", "1", "--steps", "3"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["out"] == str(out) and document["images"] == 1 and document["checkpoint"] == pipeline.checkpoint
    assert document["prompts"][0]["label"] == "red" and document["prompts"][0]["scores"][0] > 0.5
    (line,) = document["samples"]
    assert line["prompt"] == "red" and line["rank"] == 0 and (out / line["image"]).is_file()
    assert line["settings"]["steps"] == 3
    assert "denoise" in result.stderr and "render + score" in result.stderr  # the prior's steps, then rendering
    quiet = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "quiet"), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and "wrote 1 image to" in quiet.stdout  # one image, not "1 images"


def test_cli_sample_image_folder_skips_contact_sheets(pipeline, tmp_path):
    first = sample(pipeline, ["green"], candidates=2, keep=2, settings=pipeline.settings(steps=3), progress=False)
    write_samples(first, tmp_path / "previous")
    folder = tmp_path / "previous" / "000-green"
    assert (folder / "sheet.png").is_file()
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "--image", str(folder),
                                      "--candidates", "2", "--keep", "1", "--steps", "3", "--quiet", "--json",
                                      "--out", str(tmp_path / "variations")])
    assert result.exit_code == 0, result.output
    assert [p["label"] for p in json.loads(result.stdout)["prompts"]] == ["rank-0.png", "rank-1.png"]
    # named explicitly, a sheet is still an image prompt
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", pipeline.checkpoint, "--image", str(folder / "sheet.png"),
                                      "--candidates", "2", "--keep", "1", "--steps", "3", "--quiet", "--json",
                                      "--out", str(tmp_path / "sheet")])
    assert [p["label"] for p in json.loads(result.stdout)["prompts"]] == ["sheet.png"]


def test_earlier_samples_are_not_replaced_without_being_asked(pipeline, tmp_path):
    args = ["sample", "--checkpoint", str(pipeline.checkpoint), "red", "--candidates", "2", "--keep", "1",
            "--steps", "3", "--quiet", "--out", str(tmp_path)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    before = (tmp_path / "samples.jsonl").read_text()
    again = CliRunner().invoke(cli, [*args[:2], str(pipeline.checkpoint), "blue", *args[4:]])
    assert again.exit_code == 2 and "already holds samples (samples.jsonl)" in again.output and "--overwrite" in again.output
    assert (tmp_path / "samples.jsonl").read_text() == before
    replaced = CliRunner().invoke(cli, [*args[:2], str(pipeline.checkpoint), "blue", *args[4:], "--overwrite"])
    assert replaced.exit_code == 0 and '"prompt": "blue"' in (tmp_path / "samples.jsonl").read_text()
