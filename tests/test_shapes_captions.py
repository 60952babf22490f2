"""The shapes caption grammar (what the tiny CLIP is trained on) and the prompt reader (what eval scores by)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from latentmap_shapes.captions import (
    BACKGROUND_STYLES,
    HEADS,
    LAYOUTS,
    POSITION_STYLES,
    UNKNOWN_FILLERS,
    caption_words,
    compose_caption,
    describe,
    training_caption,
)
from latentmap_shapes.clip_model import default_config
from latentmap_shapes.reading import prompt_words, read_prompt
from latentmap_shapes.vocabulary import VOCABULARY, class_index

REPO = Path(__file__).resolve().parents[1]


def _random_names(rng: random.Random, parts: tuple[str, ...]) -> dict[str, str]:
    return {part: rng.choice(VOCABULARY[part]) for part in parts}


def _indices(names: dict[str, str]) -> dict[str, int]:
    return {part: class_index(part, name) for part, name in names.items()}


def test_every_construction_names_exactly_its_attributes():
    """Each head, position style, background style and layout, forced, reads back as the truth it was given."""
    rng = random.Random(0)
    every_part = ("size", "colour", "shape", "position", "background")
    checked = 0
    for head, position_style, background_style, layout in itertools.product(
        HEADS, POSITION_STYLES, BACKGROUND_STYLES, LAYOUTS
    ):
        for _ in range(3):
            names = _random_names(rng, every_part)
            caption = compose_caption(
                names, rng, head=head, position_style=position_style, background_style=background_style,
                layout=layout, canonical=False,
            )
            assert read_prompt(caption.text) == _indices(names), (caption.text, caption.constructions)
            assert head in caption.constructions and f"position {position_style}" in caption.constructions
            checked += 1
    assert checked == 3 * len(HEADS) * len(POSITION_STYLES) * len(BACKGROUND_STYLES) * len(LAYOUTS)


def test_every_position_in_every_style_reads_back():
    rng = random.Random(1)
    for position, style in itertools.product(VOCABULARY["position"], POSITION_STYLES):
        for _ in range(8):
            caption = compose_caption({"shape": "star", "position": position}, rng, position_style=style,
                                      canonical=False)
            assert read_prompt(caption.text) == {"shape": 3, "position": class_index("position", position)}, caption


def test_random_training_captions_name_only_true_attributes_and_cover_the_grammar():
    rng = random.Random(2)
    seen: set[str] = set()
    vocabulary = set(caption_words())
    context = default_config()["text"]["context_length"]
    for _ in range(3000):
        truth = {part: rng.randrange(len(classes)) for part, classes in VOCABULARY.items()}
        parts = tuple(part for part in truth if rng.random() < 0.6) or ("colour",)
        caption = compose_caption({part: VOCABULARY[part][truth[part]] for part in parts}, rng)
        seen.update(caption.constructions)
        read = read_prompt(caption.text)
        assert read == {part: truth[part] for part in parts}, caption
        words = prompt_words(caption.text)
        assert set(words) - vocabulary <= set(UNKNOWN_FILLERS), caption.text
        assert len(words) <= context - 2, f"{caption.text!r} overflows the text context of {context}"
    expected = {*HEADS, *(f"position {s}" for s in POSITION_STYLES), *(f"background {s}" for s in BACKGROUND_STYLES),
                *(f"layout {s}" for s in LAYOUTS), "canonical", "unknown word"}
    assert expected <= seen, f"never drawn: {sorted(expected - seen)}"


def test_training_captions_are_reproducible_and_varied():
    truth = {"shape": 3, "colour": 0, "position": 2, "size": 0, "background": 1}
    first = [training_caption(truth, random.Random(5)) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    rng = random.Random(5)
    captions = {training_caption(truth, rng) for _ in range(300)}
    assert len(captions) > 200
    assert any(":" in c or ";" in c or " - " in c for c in captions)
    assert any(" with " in c for c in captions) and any(" and " in c for c in captions)
    assert any(word in c for c in captions for word in ("upper", "corner", "huge", "colour", "color", "stars"))


def test_vocabulary_has_the_everyday_words_and_not_the_fillers():
    words = set(caption_words())
    for word in ("with", "and", "that", "one", "colour", "color", "stars", "circles", "upper", "lower", "corner",
                 "centered", "huge", "side", "edge"):
        assert word in words, word
    assert not words & set(UNKNOWN_FILLERS)
    assert "medium" not in words  # the world has two sizes: "medium" means nothing here, so it warns


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("top right: small blue square", {"size": 0, "colour": 5, "shape": 1, "position": 2}),
        ("a red star; on a dark background", {"colour": 0, "shape": 3, "background": 0}),
        ("a big green triangle, bottom left, dark background", {"size": 1, "colour": 3, "shape": 2, "position": 6,
                                                               "background": 0}),
        ("a circle on the left in the middle", {"shape": 0, "position": 3}),
        ("in the middle, on the right!", {"position": 5}),
        ("at the top in the centre", {"position": 1}),
        ("upper-left corner: a huge star", {"size": 1, "shape": 3, "position": 0}),
        ("lower right corner", {"position": 8}),
        ("a yellow circle, centered", {"colour": 2, "shape": 0, "position": 4}),
        ("middle left", {"position": 3}),
        ("purple stars on black", {"colour": 6, "shape": 3, "background": 0}),
        ("background: white", {"background": 1}),
        ("a star that is grey!", {"colour": 7, "shape": 3}),
        ("a white star", {"shape": 3}),  # white names a background only next to "background" or after "on"
        ("a person with glasses", {}),
    ],
)
def test_read_prompt_reads_natural_wordings(prompt, expected):
    assert read_prompt(prompt) == expected


def test_read_prompt_agrees_with_the_tuning_prompt_set():
    """Every prompt of the tuning set (hand-written frames, not the grammar) reads as its stored truth."""
    lines = (REPO / "bench" / "prompts" / "shapes-tune.jsonl").read_text().splitlines()
    for line in lines:
        record = json.loads(line)
        assert read_prompt(record["prompt"]) == _indices(record["attributes"]), record


def test_describe_is_still_the_canonical_caption_and_reads_back():
    full = {"shape": 0, "colour": 0, "size": 1, "position": 0, "background": 0}
    assert describe(full) == "a large red circle in the top left on a dark background"
    assert read_prompt(describe(full)) == full
