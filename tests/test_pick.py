"""Which previews are lifted to 3D: foreground colour and silhouette histograms, image-encoder features and the max-min
pick (dreamdist3d.sample2d.pick)."""

import pytest
import torch

from dreamdist3d.sample2d.pick import (
    colour_histograms,
    most_different,
    parse_features,
    pick_previews,
    preview_features,
    silhouette_histograms,
)

COLOURS = {"red": (0.9, 0.1, 0.1), "yellow": (0.95, 0.85, 0.1), "blue": (0.1, 0.2, 0.9), "green": (0.1, 0.7, 0.2)}


def _square(colour, size=8, at=(10, 10), background=(1.0, 1.0, 1.0), hw=32, width=None):
    """(3, hw, hw): a filled `size`×`width` (default square) rectangle of `colour` on a plain background."""
    img = torch.tensor(background).view(3, 1, 1).expand(3, hw, hw).clone()
    y, x = at
    img[:, y:y + size, x:x + (width or size)] = torch.tensor(colour).view(3, 1, 1)
    return img


def _disc(colour, radius=6, centre=(16, 16), hw=32):
    yy, xx = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    img = torch.ones(3, hw, hw)
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2
    img[:, inside] = torch.tensor(colour).view(3, 1)
    return img


def test_histogram_reads_the_object_not_its_size_place_or_background():
    a = _square(COLOURS["red"], size=6, at=(2, 3))
    b = _square(COLOURS["red"], size=16, at=(12, 9), background=(0.5, 0.5, 0.5))  # grey background, bigger square
    c = _square(COLOURS["blue"], size=6, at=(2, 3))
    h = colour_histograms(torch.stack([a, b, c]))
    assert h.shape == (3, 64)
    assert torch.allclose(h.sum(1), torch.ones(3, dtype=h.dtype))
    assert torch.equal(h[0], h[1])  # one cell: the red one
    assert (h[0] - h[2]).abs().sum() == pytest.approx(2.0)  # disjoint cells: the largest L1 distance


def test_histogram_of_multiview_previews_averages_views_and_empty_views_count_zero():
    views = torch.stack([_square(COLOURS["red"]), _square(COLOURS["blue"]), torch.ones(3, 32, 32),
                         torch.ones(3, 32, 32)])  # (F=4, 3, H, W): two views empty
    h = colour_histograms(views[None])
    assert h.shape == (1, 64)
    assert sorted(h[0][h[0] > 0].tolist()) == [0.25, 0.25]
    broken = _square(COLOURS["red"])
    broken[:, 12:14, 12:14] = float("nan")  # a diverged sample: NaN pixels count as black, never as an error
    assert torch.isfinite(colour_histograms(broken[None])).all()
    with pytest.raises(ValueError, match="expected images"):
        colour_histograms(torch.ones(2, 1, 32, 32))


def test_most_different_takes_the_medoid_then_the_farthest():
    f = torch.tensor([[0.0], [1.0], [1.1], [0.9], [10.0]])
    assert most_different(f, 1) == [1]  # the medoid: least total distance
    assert most_different(f, 2) == [1, 4]
    assert most_different(f, 3) == [1, 4, 0]
    assert most_different(f, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        most_different(f, 0)


def test_pick_spreads_a_majority_colour_set_over_its_colours():
    # 16 previews as a set like the warm toy set: 8 red, 5 yellow, 2 blue, 1 green, squares of varying size and place
    g = torch.Generator().manual_seed(0)
    names = ["red"] * 8 + ["yellow"] * 5 + ["blue"] * 2 + ["green"]
    order = torch.randperm(16, generator=g).tolist()
    imgs = []
    for i in order:
        size = int(torch.randint(5, 14, (1,), generator=g))
        at = tuple(int(v) for v in torch.randint(0, 32 - size, (2,), generator=g))
        imgs.append(_square(COLOURS[names[i]], size=size, at=at))
    picked = pick_previews(torch.stack(imgs), 4)
    assert len(set(picked)) == 4
    assert {names[order[p]] for p in picked} == set(COLOURS)  # all four colours, though two are 1-2 of 16
    first4 = {names[order[p]] for p in range(4)}
    assert len(first4) < 4  # the first four draws repeat a colour: what the pick is for


def test_silhouettes_tell_same_coloured_shapes_apart_where_colours_cannot():
    red = COLOURS["red"]
    square, disc = _square(red, size=12, at=(10, 10)), _disc(red, radius=7)
    tall, small = _square(red, size=20, at=(6, 13), width=6), _square(red, size=6, at=(13, 13))
    imgs = torch.stack([square, disc, tall, small])
    col = colour_histograms(imgs)
    assert torch.equal(col[0], col[1]) and torch.equal(col[0], col[2])  # one red cell each
    sil = silhouette_histograms(imgs)
    assert sil.shape == (4, 64) and torch.allclose(sil.sum(1), torch.ones(4, dtype=sil.dtype))
    d = torch.cdist(sil, sil, p=1)
    assert d[0, 1] > 0.1 and d[0, 2] > 0.5 and d[0, 3] > 0.5  # shape, aspect and size all move the silhouette
    assert float(d[0, 2]) > float(d[0, 1])  # a tall bar is farther from a square than a disc of its size is
    moved = _square(red, size=12, at=(10, 10))
    assert torch.equal(silhouette_histograms(moved[None])[0], sil[0])
    views = torch.stack([square, torch.ones(3, 32, 32)])[None]  # a view with no foreground counts as empty
    assert torch.allclose(silhouette_histograms(views)[0], sil[0] / 2)
    both, p = preview_features(imgs, "colour+form")
    assert both.shape == (4, 128) and p == 1.0 and torch.equal(both[:, :64], col) and torch.equal(both[:, 64:], sil)


def test_pick_by_form_spreads_a_one_colour_set_over_its_shapes():
    """16 red previews: 10 squares, 4 tall bars, 2 discs, jittered in size. The colour pick cannot see the shapes (all
    its features are equal, so it takes the first four); the form pick takes all three shapes."""
    g = torch.Generator().manual_seed(1)
    kinds = ["square"] * 10 + ["bar"] * 4 + ["disc"] * 2
    order = torch.randperm(16, generator=g).tolist()
    imgs = []
    for i in order:
        j = int(torch.randint(-1, 2, (1,), generator=g))
        if kinds[i] == "square":
            imgs.append(_square(COLOURS["red"], size=11 + j, at=(10, 10)))
        elif kinds[i] == "bar":
            imgs.append(_square(COLOURS["red"], size=20 + j, at=(6, 13), width=6))
        else:
            imgs.append(_disc(COLOURS["red"], radius=7 + j))
    imgs = torch.stack(imgs)
    by_colour = pick_previews(imgs, 4)
    by_form = pick_previews(imgs, 4, "form")
    assert by_colour == [0, 1, 2, 3]
    assert {kinds[order[p]] for p in by_form} == {"square", "bar", "disc"}
    assert {kinds[order[p]] for p in pick_previews(imgs, 4, "colour+form")} == {"square", "bar", "disc"}


def test_feature_specs_and_their_errors():
    assert parse_features("colour") == ("colour", None) and parse_features("colour+form") == ("colour+form", None)
    assert parse_features("dinov2=/models/dinov2-base") == ("dinov2", "/models/dinov2-base")
    for bad in ("shape", "dinov2=", "resnet=/x", ""):
        with pytest.raises(ValueError, match="--features"):
            parse_features(bad)
    with pytest.raises(ValueError, match="not loaded"):
        preview_features(torch.ones(2, 3, 32, 32), "dinov2=/models/dinov2-base")


def test_pick_by_a_local_image_encoder(tmp_path):
    """`dinov2=DIR`: each view through the encoder, unit-normalised, averaged over views; Euclidean max-min. Checked
    against the encoder's own embeddings of the same PIL images (random tiny weights: plumbing, not meaning)."""
    import numpy as np
    from PIL import Image

    from dreamdist3d.evaluation.features import load_encoder
    from dreamdist3d.testing.encoders import write_tiny_encoders

    folder = write_tiny_encoders(tmp_path, ("dinov2",))["dinov2"]
    enc = load_encoder("dinov2", folder, "cpu")
    views = torch.stack([torch.stack([_square(c, size=8 + 2 * i), _disc(c, radius=4 + i)])
                         for i, c in enumerate(COLOURS.values())])  # (4 samples, 2 views, 3, 32, 32)
    feats, p = preview_features(views, f"dinov2={folder}", enc)
    assert feats.shape == (4, 32) and p == 2.0
    pil = [Image.fromarray((v.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) for v in views.flatten(0, 1)]
    e = torch.nn.functional.normalize(torch.from_numpy(np.asarray(enc.embed_images(pil))).double(), dim=-1)
    torch.testing.assert_close(feats, e.reshape(4, 2, -1).mean(1))
    assert pick_previews(views, 2, f"dinov2={folder}", enc) == most_different(feats, 2, p=2.0)
