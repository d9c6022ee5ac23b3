"""The `kernel` sampling law: a mixture of K Gaussians around the shrunk prompts (distribution/gaussian.py).

b = 1 is the low-rank Gaussian draw for draw; b = 0 draws the K prompts themselves; the covariance is
(b² + (1−b²)(K−1)/K)·Σ; every prompt is picked equally often; γ = 0 is μ; a mixture of files picks one prompt per
file (`groups`), and the groups survive scaling, device moves and save/load; the seed rule holds.
"""

import pytest
import torch
from conftest import F32

import dreamdist3d.distribution.gaussian as gaussian
from dreamdist3d.distribution import PromptGaussian


def _points(k=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(k, 1, d, generator=g) * 2.0  # a look shared by all 77 states of a prompt
    return (shared + 0.3 * torch.randn(k, 77, d, generator=g)).float()


def _nearest(x: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """(n,) distance of each sample to its nearest prompt (float64: float32 cdist rounds at 1e-2 here)."""
    return torch.cdist(x.flatten(1).double(), pts.flatten(1).double()).min(1).values


def test_bandwidth_one_is_the_lowrank_law_and_zero_the_prompts(monkeypatch):
    pts = _points()
    law = PromptGaussian.from_points(pts, "kernel")
    assert law.noise_shape == (6 + 1,)
    monkeypatch.setattr(gaussian, "KERNEL_BANDWIDTH", 1.0)
    assert torch.equal(law.sample(8, seed=3), law.with_covariance("lowrank").sample(8, seed=3))
    monkeypatch.setattr(gaussian, "KERNEL_BANDWIDTH", 0.0)
    x = law.sample(40, seed=0)
    assert _nearest(x, pts).max() < 1e-4  # every draw is one of the K prompts


def test_kernel_covariance_and_uniform_picks():
    b = gaussian.KERNEL_BANDWIDTH
    assert 0.0 < b < 1.0
    pts = _points(k=5)
    law = PromptGaussian.from_points(pts, "kernel")
    n = 20000
    x = law.sample(n, generator=torch.Generator().manual_seed(1)).reshape(n, -1)[:, :40].double()
    c = pts.reshape(5, -1)[:, :40].double()
    sigma = (c - c.mean(0)).T @ (c - c.mean(0)) / 4  # the K points' unbiased covariance
    want = (b * b + (1 - b * b) * 4 / 5) * sigma
    scale = want.diagonal().max()
    assert (torch.cov(x.T) - want).abs().max() / scale < 0.05
    # each draw sits in the kernel of the prompt it picked: the nearest shrunk prompt, every one about n/K times
    shrunk = c.mean(0) + (1 - b * b) ** 0.5 * (c - c.mean(0))
    counts = torch.bincount(torch.cdist(x, shrunk).argmin(1), minlength=5).double() / n
    assert (counts - 0.2).abs().max() < 0.03


def test_gamma_zero_is_the_mean_and_k1_has_no_spread():
    law = PromptGaussian.from_points(_points(), "kernel")
    assert torch.equal(law.sample(3, scale=0.0, seed=5), law.mean.expand(3, -1, -1))
    assert torch.equal(law.scaled(0.0).sample(2, seed=5), law.mean.expand(2, -1, -1))
    one = PromptGaussian.from_points(_points()[:1], "kernel")
    assert torch.equal(one.sample(2, seed=0), one.mean.expand(2, -1, -1))


def test_mixing_picks_one_prompt_per_file(monkeypatch, tmp_path):
    pa, pb = _points(k=4, seed=1), _points(k=3, seed=2)
    a, b = PromptGaussian.from_points(pa, "kernel"), PromptGaussian.from_points(pb, "kernel")
    m = PromptGaussian.mix([(a, 0.25, 1.0), (b, 0.75, 2.0)])
    assert m.covariance == "kernel" and m.groups == (4, 3) and m.noise_shape == (7 + 2,)
    assert m.scaled(0.5).groups == (4, 3) and m.to(dtype=torch.float64).groups == (4, 3)
    m.save(tmp_path / "law.safetensors")
    assert PromptGaussian.load(tmp_path / "law.safetensors").groups == (4, 3)
    monkeypatch.setattr(gaussian, "KERNEL_BANDWIDTH", 0.0)
    x = m.sample(30, seed=0)
    # with b = 0 a draw is 0.25·h_a + 0.75·(μ_b + 2·(h_b − μ_b)) for one prompt of each file
    combos = torch.stack([0.25 * ha + 0.75 * (pb.mean(0) + 2.0 * (hb - pb.mean(0))) for ha in pa for hb in pb])
    assert _nearest(x, combos).max() < 1e-4
    picked = torch.cdist(x.flatten(1).double(), combos.flatten(1).double()).argmin(1)
    assert len(set((picked // 3).tolist())) == 4 and len(set((picked % 3).tolist())) == 3  # all prompts used
    with pytest.raises(ValueError, match="groups"):
        PromptGaussian(m.mean, m.std, m.factor, "kernel", (4, 4))


def test_seed_rule_holds_for_kernel():
    law = PromptGaussian.from_points(_points(), "kernel")
    assert torch.equal(law.noise(1, 13)[0], law.noise(5, 10)[3])
    torch.testing.assert_close(law.sample(1, seed=13)[0], law.sample(5, seed=10)[3], **F32)
    # the first K numbers of a kernel draw are the low-rank draw's, so the two laws share their coefficients
    assert torch.equal(law.noise(3, 7)[:, :6], law.with_covariance("lowrank").noise(3, 7))
