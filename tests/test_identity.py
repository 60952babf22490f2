"""One identity rule: the same weights under another path are the same encoder; other weights are not."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import latentmap
from latentmap.errors import LatentmapError
from latentmap.identity import differences, essence, require_same
from latentmap.recipe import recipe_from_dict
from latentmap.train import load_models

SHA_A, SHA_B = "a" * 64, "b" * 64


def test_where_the_weights_lie_is_not_identity():
    by_tag = {"name": "openclip:ViT-B-32/openai", "options": {"weights": None, "batch_size": 64},
              "weights": "openai", "weights_file": "open_clip_model.safetensors", "weights_sha256": SHA_A, "embed_dim": 512}
    by_path = {"name": "openclip:ViT-B-32@/elsewhere/clip.safetensors", "options": {"weights": "/elsewhere/clip.safetensors",
               "batch_size": 8}, "weights": "file", "weights_file": "clip.safetensors", "weights_sha256": SHA_A,
               "embed_dim": 512}
    assert differences("encoder", by_tag, by_path) == []
    assert essence("encoder", by_tag, with_checksum_peer=True) == essence("encoder", by_path, with_checksum_peer=True)


def test_other_weights_other_facts_and_other_names_differ():
    base = {"name": "stylegan2-ffhq", "options": {}, "weights_sha256": SHA_A, "resolution": 1024}
    assert differences("generator", base, {**base, "weights_sha256": SHA_B})[0].startswith(
        "generator weights differ: recorded weights_sha256 aaaaaaaaaaaaaaaa..., got bbbbbbbbbbbbbbbb...")
    assert differences("generator", base, {**base, "resolution": 512}) == [
        "generator resolution differs: recorded 1024, got 512"]
    assert differences("generator", base, {**base, "name": "stylegan3-lhq"}) == [
        "generator name differs: recorded 'stylegan2-ffhq', got 'stylegan3-lhq'"]
    # without checksums on both sides the full name (with the encoder's spec) decides
    assert differences("encoder", {"name": "openclip:ViT-B-32/openai"}, {"name": "openclip:ViT-L-14/openai"})


def test_only_identity_options_are_compared():
    """A declared option marked identity=False (a weights path) never differs; an identity option does."""
    shapes = {"name": "shapes", "options": {"resolution": 64, "space": None}, "resolution": 64}
    assert differences("generator", shapes, {**shapes, "options": {"resolution": 32, "space": None}}) == [
        "generator option 'resolution' differs: recorded 64, got 32"]
    clip = {"name": "shapes-clip", "options": {"weights": "/a/one.safetensors"}, "weights_sha256": SHA_A}
    assert differences("encoder", clip, {**clip, "options": {"weights": "/b/two.safetensors"}}) == []


def test_keys_one_side_lacks_and_the_old_checksum_key_are_compared_fairly():
    old = {"name": "shapes-clip", "options": {}, "weights": "shapes_clip.safetensors", "sha256": SHA_A, "embed_dim": 64}
    new = {"name": "shapes-clip", "options": {}, "weights_sha256": SHA_A, "embed_dim": 64, "added_later": 1}
    assert differences("encoder", old, new) == []
    with pytest.raises(LatentmapError, match=r"^ctx: encoder weights differ"):
        require_same("encoder", old, {**new, "weights_sha256": SHA_B}, context="ctx")


@pytest.fixture()
def shapes_clip_copies(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped shapes-clip weights under another name, and a file whose weights differ by one value."""
    import latentmap_shapes

    shipped = Path(latentmap_shapes.__file__).parent / "shapes_clip.safetensors"
    same = tmp_path / "same" / "renamed.safetensors"
    other = tmp_path / "other" / "changed.safetensors"
    for target in (same, other):
        target.parent.mkdir()
        shutil.copy(shipped.with_suffix(".json"), target.with_suffix(".json"))
    shutil.copy(shipped, same)
    tensors = load_file(shipped)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1e-3
    save_file(tensors, other)
    return same, other


def _recipe(tmp_path: Path, weights: Path) -> object:
    return recipe_from_dict({"generator": {"name": "shapes"}, "encoder": {"name": "shapes-clip", "weights": str(weights)},
                             "data": {"dir": str(tmp_path / "data")}, "train": {"out": str(tmp_path / "run")}})


def test_training_accepts_the_same_weights_under_another_path(tmp_path, shapes_clip_copies):
    same, other = shapes_clip_copies
    built_with = SimpleNamespace(generator=latentmap.get_generator("shapes").identity(),
                                 encoder=latentmap.get_encoder("shapes-clip").identity())
    generator, encoder = load_models(_recipe(tmp_path, same), built_with, torch.device("cpu"))
    assert encoder.embed_dim == 64
    with pytest.raises(LatentmapError, match=r"the encoder is not the one dataset .* was built with: "
                                             r"encoder weights differ: recorded weights_sha256 [0-9a-f]{16}\.\.\., got"):
        load_models(_recipe(tmp_path, other), built_with, torch.device("cpu"))
