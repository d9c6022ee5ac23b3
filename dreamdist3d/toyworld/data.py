"""The toy backbone's training data (used by `dreamdist3d.recipes.toy_train`): a cache of 4-view renders of world
objects and of blends between two objects that differ in one attribute, with aligned paraphrase pairs; batches drawn
from it; and the text conditioning of a batch (interpolated, noised token embeddings through the text encoder).

`cfg` is the recipe's `TrainConfig` (the fields named where they are read: seed, cache_objects, cache_interp,
pair_variants, canonical_view_fraction, elevation_range, render_aa, batch_mv, batch_2d, text_dropout,
noise_fraction, interp_caption_prob)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.text import ClipTokenizer
from dreamdist3d.toyworld.captions import caption, vocabulary_text
from dreamdist3d.toyworld.objects import (
    ASPECT_RANGE,
    COLOURS,
    PALETTE,
    PART_SHAPES,
    PLACEMENTS,
    SHAPES,
    SIZE_MAX,
    SIZE_MIN,
    WORLD,
    ObjectGrammar,
    ObjectSpec,
    interpolate_specs,
)
from dreamdist3d.toyworld.render import DEFAULT_ELEVATION, render

SOS, EOS = 49406, 49407


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class Item:
    """One cached object: its spec (the rendered one) and, for blends, the two ends and aligned caption pairs."""

    spec: ObjectSpec
    t: float = 0.0  # blend weight (0 for plain objects)
    pairs: Optional[torch.Tensor] = None  # (K, 2, 77) long: aligned token ids of A's and B's paraphrases


@dataclass
class DataCache:
    items: List[Item]
    images: torch.Tensor  # (N, 4, 3, 32, 32) uint8, white background
    cameras: torch.Tensor  # (N, 4, 16) float32 MVDream cameras of those views
    render_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.items)


def _neighbour_colour(colour: str, rng: np.random.Generator) -> str:
    order = sorted(COLOURS, key=lambda c: PALETTE[c])
    i = order.index(colour)
    return order[(i + (1 if rng.uniform() < 0.5 else -1)) % len(order)]


def _jittered(colour: str, rng: np.random.Generator, jitter: float) -> float:
    return float((PALETTE[colour] + rng.uniform(-jitter, jitter)) % 360.0)


def blend_ends(rng: np.random.Generator, grammar: ObjectGrammar = WORLD) -> Tuple[ObjectSpec, ObjectSpec, str]:
    """Two objects that differ in one attribute: ('hue' | 'part_hue' | 'size' | 'aspect')."""
    from dataclasses import replace

    a = grammar.sample(rng)
    kinds = ["hue", "hue", "size"]
    lo, hi = ASPECT_RANGE[a.shape]
    if hi - lo > 1e-6:
        kinds.append("aspect")
    if a.part is not None:
        kinds.append("part_hue")
    kind = str(rng.choice(kinds))
    third = (SIZE_MAX - SIZE_MIN) / 3.0
    if kind == "hue":
        other = _neighbour_colour(a.colour, rng)
        b = replace(a, hue=_jittered(other, rng, grammar.hue_jitter))
    elif kind == "part_hue":
        other = _neighbour_colour(a.part.colour, rng)
        if other == a.colour:  # a part of the body's own colour would vanish into it
            other = a.part.colour
        b = replace(a, part=replace(a.part, hue=_jittered(other, rng, grammar.hue_jitter)))
    elif kind == "size":
        a = replace(a, size=float(rng.uniform(SIZE_MIN, SIZE_MIN + third)))
        b = replace(a, size=float(rng.uniform(SIZE_MAX - third, SIZE_MAX)))
    else:
        t3 = (hi - lo) / 3.0
        a = replace(a, aspect=float(rng.uniform(lo, lo + t3)))
        b = replace(a, aspect=float(rng.uniform(hi - t3, hi)))
    if rng.uniform() < 0.5:
        a, b = b, a
    return a, b, kind


def aligned_pair(
    a: ObjectSpec, b: ObjectSpec, rng: np.random.Generator, tokenizer: ClipTokenizer, tries: int = 12
) -> Optional[Tuple[List[int], List[int]]]:
    """Token ids of paraphrases of a and b drawn with the same random choices, if they line up position by
    position (same length); the canonical captions as a fallback; None if even those do not line up."""
    for k in range(tries + 1):
        if k < tries:
            s = int(rng.integers(2**31))
            ca, cb = caption(a, s), caption(b, s)
        else:
            ca, cb = caption(a), caption(b)
        ia, ib = tokenizer.encode(ca), tokenizer.encode(cb)
        if len(ia) == len(ib) and len(ia) <= 75:
            return ia, ib
    return None


def _pad(ids: List[int]) -> List[int]:
    row = [SOS] + list(ids)[:75] + [EOS]
    return row + [0] * (77 - len(row))


def _cameras_for(n: int, cfg, rng: np.random.Generator) -> torch.Tensor:
    """(n, 4, 16) MVDream 4-view cameras: canonical (15°, azimuth 0) or random elevation / azimuth."""
    cams = []
    for _ in range(n):
        if rng.uniform() < cfg.canonical_view_fraction:
            e, az = DEFAULT_ELEVATION, 0.0
        else:
            # whole-degree azimuths: get_camera's np.arange can yield a 5th view for some fractional starts
            e, az = float(rng.uniform(*cfg.elevation_range)), float(rng.integers(0, 360))
        cams.append(get_camera(4, elevation=e, azimuth_start=az)[:4])
    return torch.stack(cams)


def build_cache(cfg, tokenizer: ClipTokenizer, progress: bool = False, chunk: int = 200) -> DataCache:
    """Render the training cache (deterministic for cfg.seed)."""
    rng = np.random.default_rng([cfg.seed, 1])
    items: List[Item] = [Item(spec=s) for s in (WORLD.sample(rng) for _ in range(cfg.cache_objects))]
    while len(items) < cfg.cache_objects + cfg.cache_interp:
        a, b, _ = blend_ends(rng)
        pairs = []
        for _ in range(cfg.pair_variants):
            p = aligned_pair(a, b, rng, tokenizer)
            if p is not None:
                pairs.append([_pad(p[0]), _pad(p[1])])
        if not pairs:
            continue
        t = float(rng.uniform(0.0, 1.0))
        items.append(Item(spec=interpolate_specs(a, b, t), t=t, pairs=torch.tensor(pairs, dtype=torch.long)))
    cameras = _cameras_for(len(items), cfg, rng)
    images = torch.empty(len(items), 4, 3, 32, 32, dtype=torch.uint8)
    t0 = time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items) * 4, desc="rendering training views", unit="view", dynamic_ncols=True)
    for s in range(0, len(items), chunk):
        e = min(len(items), s + chunk)
        out = render([it.spec for it in items[s:e]], cameras[s:e], resolution=32, aa=cfg.render_aa)
        images[s:e] = (out.image.reshape(e - s, 4, 3, 32, 32) * 255.0).round().clamp(0, 255).to(torch.uint8)
        if bar is not None:
            bar.update((e - s) * 4)
    if bar is not None:
        bar.close()
    return DataCache(items=items, images=images, cameras=cameras.float(), render_seconds=time.time() - t0)


@dataclass
class Batch:
    x0: torch.Tensor  # (R, 3, 32, 32) in [-1, 1]; rows: batch_mv·4 multi-view rows, then batch_2d single views
    cameras: torch.Tensor  # (batch_mv·4, 16)
    ids_a: torch.Tensor  # (batch_mv + batch_2d, 77)
    ids_b: torch.Tensor  # (batch_mv + batch_2d, 77)
    mix: torch.Tensor  # (batch_mv + batch_2d,) weight of ids_b
    noisy: torch.Tensor  # (batch_mv + batch_2d,) bool: add embedding noise
    attributes: torch.Tensor  # (batch_mv + batch_2d, ATTRIBUTE_DIM) attribute targets of the rendered objects
    has_text: torch.Tensor  # (batch_mv + batch_2d,) bool: False where the caption was dropped


ATTRIBUTE_DIM = 2 + 2 + len(SHAPES) + 1 + 2 + len(PART_SHAPES) + len(PLACEMENTS)


def attribute_targets(spec: ObjectSpec) -> torch.Tensor:
    """(ATTRIBUTE_DIM,) regression targets of the auxiliary text loss: body hue on the unit circle, size and aspect
    scaled to about [-1, 1], shape one-hot, part flag, part hue on the circle, part shape and placement one-hots."""
    h = math.radians(spec.hue)
    v = [math.cos(h), math.sin(h), 2.0 * (spec.size - SIZE_MIN) / (SIZE_MAX - SIZE_MIN) - 1.0,
         2.0 * (spec.aspect - 0.6) / 0.9 - 1.0]
    v += [1.0 if spec.shape == s else 0.0 for s in SHAPES]
    p = spec.part
    if p is None:
        v += [0.0] * (3 + len(PART_SHAPES) + len(PLACEMENTS))
    else:
        ph = math.radians(p.hue)
        v += [1.0, math.cos(ph), math.sin(ph)]
        v += [1.0 if p.shape == s else 0.0 for s in PART_SHAPES]
        v += [1.0 if p.placement == s else 0.0 for s in PLACEMENTS]
    return torch.tensor(v, dtype=torch.float32)


def draw_batch(cache: DataCache, cfg, rng: np.random.Generator, tokenizer: ClipTokenizer) -> Batch:
    """One training batch from the cache, all random choices from `rng` (numpy)."""
    n = len(cache)
    mv = rng.integers(0, n, size=cfg.batch_mv)
    sv = rng.integers(0, n, size=cfg.batch_2d)
    sv_view = rng.integers(0, 4, size=cfg.batch_2d)
    imgs = torch.cat([cache.images[torch.from_numpy(mv)].reshape(-1, 3, 32, 32),
                      cache.images[torch.from_numpy(sv), torch.from_numpy(sv_view)]])
    x0 = imgs.float() / 127.5 - 1.0
    cams = cache.cameras[torch.from_numpy(mv)].reshape(-1, 16)
    ids_a, ids_b, mix, noisy = [], [], [], []
    empty = tokenizer([""])[0]
    rows = []  # (index into ids lists) -> placeholder; captions tokenised together below
    for idx in list(mv) + list(sv):
        item = cache.items[int(idx)]
        if rng.uniform() < cfg.text_dropout:
            rows.append(("empty", None, None, 0.0, False))
            continue
        noise = bool(rng.uniform() < cfg.noise_fraction)
        if item.pairs is not None and rng.uniform() >= cfg.interp_caption_prob:
            k = int(rng.integers(0, item.pairs.shape[0]))
            rows.append(("pair", item.pairs[k, 0], item.pairs[k, 1], item.t, noise))
        else:
            rows.append(("text", caption(item.spec, rng), None, 0.0, noise))
    strings = [r[1] for r in rows if r[0] == "text"]
    tok = tokenizer(strings) if strings else None
    j = 0
    for kind, a, b, t, nz in rows:
        if kind == "empty":
            ia = ib = empty
        elif kind == "pair":
            ia, ib = a, b
        else:
            ia = ib = tok[j]
            j += 1
        ids_a.append(ia)
        ids_b.append(ib)
        mix.append(t)
        noisy.append(nz)
    objs = [cache.items[int(i)].spec for i in list(mv) + list(sv)]
    return Batch(
        attributes=torch.stack([attribute_targets(o) for o in objs]),
        has_text=torch.tensor([r[0] != "empty" for r in rows], dtype=torch.bool),
        x0=x0,
        cameras=cams,
        ids_a=torch.stack(ids_a).long(),
        ids_b=torch.stack(ids_b).long(),
        mix=torch.tensor(mix, dtype=torch.float32),
        noisy=torch.tensor(noisy, dtype=torch.bool),
    )


def word_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B,77) bool: positions strictly between SOS and the first EOS (the words)."""
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    eos = (ids == EOS).int().argmax(dim=1, keepdim=True)
    return (pos > 0) & (pos < eos)


class TokenRows(torch.nn.Module):
    """The token-embedding rows training moves: those of every word a caption can contain (`vocabulary_text`) plus
    SOS, EOS and pad, ~115 of the table's 49408. They are one small parameter, so Adam, gradient clipping and the EMA
    touch 115 rows a step instead of 49408 (the same result: rows that never occur get zero gradients). Ids outside
    the vocabulary read the frozen table."""

    def __init__(self, table: torch.Tensor, ids: torch.Tensor):
        super().__init__()
        self.register_buffer("ids", ids.long(), persistent=False)  # (U,)
        row_of = torch.full((table.shape[0],), -1, dtype=torch.long, device=table.device)
        row_of[self.ids] = torch.arange(len(self.ids), device=table.device)
        self.register_buffer("row_of", row_of, persistent=False)  # (V,) index into rows, -1 outside
        self.rows = torch.nn.Parameter(table.detach()[self.ids].clone())  # (U, D)

    def forward(self, table: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, D): the trained row for vocabulary ids, the frozen table's row otherwise."""
        token_ids = token_ids.to(table.device)
        r = self.row_of[token_ids]
        return torch.where((r >= 0)[..., None], self.rows[r.clamp(min=0)], table.detach()[token_ids])

    @torch.no_grad()
    def write_into(self, table: torch.Tensor) -> None:
        table[self.ids] = self.rows.detach().to(table.dtype)


def vocabulary_ids(tokenizer: ClipTokenizer) -> torch.Tensor:
    """(U,) sorted ids of every token a toy caption can contain, with SOS, EOS and pad (0)."""
    return torch.tensor(sorted(set(tokenizer.encode(vocabulary_text())) | {SOS, EOS, 0}), dtype=torch.long)


def conditioning(backbone: Backbone, batch: Batch, gen: torch.Generator, noise_std: float,
                 embed=None) -> torch.Tensor:
    """(B,77,D) text-encoder states of the batch's (interpolated, noised) token embeddings; differentiable.
    `embed`: ids (B,77) -> token embeddings (B,77,D); default the text encoder's own table."""
    enc = backbone.text_encoder
    embed = embed or enc.embed_tokens
    ea = embed(batch.ids_a)
    eb = embed(batch.ids_b)
    w = batch.mix.to(ea.device)[:, None, None]
    emb = ea + w * (eb - ea)  # (B,77,D)
    mask = (word_mask(batch.ids_a) & batch.noisy[:, None]).to(emb.device)
    if bool(mask.any()):
        rms = ea.detach()[word_mask(batch.ids_a)].pow(2).mean().sqrt()
        scale = torch.rand(emb.shape[0], generator=gen)[:, None, None] * noise_std
        eps = torch.randn(emb.shape, generator=gen)
        emb = emb + (scale * eps * rms).to(emb.device, emb.dtype) * mask[..., None]
    return enc(emb)
