"""Reference sets: small image sets drawn from attribute distributions that no single caption names.

Each `RefSet` is an `ObjectGrammar` (which shapes, colours, sizes, aspects, parts) plus a size (8-16 images), a
seed and a flag for the one set held out from tuning. Images are rendered on demand: single views (the canonical
front camera by default, or seeded random azimuths) or 4-view MVDream sets. `support` describes the set's
attribute support, and `AttributeSupport.contains(labels)` is the evaluator's in-distribution test; it accepts
exact labels (`ObjectSpec.labels()`) and attribute-reader readings (`Reading.labels()`, which may lack fields:
missing or None fields are not checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dreamdist3d.toyworld.objects import (
    COOL_COLOURS,
    HUE_JITTER,
    PALETTE,
    WARM_COLOURS,
    ObjectGrammar,
    ObjectSpec,
    hue_distance,
)
from dreamdist3d.toyworld.render import DEFAULT_ELEVATION, RenderOutput, render


# ----------------------------------------------------------------------------------------------------- support
@dataclass(frozen=True)
class AttributeSupport:
    """Where a reference set's objects live in attribute space, with tolerances for reading noise."""

    shapes: Tuple[str, ...]
    colours: Tuple[str, ...]
    size_range: Tuple[float, float]
    aspect_ranges: Dict[str, Tuple[float, float]]  # per shape
    part: str  # "required" | "forbidden" | "optional"
    part_colours: Optional[Tuple[str, ...]]  # None: any
    part_positions: Tuple[str, ...]  # subset of ("top", "side")
    hue_tol: float = HUE_JITTER + 8.0  # degrees around a palette hue of `colours`
    size_tol: float = 0.08
    aspect_tol: float = 0.15

    @staticmethod
    def from_grammar(g: ObjectGrammar) -> "AttributeSupport":
        part = "required" if g.part_prob >= 1.0 else ("forbidden" if g.part_prob <= 0.0 else "optional")
        positions = tuple(sorted({"top" if p == "top" else "side" for p in g.placements}))
        return AttributeSupport(
            shapes=tuple(g.shapes),
            colours=tuple(g.colours),
            size_range=tuple(g.size_range),  # type: ignore[arg-type]
            aspect_ranges={s: g.shape_aspect_range(s) for s in g.shapes},
            part=part,
            part_colours=tuple(g.part_colours) if g.part_colours else None,
            part_positions=positions,
        )

    def _hue_in(self, hue: float, colours: Sequence[str]) -> bool:
        return any(hue_distance(hue, PALETTE[c]) <= self.hue_tol for c in colours)

    def violations(self, labels: Mapping[str, object]) -> List[str]:
        """Reasons `labels` is outside the support (empty list: inside). None/missing fields are not checked."""
        out: List[str] = []
        get = labels.get
        shape = get("shape")
        if shape is not None and shape not in self.shapes:
            out.append(f"shape {shape} not in {self.shapes}")
        hue = get("hue")
        if hue is not None and not self._hue_in(float(hue), self.colours):
            out.append(f"hue {float(hue):.0f} not near {self.colours}")
        size = get("size")
        lo, hi = self.size_range[0] - self.size_tol, self.size_range[1] + self.size_tol
        if size is not None and not (lo <= float(size) <= hi):
            out.append(f"size {float(size):.2f} outside {self.size_range}")
        aspect = get("aspect")
        if aspect is not None and shape in self.aspect_ranges:
            lo, hi = self.aspect_ranges[shape]
            if not (lo - self.aspect_tol <= float(aspect) <= hi + self.aspect_tol):
                out.append(f"aspect {float(aspect):.2f} outside {(lo, hi)} for {shape}")
        has_part = get("has_part")
        if has_part is None and "part_hue" in labels:
            has_part = labels["part_hue"] is not None
        if has_part is not None:
            if self.part == "required" and not has_part:
                out.append("no part, but the set's objects all have one")
            if self.part == "forbidden" and has_part:
                out.append("has a part, but the set's objects have none")
        if has_part:
            ph = get("part_hue")
            if ph is not None and self.part_colours is not None and not self._hue_in(float(ph), self.part_colours):
                out.append(f"part hue {float(ph):.0f} not near {self.part_colours}")
            pos = get("part_position")
            if pos is None and get("part_placement") is not None:
                pos = "top" if get("part_placement") == "top" else "side"
            if pos is not None and pos not in self.part_positions:
                out.append(f"part position {pos} not in {self.part_positions}")
        return out

    def contains(self, labels: Mapping[str, object]) -> bool:
        return not self.violations(labels)


# ----------------------------------------------------------------------------------------------------- sets
@dataclass(frozen=True)
class RefSet:
    name: str
    description: str  # what the set is, in words no single caption uses
    grammar: ObjectGrammar
    n: int = 12
    seed: int = 0
    held_out: bool = False  # True: never used for tuning; only for the final evaluation

    def __post_init__(self):
        if not 8 <= self.n <= 16:
            raise ValueError(f"RefSet {self.name}: n must be 8..16, got {self.n}")

    @property
    def support(self) -> AttributeSupport:
        return AttributeSupport.from_grammar(self.grammar)

    def specs(self, seed: Optional[int] = None, n: Optional[int] = None) -> List[ObjectSpec]:
        """The set's objects (deterministic for a seed; default: the set's own seed)."""
        return self.grammar.sample_many(self.n if n is None else n, self.seed if seed is None else seed)

    def captions(self, seed: Optional[int] = None) -> List[str]:
        """Canonical captions of the objects: what a single caption would have to cover."""
        return [s.caption() for s in self.specs(seed)]

    def cameras(
        self,
        num_views: int = 1,
        elevation: float = DEFAULT_ELEVATION,
        azimuth: Union[float, str] = 0.0,
        seed: Optional[int] = None,
    ) -> torch.Tensor:
        """(n, num_views, 16) MVDream cameras. azimuth: the first view's azimuth in degrees, or "random" (seeded)."""
        from dreamdist3d.backbones.cameras import get_camera

        k = self.n
        if azimuth == "random":
            rng = np.random.default_rng((self.seed if seed is None else seed) + 7919)
            starts = rng.uniform(0.0, 360.0, size=k)
        else:
            starts = np.full(k, float(azimuth))
        return torch.stack([get_camera(num_views, elevation, float(a), 360) for a in starts])

    def render(
        self,
        num_views: int = 1,
        resolution: int = 32,
        elevation: float = DEFAULT_ELEVATION,
        azimuth: Union[float, str] = 0.0,
        seed: Optional[int] = None,
        device=None,
    ) -> Tuple[RenderOutput, torch.Tensor]:
        """Render the set: (RenderOutput with n·num_views rows in (b f) order, cameras (n·num_views,16))."""
        cams = self.cameras(num_views, elevation, azimuth, seed)
        out = render(self.specs(seed), cams, resolution=resolution, device=device)
        return out, cams.reshape(-1, 16)


REFSETS: Dict[str, RefSet] = {
    s.name: s
    for s in (
        RefSet(
            "warm-cones-cylinders",
            "warm-coloured cones and cylinders of mixed heights, some with a part",
            ObjectGrammar(shapes=("cone", "cylinder"), colours=WARM_COLOURS, part_prob=0.4),
            n=12,
            seed=101,
        ),
        RefSet(
            "cool-round-topped",
            "cool-coloured round things (spheres, capsules, rings) with a small part on top",
            ObjectGrammar(shapes=("sphere", "capsule", "torus"), colours=COOL_COLOURS, part_prob=1.0, placements=("top",
                                                                                                                  )),
            n=12,
            seed=202,
        ),
        RefSet(
            "small-plain-rainbow",
            "small plain objects of every colour, no parts",
            ObjectGrammar(size_range=(0.65, 0.76), part_prob=0.0),
            n=16,
            seed=303,
        ),
        RefSet(
            "blocks-with-handles",
            "boxes and cylinders in blue or purple, each with a warm-coloured part on one side",
            ObjectGrammar(
                shapes=("box", "cylinder"),
                colours=("blue", "purple"),
                part_prob=1.0,
                placements=("left", "right"),
                part_colours=WARM_COLOURS,
            ),
            n=12,
            seed=404,
        ),
        RefSet(
            "large-tall-greens",
            "large, tall green and teal boxes, cones and capsules, half of them with a part",
            ObjectGrammar(
                shapes=("box", "cone", "capsule"),
                colours=("green", "teal"),
                size_range=(0.85, 1.0),
                aspect_range=(1.15, 1.5),
                part_prob=0.5,
            ),
            n=12,
            seed=505,
            held_out=True,
        ),
        RefSet(  # defined with the low-rank/set-covering work (2026-12) and never tuned on
            "jewel-boxes-spheres",
            "boxes and spheres in four far-apart hues (red, green, blue, purple), a few with a part",
            ObjectGrammar(shapes=("box", "sphere"), colours=("red", "green", "blue", "purple"), part_prob=0.3),
            n=12,
            seed=606,
            held_out=True,
        ),
        RefSet(  # tuning set (2026-12-01): colours far apart on the hue circle, what lies between is not in the set
            "far-hues-spheres-cylinders",
            "spheres and cylinders in orange, teal or purple, a few with a part",
            ObjectGrammar(shapes=("sphere", "cylinder"), colours=("orange", "teal", "purple"), part_prob=0.3),
            n=12,
            seed=808,
        ),
        RefSet(  # defined on 2026-12-01 before any run, to check the kernel-mixture/fidelity work; never tuned on
            "tricolour-tori-cones",
            "tori, cones and cylinders in yellow, teal or pink, half of them with a part",
            ObjectGrammar(shapes=("torus", "cone", "cylinder"), colours=("yellow", "teal", "pink"), part_prob=0.5),
            n=12,
            seed=707,
            held_out=True,
        ),
        # Sets that vary in form (body shape, size, parts) with one or two colours (issue #28), defined on 2026-12-06
        # before any run on them: two for tuning, one held out and never tuned on.
        RefSet(
            "orange-forms",
            "orange objects of many body shapes, small to large, half of them with a blue part",
            ObjectGrammar(colours=("orange",), part_prob=0.5, part_colours=("blue",)),
            n=14,
            seed=911,
        ),
        RefSet(
            "teal-purple-forms",
            "teal or purple boxes, cones, rings and capsules, small to large, most with a yellow part on top",
            ObjectGrammar(shapes=("box", "cone", "torus", "capsule"), colours=("teal", "purple"), part_prob=0.7,
                          placements=("top",), part_colours=("yellow",)),
            n=14,
            seed=922,
        ),
        RefSet(
            "red-forms",
            "red spheres, boxes, cylinders, cones and rings of every size, half of them with a green part",
            ObjectGrammar(shapes=("sphere", "box", "cylinder", "cone", "torus"), colours=("red",), part_prob=0.5,
                          part_colours=("green",)),
            n=14,
            seed=933,
            held_out=True,
        ),
    )
}


def get_refset(name: str) -> RefSet:
    if name not in REFSETS:
        raise KeyError(f"unknown reference set {name!r}; known: {sorted(REFSETS)}")
    return REFSETS[name]


def tuning_refsets() -> List[RefSet]:
    return [s for s in REFSETS.values() if not s.held_out]


def held_out_refsets() -> List[RefSet]:
    return [s for s in REFSETS.values() if s.held_out]


__all__ = ["AttributeSupport", "RefSet", "REFSETS", "get_refset", "tuning_refsets", "held_out_refsets"]
