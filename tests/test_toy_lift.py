"""`dreamdist3d toyworld lift`: arms, the two parts, caching/resume and the scores (by hand on known readings).

A tiny random toy backbone stands in for the shipped weights (the plumbing and files; the numbers on the real
backbone are in the README)."""

from __future__ import annotations

import json

import pytest

from dreamdist3d.backbones.toy import build_toy_backbone, small_test_config
from dreamdist3d.backbones.toy_weights import save_toy_backbone
from dreamdist3d.recipes.toy_lift import Item, LiftConfig, arm_settings, keep_clear_parts, run_lift, selected
from dreamdist3d.recipes.toy_lift_scores import agreement, fidelity, scores, table

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch at one thread, as a run


def test_arm_names():
    assert arm_settings("sds300") == (0, 300, ["system.anchor.source=none", "system.loss.lambda_anchor_rgb=0",
                                               "system.loss.lambda_anchor_mask=0", "trainer.max_steps=300"])
    a, s, over = arm_settings("anchor40+110~system.anchor.rays_per_step=1024")
    assert (a, s) == (40, 110) and over == ["system.anchor.source=preview", "system.anchor.steps=40",
                                            "trainer.max_steps=150", "system.anchor.rays_per_step=1024"]
    for bad in ("sds", "anchor40", "lgm300", "anchor4+4~steps"):
        with pytest.raises(ValueError, match="expected sds<N> or anchor<A>"):
            arm_settings(bad)


def test_seen_frames_are_the_samples_views():
    """SEEN_VIEWS from the cameras: turntable frame f sits at threestudio azimuth linspace(0, 360, TEST_VIEWS)[f];
    the sample's view i at MVDream azimuth PreviewSampler.azimuths()[i], the scene's `threestudio_azimuth` of it."""
    import torch

    from dreamdist3d.backbones.cameras import threestudio_azimuth
    from dreamdist3d.recipes.toy_lift_scores import SEEN, SEEN_VIEWS, TEST_VIEWS
    from dreamdist3d.sample2d.mvdream_preview import PreviewSampler

    frames = torch.linspace(0.0, 360.0, TEST_VIEWS)
    views = PreviewSampler(steps=1, guidance_scale=1.0).azimuths()
    for f, i in zip(SEEN, SEEN_VIEWS):
        assert (float(frames[f]) - threestudio_azimuth(views[i])) % 360 == pytest.approx(0.0)


def _reading(colour, shape, part, ok=True):
    return {"ok": ok, "colour": colour if ok else None, "shape": shape if ok else None,
            "has_part": part if ok else None}


def test_scores_by_hand():
    spec = {"colour": "red", "shape": "cone", "has_part": True}
    assert fidelity(_reading("red", "cone", True), spec) == {"colour": True, "shape": True, "part": True,
                                                            "colour+shape": True}
    assert fidelity(_reading("red", "box", False), spec) == {"colour": True, "shape": False, "part": False,
                                                            "colour+shape": False}
    assert not any(fidelity(_reading(None, None, None, ok=False), spec).values())
    view = {"reading": _reading("teal", "torus", True), "part_views": 3, "distinct_part_views": 1}
    assert agreement(_reading("teal", "torus", False), view) == {"agree": True, "part_kept": False,
                                                                "clear_part_kept": None}  # a part one view shows
    assert agreement(_reading("teal", "torus", True), {**view, "distinct_part_views": 2})["clear_part_kept"] is None
    assert agreement(_reading("teal", "torus", True), {**view, "distinct_part_views": 3})["clear_part_kept"] is True
    assert agreement(_reading("teal", "torus", True), {"reading": _reading(0, 0, 0, ok=False)})["agree"] is None
    views = [{"part": "captions", "item": "c00", "seed": 0, "spec": spec, "reading": _reading("red", "cone", True)},
             {"part": "learned", "item": "x-0", "seed": 0, "reading": _reading("teal", "torus", True),
              "part_views": 3, "distinct_part_views": 3}]
    objects = [{"arm": "sds10", "part": "captions", "item": "c00", "seed": 0, "anchor_steps": 0, "sds_steps": 10,
                "wall_s": 2.0, "seen": _reading("red", "cone", False), "novel": _reading("red", "cone", True)},
               {"arm": "sds10", "part": "learned", "item": "x-0", "seed": 0, "anchor_steps": 0, "sds_steps": 10,
                "wall_s": 4.0, "seen": _reading("teal", "torus", True), "novel": _reading("teal", "box", True)}]
    sc = scores(views, objects)
    assert sc["4-view samples"][0]["cap_colour+shape"] == 1.0
    row = sc["sds10"][0]
    assert (row["cap_colour+shape"], row["cap_part"], row["agree_seen"], row["agree_novel"]) == (1.0, 0.0, 1.0, 0.0)
    assert (row["parts_seen"], row["clear_parts_seen"], row["wall_s"], row["n"]) == (1.0, 1.0, 3.0, 2)
    assert (row["cap_parts_seen"], row["cap_parts_novel"]) == (0.0, 1.0)  # the caption's part, shown by its sample
    assert "| sds10 (2) | 1.00 | 0.00 | 0.00 | 1.00 | – | – | 0.00 |" in table(views, objects)  # no margins, no images
    # agreement over the samples read clearly: the learned sample's margin decides whether its object counts
    for margin, share, agree in ((0.7, 1.0, 1.0), (0.5, 0.0, None)):
        sc = scores([views[0], {**views[1], "shape_margin": margin}], objects)
        assert sc["4-view samples"][0]["agree_clear"] == share and sc["sds10"][0]["agree_clear"] == agree


def test_clear_parts_only_and_the_table_selection():
    """`--clear-parts-only` keeps the captions and the learned samples whose sample shows a part of another colour
    in ≥ 3 views (2 are often a body's hue shading); `--table-only` keeps the records of the asked parts, reference
    sets and sample counts."""
    views = [{"part": "captions", "item": "c00", "seed": 0},
             {"part": "learned", "item": "red-forms-0", "seed": 0, "distinct_part_views": 4},
             {"part": "learned", "item": "red-forms-1", "seed": 0, "distinct_part_views": 2},
             {"part": "learned", "item": "red-forms-1", "seed": 1, "distinct_part_views": 3}]
    items = {r: [Item(v["part"], v["item"], "d", 0) for v in views if v["seed"] == r] for r in (0, 1)}
    kept, kept_items = keep_clear_parts(views, items)
    assert [(v["item"], v["seed"]) for v in kept] == [("c00", 0), ("red-forms-0", 0), ("red-forms-1", 1)]
    assert {r: [it.key for it in its] for r, its in kept_items.items()} == {0: ["c00", "red-forms-0"],
                                                                          1: ["red-forms-1"]}
    cfg = LiftConfig(parts=["learned"], refsets=["red-forms"], samples_per_set=1, n_captions=1)
    assert [selected(cfg, v) for v in views] == [False, True, False, False]
    cfg = LiftConfig(parts=["captions", "learned"], refsets=["teal-purple-forms"], n_captions=1)
    assert [selected(cfg, v) for v in views] == [True, False, False, False]


def test_lift_end_to_end_on_tiny_inputs(tmp_path):
    """Both parts through both kinds of arm on a tiny backbone; a rerun makes nothing (everything cached)."""
    from dreamdist3d.backbones.load import load_backbone
    from dreamdist3d.toyworld.attributes import AttributeReader

    weights = tmp_path / "tiny-toy.safetensors"
    save_toy_backbone(build_toy_backbone(small_test_config(), seed=0), weights)
    reader_path = tmp_path / "reader.safetensors"
    AttributeReader.fit(n_train=300, epochs=5).save(reader_path)
    cfg = LiftConfig(out=str(tmp_path / "lift"), weights=str(weights), reader=str(reader_path),
                     arms=["sds3", "anchor2+1"], seeds=[0], n_captions=2, refsets=["warm-cones-cylinders"],
                     samples_per_set=1, learn_steps=2, workers=1,
                     overrides=["system.anchor.sampler_steps=2", "data.n_test_views=9"])
    bb = load_backbone(f"toy:{weights}")
    views, objects = run_lift(cfg, backbone=bb)
    assert sorted((v["part"], v["item"]) for v in views) == [("captions", "c00"), ("captions", "c01"),
                                                             ("learned", "warm-cones-cylinders-0")]
    assert sorted((o["arm"], o["item"]) for o in objects) == sorted(
        (a, i) for a in ("sds3", "anchor2+1") for i in ("c00", "c01", "warm-cones-cylinders-0"))
    anchored = [o for o in objects if o["arm"] == "anchor2+1"]
    assert all((o["anchor_steps"], o["sds_steps"]) == (2, 1) for o in anchored)
    assert all(set(o["seen"]) == {"ok", "colour", "shape", "has_part"} for o in objects)
    assert not (tmp_path / "lift" / "work").exists() or not any((tmp_path / "lift" / "work").rglob("*.ckpt"))
    caption = json.loads((tmp_path / "lift" / "views" / "captions" / "c01" / "seed0.json").read_text())
    assert caption["run_seed"] == 1 and caption["caption"] and caption["spec"]["shape"]
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "lift" / "objects").rglob("*.json")}
    again_views, again = run_lift(cfg, backbone=bb)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "lift" / "objects").rglob("*.json")} == stamp
    assert sorted(json.dumps(o, sort_keys=True) for o in again) == sorted(json.dumps(o, sort_keys=True)
                                                                          for o in objects)
    text = table(views, objects)
    assert "| anchor2+1 (3) |" in text and "| sds3 (3) |" in text and "| 4-view samples |" in text


class _LeftDarkReader:
    """Reads a box where the left half of an image is darker than the right, else a cylinder; always red. Shape
    probabilities (box, cylinder, sphere): the darker half's share of the brightness, the rest, 0."""

    def read_views(self, images, num_views):
        from dreamdist3d.toyworld.attributes import Reading

        half = images.shape[-1] // 2
        left, right = float(images[..., :half].mean()), float(images[..., half:].mean())
        box = right / (left + right)
        return [Reading(ok=True, colour="red", shape="box" if left < right else "cylinder",
                        shape_probs=[box, 1.0 - box, 0.0])]


def test_image_readings_from_the_saved_pngs(tmp_path):
    """`own_nearest`: the object's seen frames (SEEN on the PNG's first row, in turntable order) are compared with
    every learned sample of its set and seed in the sample's view order; `mirror_same`: the sample read mirrored."""
    import torch

    from dreamdist3d.images import save_png, tile_grid, to_uint8
    from dreamdist3d.recipes.toy_lift_scores import SEEN, SEEN_VIEWS, image_readings
    from dreamdist3d.sample2d.mvdream_preview import image_grid

    g = torch.Generator().manual_seed(0)
    samples = {f"red-forms-{j}": torch.rand(4, 3, 8, 8, generator=g) for j in range(3)}
    samples["red-forms-1"][..., :4] *= 0.2  # a dark left half: read as a box, mirrored as a cylinder
    views = []
    for key, s in samples.items():
        path = tmp_path / "views" / "learned" / key / "seed0.png"
        path.parent.mkdir(parents=True)
        image_grid(s[None]).save(path)
        shape = "box" if key == "red-forms-1" else "cylinder"
        views.append({"part": "learned", "item": key, "seed": 0, "reading": _reading("red", shape, False)})

    def obj(key, frames_of):
        seen = samples[frames_of][list(SEEN_VIEWS)]  # frame j shows view SEEN_VIEWS[j]
        frames = torch.cat([seen, torch.rand(len(SEEN), 3, 8, 8, generator=g)]).clamp(0, 1)
        path = tmp_path / "objects" / "hybrid150+0" / "learned" / key / "seed0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(tile_grid(list(to_uint8(frames, channels_first=True)), cols=4), path)
        return {"arm": "hybrid150+0", "part": "learned", "item": key, "seed": 0, "anchor_steps": 150,
                "sds_steps": 0, "wall_s": 1.0, "seen": _reading("red", "cylinder", False),
                "novel": _reading("red", "cylinder", False)}

    objects = [obj("red-forms-0", "red-forms-0"), obj("red-forms-2", "red-forms-1"),
               {**obj("red-forms-1", "red-forms-1"), "arm": "sds10"}]  # no PNG under sds10: left out
    v2, o2 = image_readings(tmp_path, views, objects, _LeftDarkReader())
    assert [v.get("mirror_same") for v in v2] == [True, False, True]
    # the margin: |left − right| / (left + right) of the saved 8-bit sample; the dark-left one reads clearly
    margins = [v["shape_margin"] for v in v2]
    assert margins[1] > 0.6 > max(margins[0], margins[2])
    for v, s in zip(v2, samples.values()):
        s8 = torch.round(s * 255) / 255
        left, right = float(s8[..., :4].mean()), float(s8[..., 4:].mean())
        assert v["shape_margin"] == pytest.approx(abs(left - right) / (left + right), abs=1e-5)
    assert [o.get("own_nearest") for o in o2] == [True, False, None]
    assert "own_nearest" not in objects[0]  # copies, the records are untouched
    sc = scores(v2, o2)
    assert sc["4-view samples"][0]["agree_seen"] == pytest.approx(2 / 3)
    # read clearly: only red-forms-1 (a box), whose one object under hybrid150+0 is read a cylinder
    assert sc["4-view samples"][0]["agree_clear"] == pytest.approx(1 / 3)
    assert sc["hybrid150+0"][0]["agree_clear"] is None  # red-forms-1 has no hybrid object
    assert sc["sds10"][0]["agree_clear"] == 0.0
    assert sc["hybrid150+0"][0]["own_nearest"] == 0.5 and sc["sds10"][0]["own_nearest"] is None
