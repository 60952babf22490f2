"""Write the shapes world's prompt sets: ``shapes-tune.jsonl`` and ``shapes-heldout.jsonl``.

``python bench/prompts/make_prompt_sets.py`` (seeded; the outputs are committed next to this file).

Each line is ``{"prompt": ..., "attributes": {"colour": "red", "shape": "star", ...}, "group": ...}``
with the class names of :func:`latentmap_shapes.attribute_names`, so a sample is scored against the
attributes written here, never against a parser's reading of the prompt.

The wordings are hand-written sentence frames, deliberately unlike the canonical caption
(``"a large red circle in the top left on a dark background"``) and unlike the templates the
shapes encoder is trained on (``latentmap_shapes.captions``): other word orders, positions with and
without prepositions, ``:`` ``;`` ``-`` ``!`` punctuation, "with"/"and"/"that" constructions,
colour/color, upper/lower, corner, centered, huge, plurals, filler words ("please", "draw", "just")
and a few words the shapes encoder does not know ("nothing else", "dead center", "something",
"any"; in the tuning set "placed", "over", "very"). The two sets share no frame and no prompt:

- ``shapes-tune``: the set a team may tune on (>= 100 prompts);
- ``shapes-heldout``: reported on, never tuned on (>= 120 prompts: 64 colour+shape prompts, every
  colour x shape pair twice; 64 prompts naming 3-5 attributes; 16 naming one or two others).

Groups: ``colour+shape`` (exactly colour and shape), ``3-5`` (three to five attributes, always
colour or shape among them), ``other`` (one or two attributes, not exactly colour+shape).
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from latentmap_shapes import COLOURS, POSITIONS, SHAPES, describe

HERE = Path(__file__).resolve().parent
GROUPS = ("colour+shape", "3-5", "other")

# ---- Words for each class, per set (each set draws its own variants; class words are shared). ----

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
COLOUR_WORDS = {name: (name,) for name in COLOURS} | {"grey": ("grey", "gray")}
BACKGROUND_WORDS = {"dark": ("dark", "black"), "light": ("light", "white")}

# A position said bare ("bottom left") — the held-out and the tuning sets use different variants.
HELDOUT_POSITIONS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left", "top-left corner", "upper left corner"),
    "top": ("top", "top middle", "upper center", "top centre"),
    "top right": ("top right", "upper right", "top-right corner", "upper right corner"),
    "left": ("left", "middle left", "left side", "center left"),
    "center": ("center", "centre", "middle", "dead center"),
    "right": ("right", "middle right", "right side", "center right"),
    "bottom left": ("bottom left", "lower left", "bottom-left corner", "lower left corner"),
    "bottom": ("bottom", "bottom middle", "lower center", "bottom centre"),
    "bottom right": ("bottom right", "lower right", "bottom-right corner", "lower right corner"),
}
TUNE_POSITIONS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left", "top left corner", "left top"),
    "top": ("top", "top center", "upper middle", "top edge"),
    "top right": ("top right", "upper right", "top right corner", "right top"),
    "left": ("left", "left middle", "left edge", "middle of the left side"),
    "center": ("center", "centre", "middle", "very middle"),
    "right": ("right", "right middle", "right edge", "middle of the right side"),
    "bottom left": ("bottom left", "lower left", "bottom left corner", "left bottom"),
    "bottom": ("bottom", "bottom center", "lower middle", "bottom edge"),
    "bottom right": ("bottom right", "lower right", "bottom right corner", "right bottom"),
}

# ---- Sentence frames. Fields: {size} {colour} {shape} {shapes} (plural) {pos} (bare position)
# {bg} (background word), {bgc} (its colour word: black, white); {a} is the article agreeing with the next word. Parts = fields present. ----

HELDOUT_COLOUR_SHAPE = (
    "{shape}, {colour}",
    "{a} {shape} in {colour}",
    "{colour} {shapes}",
    "one {colour} {shape}, please",
    "{a} {shape} coloured {colour}",
    "{A} {colour} {shape}!",
    "{a} {shape} that is {colour}",
    "{colour}: {shape}",
    "the {shape} is {colour}",
    "{a} {colour}-colored {shape}",
    "draw {a} {colour} {shape}",
    "{a} {shape}; colour {colour}",
    "{a} {shape} with {colour} color",
    "just {a} {colour} {shape}.",
    "{colour} {shape} - nothing else",
    "{shape} (the {colour} one)",
)
TUNE_COLOUR_SHAPE = (
    "{colour} {shape}",
    "an image with {a} {colour} {shape}",
    "{shape} of colour {colour}",
    "the {colour} {shape}",
    "{a} {colour} {shape} please",
    "{colour} colored {shape}",
    "show {a} {colour} {shape}",
    "{a} {shape} which is {colour}",
    "{shape} ({colour})",
    "{a} {shape} - {colour}",
)

HELDOUT_MANY = (
    "{a} {size} {colour} {shape}, {pos}",
    "{pos}: {size} {colour} {shape}",
    "{a} {size} {colour} {shape}, {pos}, {bg} background",
    "in the {pos}, {a} {colour} {shape}",
    "{colour} {shape} in the {pos} with a {bg} background",
    "{a} {shape}, {size} and {colour}, in the {pos}",
    "{bg} background with {a} {colour} {shape} at the {pos}",
    "{a} {size} {shape} in {colour}; {pos}",
    "on a {bg} background, {pos}: {a} {size} {colour} {shape}",
    "{size} {colour} {shape} on {bgc}, {pos}",
    "{A} {colour} {shape} that is {size}, {pos}.",
    "{pos} - {colour} {shape} - {bg} background",
    "{a} {size} {shape}, colour {colour}, against a {bg} background",
    "{colour} {shapes}, {pos}, on {bgc}",
    "{a} {shape} in the {pos}; {colour} and {size}",
    "{size} {shape} on a {bg} background, {pos}",
    "{a} {colour} {shape} with a {bg} background",
    "{bg} background; {size} {shape}; {pos}",
)
TUNE_MANY = (
    "{pos} {size} {colour} {shape}",
    "{size} {colour} {shape} at {pos}",
    "{a} {colour} {shape} placed {pos}, {bg} background",
    "there's {a} {size} {colour} {shape} in the {pos}",
    "{colour} {shape}, {size}, {pos}",
    "{a} {size} {shape} of colour {colour} in the {pos} on a {bg} background",
    "{pos} of the picture: {colour} {shape}",
    "{bg} background, {colour} {shape}, {pos}",
    "{a} {shape} coloured {colour} and {size}",
    "{size} {colour} {shape} over a {bg} background",
    "{colour} {size} {shape} - {pos}",
    "{shape}: {colour}, {size}, {bg} background",
)

HELDOUT_OTHER = (
    "something {colour}",
    "{a} {shape}!",
    "{a} {size} {shape}",
    "{pos}: {a} {shape}",
    "any shape, {bg} background",
    "{a} {size} one on {bgc}",
    "a {colour} thing in the {pos}",
    "{shapes} on {bgc}",
)
TUNE_OTHER = (
    "{colour} only",
    "just {a} {shape}",
    "{size} {shape}",
    "{shape} at {pos}",
    "{bg} background",
    "{colour} {size} thing",
)

SETS = {
    # name: (colour+shape frames, many-attribute frames, other frames, positions, counts, seed)
    "shapes-heldout": (HELDOUT_COLOUR_SHAPE, HELDOUT_MANY, HELDOUT_OTHER, HELDOUT_POSITIONS, (64, 64, 16), 13001),
    "shapes-tune": (TUNE_COLOUR_SHAPE, TUNE_MANY, TUNE_OTHER, TUNE_POSITIONS, (40, 48, 16), 13002),
}

FIELD_PART = {"size": "size", "colour": "colour", "shape": "shape", "shapes": "shape", "pos": "position",
              "bg": "background", "bgc": "background"}
PART_ORDER = ("size", "colour", "shape", "position", "background")
CLASSES = {"size": ("small", "large"), "colour": COLOURS, "shape": SHAPES, "position": POSITIONS,
           "background": ("dark", "light")}


def frame_parts(frame: str) -> set[str]:
    """The attributes a frame names (from its fields)."""
    fields = {name for _, name, _, _ in string.Formatter().parse(frame) if name}
    return {FIELD_PART[field] for field in fields if field in FIELD_PART}


def fill(frame: str, attributes: dict[str, str], positions: dict[str, tuple[str, ...]], rng: random.Random) -> str:
    """Write ``frame`` for ``attributes`` with randomly chosen words."""
    words = {
        "size": rng.choice(SIZE_WORDS[attributes["size"]]) if "size" in attributes else "",
        "colour": rng.choice(COLOUR_WORDS[attributes["colour"]]) if "colour" in attributes else "",
        "shape": attributes.get("shape", ""),
        "shapes": attributes.get("shape", "") + "s",
        "pos": rng.choice(positions[attributes["position"]]) if "position" in attributes else "",
        "bg": rng.choice(BACKGROUND_WORDS[attributes["background"]]) if "background" in attributes else "",
        "bgc": BACKGROUND_WORDS[attributes["background"]][1] if "background" in attributes else "",
    }
    # Articles agree with the next word: resolve {a}/{A} after the other fields are in.
    text = frame.replace("{a}", "\0a").replace("{A}", "\0A").format(**words)
    text = re.sub(r"\0([aA]) (\w)", lambda m: _article(m.group(1), m.group(2)) + " " + m.group(2), text)
    return text


def _article(case: str, next_letter: str) -> str:
    article = "an" if next_letter.lower() in "aeiou" else "a"
    return article.capitalize() if case == "A" else article


def random_attributes(parts: set[str], rng: random.Random) -> dict[str, str]:
    return {part: rng.choice(CLASSES[part]) for part in PART_ORDER if part in parts}


def make_set(name: str) -> list[dict]:
    pair_frames, many_frames, other_frames, positions, (n_pairs, n_many, n_other), seed = SETS[name]
    rng = random.Random(seed)
    cases: list[dict] = []
    # colour+shape: every pair, cycled (twice for 64), each time with another frame.
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    order = [pairs[i % len(pairs)] for i in range(n_pairs)]
    rng.shuffle(order)
    for i, (colour, shape) in enumerate(order):
        frame = pair_frames[i % len(pair_frames)]
        attributes = {"colour": colour, "shape": shape}
        cases.append(_case(fill(frame, attributes, positions, rng), attributes, "colour+shape"))
    # 3-5 attributes: each frame's parts, rotated through the frames.
    for group, frames, count in (("3-5", many_frames, n_many), ("other", other_frames, n_other)):
        for i in range(count):
            frame = frames[i % len(frames)]
            while True:  # a new draw until the prompt is not already in the set
                attributes = random_attributes(frame_parts(frame), rng)
                prompt = fill(frame, attributes, positions, rng)
                if prompt not in {case["prompt"] for case in cases}:
                    break
            cases.append(_case(prompt, attributes, group))
    return cases


def _case(prompt: str, attributes: dict[str, str], group: str) -> dict:
    return {"prompt": prompt, "attributes": dict(sorted(attributes.items(), key=lambda kv: PART_ORDER.index(kv[0]))),
            "group": group}


def check(sets: dict[str, list[dict]]) -> None:
    """The promises of the module docstring, checked before anything is written."""
    for frames in zip(*(SETS[name][:3] for name in SETS)):
        assert not set(frames[0]) & set(frames[1]), "tune and held-out frames must be disjoint"
    prompts = {name: {case["prompt"].lower() for case in cases} for name, cases in sets.items()}
    assert not prompts["shapes-tune"] & prompts["shapes-heldout"], "a prompt is in both sets"
    for name, cases in sets.items():
        assert len({case["prompt"] for case in cases}) == len(cases), f"{name} repeats a prompt"
        for case in cases:
            group, count = case["group"], len(case["attributes"])
            if group == "colour+shape":
                assert set(case["attributes"]) == {"colour", "shape"}, case
            elif group == "3-5":
                assert 3 <= count <= 5 and {"colour", "shape"} & set(case["attributes"]), case
            else:
                assert 1 <= count <= 2 and set(case["attributes"]) != {"colour", "shape"}, case
            canonical = describe(case["attributes"])
            assert case["prompt"].lower() != canonical, f"{case['prompt']!r} is the canonical caption"
    held = sets["shapes-heldout"]
    assert len(held) >= 120 and sum(c["group"] == "colour+shape" for c in held) >= 64
    assert sum(c["group"] == "3-5" for c in held) >= 48 and len(sets["shapes-tune"]) >= 100


def main() -> None:
    sets = {name: make_set(name) for name in SETS}
    check(sets)
    for name, cases in sets.items():
        path = HERE / f"{name}.jsonl"
        path.write_text("".join(json.dumps(case) + "\n" for case in cases))
        counts = {group: sum(case["group"] == group for case in cases) for group in GROUPS}
        print(f"wrote {path} ({len(cases)} prompts: {counts})")


if __name__ == "__main__":
    main()
