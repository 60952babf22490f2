"""The named attributes of the shapes world: what each class index means, and its colour.

Every attribute is a small categorical variable; the index of a class is its position in the list
below. These lists are the single source of truth for the renderer, the ground-truth decoder, the
caption writer and every evaluation that scores generated images by their known attributes.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "grey")

# RGB in [0, 1], chosen well apart and visible on both backgrounds (hence grey rather than white).
COLOUR_RGB: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.10, 0.10),  # red
    (1.00, 0.55, 0.00),  # orange
    (0.95, 0.90, 0.10),  # yellow
    (0.10, 0.70, 0.15),  # green
    (0.00, 0.80, 0.85),  # cyan
    (0.15, 0.25, 0.95),  # blue
    (0.60, 0.15, 0.80),  # purple
    (0.55, 0.55, 0.55),  # grey
)

# 3x3 grid, row-major from the top left: position index = 3 * row + column.
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)

SIZES: tuple[str, ...] = ("small", "large")

BACKGROUNDS: tuple[str, ...] = ("dark", "light")
BACKGROUND_RGB: tuple[tuple[float, float, float], ...] = (
    (0.08, 0.08, 0.10),  # dark
    (0.92, 0.92, 0.90),  # light
)

# The words that name each class, for the caption grammar (captions.py) and the prompt reader
# (reading.py); the first is the class name itself. There is no "medium": the world has two sizes.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {name: (name,) for name in COLOURS} | {"grey": ("grey", "gray")}
SHAPE_PLURALS: dict[str, str] = {name: name + "s" for name in SHAPES}
# A background is named by dark/light/black/white next to "background", or "on black" / "on white".
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {"dark": ("dark", "black"), "light": ("light", "white")}
# Positions: a row word and/or a column word; a centre word names the middle of whichever is not given.
ROW_WORDS: dict[str, tuple[str, ...]] = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
COLUMN_WORDS: dict[str, tuple[str, ...]] = {"left": ("left",), "right": ("right",)}
CENTRE_WORDS: tuple[str, ...] = ("center", "centre", "middle", "centered", "centred")

VOCABULARY: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "position": POSITIONS,
    "size": SIZES,
    "background": BACKGROUNDS,
}


# The order a caption names the attributes in (and a prompt reading lists them in).
PARTS: tuple[str, ...] = ("size", "colour", "shape", "position", "background")


def attribute_names() -> dict[str, tuple[str, ...]]:
    """Attribute -> class names, in index order: ``{"shape": ("circle", ...), "colour": ..., ...}``.

    The keys are the keys of :func:`latentmap_shapes.decode_attributes`' result.
    """
    return dict(VOCABULARY)


def class_index(attribute: str, name: str) -> int:
    """The index of class ``name`` of ``attribute`` (e.g. ``class_index("colour", "red") == 0``)."""
    from latentmap import LatentmapError

    if attribute not in VOCABULARY:
        raise LatentmapError(f"unknown shapes attribute {attribute!r}; expected one of {', '.join(VOCABULARY)}")
    names = VOCABULARY[attribute]
    if name not in names:
        raise LatentmapError(f"unknown {attribute} {name!r}; expected one of {', '.join(names)}")
    return names.index(name)
