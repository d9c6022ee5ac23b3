"""The toy world's words and colours: shapes, placements, the colour palette (hues), size/aspect words and their
synonyms, hue arithmetic. The bottom of toyworld: objects.py and captions.py both build on it."""

from __future__ import annotations

import colorsys
from typing import Dict, Tuple

# ----------------------------------------------------------------------------------------------------- vocabulary
SHAPES: Tuple[str, ...] = ("sphere", "box", "cylinder", "cone", "torus", "capsule")
PART_SHAPES: Tuple[str, ...] = ("sphere", "box", "cylinder", "cone")
PLACEMENTS: Tuple[str, ...] = ("top", "left", "right")

# Named colours: HSV hue in degrees. Neighbouring hues are >= 28 degrees apart and the jitter is +-HUE_JITTER, so a
# jittered hue is always nearest to its own name.
PALETTE: Dict[str, float] = {
    "red": 0.0,
    "orange": 30.0,
    "yellow": 58.0,
    "green": 120.0,
    "teal": 178.0,
    "blue": 222.0,
    "purple": 275.0,
    "pink": 325.0,
}
COLOURS: Tuple[str, ...] = tuple(PALETTE)
HUE_JITTER = 7.0
SATURATION_RANGE = (0.62, 0.85)
VALUE_RANGE = (0.80, 0.95)

WARM_COLOURS: Tuple[str, ...] = ("red", "orange", "yellow", "pink")
COOL_COLOURS: Tuple[str, ...] = ("green", "teal", "blue", "purple")

SIZE_MIN, SIZE_MAX = 0.65, 1.0
SIZE_WORDS: Tuple[str, ...] = ("small", "medium", "large")

# Aspect = body half-height / half-width. Sphere and torus keep 1.
ASPECT_RANGE: Dict[str, Tuple[float, float]] = {
    "sphere": (1.0, 1.0),
    "box": (0.6, 1.4),
    "cylinder": (0.6, 1.4),
    "cone": (0.8, 1.4),
    "torus": (1.0, 1.0),
    "capsule": (1.0, 1.5),
}
ASPECT_WORDS: Tuple[str, ...] = ("short", "", "tall")
PART_SCALE_RANGE = (0.35, 0.45)
BOX_DEPTH = 0.7  # box half-depth / half-width: boxes look different from the front and from the side
TORUS_TUBE = 0.38  # tube radius / outer radius of the upright torus
CAPSULE_RADIUS = 0.65  # capsule radius / body half-width (so capsules are always taller than wide)
TOP_SHIFT = 0.3  # a part on a flat top sits this fraction of the half-width towards +x

# Paraphrase vocabulary (the first entry of each list is the canonical word).
COLOUR_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry red"),
    "orange": ("orange", "tangerine", "amber", "bright orange"),
    "yellow": ("yellow", "golden", "lemon yellow", "mustard"),
    "green": ("green", "emerald", "grass green", "leafy green"),
    "teal": ("teal", "turquoise", "cyan", "aqua"),
    "blue": ("blue", "navy", "cobalt", "azure"),
    "purple": ("purple", "violet", "indigo", "plum"),
    "pink": ("pink", "magenta", "rose", "hot pink"),
}
SHAPE_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "sphere": ("sphere", "ball", "orb"),
    "box": ("box", "block", "cube", "crate"),
    "cylinder": ("cylinder", "drum", "can", "tube"),
    "cone": ("cone", "spike", "pointed cone"),
    "torus": ("torus", "ring", "donut", "doughnut"),
    "capsule": ("capsule", "pill", "lozenge"),
}
SIZE_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "small": ("small", "tiny", "little", "miniature"),
    "medium": ("", "medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge", "giant"),
}
ASPECT_SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "short": ("short", "squat", "stubby", "flat"),
    "": ("",),
    "tall": ("tall", "elongated", "high", "towering"),
}
PREFIXES: Tuple[str, ...] = ("", "", "", "a 3d render of ", "a toy ", "a picture of ", "a 3d model of ")


# ----------------------------------------------------------------------------------------------------- colours
def hue_distance(a: float, b: float) -> float:
    """Circular distance between two hues in degrees, in [0, 180]."""
    d = abs((a - b) % 360.0)
    return min(d, 360.0 - d)


def nearest_colour(hue: float) -> str:
    """Palette name whose hue is nearest (circularly) to `hue` degrees."""
    return min(COLOURS, key=lambda n: hue_distance(hue, PALETTE[n]))


def mix_hue(a: float, b: float, t: float) -> float:
    """Hue between a and b (degrees), t in [0,1], along the shorter arc."""
    d = ((b - a + 180.0) % 360.0) - 180.0
    return (a + t * d) % 360.0


def hue_blend(hue: float) -> Tuple[str, str, float]:
    """(a, b, t): the palette colours on either side of `hue` and how far (0..1) it lies from a towards b.

    For training on interpolated text: embed "a" and "b" and mix their token embeddings with weight t; the
    paired render uses `hue` itself. A palette hue gives (name, next name, 0.0)."""
    names = sorted(COLOURS, key=lambda n: PALETTE[n])
    h = hue % 360.0
    for i, a in enumerate(names):
        b = names[(i + 1) % len(names)]
        lo, span = PALETTE[a], (PALETTE[b] - PALETTE[a]) % 360.0
        off = (h - lo) % 360.0
        if off < span:
            return a, b, off / span
    raise AssertionError("unreachable: the palette covers the circle")


def hsv_to_rgb(hue: float, saturation: float, value: float) -> Tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value))  # type: ignore


def size_word(size: float) -> str:
    third = (SIZE_MAX - SIZE_MIN) / 3.0
    if size < SIZE_MIN + third:
        return "small"
    if size > SIZE_MAX - third:
        return "large"
    return "medium"


def aspect_word(shape: str, aspect: float) -> str:
    lo, hi = ASPECT_RANGE[shape]
    if hi - lo < 1e-6:
        return ""
    third = (hi - lo) / 3.0
    if aspect < lo + third:
        return "short"
    if aspect > hi - third:
        return "tall"
    return ""


__all__ = ["SIZE_MIN", "SIZE_MAX", "SHAPES", "PART_SHAPES", "PLACEMENTS", "PALETTE", "COLOURS", "HUE_JITTER",
           "SATURATION_RANGE", "VALUE_RANGE", "WARM_COLOURS", "COOL_COLOURS", "SIZE_WORDS", "ASPECT_RANGE",
           "ASPECT_WORDS", "PART_SCALE_RANGE", "BOX_DEPTH", "TORUS_TUBE", "CAPSULE_RADIUS", "TOP_SHIFT",
           "COLOUR_SYNONYMS", "SHAPE_SYNONYMS", "SIZE_SYNONYMS", "ASPECT_SYNONYMS", "PREFIXES", "hue_distance",
           "nearest_colour", "mix_hue", "hue_blend", "hsv_to_rgb", "size_word", "aspect_word"]
