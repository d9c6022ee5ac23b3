"""Toy world data side: objects and labels, captions, renderer, reference sets, attribute reader, PRDC metrics."""

import math

import numpy as np
import pytest
import torch

from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.toyworld import attributes as attr
from dreamdist3d.toyworld.attributes import AttributeReader, precision_recall_density_coverage, spec_feature
from dreamdist3d.toyworld.captions import caption, mentioned
from dreamdist3d.toyworld.objects import (
    COLOURS,
    HUE_JITTER,
    PALETTE,
    ObjectSpec,
    PartSpec,
    hue_blend,
    hue_distance,
    interpolate_specs,
    sample_objects,
)
from dreamdist3d.toyworld.refsets import REFSETS, held_out_refsets
from dreamdist3d.toyworld.render import CAMERA_DISTANCE, FOVY_DEG, render, render_specs


# ----------------------------------------------------------------------------------------------------- labels
def test_labels_and_captions_match_attributes():
    specs = sample_objects(200, seed=1)
    assert any(s.part is None for s in specs) and any(s.part is not None for s in specs)
    for i, s in enumerate(specs):
        lab = s.labels()
        assert lab["colour"] in COLOURS and hue_distance(lab["hue"], PALETTE[lab["colour"]]) <= HUE_JITTER
        assert lab["size_word"] in ("small", "medium", "large")
        want_colours = {s.colour} | ({s.part.colour} if s.part else set())
        want_shapes = {s.shape} | ({s.part.shape} if s.part else set())
        want_place = set() if s.part is None else {s.part.placement}
        texts = [caption(s)] + [caption(s, 1000 * i + j) for j in range(4)]
        for t in texts:
            m = mentioned(t)
            assert m["colour"] == want_colours, (t, lab)
            assert m["shape"] == want_shapes, (t, lab)
            assert m["placement"] == want_place, (t, lab)
        canon = texts[0]
        if s.size_word != "medium":
            assert s.size_word in canon.split()
        if s.aspect_word:
            assert s.aspect_word in canon.split()
    # paraphrases really vary
    assert len({caption(specs[0], j) for j in range(20)}) >= 8
    # spec round trip
    assert ObjectSpec.from_dict(specs[3].to_dict()) == specs[3]


def test_continuous_attributes_interpolate():
    a = ObjectSpec("box", hue=PALETTE["red"], size=0.66, aspect=0.7, part=PartSpec("cone", 220.0, "top"))
    b = ObjectSpec("box", hue=PALETTE["orange"], size=0.98, aspect=1.3, part=PartSpec("cone", 120.0, "top"))
    mid = interpolate_specs(a, b, 0.5)
    assert mid.hue == pytest.approx(15.0) and mid.size == pytest.approx(0.82) and mid.aspect == pytest.approx(1.0)
    assert mid.part.hue == pytest.approx(170.0)  # shorter arc between 220 and 120
    assert a.size_word == "small" and b.size_word == "large" and mid.size_word == "medium"
    m = mentioned(caption(mid))
    assert m["colour"] >= {"red", "orange"}  # "red-orange": a compound word between the two
    assert hue_blend(15.0) == ("red", "orange", pytest.approx(0.5))
    assert hue_blend(340.0) == ("pink", "red", pytest.approx(15.0 / 35.0))  # wraps past 360
    # across the wrap-around: 350 -> 10 goes through 0
    assert interpolate_specs(
        ObjectSpec("sphere", 350.0, 0.8), ObjectSpec("sphere", 10.0, 0.8), 0.5
    ).hue == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------------------------------- renderer
def test_render_shapes_background_and_determinism():
    specs = sample_objects(6, seed=2)
    cams = get_camera(4, elevation=15, azimuth_start=0)
    out = render(specs, cams, resolution=32)
    assert out.image.shape == (24, 3, 32, 32) and out.mask.shape == (24, 1, 32, 32)
    assert out.image.dtype == torch.float32
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    bg = (out.mask == 0).expand_as(out.image)
    assert bool((out.image[bg] == 1.0).all())  # white exactly where nothing was hit
    fg = (out.mask == 1).expand_as(out.image)
    assert float(out.image[fg].min()) < 0.9  # objects are not white
    again = render(specs, cams, resolution=32)
    assert torch.equal(out.image, again.image) and torch.equal(out.mask, again.mask)
    # per-object cameras (N,V,16) give the same rows, (b f) order
    per = render(specs[2:3], cams[None], resolution=32)
    assert torch.allclose(per.image, out.image[8:12], atol=1e-6)
    out64 = render_specs(specs[:2], num_views=1, resolution=64)
    assert out64.image.shape == (2, 3, 64, 64)


def test_sphere_silhouette_matches_pinhole_projection():
    # a plain sphere of radius R at the origin: silhouette radius in pixels = (res/2)·tan(asin(R/D)) / tan(fov/2)
    spec = ObjectSpec("sphere", hue=120.0, size=1.0)  # half-width 0.5
    out = render([spec], get_camera(1, 0, 0), resolution=64, aa=2)
    area = float(out.mask.sum())
    r_px = math.sqrt(area / math.pi)
    want = 32 * math.tan(math.asin(0.5 / CAMERA_DISTANCE)) / math.tan(math.radians(FOVY_DEG) / 2)
    assert r_px == pytest.approx(want, rel=0.02)


def test_front_view_convention_and_framing():
    # MVDream azimuth 0 looks from -y, z up: a part on the object's "right" (+x) appears on the image's right
    spec = ObjectSpec("cylinder", hue=PALETTE["blue"], size=0.9, part=PartSpec("sphere", PALETTE["yellow"], "right",
                                                                               0.45))
    img = render([spec], get_camera(1, 15, 0), resolution=32).image[0]
    h, c, _, mn = attr.rgb_to_hsv(img[None])
    yellow = ((h[0] - 58).abs() < 15) & (c[0] > 0.2)
    blue = ((h[0] - 222).abs() < 15) & (c[0] > 0.2)
    xs = torch.arange(32.0)
    assert float(xs[yellow.any(0)].mean()) > float(xs[blue.any(0)].mean()) + 4
    # a top part appears above the body
    top = ObjectSpec("box", hue=PALETTE["blue"], size=0.9, part=PartSpec("cone", PALETTE["yellow"], "top", 0.45))
    img = render([top], get_camera(1, 15, 0), resolution=32).image[0]
    h, c, _, _ = attr.rgb_to_hsv(img[None])
    ys = torch.arange(32.0)
    yellow = ((h[0] - 58).abs() < 15) & (c[0] > 0.2)
    blue = ((h[0] - 222).abs() < 15) & (c[0] > 0.2)
    assert float(ys[yellow.any(1)].mean()) < float(ys[blue.any(1)].mean()) - 4
    # framing: no object of the grammar touches the border from any MVDream-like view (elevation 0-30)
    specs = sample_objects(200, seed=4)
    rng = np.random.default_rng(0)
    cams = torch.stack([get_camera(1, float(rng.uniform(0, 30)), float(rng.uniform(0, 360)))[0] for _ in specs])
    m = render(specs, cams[:, None], resolution=32).mask[:, 0]
    border = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], 1)
    assert float(border.max()) == 0.0
    assert float((m > 0.5).float().sum((1, 2)).min()) > 20  # and nothing is vanishingly small


def test_four_views_differ_objects_are_asymmetric():
    specs = sample_objects(24, seed=5)
    out = render_specs(specs, num_views=4, resolution=32)
    img = out.image.reshape(24, 4, 3, 32, 32)
    mask = out.mask.reshape(24, 4, 32, 32) > 0.5
    for i, s in enumerate(specs):
        for a in range(4):
            for b in range(a + 1, 4):
                assert float((img[i, a] - img[i, b]).abs().mean()) > 1e-3, (s, a, b)
        # silhouettes themselves change between the front and the side view for asymmetric geometry
        if s.shape in ("box", "torus") or (s.part is not None and s.part.placement != "top"):
            inter = (mask[i, 0] & mask[i, 1]).sum()
            union = (mask[i, 0] | mask[i, 1]).sum()
            assert float(inter) / float(union) < 0.9, s


# ----------------------------------------------------------------------------------------------------- refsets
def test_reference_sets():
    assert len(REFSETS) >= 4 and [s.name for s in held_out_refsets()] == ["large-tall-greens", "jewel-boxes-spheres",
                                                                              "tricolour-tori-cones", "red-forms"]
    others = [s for name in REFSETS for s in REFSETS[name].specs()]
    for rs in REFSETS.values():
        specs = rs.specs()
        assert 8 <= len(specs) <= 16 and specs == rs.specs()  # deterministic
        sup = rs.support
        for s in specs:
            assert sup.contains(s.labels()), (rs.name, sup.violations(s.labels()))
        # no single caption names the set: several shapes or colours, and other sets' objects fall outside
        assert len({(s.shape, s.colour) for s in specs}) >= 3
        assert sum(not sup.contains(s.labels()) for s in others) >= len(others) // 3
    rs = REFSETS["warm-cones-cylinders"]
    out, cams = rs.render(num_views=1)
    assert out.image.shape == (rs.n, 3, 32, 32) and cams.shape == (rs.n, 16)
    out4, cams4 = rs.render(num_views=4, azimuth="random")
    assert out4.image.shape == (4 * rs.n, 3, 32, 32) and cams4.shape == (4 * rs.n, 16)
    assert torch.equal(out4.image, rs.render(num_views=4, azimuth="random")[0].image)
    assert not rs.support.contains({"shape": "torus", "hue": 0.0, "size": 0.8})  # a shape the warm set lacks
    assert REFSETS["red-forms"].support.contains({"shape": "torus", "hue": 0.0, "size": 0.8})


# ----------------------------------------------------------------------------------------------------- reader
@pytest.fixture(scope="module")
def reader():
    torch.set_num_threads(1)
    return AttributeReader.fit(n_train=1200, seed=0, epochs=30)


def test_reader_accuracy_on_held_out_renders(reader, tmp_path):
    specs, images = AttributeReader.training_renders(200, seed=777)
    rs = reader.read(images)
    ok = [(r, s) for r, s in zip(rs, specs) if r.ok]
    assert len(ok) >= 0.97 * len(specs)
    colour_acc = np.mean([r.colour == s.colour for r, s in ok])
    shape_acc = np.mean([r.shape == s.shape for r, s in ok])
    hue_err = np.mean([hue_distance(r.hue, s.hue) for r, s in ok])
    size_err = np.mean([abs(r.size - s.size) for r, s in ok])
    assert colour_acc >= 0.99 and hue_err < 1.0
    assert shape_acc >= 0.9, shape_acc
    assert size_err < 0.08
    parts = [(r, s) for r, s in ok if s.part is not None and r.has_part]
    assert np.mean([r.part_colour == s.part.colour for r, s in parts]) >= 0.95
    # 64x64 images read the same colours
    big = render_specs(specs[:8], resolution=64)
    assert [r.colour for r in reader.read(big.image)] == [s.colour for s in specs[:8]]
    # 4-view aggregation
    agg = reader.read_views(render_specs(specs[:6], num_views=4).image, 4)
    assert [r.colour for r in agg] == [s.colour for s in specs[:6]]
    # save / load gives the same readings
    reader.save(tmp_path / "reader.safetensors")
    again = AttributeReader.load(tmp_path / "reader.safetensors").read(images[:20])
    assert [(r.shape, r.colour, r.ok) for r in again] == [(r.shape, r.colour, r.ok) for r in rs[:20]]
    # features: accepted readings and exact labels live in the same space
    f = reader.features(rs)
    assert f.shape == (len(ok), len(attr.FEATURE_NAMES))
    assert torch.stack([spec_feature(s) for _, s in ok]).shape == f.shape


def test_reader_rejects_out_of_world_images(reader):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 32, 32, generator=g)
    blank = torch.ones(3, 3, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blobs = []
    for i in range(8):
        a = torch.exp(-((yy - 16) ** 2 + (xx - 15) ** 2) / (2 * (3.0 + i / 2) ** 2))
        col = torch.tensor([0.8, 0.2, 0.2]) if i % 2 else torch.tensor([0.2, 0.3, 0.8])
        blobs.append(1 - a[None] * (1 - col[:, None, None]))
    grey = torch.ones(2, 3, 32, 32)
    grey[:, :, 8:24, 10:22] = 0.5
    for name, x in (("noise", noise), ("blank", blank), ("blob", torch.stack(blobs)), ("grey", grey)):
        rs = reader.read(x)
        assert all(not r.ok and r.reason for r in rs), (name, [r.reason for r in rs])
    assert all("empty" in r.reason for r in reader.read(blank))


# ----------------------------------------------------------------------------------------------------- metrics
def test_precision_recall_density_coverage_known_answers():
    real = torch.arange(10.0)[:, None]  # 1D grid: every k=1 radius is 1
    m = precision_recall_density_coverage(real, torch.tensor([[0.5]]), k=1)
    assert m["precision"] == 1.0 and m["coverage"] == pytest.approx(0.2) and m["density"] == pytest.approx(2.0)
    assert math.isnan(m["recall"])  # needs more than k fakes
    same = precision_recall_density_coverage(real, real.clone(), k=1)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # interior points lie in 3 balls (own + both neighbours), the two ends in 2: density = (8·3 + 2·2)/10
    assert same["density"] == pytest.approx(2.8)
    far = precision_recall_density_coverage(real, real + 100.0, k=1)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # a mode-collapsed fake set: high precision, low coverage; a spread one: both high (Gaussian, k=5)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(400, 4, generator=g)
    collapsed = 0.05 * torch.randn(200, 4, generator=g)
    spread = torch.randn(400, 4, generator=g)
    mc = precision_recall_density_coverage(r, collapsed, k=5)
    ms = precision_recall_density_coverage(r, spread, k=5)
    assert mc["precision"] > 0.95 and mc["coverage"] < 0.2 and mc["recall"] < 0.2
    assert ms["coverage"] > 0.85 and ms["precision"] > 0.8 and 0.7 < ms["density"] < 1.3
