"""Captions for toy objects: one canonical caption and many paraphrases from templates.

`caption(spec)` is deterministic and canonical ("a small tall red box with a blue cone on top");
`caption(spec, rng)` draws a paraphrase: synonyms for colour, shape, size and aspect words, several sentence
templates per part placement, optional prefixes ("a 3d render of ..."). Hues far from every palette hue (e.g. from
`interpolate_specs`) are named by the two neighbouring words ("red-orange"), so the caption space is continuous too.

`mentioned(text)` maps a caption back to the canonical colour / shape / placement words it contains; tests use it to
check that every paraphrase names exactly the object's attributes.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Set, Union

import numpy as np

from dreamdist3d.toyworld.vocabulary import (
    ASPECT_SYNONYMS,
    COLOUR_SYNONYMS,
    COLOURS,
    HUE_JITTER,
    PALETTE,
    SHAPE_SYNONYMS,
    SIZE_SYNONYMS,
    hue_distance,
    nearest_colour,
)

PART_SHAPE_SYNONYMS: Dict[str, tuple] = {
    "sphere": ("ball", "sphere", "bead"),
    "box": ("cube", "block", "box"),
    "cylinder": ("cylinder", "peg", "can"),
    "cone": ("cone", "spike", "point"),
}
SIDE_WORDS = {"left": ("left",), "right": ("right",)}

_TOP_TEMPLATES = (
    "{A} with {a_part} on top",
    "{a_part} on {A}",
    "{a_part} sitting on top of {A}",
    "{A} topped with {a_part}",
    "{A} carrying {a_part} on top",
    "{A}, {a_part} on top",
)
_SIDE_TEMPLATES = (
    "{A} with {a_part} on its {side}",
    "{A} with {a_part} attached to its {side} side",
    "{a_part} on the {side} side of {A}",
    "{A} and {a_part} stuck to its {side}",
    "{A}, {a_part} on the {side}",
)
_PLAIN_TEMPLATES = ("{A}", "{A}", "a single {body}", "{A} on its own", "a plain {body}")
_PREFIXES = ("", "", "", "a 3d render of ", "a toy model of ", "a picture of ")
_PART_SIZE_WORDS = ("small", "little")

_VOWEL_SOUND = re.compile(r"^(a|e|i|o|u)", re.IGNORECASE)


def _article(phrase: str) -> str:
    return ("an " if _VOWEL_SOUND.match(phrase) else "a ") + phrase


def colour_phrase(hue: float, rng: Optional[np.random.Generator]) -> str:
    """A colour word for `hue`; between palette hues, a compound of the two neighbours ("red-orange")."""
    name = nearest_colour(hue)
    if hue_distance(hue, PALETTE[name]) > HUE_JITTER + 3.0:
        # the second-nearest palette colour, on the other side
        other = sorted(COLOURS, key=lambda n: hue_distance(hue, PALETTE[n]))[1]
        return f"{other}-{name}" if rng is None or rng.uniform() < 0.5 else f"{name}-{other}"
    syn = COLOUR_SYNONYMS[name]
    return syn[0] if rng is None else str(rng.choice(syn))


def _pick(options, rng):
    return options[0] if rng is None else str(rng.choice(options))


def body_phrase(spec, rng: Optional[np.random.Generator]) -> str:
    """'small tall red box' style phrase (no article)."""
    words = [
        _pick(SIZE_SYNONYMS[spec.size_word], rng),
        _pick(ASPECT_SYNONYMS[spec.aspect_word], rng),
        colour_phrase(spec.hue, rng),
        _pick(SHAPE_SYNONYMS[spec.shape], rng),
    ]
    return " ".join(w for w in words if w)


def caption(spec, rng: Union[None, int, np.random.Generator] = None) -> str:
    """Canonical caption (rng None) or a random paraphrase (rng an int seed or numpy Generator)."""
    if rng is not None:
        rng = np.random.default_rng(rng)
    body = body_phrase(spec, rng)
    fields = {"A": _article(body), "body": body}
    if spec.part is None:
        template = _pick(_PLAIN_TEMPLATES, rng)
    else:
        p = spec.part
        part = f"{colour_phrase(p.hue, rng)} {_pick(PART_SHAPE_SYNONYMS[p.shape], rng)}"
        if rng is not None and rng.uniform() < 0.3:
            part = f"{_pick(_PART_SIZE_WORDS, rng)} {part}"
        fields["a_part"] = _article(part)
        if p.placement == "top":
            template = _pick(_TOP_TEMPLATES, rng)
        else:
            template = _pick(_SIDE_TEMPLATES, rng)
            fields["side"] = p.placement
    prefix = "" if rng is None else _pick(_PREFIXES, rng)
    text = template.format(**fields)
    if prefix:
        text = prefix + text
    return re.sub(r"\s+", " ", text).strip()


def captions(specs, seed: Optional[int] = None) -> List[str]:
    """Canonical captions (seed None) or one paraphrase per spec from a seeded generator."""
    rng = None if seed is None else np.random.default_rng(seed)
    return [caption(s, rng) for s in specs]


def vocabulary_text() -> str:
    """Every word and punctuation mark a caption can contain, as one string. CLIP's BPE splits text into words and
    punctuation first and encodes each alone, so the tokens of this string are every token any caption can have."""
    words = ["a", "an", "-", ","]
    for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, SIZE_SYNONYMS, ASPECT_SYNONYMS, PART_SHAPE_SYNONYMS, SIDE_WORDS):
        words += [w for syns in table.values() for w in syns]
    words += list(_PART_SIZE_WORDS) + list(_PREFIXES)
    words += [re.sub(r"\{[a-z_]+\}", " ", t) for t in _TOP_TEMPLATES + _SIDE_TEMPLATES + _PLAIN_TEMPLATES]
    return re.sub(r"\s+", " ", " ".join(words)).strip()


# ----------------------------------------------------------------------------------------------------- parsing
def _phrase_table() -> Dict[str, tuple]:
    table = {}
    for name, syns in COLOUR_SYNONYMS.items():
        for s in syns:
            table[s] = ("colour", name)
    for name, syns in SHAPE_SYNONYMS.items():
        for s in syns:
            table[s] = ("shape", name)
    for name, syns in PART_SHAPE_SYNONYMS.items():
        for s in syns:
            table.setdefault(s, ("shape", name))
    for side in ("left", "right"):
        table[side] = ("placement", side)
    table["on top"] = ("placement", "top")
    table["top"] = ("placement", "top")
    table["topped"] = ("placement", "top")
    table["on a"] = ("placement", "top")  # "a blue cone on a red box"
    table["on an"] = ("placement", "top")
    return table


_TABLE = _phrase_table()
_ALTERNATION = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(_TABLE, key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def mentioned(text: str) -> Dict[str, Set[str]]:
    """Canonical words a caption mentions: {'colour': {...}, 'shape': {...}, 'placement': {...}}.

    Compound colours ("red-orange") give both names."""
    out: Dict[str, Set[str]] = {"colour": set(), "shape": set(), "placement": set()}
    for m in _ALTERNATION.finditer(text.lower()):
        kind, name = _TABLE[m.group(1)]
        out[kind].add(name)
    return out


__all__ = ["caption", "captions", "vocabulary_text", "body_phrase", "colour_phrase", "mentioned", "PART_SHAPE_SYNONYMS"]
