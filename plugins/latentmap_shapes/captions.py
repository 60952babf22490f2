"""Captions of shapes-world images: the canonical description, and a varied grammar for training the encoder.

``describe({"colour": "red", "shape": "circle"})`` -> ``"a red circle"``; the full description of an
image reads ``"a large red circle in the top left on a dark background"``.

``training_caption`` writes the varied captions the tiny CLIP learns to read: a random subset of
the image's attributes, said the way people say them. The head (what the shape looks like) takes
one of the :data:`HEADS` constructions ("a big red star", "a star that is red and big", "a star in
red", "star, red, big", "a star, big and red", "a red-coloured star", plurals "red stars"); the
position and the background are phrases (:data:`POSITION_STYLES`, :data:`BACKGROUND_STYLES`: "in
the top left", "top-left corner", "upper left", "on the left in the middle", "with a dark
background", "on black", ...) placed after the head or before it (:data:`LAYOUTS`: "a red star,
bottom left", "top right: small blue square", "dark background with a red star") with spaces,
commas, colons, semicolons or dashes; a frame may wrap the whole ("a photo of ...", "draw ...",
"..., please"). One caption in five is the canonical one, so the canonical wording stays learned.
A few captions carry a word the encoder does not know (:data:`UNKNOWN_FILLERS`), so it learns that
``<unk>`` says nothing about the image.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from latentmap import LatentmapError
from latentmap_shapes.reading import prompt_words, read_prompt  # noqa: F401  (read_prompt: re-exported, describe's inverse)
from latentmap_shapes.vocabulary import (
    BACKGROUND_WORDS,
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

POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}

# How often a training caption mentions each part; shape is the hardest for the encoder to learn.
PART_PROBABILITY: dict[str, float] = {"size": 0.5, "colour": 0.6, "shape": 0.75, "position": 0.5, "background": 0.4}
CANONICAL_PROBABILITY = 0.2
UNKNOWN_PROBABILITY = 0.05

# Frames around a whole caption ("{}" most often).
FRAMES: tuple[str, ...] = (
    "{}", "{}", "{}", "{}", "{}", "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}",
    "a rendering of {}", "there is {}", "draw {}", "show me {}", "{}, please", "just {}", "only {}",
    "an image with {}", "a picture showing {}",
)
ENDINGS: tuple[str, ...] = ("", "", "", "", ".", "!")

# Real words deliberately left out of the vocabulary: they read as <unk>, as any unknown word will.
UNKNOWN_FILLERS: tuple[str, ...] = ("nice", "simple", "cute", "neat", "cool", "pretty", "plain", "here")

# Nouns for a caption that does not name the shape.
SHAPELESS_NOUNS: tuple[str, ...] = ("shape", "one", "thing", "object")

HEADS: tuple[str, ...] = ("adjectives", "relative", "colour phrase", "list", "and", "coloured", "plural")
POSITION_STYLES: tuple[str, ...] = ("preposition", "bare", "corner or side", "row and column apart")
BACKGROUND_STYLES: tuple[str, ...] = ("on a", "bare", "with", "against", "on black/white", "labelled")
LAYOUTS: tuple[str, ...] = ("after", "before", "background first")
SEPARATORS: tuple[str, ...] = (" ", " ", ", ", ", ", "; ", " - ", ", ")


@dataclass(frozen=True)
class Caption:
    """A training caption and how it was built (for tests and for reading the grammar's coverage)."""

    text: str
    parts: tuple[str, ...]
    constructions: tuple[str, ...]


def describe(attributes: Mapping[str, int | str], parts: Sequence[str] = PARTS) -> str:
    """A canonical caption of the listed ``parts`` of ``attributes`` (class indices or names).

    ``describe({"shape": 0, "colour": 0, "size": 1, "position": 0, "background": 0})`` ->
    ``"a large red circle in the top left on a dark background"``; ``parts=("colour", "shape")`` ->
    ``"a red circle"``. Parts missing from ``attributes`` are left out.
    """
    names = {part: _class_name(part, attributes[part]) for part in parts if part in attributes}
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise LatentmapError(f"unknown caption part {unknown[0]!r}; expected some of {', '.join(PARTS)}")
    return _canonical(names)


def describe_batch(attributes: Mapping[str, torch.Tensor], parts: Sequence[str] = PARTS) -> list[str]:
    """Canonical captions for a batch of decoded attributes (attribute -> (B,) class indices)."""
    count = len(next(iter(attributes.values())))
    return [describe({k: int(v[i]) for k, v in attributes.items()}, parts) for i in range(count)]


def training_caption(attributes: Mapping[str, int | str], rng: random.Random) -> str:
    """A varied caption of a random non-empty subset of ``attributes`` (see the module docstring)."""
    parts = [part for part in PARTS if rng.random() < PART_PROBABILITY[part]]
    if not parts:
        parts = [rng.choice(PARTS)]
    names = {part: _class_name(part, attributes[part]) for part in parts}
    return compose_caption(names, rng).text


def compose_caption(
    names: Mapping[str, str], rng: random.Random, *, head: str | None = None, position_style: str | None = None,
    background_style: str | None = None, layout: str | None = None, canonical: bool | None = None,
) -> Caption:
    """A varied caption naming exactly ``names`` (part -> class name); constructions random unless given."""
    if canonical is None:
        canonical = rng.random() < CANONICAL_PROBABILITY
    if canonical:
        return Caption(_canonical(names), tuple(names), ("canonical",))
    head_kind = head or rng.choice(_possible_heads(names))
    head_text = _head(head_kind, names, rng)
    modifiers: list[tuple[str, str]] = []
    constructions = [head_kind]
    if "position" in names:
        style = position_style or rng.choice(POSITION_STYLES)
        modifiers.append(("position", _position_phrase(names["position"], style, rng)))
        constructions.append(f"position {style}")
    if "background" in names:
        style = background_style or rng.choice(BACKGROUND_STYLES)
        modifiers.append(("background", _background_phrase(names["background"], style, rng)))
        constructions.append(f"background {style}")
    rng.shuffle(modifiers)
    arrangement = layout or _choose_layout(modifiers, rng)
    constructions.append(f"layout {arrangement}")
    text = _arrange(head_text, modifiers, arrangement, rng)
    # A frame reads well only around a caption that starts with its head ("a photo of top left: ..." does not).
    frame = rng.choice(FRAMES) if arrangement != "before" else rng.choice(("{}", "{}", "{}, please"))
    text = frame.format(text) + rng.choice(ENDINGS)
    if rng.random() < UNKNOWN_PROBABILITY:  # at either end, so that it never splits a phrase
        filler = rng.choice(UNKNOWN_FILLERS)
        text = f"{filler} {text}" if rng.random() < 0.5 else f"{text} {filler}"
        constructions.append("unknown word")
    if rng.random() < 0.1:
        text = text[0].upper() + text[1:]
    return Caption(text, tuple(names), tuple(constructions))


def _canonical(names: Mapping[str, str]) -> str:
    """'[article] [size] [colour] shape [position] [background]', the form :func:`describe` writes."""
    adjectives = [names[p] for p in ("size", "colour") if p in names]
    phrase = [_with_article(" ".join(adjectives + [names.get("shape", "shape")]))]
    if "position" in names:
        phrase.append(POSITION_PHRASES[names["position"]])
    if "background" in names:
        phrase.append(f"on a {names['background']} background")
    return " ".join(phrase)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _possible_heads(names: Mapping[str, str]) -> tuple[str, ...]:
    """The head constructions that can say the named size, colour and shape."""
    has_colour, has_size, has_shape = "colour" in names, "size" in names, "shape" in names
    heads = ["adjectives"]
    if has_colour or has_size:
        heads += ["relative", "list"]
    if has_colour:
        heads += ["colour phrase", "coloured"]
    if has_colour and has_size:
        heads.append("and")
    if has_shape:
        heads.append("plural")
    return tuple(heads)


def _head(kind: str, names: Mapping[str, str], rng: random.Random) -> str:
    """What the shape looks like, in construction ``kind`` (see :data:`HEADS`)."""
    if kind not in _possible_heads(names):
        raise LatentmapError(f"head construction {kind!r} cannot say {sorted(names)}")
    size = rng.choice(SIZE_WORDS[names["size"]]) if "size" in names else None
    colour = rng.choice(COLOUR_WORDS[names["colour"]]) if "colour" in names else None
    noun = names["shape"] if "shape" in names else rng.choice(SHAPELESS_NOUNS)
    colour_noun = rng.choice(("colour", "color"))
    if kind == "adjectives":
        adjectives = [word for word in (size, colour) if word]
        if rng.random() < 0.2:
            adjectives.reverse()
        if not adjectives and noun == "one":
            noun = "shape"
        return _with_article(" ".join([*adjectives, noun]))
    if kind == "plural":
        adjectives = [word for word in (size, colour) if word]
        return " ".join([*adjectives, SHAPE_PLURALS[names["shape"]]])
    if kind == "relative":
        said = [word for word in (colour, size) if word]
        rng.shuffle(said)
        noun = noun if noun != "one" else "shape"
        return f"{_with_article(noun)} {rng.choice(('that is', 'which is'))} {' and '.join(said)}"
    if kind == "list":
        said = [word for word in (colour, size) if word]
        rng.shuffle(said)
        bare_noun = noun if noun != "one" else "shape"
        if rng.random() < 0.5:
            return f"{bare_noun}, {', '.join(said)}"
        return f"{bare_noun}{rng.choice((': ', ' - ', '; '))}{', '.join(said)}"
    if kind == "colour phrase":
        lead = _with_article(" ".join([w for w in (size, noun if noun != "one" else "shape") if w]))
        return rng.choice((
            f"{lead} in {colour}", f"{lead} coloured {colour}", f"{lead} colored {colour}",
            f"{lead} of {colour_noun} {colour}", f"{lead} with {colour} {colour_noun}",
            f"{lead}, {colour_noun} {colour}", f"{lead}, {colour_noun}: {colour}",
        ))
    if kind == "coloured":
        coloured = f"{colour}-{rng.choice(('coloured', 'colored'))}"
        return _with_article(" ".join([w for w in (size, coloured, noun) if w]))
    # kind == "and"
    joined = " and ".join(rng.sample([size, colour], 2))
    if rng.random() < 0.5:
        return f"{_with_article(noun if noun != 'one' else 'shape')}, {joined}"
    return _with_article(f"{joined} {noun}")


def _position_phrase(position: str, style: str, rng: random.Random) -> str:
    """A position in style ``style`` (see :data:`POSITION_STYLES`)."""
    row_name, column_name = _row_and_column(position)
    row = rng.choice(ROW_WORDS[row_name]) if row_name else None
    column = rng.choice(COLUMN_WORDS[column_name]) if column_name else None
    centre = rng.choice(("center", "centre", "middle"))
    if row is None and column is None:  # the centre cell
        return rng.choice((
            "center", "centre", "middle", "centered", "centred", "in the center", "in the centre", "in the middle",
            "at the center", "in the middle of the picture", "in the center of the image",
        )) if style != "bare" else rng.choice(("center", "centre", "middle", "centered", "centred"))
    if style == "row and column apart" and row and column:
        row_phrase, column_phrase = f"at the {row_name}", f"on the {column}"
        return " ".join(rng.sample([row_phrase, column_phrase], 2))
    if style == "row and column apart":  # an edge cell: "on the left in the middle", "at the top in the center"
        named = f"on the {column}" if column else f"at the {row_name}"
        middle = rng.choice(("in the middle", "in the center", "in the centre"))
        return " ".join(rng.sample([named, middle], 2))
    if row and column:
        bare = rng.choice((f"{row} {column}", f"{row}-{column}", f"{row} {column}", f"{column} {row_name}"))
    elif row:
        bare = rng.choice((row_name, row_name, f"{row} {centre}", f"{row_name} {centre}"))
    else:
        bare = rng.choice((column, column, f"{centre} {column}", f"{column} {centre}"))
    if style == "corner or side":
        if row and column:
            bare = f"{row} {column} corner" if rng.random() < 0.7 else f"{row}-{column} corner"
        else:
            bare = rng.choice((f"{row_name or column} side", f"{row_name or column} edge"))
        style = rng.choice(("bare", "preposition"))
    if style == "bare":
        return bare
    preposition = rng.choice(("in the", "at the", "on the")) if (row and column) else (
        rng.choice(("at the", "on the", "in the")) if row else rng.choice(("on the", "to the", "at the", "on the"))
    )
    return f"{preposition} {bare}"


def _row_and_column(position: str) -> tuple[str | None, str | None]:
    """'top left' -> ('top', 'left'); 'left' -> (None, 'left'); 'center' -> (None, None)."""
    index = VOCABULARY["position"].index(position)
    row, column = ROWS[index // len(COLUMNS)], COLUMNS[index % len(COLUMNS)]
    return (row if row in ROW_WORDS else None), (column if column in COLUMN_WORDS else None)


def _background_phrase(background: str, style: str, rng: random.Random) -> str:
    """A background in style ``style`` (see :data:`BACKGROUND_STYLES`)."""
    word = rng.choice(BACKGROUND_WORDS[background])
    if style == "on a":
        return f"on a {word} background"
    if style == "bare":
        return f"{word} background"
    if style == "with":
        return f"with a {word} background"
    if style == "against":
        return f"against a {word} background"
    if style == "on black/white":
        return f"on {BACKGROUND_WORDS[background][1]}"
    return f"background {word}" if rng.random() < 0.5 else f"background: {word}"


def _choose_layout(modifiers: list[tuple[str, str]], rng: random.Random) -> str:
    if not modifiers:
        return "after"
    choices = ["after", "after"]
    if not modifiers[0][1].startswith("with "):  # "with a dark background: a red star" reads badly
        choices.append("before")
    if any(part == "background" and phrase.endswith("background") and not phrase.startswith(("on ", "with ", "against "))
           for part, phrase in modifiers):
        choices.append("background first")
    return rng.choice(choices)


def _arrange(head: str, modifiers: list[tuple[str, str]], layout: str, rng: random.Random) -> str:
    """Put the head and its modifiers in order ``layout`` (see :data:`LAYOUTS`)."""
    if layout == "background first":
        background = next(phrase for part, phrase in modifiers if part == "background")
        rest = [phrase for part, phrase in modifiers if part != "background"]
        return " ".join([background, "with", head, *rest])
    if layout == "before" and modifiers:
        first, rest = modifiers[0][1], [phrase for _, phrase in modifiers[1:]]
        text = first + rng.choice((": ", ", ", " - ", " ")) + head
        return "".join([text, *(rng.choice(SEPARATORS) + phrase for phrase in rest)])
    return "".join([head, *(rng.choice(SEPARATORS) + phrase for _, phrase in modifiers)])


def _class_name(part: str, value: int | str) -> str:
    if part not in VOCABULARY:
        raise LatentmapError(f"unknown shapes attribute {part!r}; expected some of {', '.join(VOCABULARY)}")
    classes = VOCABULARY[part]
    if isinstance(value, str):
        if value not in classes:
            raise LatentmapError(f"unknown {part} {value!r}; expected one of {', '.join(classes)}")
        return value
    index = int(value)
    if not 0 <= index < len(classes):
        raise LatentmapError(f"{part} index {index} out of range 0..{len(classes) - 1}")
    return classes[index]


# Words the grammar writes besides the class words: articles, prepositions, frames, nouns.
STRUCTURE_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "at", "to", "with", "and", "that", "which", "is", "there", "me",
    "photo", "picture", "image", "drawing", "rendering", "showing", "draw", "show", "please", "just", "only",
    "shape", "one", "thing", "object", "colour", "color", "coloured", "colored", "background", "against",
    "corner", "side", "edge",
)


def caption_words() -> list[str]:
    """Every word a caption from this module can contain (the encoder's tokenizer vocabulary).

    :data:`UNKNOWN_FILLERS` are not among them, on purpose: they stand for words nobody taught it.
    """
    words: set[str] = set(STRUCTURE_WORDS)
    for table in (SIZE_WORDS, COLOUR_WORDS, BACKGROUND_WORDS, ROW_WORDS, COLUMN_WORDS):
        for options in table.values():
            words.update(options)
    for classes in VOCABULARY.values():
        for name in classes:
            words.update(prompt_words(name))
    words.update(SHAPE_PLURALS.values())
    words.update(("center", "centre", "middle", "centered", "centred"))
    for template in (*FRAMES, *POSITION_PHRASES.values()):
        words.update(prompt_words(template))
    return sorted(words - set(UNKNOWN_FILLERS))
