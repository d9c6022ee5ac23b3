"""Which previews are lifted to 3D: foreground colour histograms and the max-min pick (dreamdist3d.sample2d.pick)."""

import pytest
import torch

from dreamdist3d.sample2d.pick import colour_histograms, most_different, pick_previews

COLOURS = {"red": (0.9, 0.1, 0.1), "yellow": (0.95, 0.85, 0.1), "blue": (0.1, 0.2, 0.9), "green": (0.1, 0.7, 0.2)}


def _square(colour, size=8, at=(10, 10), background=(1.0, 1.0, 1.0), hw=32):
    """(3, hw, hw): a filled square of `colour` on a plain background."""
    img = torch.tensor(background).view(3, 1, 1).expand(3, hw, hw).clone()
    y, x = at
    img[:, y:y + size, x:x + size] = torch.tensor(colour).view(3, 1, 1)
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
