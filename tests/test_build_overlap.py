"""The overlapped build (shards written by a thread while the next is computed) equals the serial one byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import helpers_tiny
import pytest

import latentmap
from latentmap.data import builder
from latentmap.data.builder import BuildConfig, build_dataset


@pytest.fixture(autouse=True)
def tiny_plugin():
    helpers_tiny.ensure_registered()
    with helpers_tiny.single_thread():
        yield


def build(out: Path, **options) -> object:
    generator, encoder = latentmap.get_generator("tiny-test", space="w3"), latentmap.get_encoder("tiny-test")
    return build_dataset(generator, encoder, BuildConfig(out=out, samples=230, shard_size=50, batch_size=16,
                                                         progress=False, **options))


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a dataset folder; the manifest without its 'build' entry (time, host)."""
    files = {path.name: path.read_bytes() for path in sorted(root.iterdir()) if path.name != "manifest.json"}
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("build")
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def test_overlapped_equals_serial(tmp_path):
    build(tmp_path / "serial", overlap=False)
    build(tmp_path / "overlapped", overlap=True)
    serial, overlapped = folder_bytes(tmp_path / "serial"), folder_bytes(tmp_path / "overlapped")
    assert sorted(serial) == ["manifest.json"] + [f"shard-{i:05d}.safetensors" for i in range(5)]
    assert serial == overlapped


def test_an_interrupted_overlapped_build_resumes_to_the_serial_bytes(tmp_path, monkeypatch):
    build(tmp_path / "serial", overlap=False)
    real = builder._compute_shard

    def failing(generator, encoder, index, *args):
        if index == 3:
            raise KeyboardInterrupt  # Ctrl-C while shard 3 is computed; shards 0-2 are in the writer's hands
        return real(generator, encoder, index, *args)

    monkeypatch.setattr(builder, "_compute_shard", failing)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "resumed", overlap=True)
    written = sorted(p.name for p in (tmp_path / "resumed").glob("shard-*.safetensors"))
    assert written == [f"shard-{i:05d}.safetensors" for i in range(3)]  # the computed shards were still written
    monkeypatch.setattr(builder, "_compute_shard", real)
    summary = build(tmp_path / "resumed", overlap=True)
    assert summary.reused_shards == 3 and summary.built_shards == 2
    assert folder_bytes(tmp_path / "resumed") == folder_bytes(tmp_path / "serial")
