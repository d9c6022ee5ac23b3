"""Procedural toy objects: a tiny grammar with exact attribute labels.

An object is a *body* primitive (sphere, box, cylinder, cone, torus, capsule) with a colour, a size and an aspect
(height / width), and optionally a smaller *part* of another colour placed on top of it or attached to its left or
right side. Objects live in a CANONICAL orientation (no random yaw) in MVDream's z-up world: the front view
(`get_camera(.., azimuth_start=0)`, looking from −y) sees +x on the image's right. They are deliberately not
rotationally symmetric: boxes are deeper than wide (depth 0.7·width), the torus stands upright facing the front
camera, side parts sit on ±x and top parts on flat tops are shifted towards +x. So the four MVDream views of an
object differ, and the camera tells a model something (a random yaw made every SDS result rotationally symmetric in
the feasibility study).

Every attribute is continuous underneath a word: hue in degrees (the colour word is the nearest palette hue), size
in [SIZE_MIN, SIZE_MAX] (words small / medium / large by thirds), aspect in a per-shape range (words short / tall by
thirds). `interpolate_specs` moves between two objects continuously (hue along the shorter arc), so a model can be
trained on interpolated text embeddings paired with interpolated attributes.

Geometry (world units; the renderer's camera framing in `render.py` fits every object this grammar makes):
body half-width w = 0.5·size; half-height h = w·aspect; part half-size = w·part_scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple, Union

import numpy as np

from dreamdist3d.toyworld.vocabulary import (  # noqa: F401 (re-exported: objects.X still works)
    ASPECT_RANGE,
    ASPECT_SYNONYMS,
    ASPECT_WORDS,
    BOX_DEPTH,
    CAPSULE_RADIUS,
    COLOUR_SYNONYMS,
    COLOURS,
    COOL_COLOURS,
    HUE_JITTER,
    PALETTE,
    PART_SCALE_RANGE,
    PART_SHAPES,
    PLACEMENTS,
    PREFIXES,
    SATURATION_RANGE,
    SHAPE_SYNONYMS,
    SHAPES,
    SIZE_MAX,
    SIZE_MIN,
    SIZE_SYNONYMS,
    SIZE_WORDS,
    TOP_SHIFT,
    TORUS_TUBE,
    VALUE_RANGE,
    WARM_COLOURS,
    aspect_word,
    hsv_to_rgb,
    hue_blend,
    hue_distance,
    mix_hue,
    nearest_colour,
    size_word,
)


# ----------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class PartSpec:
    """The optional second part: a small primitive of another colour on top of the body or beside it."""

    shape: str  # one of PART_SHAPES
    hue: float  # degrees
    placement: str  # "top" | "left" | "right" (left/right as seen from the front camera: -x / +x)
    scale: float = 0.4  # part half-size / body half-width
    saturation: float = 0.75
    value: float = 0.9

    @property
    def colour(self) -> str:
        return nearest_colour(self.hue)

    @property
    def rgb(self) -> Tuple[float, float, float]:
        return hsv_to_rgb(self.hue, self.saturation, self.value)

    def __post_init__(self):
        if self.shape not in PART_SHAPES:
            raise ValueError(f"part shape must be one of {PART_SHAPES}, got {self.shape!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"part placement must be one of {PLACEMENTS}, got {self.placement!r}")


@dataclass(frozen=True)
class ObjectSpec:
    """Exact attributes of one toy object. `colour`, `size_word`, `aspect_word` are derived from the numbers."""

    shape: str  # one of SHAPES
    hue: float  # degrees in [0, 360)
    size: float  # in [SIZE_MIN, SIZE_MAX]
    aspect: float = 1.0  # half-height / half-width (ASPECT_RANGE[shape])
    saturation: float = 0.75
    value: float = 0.9
    part: Optional[PartSpec] = None

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")

    # derived labels
    @property
    def colour(self) -> str:
        return nearest_colour(self.hue)

    @property
    def rgb(self) -> Tuple[float, float, float]:
        return hsv_to_rgb(self.hue, self.saturation, self.value)

    @property
    def size_word(self) -> str:
        return size_word(self.size)

    @property
    def aspect_word(self) -> str:
        return aspect_word(self.shape, self.aspect)

    @property
    def height(self) -> float:
        """Body height in world units (2·half-height)."""
        return self.size * self.aspect

    def labels(self) -> Dict[str, object]:
        """Flat dict of every label (words and numbers); part fields are None without a part."""
        p = self.part
        return {
            "shape": self.shape,
            "colour": self.colour,
            "hue": float(self.hue),
            "saturation": float(self.saturation),
            "value": float(self.value),
            "size": float(self.size),
            "size_word": self.size_word,
            "aspect": float(self.aspect),
            "aspect_word": self.aspect_word,
            "height": float(self.height),
            "part_shape": p.shape if p else None,
            "part_colour": p.colour if p else None,
            "part_hue": float(p.hue) if p else None,
            "part_placement": p.placement if p else None,
            "part_scale": float(p.scale) if p else None,
        }

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Dict[str, object]) -> "ObjectSpec":
        d = dict(d)
        part = d.pop("part", None)
        return ObjectSpec(**d, part=PartSpec(**part) if part else None)  # type: ignore[arg-type]

    def caption(self, rng: Union[None, int, np.random.Generator] = None) -> str:
        """Canonical caption when rng is None; a random paraphrase otherwise (see captions.py)."""
        from dreamdist3d.toyworld.captions import caption as _caption

        return _caption(self, rng)


# ----------------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class ObjectGrammar:
    """A distribution over objects: which shapes/colours/parts, and the ranges of the continuous attributes.

    The default is the whole toy world. Reference sets (refsets.py) narrow it. Hues are drawn as a palette colour
    plus uniform jitter of +-hue_jitter degrees."""

    shapes: Tuple[str, ...] = SHAPES
    colours: Tuple[str, ...] = COLOURS
    size_range: Tuple[float, float] = (SIZE_MIN, SIZE_MAX)
    aspect_range: Optional[Tuple[float, float]] = None  # None: the full ASPECT_RANGE of each shape (clipped to it)
    part_prob: float = 0.75
    part_shapes: Tuple[str, ...] = PART_SHAPES
    part_colours: Optional[Tuple[str, ...]] = None  # None: any palette colour other than the body's
    placements: Tuple[str, ...] = PLACEMENTS
    part_scale_range: Tuple[float, float] = PART_SCALE_RANGE
    hue_jitter: float = HUE_JITTER

    def __post_init__(self):
        for name, vals, allowed in (
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, COLOURS),
            ("part_shapes", self.part_shapes, PART_SHAPES),
            ("part_colours", self.part_colours or (), COLOURS),
            ("placements", self.placements, PLACEMENTS),
        ):
            bad = [v for v in vals if v not in allowed]
            if bad:
                raise ValueError(f"ObjectGrammar.{name}: unknown {bad}; allowed: {allowed}")
        if not self.shapes or not self.colours:
            raise ValueError("ObjectGrammar needs at least one shape and one colour")

    def shape_aspect_range(self, shape: str) -> Tuple[float, float]:
        lo, hi = ASPECT_RANGE[shape]
        if self.aspect_range is None or hi - lo < 1e-6:
            return lo, hi
        a, b = max(lo, self.aspect_range[0]), min(hi, self.aspect_range[1])
        return (a, b) if a <= b else (lo, hi)

    def sample(self, rng: Union[int, np.random.Generator]) -> ObjectSpec:
        rng = np.random.default_rng(rng)
        shape = str(rng.choice(self.shapes))
        colour = str(rng.choice(self.colours))
        hue = (PALETTE[colour] + rng.uniform(-self.hue_jitter, self.hue_jitter)) % 360.0
        size = float(rng.uniform(*self.size_range))
        lo, hi = self.shape_aspect_range(shape)
        aspect = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        sat = float(rng.uniform(*SATURATION_RANGE))
        val = float(rng.uniform(*VALUE_RANGE))
        part = None
        if rng.uniform() < self.part_prob:
            pcols = [c for c in (self.part_colours or COLOURS) if c != colour] or [c for c in COLOURS if c != colour]
            pcol = str(rng.choice(pcols))
            part = PartSpec(
                shape=str(rng.choice(self.part_shapes)),
                hue=(PALETTE[pcol] + rng.uniform(-self.hue_jitter, self.hue_jitter)) % 360.0,
                placement=str(rng.choice(self.placements)),
                scale=float(rng.uniform(*self.part_scale_range)),
                saturation=float(rng.uniform(*SATURATION_RANGE)),
                value=float(rng.uniform(*VALUE_RANGE)),
            )
        return ObjectSpec(shape=shape, hue=float(hue), size=size, aspect=aspect, saturation=sat, value=val, part=part)

    def sample_many(self, n: int, seed: int) -> list:
        rng = np.random.default_rng(seed)
        return [self.sample(rng) for _ in range(n)]


WORLD = ObjectGrammar()


def sample_objects(n: int, seed: int, grammar: ObjectGrammar = WORLD) -> list:
    """n ObjectSpecs drawn from `grammar` with a seed (deterministic)."""
    return grammar.sample_many(n, seed)


def interpolate_specs(a: ObjectSpec, b: ObjectSpec, t: float) -> ObjectSpec:
    """Continuous blend of the attributes of two objects with the same shape (and part layout, if any).

    hue along the shorter arc, size/aspect/saturation/value linearly; the part (if both have one with the same
    shape and placement) likewise. Use it to pair interpolated caption embeddings with interpolated renders."""
    if a.shape != b.shape:
        raise ValueError(f"interpolate_specs needs the same shape, got {a.shape!r} and {b.shape!r}")
    lerp = lambda x, y: (1.0 - t) * x + t * y  # noqa: E731
    part = None
    if a.part is not None and b.part is not None:
        if (a.part.shape, a.part.placement) != (b.part.shape, b.part.placement):
            raise ValueError("interpolate_specs: parts differ in shape or placement; interpolate colours only")
        part = replace(
            a.part,
            hue=mix_hue(a.part.hue, b.part.hue, t),
            scale=lerp(a.part.scale, b.part.scale),
            saturation=lerp(a.part.saturation, b.part.saturation),
            value=lerp(a.part.value, b.part.value),
        )
    elif (a.part is None) != (b.part is None):
        raise ValueError("interpolate_specs: one object has a part and the other does not")
    return ObjectSpec(
        shape=a.shape,
        hue=mix_hue(a.hue, b.hue, t),
        size=lerp(a.size, b.size),
        aspect=lerp(a.aspect, b.aspect),
        saturation=lerp(a.saturation, b.saturation),
        value=lerp(a.value, b.value),
        part=part,
    )


# ----------------------------------------------------------------------------------------------------- geometry
SHAPE_INDEX: Dict[str, int] = {s: i for i, s in enumerate(SHAPES)}


@dataclass(frozen=True)
class Primitive:
    """One SDF primitive in world space: type, centre (3,), half-extents (3,) along x/y/z, RGB albedo."""

    shape: str
    center: Tuple[float, float, float]
    half: Tuple[float, float, float]
    rgb: Tuple[float, float, float]


def body_half_extents(shape: str, size: float, aspect: float) -> Tuple[float, float, float]:
    w = 0.5 * size
    if shape == "sphere":
        return (w, w, w)
    if shape == "box":
        return (w, BOX_DEPTH * w, w * aspect)
    if shape == "torus":
        return (w, TORUS_TUBE * w, w)  # upright ring facing the front camera; y half-extent = tube radius
    if shape == "capsule":
        r = CAPSULE_RADIUS * w
        return (r, r, max(w * aspect, r))
    return (w, w, w * aspect)  # cylinder, cone


def primitives(spec: ObjectSpec) -> Tuple[Primitive, Optional[Primitive]]:
    """World-space body and optional part, shifted so the union's bounding box is centred on the origin."""
    bx, by, bz = body_half_extents(spec.shape, spec.size, spec.aspect)
    body_c = np.zeros(3)
    part_c = None
    part_h = None
    if spec.part is not None:
        p = spec.part
        s = p.scale * 0.5 * spec.size
        part_h = (s, s, s)
        if p.placement == "top":
            shift = TOP_SHIFT * bx if spec.shape in ("box", "cylinder") else 0.0
            # the cone's tip and round tops: sink the part a little so it sits on the surface
            sink = {"cone": 0.35 * s, "sphere": 0.25 * s, "capsule": 0.2 * s, "torus": 0.15 * s}.get(spec.shape, 0.0)
            part_c = np.array([shift, 0.0, bz + s - sink])
        else:
            sign = -1.0 if p.placement == "left" else 1.0
            # attach at mid-height, slightly overlapping the body's side (torus: its outer rim)
            part_c = np.array([sign * (bx + 0.85 * s), 0.0, -0.15 * bz])
    lo = body_c - np.array([bx, by, bz])
    hi = body_c + np.array([bx, by, bz])
    if part_c is not None:
        lo = np.minimum(lo, part_c - np.array(part_h))
        hi = np.maximum(hi, part_c + np.array(part_h))
    centre = 0.5 * (lo + hi)
    body = Primitive(spec.shape, tuple((body_c - centre).tolist()), (bx, by, bz), spec.rgb)
    part = None
    if part_c is not None:
        part = Primitive(spec.part.shape, tuple((part_c - centre).tolist()), part_h, spec.part.rgb)
    return body, part


def bounding_radius(spec: ObjectSpec) -> float:
    """Radius of a sphere around the origin that contains the object (corners of the half-extent boxes)."""
    r = 0.0
    for prim in primitives(spec):
        if prim is None:
            continue
        c, h = np.array(prim.center), np.array(prim.half)
        r = max(r, float(np.linalg.norm(np.abs(c) + h)))
    return r


__all__ = [
    "SHAPES",
    "PART_SHAPES",
    "PLACEMENTS",
    "PALETTE",
    "COLOURS",
    "WARM_COLOURS",
    "COOL_COLOURS",
    "SIZE_MIN",
    "SIZE_MAX",
    "ASPECT_RANGE",
    "COLOUR_SYNONYMS",
    "SHAPE_SYNONYMS",
    "SIZE_SYNONYMS",
    "ASPECT_SYNONYMS",
    "PartSpec",
    "ObjectSpec",
    "ObjectGrammar",
    "WORLD",
    "Primitive",
    "sample_objects",
    "interpolate_specs",
    "primitives",
    "bounding_radius",
    "hue_distance",
    "nearest_colour",
    "mix_hue",
    "hue_blend",
    "hsv_to_rgb",
    "size_word",
    "aspect_word",
]
