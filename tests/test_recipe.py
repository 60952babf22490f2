"""Recipes: the shipped files load with the paper's values; every kind of mistake is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latentmap.errors import LatentmapError
from latentmap.recipe import PACKAGED_PROMPTS, Recipe, load_recipe, read_prompts, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

MINIMAL = """
generator: {name: shapes}
encoder: {name: shapes-clip}
data: {dir: data/tiny}
train: {out: runs/tiny}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["ffhq.yaml", "ffhq-w3.yaml", "lhq.yaml"])
def test_paper_recipes_hold_the_papers_hyper_parameters(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    p, t = recipe.prior.options, recipe.train
    assert (p.dim, p.depth, p.heads, p.dim_head, p.timesteps) == (512, 12, 12, 64, 1000)
    assert (p.schedule, p.objective, p.cond_drop_prob, p.normalize_cond) == ("cosine", "x0", 0.2, False)
    assert (t.steps, t.batch_size, t.lr, t.weight_decay, t.adam_betas) == (1_000_000, 512, 1e-4, 1e-2, (0.9, 0.999))
    assert (t.ema_beta, t.ema_every, t.noise_alpha) == (0.9999, 10, 1.0)
    assert recipe.encoder.name == "openclip:ViT-B-32/openai"
    assert recipe.data.samples == 1_000_000
    assert recipe.validation.samples_per_prompt == 4 and len(read_prompts(recipe.validation.prompts)) == 16
    # relative paths resolve against the recipe's folder, not the working directory
    assert recipe.data.dir == (RECIPES / ".." / "data" / name.removesuffix(".yaml")).resolve()


def test_space_and_prompts_differ_where_the_paper_does() -> None:
    assert load_recipe(RECIPES / "ffhq-w3.yaml").generator.options.space == "w3"
    lhq = load_recipe(RECIPES / "lhq.yaml")
    assert lhq.validation.prompts.name == "landscape-val.txt"
    assert "mountain" in " ".join(read_prompts(lhq.validation.prompts)).lower()


def test_defaults_are_the_papers(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.train.lr == 1e-4 and recipe.train.ema_beta == 0.9999 and recipe.prior.options.depth == 12
    assert recipe.validation.prompts == PACKAGED_PROMPTS / "face-val.txt"
    assert recipe.sample.out == (tmp_path / "runs" / "tiny" / "samples").resolve()
    assert recipe.train.out == (tmp_path / "runs" / "tiny").resolve()


def test_overrides_apply_with_types_and_cwd_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    recipe = load_recipe(
        write(tmp_path / "sub", MINIMAL),
        ["train.batch_size=128", "train.lr=3e-4", "train.adam_betas=[0.5, 0.9]",
         "generator.resolution=32", "data.dir=elsewhere", "train.ema_warmup=false"],
    )
    assert recipe.train.batch_size == 128 and recipe.train.lr == pytest.approx(3e-4)
    assert recipe.train.adam_betas == (0.5, 0.9) and recipe.train.ema_warmup is False
    assert recipe.generator.options.resolution == 32
    assert recipe.data.dir == (tmp_path / "elsewhere").resolve()  # --set paths: relative to the cwd
    assert recipe.train.out == (tmp_path / "sub" / "runs" / "tiny").resolve()  # file paths: relative to the file


def test_pyyaml_exponent_without_dot_is_read_as_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-4 as the string "1e-4"; a recipe writer means a number.
    recipe = load_recipe(write(tmp_path, MINIMAL + "prior: {cond_drop_prob: 2e-1}\n"))
    assert recipe.prior.options.cond_drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize(
    "extra, overrides, expected",
    [
        ("train: {out: r, bach_size: 3}", [], "unknown key 'train.bach_size' (did you mean train.batch_size?)"),
        ("trian: {steps: 3}", [], "unknown key 'trian' (did you mean train?)"),
        ("train: {out: r, steps: many}", [], "train.steps must be an integer, got 'many'"),
        ("train: {out: r, lr: fast}", [], "train.lr must be a number, got 'fast'"),
        ("train: {out: r, ema_warmup: 1}", [], "train.ema_warmup must be true or false, got 1"),
        ("train: {out: r, adam_betas: [0.9]}", [], "train.adam_betas must be a list of 2 values"),
        ("train: {out: r, ema_beta: 1.0}", [], "train.ema_beta must be < 1.0"),
        ("train: {out: r, steps: 0}", [], "train.steps must be >= 1, got 0"),
        ("prior: {schedule: quadratic}", [], "prior 'diffusion' option 'schedule' must be one of cosine, linear; got 'quadratic'"),
        ("prior: {name: diffusion, dpeth: 3}", [], "prior 'diffusion' has no option 'dpeth' (did you mean 'depth'?)"),
        ("prior: {name: difusion}", [], "prior.name: unknown prior 'difusion'; available: diffusion"),
        ("sample: {sampling: {stpes: 3}}", [], "sample.sampling (prior 'diffusion') has no option 'stpes' (did you mean 'steps'?)"),
        ("", ["prior.depth=0"], "prior 'diffusion' option 'depth' must be >= 1, got 0"),
        ("validation: {prompts: nowhere.txt}", [], "validation.prompts: file not found: nowhere.txt"),
        ("", ["train.nope=1"], "--set train.nope=1: unknown key train.nope"),
        ("", ["train.steps"], "--set expects section.key=value, got 'train.steps'"),
        ("", ["train.steps=abc"], "train.steps must be an integer, got 'abc'"),
    ],
)
def test_mistakes_name_the_key_and_the_file(tmp_path: Path, extra: str, overrides: list[str], expected: str) -> None:
    text = MINIMAL if not extra.startswith("train:") else MINIMAL.replace("train: {out: runs/tiny}\n", "")
    path = write(tmp_path, text + extra + "\n")
    with pytest.raises(LatentmapError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_missing_required_key_and_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LatentmapError, match=r"r.yaml: missing required key 'data.dir'"):
        load_recipe(write(tmp_path, "generator: {name: x}\ntrain: {out: r}\n"))
    with pytest.raises(LatentmapError, match=r"bad.yaml: not valid YAML \(line 2\)"):
        load_recipe(write(tmp_path, "train:\n  a: b: c\n", "bad.yaml"))
    with pytest.raises(LatentmapError, match="recipe file not found: .*absent.yaml"):
        load_recipe(tmp_path / "absent.yaml")


def test_to_dict_round_trips_through_json(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL), ["generator.resolution=32", "sample.sampling.steps=7"])
    stored = json.loads(json.dumps(recipe.to_dict()))
    again = recipe_from_dict(stored)
    assert isinstance(again, Recipe)
    assert again == recipe
    assert yaml.safe_load(yaml.safe_dump(stored)) == stored


def test_shapes_recipe_loads() -> None:
    recipe = load_recipe(RECIPES / "shapes.yaml")
    assert recipe.generator.name == "shapes"
    assert recipe.train.steps * recipe.train.batch_size <= 3_000 * 512  # sized for a 2-core CPU


def test_a_recipe_in_the_old_layout_still_loads_and_says_what_moved(tmp_path: Path) -> None:
    old = MINIMAL + (
        "generator: {name: shapes, options: {resolution: 32}}\n"
        "validation: {steps: 5, sampler: ddpm, guidance: 1.5}\n"
        "sample: {steps: 9, truncation: 0.8}\n"
    )
    old = old.replace("generator: {name: shapes}\n", "", 1)
    with pytest.warns(UserWarning, match=r"old layout.*generator\.options\.\* -> generator\.\*.*"
                                         r"validation\.\{steps,sampler,guidance\} -> validation\.sampling\.\*"):
        recipe = load_recipe(write(tmp_path, old))
    assert recipe.generator.options.resolution == 32
    assert (recipe.validation.sampling.steps, recipe.validation.sampling.sampler) == (5, "ddpm")
    assert recipe.validation.sampling.guidance == 1.5
    assert (recipe.sample.sampling.steps, recipe.sample.truncation) == (9, 0.8)


def test_a_third_party_priors_section_is_its_own(tmp_path: Path) -> None:
    """Options of the diffusion prior are not forced on another prior: each section is its component's."""
    with pytest.raises(LatentmapError, match=r"prior 'diffusion' has no option 'hidden'"):
        load_recipe(write(tmp_path, MINIMAL + "prior: {name: diffusion, hidden: 3}\n"))


def test_the_recipe_reference_in_the_docs_is_generated_from_the_declarations() -> None:
    """docs/recipes.md's tables come from the dataclasses; a new or changed option must be regenerated."""
    from latentmap.reference import reference_markdown, replace_generated

    docs = RECIPES.parent / "docs" / "recipes.md"
    text = docs.read_text()
    assert replace_generated(text, reference_markdown()) == text, (
        "docs/recipes.md is out of date: run python -m latentmap.reference --write docs/recipes.md")
    assert "| `normalize_cond` | bool | `false` |" in text and "| `sampler` | str | `dpmpp_2m` | one of ddim\\|ddpm" in text


def test_files_that_are_not_utf8_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("generator: {name: shapes}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(LatentmapError, match=r"recipe .*latin1.yaml is not UTF-8 text"):
        load_recipe(bad)
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a caf\xe9\n".encode("latin-1"))
    with pytest.raises(LatentmapError, match=r"prompts file .*prompts.txt is not UTF-8 text"):
        read_prompts(prompts)


def test_validation_prompts_take_a_list_as_well_as_a_file(tmp_path: Path) -> None:
    listed = load_recipe(write(tmp_path, MINIMAL + "validation: {prompts: [a red circle, '  ', a blue star]}\n"))
    assert read_prompts(listed.validation.prompts) == ["a red circle", "a blue star"]
    assert recipe_from_dict(json.loads(json.dumps(listed.to_dict()))) == listed
    (tmp_path / "mine.txt").write_text("a green square\n")
    filed = load_recipe(write(tmp_path, MINIMAL + "validation: {prompts: mine.txt}\n"))
    assert filed.validation.prompts == tmp_path / "mine.txt" and read_prompts(filed.validation.prompts) == ["a green square"]
    overridden = load_recipe(write(tmp_path, MINIMAL), ["validation.prompts=[a yellow star]"])
    assert read_prompts(overridden.validation.prompts) == ["a yellow star"]
    with pytest.raises(LatentmapError, match=r"validation\.prompts\[1\] must be a non-empty string, got 3"):
        load_recipe(write(tmp_path, MINIMAL + "validation: {prompts: [a red circle, 3]}\n"))
    with pytest.raises(LatentmapError, match="empty list of prompts"):
        read_prompts(load_recipe(write(tmp_path, MINIMAL + "validation: {prompts: []}\n")).validation.prompts)


def test_component_file_options_resolve_against_the_recipe_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prior.teacher (declared path="file") found beside the recipe becomes absolute; a value naming no file
    there is kept as written (read against the working directory by the component), and --set stays cwd-relative."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "teacher.safetensors").write_bytes(b"")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = MINIMAL + "prior: {name: flow, teacher: teacher.safetensors}\n"
    recipe = load_recipe(write(folder, text))
    assert recipe.prior.options.teacher == str((folder / "teacher.safetensors").resolve())
    missing = load_recipe(write(folder, text.replace("teacher.safetensors}", "runs/t.safetensors}"), "m.yaml"))
    assert missing.prior.options.teacher == "runs/t.safetensors"
    overridden = load_recipe(folder / "r.yaml", ["prior.teacher=teacher.safetensors"])
    assert overridden.prior.options.teacher == "teacher.safetensors"
