"""The plugin system through real entry points and the real command line (no pluggy mocks)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "latentmap-gradients"


def make_distribution(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A folder importlib.metadata sees as an installed distribution with ``latentmap`` entry points."""
    info = root / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[latentmap]\n{lines}\n")
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def run_cli(args: list[str], pythonpath: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    if pythonpath is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "latentmap", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


@pytest.fixture(scope="module")
def example_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    source = (EXAMPLE / "latentmap_gradients.py").read_text()
    return make_distribution(root, "latentmap-gradients", {"gradients": "latentmap_gradients"},
                             {"latentmap_gradients": source})


def test_example_plugin_is_listed_and_loads_through_get_generator(example_dist: Path) -> None:
    listed = run_cli(["list", "generators"], example_dist)
    assert listed.returncode == 0, listed.stderr
    assert "gradients" in listed.stdout and "colour gradients (example plugin)" in listed.stdout

    plugins = run_cli(["plugins"], example_dist)
    line = next(l for l in plugins.stdout.splitlines() if l.startswith("gradients"))
    assert "latentmap-gradients 0.3.0" in line and "register_generators" in line and "ok" in line

    code = textwrap.dedent(
        """
        import torch, latentmap
        g = latentmap.get_generator("gradients", resolution=16)
        z = g.sample_latents(2, generator=torch.Generator().manual_seed(0))
        img = g.synthesize(z)
        print(tuple(img.shape), g.identity()["options"], round(float(img.abs().max()), 3) <= 1.0)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(example_dist))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 3, 16, 16) {'resolution': 16, 'space': 'w'} True"


def test_broken_plugin_is_reported_and_does_not_break_the_cli(tmp_path: Path, example_dist: Path) -> None:
    broken = make_distribution(
        tmp_path, "latentmap-broken", {"broken": "latentmap_broken"},
        {"latentmap_broken": "raise RuntimeError('boom at import')\n"},
    )
    path = Path(f"{broken}{os.pathsep}{example_dist}")
    plugins = run_cli(["plugins"], path)
    assert plugins.returncode == 0, plugins.stderr
    assert "broken" in plugins.stdout and "FAILED" in plugins.stdout and "boom at import" in plugins.stdout
    # other plugins still work
    listed = run_cli(["list", "generators"], path)
    assert listed.returncode == 0 and "gradients" in listed.stdout
    # asking for a missing name mentions the failed plugin
    code = "import latentmap; latentmap.get_generator('broken-thing')"
    env = dict(os.environ, PYTHONPATH=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "broken: import failed: RuntimeError: boom at import" in out.stderr


@pytest.mark.parametrize("body, reported", [
    ('raise ValueError("hook exploded")', "register_generators failed: ValueError: hook exploded"),
    # options are declared as a dataclass; the old dict of help texts is refused, naming the generator
    ('register("dicty", object, options={"resolution": "image size"})',
     "register_generators failed: TypeError: generator 'dicty': options must be a dataclass declaring them"),
])
def test_plugin_whose_hook_raises_is_reported(tmp_path: Path, body: str, reported: str) -> None:
    source = f"""
        import latentmap

        @latentmap.hookimpl
        def register_generators(register):
            {body}
    """
    root = make_distribution(tmp_path, "latentmap-badhook", {"badhook": "latentmap_badhook"},
                             {"latentmap_badhook": source})
    plugins = run_cli(["plugins"], root)
    assert plugins.returncode == 0
    assert reported in plugins.stdout


def test_two_plugins_registering_one_name_name_both(tmp_path: Path) -> None:
    source = """
        import latentmap

        @latentmap.hookimpl
        def register_generators(register):
            register("twin", object, description="a twin")
    """
    root = make_distribution(tmp_path, "latentmap-twins", {"twin_a": "twin_a", "twin_b": "twin_b"},
                             {"twin_a": source, "twin_b": source})
    result = run_cli(["list", "generators"], root)
    assert result.returncode == 2
    assert "'twin' is registered by two plugins" in result.stderr
    assert "'twin_a'" in result.stderr and "'twin_b'" in result.stderr


def test_unknown_name_lists_available_and_suggests(example_dist: Path) -> None:
    code = "import latentmap; latentmap.get_generator('gradient')"
    env = dict(os.environ, PYTHONPATH=str(example_dist))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "unknown generator 'gradient'" in out.stderr and "did you mean 'gradients'?" in out.stderr


def test_restricting_plugins_with_env_var(example_dist: Path) -> None:
    result = run_cli(["plugins"], example_dist, env={"LATENTMAP_LOAD_PLUGINS": "gradients"})
    names = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["spaces", "diffusion", "gradients"]  # the core's own always register


def test_core_components_register_whatever_the_env_var_says(example_dist: Path) -> None:
    """The example from docs/plugins.md: restricting optional plugins never loses the core's prior or spaces."""
    for listed, expected in (("priors", "diffusion"), ("spaces", "w3")):
        result = run_cli(["list", listed], example_dist, env={"LATENTMAP_LOAD_PLUGINS": "openclip,stylegan"})
        assert result.returncode == 0 and expected in result.stdout and "no " not in result.stdout


def test_unknown_option_is_named(example_dist: Path) -> None:
    code = "import latentmap; latentmap.get_generator('gradients', resolutoin=8)"
    env = dict(os.environ, PYTHONPATH=str(example_dist))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "generator 'gradients' has no option 'resolutoin' (did you mean 'resolution'?)" in out.stderr


def test_version_and_help() -> None:
    from click.testing import CliRunner

    from latentmap import __version__
    from latentmap.cli import cli

    runner = CliRunner()
    assert __version__ in runner.invoke(cli, ["--version"]).output
    helped = runner.invoke(cli, ["--help"])
    assert helped.exit_code == 0 and "plugins" in helped.output and "list" in helped.output


def test_builtin_plugins_are_entry_points() -> None:
    from importlib import metadata

    names = {ep.name for ep in metadata.entry_points(group="latentmap")}
    assert {"openclip", "stylegan", "shapes"} <= names
    assert "diffusion" not in names  # the core's prior is registered by the core itself, always


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = next(line.strip() for line in ci.splitlines() if "pytest" in line)
    assert command in readme


def test_builtin_plugins_use_only_the_public_plugin_api() -> None:
    """The built-ins come through the same door as a third party: nothing from latentmap's private modules."""
    import re

    private = []
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from latentmap\.|import latentmap\.)", line):
                private.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert private == []


def test_list_options_prints_each_components_own_declaration() -> None:
    from click.testing import CliRunner

    from latentmap.cli import cli

    priors = CliRunner().invoke(cli, ["list", "priors", "--options"])
    assert priors.exit_code == 0, priors.output
    assert "depth (int, default 12, >= 1): transformer layers" in priors.output
    assert "sampling settings:" in priors.output
    assert "sampler (str, default 'dpmpp_2m', one of ddim|ddpm|clip2latent|dpmpp_2m|heun)" in priors.output
    spaces = CliRunner().invoke(cli, ["list", "spaces", "--options"])
    assert "split (list[int] | None, default None)" in spaces.output
    plain = CliRunner().invoke(cli, ["list", "priors"])
    assert "diffusion" in plain.output and "sampling settings" not in plain.output


def test_list_json_gives_each_components_declaration() -> None:
    import json

    from click.testing import CliRunner

    from latentmap.cli import cli

    result = CliRunner().invoke(cli, ["list", "priors", "--json"])
    assert result.exit_code == 0, result.output
    priors = {entry["name"]: entry for entry in json.loads(result.stdout)}
    diffusion = priors["diffusion"]
    assert diffusion["plugin"] == "diffusion" and "diffusion prior" in diffusion["description"]
    depth = next(option for option in diffusion["options"] if option["name"] == "depth")
    assert (depth["type"], depth["default"], depth["required"]) == ("int", 12, False)
    sampler = next(setting for setting in diffusion["sampling"] if setting["name"] == "sampler")
    assert sampler["default"] == "dpmpp_2m" and "ddpm" in sampler["limits"]
    spaces = json.loads(CliRunner().invoke(cli, ["list", "spaces", "--json"]).stdout)
    assert {"w", "w3", "w+"} <= {entry["name"] for entry in spaces} and spaces[0]["sampling"] is None
