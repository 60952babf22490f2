"""Read a prompt back into the attribute classes it asks for (the inverse of the captions).

``read_prompt("top right: small blue square")`` -> ``{"size": 0, "colour": 5, "shape": 1, "position": 2}``.
Used by ``latentmap eval`` (through the generator's ``prompt_attributes``) to score samples, so it
must read every wording the caption grammar writes and the everyday ones users type: words are the
letters between any punctuation ("top-right:", "star;" read as "top", "right", "star"), synonyms and
plurals count ("gray", "huge", "upper", "stars"), and a position is a row word and/or a column word
in any order, with or without a preposition. A centre word ("middle", "center", "centered") only
says "the middle of whatever is not named", so "on the left in the middle" is the middle-left
cell, not the centre. Words outside the shapes vocabulary are ignored.
"""

from __future__ import annotations

import re

from latentmap_shapes.vocabulary import (
    BACKGROUND_WORDS,
    CENTRE_WORDS,
    COLOUR_WORDS,
    COLUMN_WORDS,
    COLUMNS,
    PARTS,
    ROW_WORDS,
    ROWS,
    SHAPE_PLURALS,
    SIZE_WORDS,
    VOCABULARY,
)

_WORD = re.compile(r"[a-z]+")

_SIZE = {word: name for name, words in SIZE_WORDS.items() for word in words}
_COLOUR = {word: name for name, words in COLOUR_WORDS.items() for word in words}
_SHAPE = {name: name for name in VOCABULARY["shape"]} | {plural: name for name, plural in SHAPE_PLURALS.items()}
_BACKGROUND = {word: name for name, words in BACKGROUND_WORDS.items() for word in words}
_ROW = {word: name for name, words in ROW_WORDS.items() for word in words}
_COLUMN = {word: name for name, words in COLUMN_WORDS.items() for word in words}
# "on black", "against a white ...": a background word after one of these names the background.
_BACKGROUND_LEADS = ("on", "against")


def prompt_words(prompt: str) -> list[str]:
    """The lower-cased words of ``prompt``: runs of letters, split at spaces and any punctuation."""
    return _WORD.findall(prompt.lower())


def read_prompt(prompt: str) -> dict[str, int]:
    """The attribute classes a prompt asks for, by index (only those it names), in caption order.

    ``read_prompt("A photograph of a big red star in the top left")`` ->
    ``{"size": 1, "colour": 0, "shape": 3, "position": 0}``. When a prompt names one attribute
    twice, the last mention wins.
    """
    words = prompt_words(prompt)
    wanted: dict[str, int] = {}
    row = column = None
    centred = False
    for i, word in enumerate(words):
        before = words[i - 1] if i > 0 else ""
        after = words[i + 1] if i + 1 < len(words) else ""
        if word in _BACKGROUND and ("background" in (before, after) or before in _BACKGROUND_LEADS):
            wanted["background"] = VOCABULARY["background"].index(_BACKGROUND[word])
        elif word in _SIZE:
            wanted["size"] = VOCABULARY["size"].index(_SIZE[word])
        elif word in _COLOUR:
            wanted["colour"] = VOCABULARY["colour"].index(_COLOUR[word])
        elif word in _SHAPE:
            wanted["shape"] = VOCABULARY["shape"].index(_SHAPE[word])
        elif word in _ROW:
            row = ROWS.index(_ROW[word])
        elif word in _COLUMN:
            column = COLUMNS.index(_COLUMN[word])
        elif word in CENTRE_WORDS:
            centred = True
    if row is not None or column is not None or centred:
        middle_row, middle_column = ROWS.index("middle"), COLUMNS.index("center")
        wanted["position"] = len(COLUMNS) * (middle_row if row is None else row) + (
            middle_column if column is None else column
        )
    return dict(sorted(wanted.items(), key=lambda item: PARTS.index(item[0])))
