"""The web demo's logic without a browser: validation messages, sessions, edits, downloads, the command.

The colour test world (tests/helpers_colour.py) makes images whose colour CLIP-like scores can judge,
so an edit toward "blue" must lower a "red" prompt's scores. The real page in a real browser is
tests/test_demo_browser.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import helpers_colour
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from latentmap.cli import cli
from latentmap.demo.inputs import (
    DemoInputError,
    GenerateRequest,
    Limits,
    checked_request,
    read_upload,
)
from latentmap.demo.logic import DemoApp
from latentmap.pipeline import load_pipeline

RED = helpers_colour.NAMES.index("red")
BLUE = helpers_colour.NAMES.index("blue")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    helpers_colour.ensure_registered()
    pipeline = load_pipeline(helpers_colour.colour_checkpoint(), device="cpu")
    demo = DemoApp(pipeline, downloads=tmp_path_factory.mktemp("downloads"))
    yield demo
    demo.close()


def request(prompt: str = "red", **changes) -> GenerateRequest:
    return GenerateRequest(**{"prompt": prompt, "show": 3, "candidates": 8, "steps": 10, "guidance": 1.0,
                              "truncation": 1.0, "seed": 0, **changes})


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    ({"prompt": "   "}, r"^Prompt is empty: type what to draw"),
    ({"prompt": "x" * 501}, r"^Prompt is 501 characters long; at most 500"),
    ({"candidates": 1000}, r"^Candidates must be a whole number from 1 to 64, got 1000$"),
    ({"candidates": 0}, r"^Candidates must be a whole number from 1 to 64, got 0$"),
    ({"show": 2.5}, r"^Show best must be a whole number, got 2.5$"),
    ({"steps": "ten"}, r"^Steps must be a number, got 'ten'$"),
    ({"guidance": float("nan")}, r"^Guidance must be a finite number, got nan$"),
    ({"guidance": 1e9}, r"^Guidance must be between 0 and 20, got 1e\+09$"),
    ({"truncation": -1}, r"^Truncation must be between 0 and 2, got -1$"),
    ({"seed": -5}, r"^Seed must be a whole number from 0 to 2147483647, got -5$"),
    ({"seed": None}, r"^Seed must be a number, got None$"),
])
def test_bad_values_get_one_line_naming_the_control_and_the_value(changes, message):
    with pytest.raises(DemoInputError, match=message) as caught:
        checked_request(request(**changes), Limits())
    assert "\n" not in str(caught.value)


def test_good_values_are_converted_and_show_is_capped_at_candidates():
    checked = checked_request(request(prompt="  a  blue\nstar ", show=16.0, candidates="4", steps=10.0, seed=3.0),
                              Limits())
    values = (checked.prompt, checked.show, checked.candidates, checked.steps, checked.seed)
    assert values == ("a blue star", 4, 4, 10, 3)
    assert all(isinstance(v, int) for v in (checked.show, checked.candidates, checked.steps, checked.seed))


def test_the_steps_limit_follows_the_priors_timesteps(app):
    assert app.limits.steps == (1, 100)  # the colour prior has 100 timesteps
    with pytest.raises(DemoInputError, match="Steps must be a whole number from 1 to 100, got 150"):
        app.generate(request(steps=150))


def test_uploads_that_are_not_images_are_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DemoInputError, match=r"^uploaded file 'notes.txt' is not an image \(expected PNG"):
        read_upload(text, Limits())
    wide = tmp_path / "wide.png"
    Image.new("RGB", (9000, 1)).save(wide)
    with pytest.raises(DemoInputError, match=r"'wide.png' is 9000x1 pixels; at most 8192"):
        read_upload(wide, Limits())
    with pytest.raises(DemoInputError, match="is 0.0 MB; at most 0 MB"):
        read_upload(wide, Limits(upload_bytes=10))
    with pytest.raises(DemoInputError, match="no image uploaded"):
        read_upload(None, Limits())
    grey = tmp_path / "grey.png"
    Image.new("LA", (5, 7), (100, 255)).save(grey)
    picture = read_upload(grey, Limits())
    assert picture.mode == "RGB" and picture.size == (5, 7)


# -- generating ------------------------------------------------------------------------------------
def test_generate_keeps_the_best_by_score_and_shows_the_prompted_colour(app):
    session, view = app.generate(request("red"))
    assert len(view.images) == 3 and view.scores == sorted(view.scores, reverse=True)
    assert view.captions[0] == f"#1 · CLIP {view.scores[0]:.3f}"
    colours = app.pipeline.generator.decode_attributes(session.per_layer)["colour"]
    assert colours.tolist() == [RED] * 3
    assert "'red': best 3 of 8 candidates (seed 0;" in view.status
    again, view_again = app.generate(request("red"))
    assert torch.equal(again.latents, session.latents) and view_again.scores == view.scores  # seeded


def test_download_files_are_pngs_and_safetensors_that_edit_reads(app):
    from latentmap.commands.edit import load_latents

    session, view = app.generate(request("red"))
    with zipfile.ZipFile(view.images_file) as archive:
        names = archive.namelist()
        assert names == [f"0{rank}-{score:.3f}.png" for rank, score in enumerate(view.scores, start=1)] + ["info.json"]
        for name, shown in zip(names, view.images):
            data = archive.read(name)
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
            with Image.open(io.BytesIO(data)) as png:
                assert png.format == "PNG" and png.convert("RGB").tobytes() == shown.tobytes()
        info = json.loads(archive.read("info.json"))
    assert info["prompt"] == "red" and info["seed"] == 0 and info["settings"]["steps"] == 10
    tensors = load_file(str(view.latents_file))
    assert set(tensors) == {"latents", "per_layer", "scores"}
    assert torch.equal(tensors["per_layer"], session.per_layer)
    assert tensors["scores"].tolist() == pytest.approx(view.scores)
    with safe_open(str(view.latents_file), framework="pt") as handle:
        assert json.loads(handle.metadata()["latentmap"])["prompt"] == "red"
    assert torch.equal(load_latents(str(view.latents_file), app.pipeline.space), session.per_layer)


def test_an_image_prompt_gives_variations_scored_by_similarity(app):
    red = Image.new("RGB", (40, 30), (230, 20, 20))
    session, view = app.generate(request(prompt=""), image=red, image_name="red.png")
    assert session.kind == "image" and view.captions[0].startswith("#1 · similarity ")
    assert view.status.startswith("image variations of 'red.png': best 3 of 8")
    assert app.pipeline.generator.decode_attributes(session.per_layer)["colour"].tolist() == [RED] * 3
    assert min(view.scores) > 0.9


# -- sessions and edits ----------------------------------------------------------------------------
def test_two_sessions_never_mix(app):
    first, first_view = app.generate(request("red"))
    kept = first.latents.clone()
    second, second_view = app.generate(request("blue", seed=1))
    assert first.id != second.id and first_view.images_file.parent != second_view.images_file.parent
    assert torch.equal(first.latents, kept)  # the first tab's state is untouched
    second, _ = app.discover(second, "blue", "red", strength=0.0)
    assert first.direction is None  # a direction is per tab
    with pytest.raises(DemoInputError, match="no edit direction yet"):
        app.set_strength(first, 1.0)
    generator = app.pipeline.generator
    assert generator.decode_attributes(first.per_layer)["colour"].tolist() == [RED] * 3
    assert generator.decode_attributes(second.per_layer)["colour"].tolist() == [BLUE] * 3
    # the same session object given twice stays the same: the logic returns new sessions, it never mutates
    edited, _ = app.set_strength(second, 2.0)
    assert second.strength == 0.0 and edited.strength == 2.0 and edited.id == second.id


def test_the_strength_slider_moves_the_current_latents_along_the_direction(app):
    session, view = app.generate(request("red"))
    session, at_zero = app.discover(session, "blue", "red", strength=0.0)
    assert at_zero.scores == pytest.approx(view.scores, abs=1e-5)  # strength 0: the images as generated
    assert [a.tobytes() for a in at_zero.images] == [b.tobytes() for b in view.images]
    edited, towards_blue = app.set_strength(session, 2.0)
    moved = app.edited_per_layer(edited)
    assert not torch.allclose(moved, session.per_layer)
    expected = session.per_layer + 2.0 * session.direction.per_layer(app.pipeline.space)
    assert torch.allclose(moved, expected)
    assert max(towards_blue.scores) < min(view.scores) - 0.3  # red scores fall as the images turn blue
    assert app.pipeline.generator.decode_attributes(moved)["colour"].tolist() == [BLUE] * 3
    assert towards_blue.status == "edit 'blue' - 'red' at strength +2"
    assert torch.equal(load_file(str(towards_blue.latents_file))["per_layer"], moved)
    assert towards_blue.latents_file.name == "red-seed0-edit+2-latents.safetensors"
    # a new prompt in the same tab keeps the direction and applies the current strength
    regenerated, view_blue = app.generate(request("green"), session=edited, strength=-1.0)
    assert regenerated.direction is session.direction and regenerated.strength == -1.0
    assert "edited along 'blue' - 'red' at strength -1" in view_blue.status


def test_edit_actions_refuse_bad_input_in_one_line(app):
    with pytest.raises(DemoInputError, match="nothing to edit yet: generate images first"):
        app.set_strength(None, 1.0)
    session, _ = app.generate(request("red"))
    with pytest.raises(DemoInputError, match=r"^Positive prompt is empty"):
        app.discover(session, "", "red")
    with pytest.raises(DemoInputError, match="Positive and negative prompts are the same"):
        app.discover(session, "red", " red ")
    session, _ = app.discover(session, "blue", "red")
    with pytest.raises(DemoInputError, match=r"^Edit strength must be between -10 and 10, got 100$"):
        app.set_strength(session, 100)
    fresh, nothing = app.discover(None, "blue", "red")
    assert nothing is None and fresh.direction is not None and not fresh.has_images


# -- the page and the command ----------------------------------------------------------------------
def test_errors_reach_the_page_as_one_line_never_a_traceback():
    import gradio as gr

    from latentmap.demo.layout import _guarded

    @_guarded
    def bad_input():
        raise DemoInputError("Prompt is empty: <b>type</b>")

    @_guarded
    def bug():
        raise ValueError("lost\nsecond line")

    with pytest.raises(gr.Error) as caught:
        bad_input()
    assert caught.value.message == "Prompt is empty: &lt;b&gt;type&lt;/b&gt;"  # shown as text, not HTML
    with pytest.raises(gr.Error) as caught:
        bug()
    assert caught.value.message == "internal error: ValueError: lost"


def test_the_page_builds_with_every_control(app):
    from latentmap.demo.layout import build_page

    page = build_page(app)
    ids = {block.elem_id for block in page.blocks.values() if getattr(block, "elem_id", None)}
    assert {"prompt", "generate", "show", "candidates", "steps", "guidance", "truncation", "seed", "upload",
            "generate-image", "gallery", "download-images", "download-latents", "positive", "negative",
            "discover", "strength"} <= ids


def test_the_offline_theme_names_no_web_font():
    import gradio as gr

    from latentmap.demo.offline import offline_theme

    theme = offline_theme()
    assert not [font for font in [*theme._font, *theme._font_mono] if isinstance(font, (gr.themes.GoogleFont,
                                                                                        gr.themes.LocalFont))]
    assert "googleapis" not in theme._get_theme_css() and "@import" not in theme._get_theme_css()


def test_demo_without_a_checkpoint_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: no --checkpoint given and runs/shapes/best.safetensors does not exist: make it with "
        "`latentmap run recipes/shapes.yaml` (about 6 minutes on a CPU) or pass --checkpoint FILE|hf:owner/repo/file"]


def test_demo_without_gradio_says_how_to_install_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    result = CliRunner().invoke(cli, ["demo", "--checkpoint", "whatever.safetensors"])
    assert result.exit_code == 2
    assert result.output.strip() == ('Error: the web demo needs Gradio, which is not installed: '
                                     'pip install "latentmap[demo]"')


def test_demo_help_imports_neither_gradio_nor_torch():
    code = ("import sys; from click.testing import CliRunner; from latentmap.cli import cli; "
            "out = CliRunner().invoke(cli, ['demo', '--help']).output; assert '--port' in out, out; "
            "print('gradio' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch):
    from latentmap.demo.offline import OFFLINE_ENVIRONMENT

    for name in [*OFFLINE_ENVIRONMENT, "NO_PROXY", "no_proxy"]:  # the command sets them: put them back after
        monkeypatch.setenv(name, "")
    result = CliRunner().invoke(cli, ["demo", "--checkpoint", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 2 and "missing.safetensors' does not exist" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert isinstance(result.exception, SystemExit)


def test_the_readme_test_command_sets_up_the_browser_and_ci_runs_exactly_it():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    command = 'pip install -e ".[dev]" && bash scripts/setup-browser.sh && python -m pytest'
    assert f"```bash\n{command}\n```" in (repo / "README.md").read_text()
    assert (repo / ".ci" / "run").read_text().strip().splitlines()[-1] == command
    assert (repo / "scripts" / "setup-browser.sh").is_file()


def test_the_demo_uses_the_threads_its_checkpoint_trained_with_unless_told(monkeypatch):
    from types import SimpleNamespace

    from latentmap.commands.demo import use_threads

    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    use_threads(SimpleNamespace(metadata={"recipe": {"train": {"threads": 1}}}), None)
    use_threads(SimpleNamespace(metadata={"recipe": {"train": {"threads": 1}}}), 3)
    use_threads(SimpleNamespace(metadata={}), None)  # no recipe: torch's default, untouched
    use_threads(SimpleNamespace(metadata={"recipe": {"train": {"threads": 1}}}), 0)
    assert chosen == [1, 3]
