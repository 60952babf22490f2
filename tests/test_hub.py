"""The Hugging Face Hub: ``hf:`` checkpoints from a hand-built Hub cache, one-line errors offline and when
the Hub cannot be reached (one attempt, no retries), and the folder ``export-hub`` writes.

No test touches the network: the Hub cache is laid out by hand (``models--owner--repo/refs``, ``snapshots``),
and "unreachable" is a closed port on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket

import huggingface_hub
import pytest
import yaml
from click.testing import CliRunner

import helpers_colour
from latentmap.checkpoint import read_metadata
from latentmap.cli import cli
from latentmap.errors import LatentmapError
from latentmap.hub import HubFileUnavailable, HubRef, fetch_hub_file, resolve_checkpoint, save_for_hub
from latentmap.pipeline import load_pipeline

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _colour_world(monkeypatch):
    helpers_colour.ensure_registered()
    monkeypatch.delenv("LATENTMAP_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding owner/repo at COMMIT (branch main, tag v1), offline."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--owner--repo"
    for name in ("colour.safetensors", "sub/dir/colour.safetensors"):
        target = repo / "snapshots" / COMMIT / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(helpers_colour.colour_checkpoint(), target)
    (repo / "refs").mkdir()
    for ref in ("main", "v1"):
        (repo / "refs" / ref).write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_references_parse():
    assert HubRef.parse("hf:owner/repo/colour.safetensors") == HubRef("owner/repo", "colour.safetensors")
    assert HubRef.parse("hf:owner/repo/a/b/c.safetensors@v1") == HubRef("owner/repo", "a/b/c.safetensors", "v1")
    assert str(HubRef("owner/repo", "a/c.safetensors", "refs/pr/1")) == "hf:owner/repo/a/c.safetensors@refs/pr/1"
    for bad in ("hf:owner/repo", "hf:owner//x.safetensors", "hf:owner/repo/x.safetensors@"):
        with pytest.raises(LatentmapError, match="hf:owner/repo/path/to/file.safetensors"):
            HubRef.parse(bad)


@pytest.mark.parametrize("reference", ["hf:owner/repo/colour.safetensors", "hf:owner/repo/colour.safetensors@v1",
                                       f"hf:owner/repo/colour.safetensors@{COMMIT}",
                                       "hf:owner/repo/sub/dir/colour.safetensors"])
def test_load_pipeline_from_the_hub_cache(hub_cache, reference):
    pipe = load_pipeline(reference, device="cpu")
    assert pipe.checkpoint == reference  # what reports and sample logs record
    assert resolve_checkpoint(reference).is_relative_to(hub_cache / "models--owner--repo" / "snapshots" / COMMIT)
    result = pipe("red", n=1, candidates=2, seed=0)
    assert len(result.images) == 1


def test_the_cli_takes_hub_checkpoints(hub_cache, tmp_path):
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", "hf:owner/repo/colour.safetensors", "red",
                                      "--candidates", "2", "--keep", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "samples.jsonl").exists()


def test_offline_and_not_cached_is_one_line_naming_repo_file_revision_and_cache(hub_cache):
    with pytest.raises(HubFileUnavailable) as info:
        load_pipeline("hf:owner/repo/missing.safetensors@v2")
    message = str(info.value)
    assert "\n" not in message
    for part in ("owner/repo", "missing.safetensors", "revision v2", str(hub_cache), "HF_HUB_OFFLINE",
                 "https://huggingface.co/owner/repo/resolve/v2/missing.safetensors"):
        assert part in message
    result = CliRunner().invoke(cli, ["sample", "--checkpoint", "hf:owner/other/colour.safetensors", "red"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "owner/other" in result.output


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_hub_is_tried_once_and_fails_in_one_line(tmp_path, monkeypatch, caplog):
    port = _closed_port()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    probes, downloads = [], []
    real_probe = huggingface_hub.get_hf_file_metadata
    real_download = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: probes.append(url) or real_probe(url, **kw))

    def counted_download(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            downloads.append(args)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counted_download)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubFileUnavailable) as info:
        fetch_hub_file("owner/repo", ["a.safetensors", "a.bin"], what="test weights")
    message = str(info.value)
    assert info.value.unreachable and "\n" not in message
    assert f"http://127.0.0.1:{port}/owner/repo/resolve/main/a.safetensors" in message
    assert str(tmp_path / "empty-cache") in message and "test weights" in message
    assert len(probes) == 1 and downloads == []  # the first connection error ends the attempt: no second name, no retry
    assert not [r for r in caplog.records if r.name.startswith(("huggingface_hub", "urllib3", "httpx"))
                and r.levelno >= logging.WARNING]


# ------------------------------------------------------------------------------------------- export


def _eval_report(path, generator="colour-test"):
    report = {"checkpoint": "x", "generator": {"name": generator}, "encoder": {"name": "colour-test"}, "prompts": 6,
              "prefix": None, "candidates": 8, "clip_score": 0.61234, "clip_score_reranked": 0.81234,
              "seconds_per_prompt": 0.0123, "device": "cpu", "settings": {"steps": 10}, "prompts_file": "colours.txt",
              "attribute_accuracy": {"colour": 0.5}}
    path.write_text(json.dumps(report))
    return path


def test_export_hub_writes_the_checkpoint_and_a_model_card(tmp_path):
    checkpoint = helpers_colour.colour_checkpoint()
    result = CliRunner().invoke(cli, ["export-hub", str(checkpoint), "--out", str(tmp_path / "hub"), "--repo-id",
                                      "me/colour-prior", "--eval", str(_eval_report(tmp_path / "eval.json"))])
    assert result.exit_code == 0, result.output
    assert "hf upload me/colour-prior" in result.output
    copied = tmp_path / "hub" / checkpoint.name
    assert read_metadata(copied) == read_metadata(checkpoint)
    card = (tmp_path / "hub" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "latentmap" and "colour-test" in front["tags"]
    for part in ("`colour-test`", "`w3`", "`diffusion`", "depth=2", "timesteps=100", "3-d raw encoder embeddings",
                 f"hf:me/colour-prior/{checkpoint.name}", "0.6123", "0.8123", "attribute accuracy: colour | 0.5000", "colours.txt",
                 "## Recipe", "candidates: 8", "hf upload me/colour-prior"):
        assert part in card, part


def test_export_without_figures_says_so_and_refuses_a_report_of_another_model(tmp_path):
    card = save_for_hub(helpers_colour.colour_checkpoint(), tmp_path / "hub").read_text()
    assert "No evaluation figures were given" in card and "OWNER/REPO" in card
    with pytest.raises(LatentmapError, match="made with generator 'stylegan2-ffhq'"):
        save_for_hub(helpers_colour.colour_checkpoint(), tmp_path / "hub2",
                     eval_report=_eval_report(tmp_path / "eval.json", generator="stylegan2-ffhq"))
    with pytest.raises(LatentmapError, match="no clip_score"):
        save_for_hub(helpers_colour.colour_checkpoint(), tmp_path / "hub3", eval_report={"x": 1})
