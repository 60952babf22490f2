"""Edits: truncation, layer/strength parsing, directions (discover, save, load foreign files safely, apply)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import helpers_colour
from latentmap.cli import cli
from latentmap.edit import (
    Direction,
    apply_direction,
    discover_direction,
    load_direction,
    parse_layers,
    parse_strengths,
    render_edits,
    save_direction,
    truncate,
)
from latentmap.errors import LatentmapError
from latentmap.pipeline import load_pipeline
from latentmap.sample import sample, write_samples



@pytest.fixture(scope="module")
def pipeline():
    helpers_colour.ensure_registered()
    return load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")


@pytest.fixture(scope="module")
def red_minus_blue(pipeline):
    return discover_direction(pipeline, "red", "blue", samples=48, seed=0, settings=pipeline.settings(steps=10))


def test_truncate_moves_toward_the_mean():
    latents = torch.tensor([[[2.0, -4.0]]])
    mean = torch.tensor([[1.0, 0.0]])
    assert torch.equal(truncate(latents, mean, 1.0), latents)
    assert torch.equal(truncate(latents, mean, 0.0), mean[None])
    torch.testing.assert_close(truncate(latents, mean, 0.5), torch.tensor([[[1.5, -2.0]]]))


def test_parse_layers_and_strengths():
    assert parse_layers("8-17", 18) == list(range(8, 18))
    assert parse_layers("0-1,5", 18) == [0, 1, 5]
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    with pytest.raises(LatentmapError, match=r"'8-18' is outside 0-17"):
        parse_layers("8-18", 18)
    with pytest.raises(LatentmapError, match=r"'x' is not N or N-M"):
        parse_layers("1,x", 18)
    assert parse_strengths("-3, 0,2.5") == [-3.0, 0.0, 2.5]
    with pytest.raises(LatentmapError, match=r"'big' is not a number"):
        parse_strengths("-3,big,3")


def test_direction_points_from_negative_to_positive(pipeline, red_minus_blue):
    # fresh samples (another seed) for each prompt project further along the direction for red
    settings = pipeline.settings(steps=10)
    red = sample(pipeline, ["red"], candidates=32, keep=32, seed=11, settings=settings, keep_images=False,
                 progress=False).latents[0]
    blue = sample(pipeline, ["blue"], candidates=32, keep=32, seed=12, settings=settings, keep_images=False,
                  progress=False).latents[0]
    unit = red_minus_blue.vector / red_minus_blue.vector.norm()
    red_proj = (red * unit).sum(dim=(1, 2))
    blue_proj = (blue * unit).sum(dim=(1, 2))
    assert red_proj.mean() > blue_proj.mean() + 0.5 * red_minus_blue.vector.norm()
    # and editing a blue sample along it makes it score higher for "red"
    per_layer = pipeline.space.expand(blue[:8])
    images = render_edits(pipeline.generator, per_layer, red_minus_blue, [0.0, 1.0])
    red_target = pipeline.encoder.embed_text(["red"], normalize=True)
    scores = torch.nn.functional.cosine_similarity(
        pipeline.encoder.embed_image(images.flatten(0, 1), normalize=True), red_target).view(8, 2)
    assert (scores[:, 1] > scores[:, 0]).float().mean() >= 0.75


def test_strength_zero_reproduces_the_original_image_exactly(pipeline, red_minus_blue):
    result = sample(pipeline, ["green"], candidates=4, keep=4, seed=3, progress=False)
    images = render_edits(pipeline.generator, result.per_layer[0], red_minus_blue, [-2.0, 0.0, 2.0])
    assert torch.equal(images[:, 1], result.images[0])
    assert not torch.equal(images[:, 2], result.images[0])


def test_layers_restrict_the_edit(pipeline, red_minus_blue):
    per_layer = pipeline.space.expand(torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(0)))
    edited = apply_direction(per_layer, red_minus_blue.per_layer(pipeline.space), [2.0], layers=[2, 3])[0]
    assert torch.equal(edited[:, :2], per_layer[:, :2])
    assert not torch.equal(edited[:, 2:], per_layer[:, 2:])


def test_saved_direction_round_trips_with_its_metadata(pipeline, red_minus_blue, tmp_path):
    path = save_direction(tmp_path / "red.safetensors", red_minus_blue)
    loaded = load_direction(path)
    assert torch.equal(loaded.vector, red_minus_blue.vector)
    assert loaded.info["positive"] == "red" and loaded.info["negative"] == "blue" and loaded.info["samples"] == 48
    assert loaded.space == pipeline.space.to_dict()
    loaded.check(pipeline.generator)  # same generator and space: accepted


def test_direction_for_another_space_or_generator_is_refused(pipeline, red_minus_blue, tmp_path):
    import latentmap

    path = save_direction(tmp_path / "red.safetensors", red_minus_blue)
    w_space = latentmap.get_generator("colour-test", space="w")
    with pytest.raises(LatentmapError, match=r"made for space 'w3'.*uses space 'w'"):
        load_direction(path).check(w_space)
    foreign = Direction(vector=red_minus_blue.vector, generator={"name": "stylegan2-ffhq"},
                        space=red_minus_blue.space, info={"file": "ffhq-smile.safetensors"})
    with pytest.raises(LatentmapError, match=r"ffhq-smile.safetensors was made for generator 'stylegan2-ffhq', "
                                             r"not 'colour-test'"):
        foreign.check(pipeline.generator)


@pytest.mark.parametrize("shape", [(4,), (1, 4), (4, 4)])
def test_interfacegan_npy_directions_load_and_apply(pipeline, tmp_path, shape):
    array = np.zeros(shape, dtype=np.float32)
    array[..., 0] = 1.0
    np.save(tmp_path / "boundary.npy", array)
    direction = load_direction(tmp_path / "boundary.npy")
    direction.check(pipeline.generator)  # shape-only check for foreign files
    per_layer = direction.per_layer(pipeline.space)
    assert per_layer.shape == (4, 4) and torch.equal(per_layer[:, 0], torch.ones(4))


def test_foreign_files_never_unpickle(tmp_path):
    np.save(tmp_path / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LatentmapError, match="object.npy.*not a plain numeric"):
        load_direction(tmp_path / "object.npy")

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(Payload(), handle)
    with pytest.raises(LatentmapError, match="evil.pt.*cannot be loaded safely"):
        load_direction(tmp_path / "evil.pt")
    torch.save({"direction": torch.ones(1, 4)}, tmp_path / "ok.pt")
    assert load_direction(tmp_path / "ok.pt").vector.shape == (1, 4)
    with pytest.raises(LatentmapError, match="wrong-shape.npy.*has shape"):
        np.save(tmp_path / "wrong-shape.npy", np.zeros((2, 4), dtype=np.float32))
        direction = load_direction(tmp_path / "wrong-shape.npy")
        direction.check(__import__("latentmap").get_generator("colour-test", space="w3"))


# -- command line --------------------------------------------------------------------------------
def test_cli_directions_then_edit(pipeline, tmp_path):
    runner = CliRunner()
    direction = tmp_path / "red.safetensors"
    result = runner.invoke(cli, ["directions", "--checkpoint", pipeline.checkpoint, "red", "blue", "--samples", "16",
                                 "--out", str(direction)])
    assert result.exit_code == 0, result.output
    assert load_direction(direction).info["samples"] == 16
    out = tmp_path / "edits"
    result = runner.invoke(cli, ["edit", "--checkpoint", pipeline.checkpoint, "a cyan square", "--direction",
                                 str(direction), "--strengths", "-1,0,1", "--layers", "0-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "00-red.png").is_file()
    assert len(list((out / "00-red").glob("*.png"))) == 3


def test_cli_edit_saved_latents_with_a_generator(pipeline, tmp_path):
    samples = sample(pipeline, ["yellow"], candidates=2, keep=2, progress=False)
    write_samples(samples, tmp_path / "s")
    np.save(tmp_path / "x.npy", np.ones(4, dtype=np.float32))
    result = CliRunner().invoke(cli, ["edit", "--generator", "colour-test", "--generator-option", "space=w3",
                                      "--latents", str(tmp_path / "s" / "000-yellow" / "latents.safetensors"),
                                      "--direction", str(tmp_path / "x.npy"), "--strengths", "0,1",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    zero = tmp_path / "e" / "00-x" / "00-strength+0.png"
    from latentmap.images import load_image

    assert torch.equal(load_image(zero), load_image(tmp_path / "s" / "000-yellow" / "rank-0.png"))


def test_cli_edit_bad_input_one_line_each(pipeline, red_minus_blue, tmp_path):
    runner = CliRunner()
    direction = save_direction(tmp_path / "red.safetensors", red_minus_blue)
    result = runner.invoke(cli, ["edit", "--checkpoint", pipeline.checkpoint, "red", "--direction", str(direction),
                                 "--strengths", "-1,two,1"])
    assert result.exit_code == 2 and "'two' is not a number" in result.output
    other = Direction(vector=torch.zeros(1, 4), generator={"name": "colour-test"},
                      space={"name": "w", "dim": 4, "repeats": [4]})
    save_direction(tmp_path / "w.safetensors", other)
    result = runner.invoke(cli, ["edit", "--checkpoint", pipeline.checkpoint, "red", "--direction",
                                 str(tmp_path / "w.safetensors")])
    assert result.exit_code == 2
    assert "made for space 'w'" in result.output and "'w3'" in result.output
    result = runner.invoke(cli, ["directions", "--checkpoint", pipeline.checkpoint, "red", "--out",
                                 str(tmp_path / "d.safetensors")])
    assert result.exit_code == 2 and "no negative prompt given" in result.output
    assert "Traceback" not in result.output


def test_cli_direction_from_image_sets(pipeline, tmp_path):
    from latentmap.images import save_png

    for name, rgb in (("reds", (0.8, -0.8, -0.8)), ("blues", (-0.8, -0.8, 0.8))):
        for i in range(2):
            save_png(torch.tensor(rgb)[:, None, None].expand(3, 8, 8) * (1 - 0.1 * i), tmp_path / name / f"{i}.png")
    out = tmp_path / "red-images.safetensors"
    result = CliRunner().invoke(cli, ["directions", "--checkpoint", pipeline.checkpoint, "--positive-images",
                                      str(tmp_path / "reds"), "--negative-images", str(tmp_path / "blues"),
                                      "--samples", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    from_images = load_direction(out).vector.flatten()
    from_text = discover_direction(pipeline, "red", "blue", samples=16, settings=pipeline.settings(steps=10)).vector
    # both say "more red, less blue": they point the same way
    assert torch.nn.functional.cosine_similarity(from_images, from_text.flatten(), dim=0) > 0.5


def test_direction_for_other_weights_of_the_same_generator_is_refused(pipeline, red_minus_blue):
    identity = {**pipeline.generator.identity(), "weights_sha256": "0123456789abcdef"}
    direction = Direction(vector=red_minus_blue.vector, generator=identity, space=red_minus_blue.space,
                          info={"file": "smile.safetensors"})
    # the colour world has no weights checksum: nothing to compare, accepted
    direction.check(pipeline.generator)

    class Weighted(type(pipeline.generator)):
        def identity(self):
            return {**super().identity(), "weights_sha256": "fedcba9876543210"}

    with pytest.raises(LatentmapError, match=r"smile.safetensors was made for other 'colour-test' weights"):
        direction.check(Weighted(space="w3"))


def test_cli_directions_json_and_quiet_edit(pipeline, tmp_path):
    import json

    direction = tmp_path / "red.safetensors"
    result = CliRunner().invoke(cli, ["directions", "--checkpoint", pipeline.checkpoint, "red", "blue", "--samples", "8",
                                      "--steps", "3", "--out", str(direction), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["file"] == str(direction) and direction.is_file()
    assert (document["positive"], document["negative"], document["samples"]) == ("red", "blue", 8)
    assert document["norm"] == pytest.approx(float(load_direction(direction).vector.norm()), rel=1e-6)
    assert document["space"]["name"] == "w3" and document["generator"]["name"] == "colour-test"
    assert "denoise" in result.stderr
    edited = CliRunner().invoke(cli, ["edit", "--checkpoint", pipeline.checkpoint, "red", "--direction", str(direction),
                                      "--candidates", "2", "--steps", "3", "--out", str(tmp_path / "e")])
    assert edited.exit_code == 0 and "edit" in edited.stderr  # one tick per edited latent
    quiet = CliRunner().invoke(cli, ["edit", "--checkpoint", pipeline.checkpoint, "red", "--direction", str(direction),
                                     "--candidates", "2", "--steps", "3", "--out", str(tmp_path / "q"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
