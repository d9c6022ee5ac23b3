"""The toy-world evaluator's reader and backbone checks (`dreamdist3d.recipes.toy_eval` runs them first): the attribute
reader (`get_reader`, fitted once and saved), the caption check (`caption_match`: seen-world captions generated and
read back) and the interpolation readout (`interpolation_check` / `interpolation_readout`: hues along "a red box" ->
"a yellow box" in embedding space)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from dreamdist3d.backbones.toy import DEFAULT_GUIDANCE


# ----------------------------------------------------------------------------------------------------- reader
def get_reader(path: str, n_train: int = 4000, seed: int = 0):
    """The attribute reader at `path`, fitted and saved there when missing."""
    from dreamdist3d.toyworld.attributes import AttributeReader

    p = Path(path)
    if p.is_file():
        return AttributeReader.load(p)
    print(f"[toy-eval] fitting the attribute reader on {n_train} renders (saved to {p})", file=sys.stderr, flush=True)
    reader = AttributeReader.fit(n_train=n_train, seed=seed)
    p.parent.mkdir(parents=True, exist_ok=True)
    reader.save(p)
    return reader


# ----------------------------------------------------------------------------------------------------- backbone
def caption_match(backbone, reader, n: int = 64, seed: int = 1000, steps: int = 25, guidance: float = DEFAULT_GUIDANCE,
                  num_frames: int = 1, batch: int = 16) -> Dict[str, Any]:
    """Does the backbone draw what its captions say? `n` objects of the toy world (grammar seed `seed`, a seed the
    trainer's cache does not use), one caption each, generated (DDIM `steps`, CFG `guidance`; `num_frames` 1 = single
    front views, 4 = 4-view sets read as one object) and read back: the fraction whose read colour, shape, part
    presence, and colour AND shape match the caption's object (a rejected image matches nothing)."""
    from dreamdist3d.backbones.toy import generate
    from dreamdist3d.toyworld.objects import sample_objects

    specs = sample_objects(n, seed)
    captions = [s.caption(seed + i) for i, s in enumerate(specs)]
    readings = []
    for i in range(0, n, batch):
        images = generate(backbone, captions[i:i + batch], steps=steps, cfg=guidance, num_frames=num_frames,
                          seed=seed + i)  # (b, F, 3, 32, 32)
        if num_frames == 1:
            readings += reader.read(images[:, 0])
        else:
            readings += reader.read_views(images.flatten(0, 1), num_frames)
    rows = []
    for caption, spec, r in zip(captions, specs, readings):
        colour = bool(r.ok and r.colour == spec.colour)
        shape = bool(r.ok and r.shape == spec.shape)
        part = bool(r.ok and bool(r.has_part) == (spec.part is not None))
        rows.append({"caption": caption, "ok": r.ok, "colour": colour, "shape": shape, "part": part,
                     "read_colour": r.colour, "read_shape": r.shape})

    def rate(key: str) -> float:
        return round(sum(bool(x[key]) for x in rows) / max(len(rows), 1), 3)

    return {"n": n, "views": num_frames, "steps": steps, "guidance": guidance, "accepted": rate("ok"),
            "colour": rate("colour"), "shape": rate("shape"), "part": rate("part"),
            "colour_and_shape": round(sum(x["colour"] and x["shape"] for x in rows) / max(len(rows), 1), 3),
            "samples": rows}


@torch.no_grad()
def interpolation_check(
    backbone,
    a,
    b,
    ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    cfg: float = DEFAULT_GUIDANCE,
    steps: int = 25,
    num_frames: int = 1,
    seeds: Sequence[int] = (0, 1, 2, 3),
) -> Dict[str, Any]:
    """Generate from the interpolated token embeddings (1-t)·E[caption(a)] + t·E[caption(b)] (canonical captions,
    which line up token by token when a and b differ in one word). Returns images (len(ts), len(seeds), F, 3, H, W)
    and the conditioning used."""
    from dreamdist3d.backbones.toy import sample_toy

    tok = backbone.tokenizer
    ia, ib = tok([a.caption()]), tok([b.caption()])
    if int((ia > 0).sum()) != int((ib > 0).sum()):
        raise ValueError(f"captions do not line up token by token: {a.caption()!r} vs {b.caption()!r}")
    enc = backbone.text_encoder
    ea, eb = enc.embed_tokens(ia), enc.embed_tokens(ib)
    uncond = backbone.encode_text([""])
    out = []
    for t in ts:
        ctx = enc(ea + float(t) * (eb - ea))  # (1,77,D)
        imgs = [sample_toy(backbone, ctx, uncond, steps=steps, cfg=cfg, num_frames=num_frames,
                           seed=s)[0] for s in seeds]
        out.append(torch.stack(imgs))
    return {"ts": list(ts), "images": torch.stack(out), "captions": (a.caption(), b.caption())}


def interpolation_readout(backbone, reader, ts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                          seeds: Sequence[int] = (0, 1, 2, 3), guidance: float = DEFAULT_GUIDANCE) -> Dict[str, Any]:
    """Is the text space continuous? "a red box" -> "a yellow box" (hues 0° and 58°) through interpolated token
    embeddings: the circular mean of the hues the reader reads at each t (None where it rejects every seed)."""
    from dreamdist3d.toyworld.attributes import _circ_mean
    from dreamdist3d.toyworld.objects import PALETTE, ObjectSpec

    a, b = ObjectSpec("box", hue=PALETTE["red"], size=0.82), ObjectSpec("box", hue=PALETTE["yellow"], size=0.82)
    res = interpolation_check(backbone, a, b, ts=ts, seeds=seeds, cfg=guidance)
    hues, accepted = [], []
    for imgs in res["images"]:  # (seeds, F, 3, H, W)
        rs = [r for r in reader.read(imgs[:, 0]) if r.ok]
        accepted.append(len(rs) / len(seeds))
        hues.append(None if not rs else round(_circ_mean(torch.tensor([r.hue for r in rs]), torch.ones(len(rs))), 1))
    return {"captions": list(res["captions"]), "ts": list(ts), "hues": hues, "accepted": accepted}
