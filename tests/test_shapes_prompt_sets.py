"""The shapes prompt sets (bench/prompts): sizes, groups, valid truth, and tune and held-out kept apart."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from latentmap.errors import LatentmapError

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from prompt_sets import load_prompt_set


def test_the_sets_have_the_promised_sizes_and_groups():
    held, tune = load_prompt_set("shapes-heldout"), load_prompt_set("shapes-tune")
    assert len(held) >= 120 and len(tune) >= 100
    assert sum(case.group == "colour+shape" for case in held) >= 64
    assert sum(case.group == "3-5" and 3 <= len(case.truth) <= 5 for case in held) >= 48
    pairs = {(case.attributes["colour"], case.attributes["shape"]) for case in held if case.group == "colour+shape"}
    assert len(pairs) == 32  # every colour with every shape
    assert not {c.prompt.lower() for c in held} & {c.prompt.lower() for c in tune}


def test_truth_is_class_indices_and_bad_files_are_one_line_errors(tmp_path):
    from latentmap_shapes import VOCABULARY

    for case in load_prompt_set("shapes-tune") + load_prompt_set("shapes-heldout"):
        assert {name: VOCABULARY[name][index] for name, index in case.truth.items()} == case.attributes
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a mauve star", "attributes": {"colour": "mauve"}}\n')
    with pytest.raises(LatentmapError, match="mauve"):
        load_prompt_set(str(bad))
    with pytest.raises(LatentmapError, match="shapes-heldout"):
        load_prompt_set("no-such-set")
