"""Captions of shapes-world images: the canonical description, and varied ones for training the encoder.

``describe({"colour": "red", "shape": "circle"})`` -> ``"a red circle"``; the full description of an
image reads ``"a large red circle in the top left on a dark background"``. Training captions pick a
random subset of the parts, a random template ("a photo of ...") and random synonyms ("big" for
"large"), so the encoder learns partial descriptions and a few everyday words too.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch

from latentmap import LatentmapError
from latentmap_shapes.vocabulary import VOCABULARY

PARTS: tuple[str, ...] = ("size", "colour", "shape", "position", "background")

POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}

# How often a training caption mentions each part; shape is the hardest for the encoder to learn.
PART_PROBABILITY: dict[str, float] = {"size": 0.5, "colour": 0.6, "shape": 0.75, "position": 0.5, "background": 0.4}

TEMPLATES: tuple[str, ...] = (
    "{}", "{}", "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "a rendering of {}",
    "there is {}",
)

# Words a user may type for a class; the first is the canonical one (the class name itself).
SYNONYMS: dict[str, tuple[str, ...]] = {
    "large": ("large", "big"),
    "small": ("small", "little", "tiny"),
    "grey": ("grey", "gray"),
    "center": ("center", "centre", "middle"),
    "dark": ("dark", "black"),
    "light": ("light", "white"),
}


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
    return _compose(names, {})


def describe_batch(attributes: Mapping[str, torch.Tensor], parts: Sequence[str] = PARTS) -> list[str]:
    """Canonical captions for a batch of decoded attributes (attribute -> (B,) class indices)."""
    count = len(next(iter(attributes.values())))
    return [describe({k: int(v[i]) for k, v in attributes.items()}, parts) for i in range(count)]


def training_caption(attributes: Mapping[str, int | str], rng: random.Random) -> str:
    """A varied caption: a random non-empty subset of parts, random synonyms and a random template."""
    parts = [part for part in PARTS if rng.random() < PART_PROBABILITY[part]]
    if not parts:
        parts = [rng.choice(PARTS)]
    names = {part: _class_name(part, attributes[part]) for part in parts}
    words = {name: rng.choice(SYNONYMS[name]) for name in SYNONYMS}
    return rng.choice(TEMPLATES).format(_compose(names, words))


def _compose(names: Mapping[str, str], words: Mapping[str, str]) -> str:
    """Assemble '[article] [size] [colour] shape [position] [background]' from chosen class names."""
    def word(name: str) -> str:
        return words.get(name, name)

    adjectives = [word(names[p]) for p in ("size", "colour") if p in names]
    noun = names.get("shape", "shape")
    head = " ".join(adjectives + [noun])
    article = "an" if head[0] in "aeiou" else "a"
    phrase = [f"{article} {head}"]
    if "position" in names:
        position = POSITION_PHRASES[names["position"]]
        phrase.append(position.replace("center", word("center")))
    if "background" in names:
        phrase.append(f"on a {word(names['background'])} background")
    return " ".join(phrase)


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


def caption_words() -> list[str]:
    """Every word a caption from this module can contain (the encoder's tokenizer vocabulary)."""
    words: set[str] = set()
    for classes in VOCABULARY.values():
        for name in classes:
            words.update(name.split())
    for phrase in POSITION_PHRASES.values():
        words.update(phrase.split())
    for template in TEMPLATES:
        words.update(template.replace("{}", "").split())
    for options in SYNONYMS.values():
        words.update(options)
    words.update(["a", "an", "shape", "on", "background"])
    return sorted(words)


def read_prompt(prompt: str) -> dict[str, int]:
    """The attribute classes a prompt asks for, by index (only those it names): the inverse of :func:`describe`.

    ``read_prompt("A photograph of a big red star in the top left")`` ->
    ``{"size": 1, "colour": 0, "shape": 3, "position": 0}``. Synonyms ("gray", "centre", "black
    background") are understood; words outside the shapes vocabulary are ignored, so evaluation
    prefixes such as "A photograph of" are harmless.
    """
    words = prompt.lower().replace(",", " ").replace(".", " ").split()
    canonical = {synonym: name for name, options in SYNONYMS.items() for synonym in options}
    wanted: dict[str, int] = {}
    row = column = None
    for i, raw in enumerate(words):
        word = canonical.get(raw, raw)
        following = words[i + 1] if i + 1 < len(words) else ""
        if following == "background" and word in VOCABULARY["background"]:
            wanted["background"] = VOCABULARY["background"].index(word)
        elif word in VOCABULARY["size"]:
            wanted["size"] = VOCABULARY["size"].index(word)
        elif word in VOCABULARY["colour"]:
            wanted["colour"] = VOCABULARY["colour"].index(word)
        elif word.rstrip("s") in VOCABULARY["shape"]:
            wanted["shape"] = VOCABULARY["shape"].index(word.rstrip("s"))
        elif word in ("top", "bottom"):
            row = ("top", "center", "bottom").index(word)
        elif word in ("left", "right", "center"):
            column = ("left", "center", "right").index(word)
    if row is not None or column is not None:
        wanted["position"] = 3 * (1 if row is None else row) + (1 if column is None else column)
    return dict(sorted(wanted.items(), key=lambda item: PARTS.index(item[0])))
