"""`dreamdist3d.evaluation.metrics` against closed forms and hand-computed values, and the toy evaluator's numbers
through the same code (one implementation of P/R/D/C, not two)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dreamdist3d.evaluation import metrics as M


# ----------------------------------------------------------------------------------------------------- Fréchet
def _exact_moments(rng, n, mean, cov):
    """n points whose sample mean is exactly `mean` and whose unbiased sample covariance is exactly `cov`."""
    d = len(mean)
    z = rng.standard_normal((n, d))
    z -= z.mean(0)
    chol = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(chol).T  # sample covariance exactly I
    return z @ np.linalg.cholesky(cov).T + mean


def test_psd_sqrt_including_rank_deficient():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 3))
    for m in (a.T @ a, a @ a.T):  # full rank 3x3, rank-3 6x6
        r = M.psd_sqrt(m)
        np.testing.assert_allclose(r @ r, m, atol=1e-10)
        np.testing.assert_allclose(r, r.T, atol=1e-12)
        assert np.linalg.eigvalsh(r).min() > -1e-7


def test_frechet_closed_forms():
    # 1-D: (m1-m2)^2 + (s1-s2)^2
    assert M.frechet_from_moments([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal: sum of (mu diff)^2 + sum (sqrt a - sqrt b)^2
    assert M.frechet_from_moments([0, 0], np.diag([1.0, 4.0]), [1, 2], np.diag([9.0, 16.0])) == pytest.approx(5 + 4 + 4)
    # non-commuting covariances: Σ1 = I, Σ2 = Q diag(λ) Qᵀ -> Σ (1 - √λ)²
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    lam = np.array([0.25, 1.0, 4.0, 9.0])
    s2 = q @ np.diag(lam) @ q.T
    assert M.frechet_from_moments(np.zeros(4), np.eye(4), np.zeros(4),
                                  s2) == pytest.approx(((1 - np.sqrt(lam)) ** 2).sum())
    # general pair: tr((Σ1Σ2)^½) from the eigenvalues of Σ1Σ2 directly
    b = rng.standard_normal((4, 4))
    s1 = b @ b.T + 0.1 * np.eye(4)
    expected = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_on_features_with_known_moments():
    rng = np.random.default_rng(2)
    cov_a, cov_b = np.diag([1.0, 2.0, 0.5]), np.array([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 3.0]])
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 1.0])
    a, b = _exact_moments(rng, 50, mu_a, cov_a), _exact_moments(rng, 40, mu_b, cov_b)
    assert M.frechet_distance(a, b) == pytest.approx(M.frechet_from_moments(mu_a, cov_a, mu_b, cov_b), rel=1e-9)
    assert M.frechet_distance(torch.tensor(a), b) == pytest.approx(M.frechet_distance(a, b))  # tensors accepted
    # fewer images than dimensions (rank-deficient covariances, the usual case with 5-20 photos): FD(a, a) = 0
    few = rng.standard_normal((8, 64))
    assert M.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(few, few + 1.0) == pytest.approx(64.0, rel=1e-6)  # a pure shift: |Δμ|²
    with pytest.raises(ValueError):
        M.frechet_distance(few[:1], few)


# ----------------------------------------------------------------------------------------------------- KID
def test_mmd2_unbiased_hand_computed():
    # kernel (x·y/1 + 1)^3 on 1-D sets {0,1} and {2,3}: within a: k(0,1)=1; within b: k(2,3)=343;
    # across: k(0,2)=k(0,3)=1, k(1,2)=27, k(1,3)=64 -> mean 23.25; MMD² = 1 + 343 - 2·23.25
    assert M.mmd2_unbiased([[0.0], [1.0]], [[2.0], [3.0]]) == pytest.approx(297.5)


def test_kid_unbiased_on_two_draws_of_one_distribution():
    rng = np.random.default_rng(3)
    vals = np.array([M.mmd2_unbiased(rng.standard_normal((10, 4)), rng.standard_normal((10, 4))) for _ in range(400)])
    se = vals.std() / math.sqrt(len(vals))
    assert abs(vals.mean()) < 3 * se  # unbiased: 0 in expectation (the biased V-statistic would be clearly > 0)
    # the V-statistic (diagonals included) on the same draws is biased upwards: this test can tell them apart
    v = []
    for _ in range(400):
        a, b = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
        v.append(M.polynomial_kernel(a, a).mean() + M.polynomial_kernel(b, b).mean() - 2 * M.polynomial_kernel(a,
                                                                                                               b).mean())
    assert np.mean(v) > 10 * se


def test_kid_known_value_on_shifted_sets():
    # D=1, kernel (xy+1)^3 = (xy)^3 + 3(xy)^2 + 3xy + 1, independent draws: E k(x,y) = Σ_j c_j E x^j E y^j with
    # c = (3, 3, 1) for j = 1, 2, 3, so MMD² = Σ_j c_j (E x^j - E y^j)². x uniform on {-1, 1}: moments (0, 1, 0);
    # y uniform on {-0.5, 1.5} (x shifted in mean by 0.5, same variance): moments (0.5, 1.25, 1.625).
    expected = 3 * 0.5 ** 2 + 3 * 0.25 ** 2 + 1.625 ** 2  # 3.578125 (as N(0,1) vs N(0.5,1): same 3 moments)
    rng = np.random.default_rng(4)

    def draw(n):
        return rng.choice([-1.0, 1.0], (n, 1)), rng.choice([-0.5, 1.5], (n, 1))

    vals = np.array([M.mmd2_unbiased(*draw(40)) for _ in range(2000)])
    se = vals.std() / math.sqrt(len(vals))
    assert se < 0.06 and abs(vals.mean() - expected) < 4 * se  # unbiased on 40-point sets
    x, y = draw(600)
    mean, std = M.kernel_distance(x, y, n_subsets=20, subset_size=200)
    assert std > 0 and abs(mean - expected) < 4 * std
    # subsets as large as both sets: every subset is the whole set, std 0
    mean_all, std_all = M.kernel_distance(x[:50], y[:50], n_subsets=3)
    assert std_all == 0.0 and mean_all == pytest.approx(M.mmd2_unbiased(x[:50], y[:50]))


# ----------------------------------------------------------------------------------------------------- PRDC
REAL = np.arange(10.0)[:, None]  # 0..9 on a line; k=5 radii: 5 4 3 3 3 3 3 3 4 5


def test_knn_radii_hand_computed():
    np.testing.assert_array_equal(M.knn_radii(REAL, 5), [5, 4, 3, 3, 3, 3, 3, 3, 4, 5])


def test_prdc_k5_hand_computed():
    fake = np.array([-4.5, 2.0, 2.0, 20.0, 11.0, 13.5])[:, None]
    r = M.prdc(REAL, fake, k=5)
    # precision: all but 20 lie in some real ball (-4.5 in ball(0,5); 11 and 13.5 in ball(9,5))
    assert r["precision"] == pytest.approx(5 / 6)
    # density: balls holding each fake: -4.5: 1; 2: balls of 0..5 (5 on its closed boundary) = 6, twice; 20: 0;
    # 11: balls of 8 and 9 = 2; 13.5: ball of 9 = 1 -> 16 / (k·M = 30)
    assert r["density"] == pytest.approx(16 / 30)
    # coverage: reals 6 and 7 (radius 3) have no fake within 3 -> 8/10
    assert r["coverage"] == pytest.approx(0.8)
    # recall: fake radii (5th of 5 other fakes) are 18 or more: every real is inside
    assert r["recall"] == 1.0


def test_prdc_recall_and_edge_cases():
    # k=2, fakes 0, 0.5, 1, 2: radii 1, 0.5, 1, 1.5 -> balls cover [-1, 3.5] -> reals 0..3 -> recall 0.4
    r = M.prdc(REAL, np.array([[0.0], [0.5], [1.0], [2.0]]), k=2)
    assert r["recall"] == pytest.approx(0.4)
    assert r["precision"] == 1.0
    assert math.isnan(M.prdc(REAL, np.array([[1.0], [2.0]]), k=5)["recall"])  # M <= k: fake balls undefined
    assert M.prdc(REAL, np.zeros((0, 1)), k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(ValueError, match="more than k=5"):
        M.prdc(REAL[:5], REAL, k=5)
    same = M.prdc(REAL, REAL.copy(), k=5)  # the set against itself: everything in, density exactly 1 + ties
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0


# ----------------------------------------------------------------------------------------------------- cosine
def test_cosine_metrics_hand_computed():
    assert M.diversity([[1.0, 0.0], [0.0, 3.0]]) == pytest.approx(1.0)
    assert M.diversity([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]]) == pytest.approx(2 / 3)  # pair cosines 1, 0, 0
    assert math.isnan(M.diversity([[1.0, 0.0]]))
    assert M.mean_cosine([[1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0], [-2.0, 0.0]]) == pytest.approx(0.0)
    assert M.mean_cosine([[1.0, 1.0]], [[3.0, 0.0]]) == pytest.approx(1 / math.sqrt(2))
    idx, cos = M.nearest([[1.0, 0.1], [0.0, -1.0]], [[0.0, 1.0], [1.0, 0.0], [0.1, -1.0]])
    assert idx.tolist() == [1, 2] and cos[1] == pytest.approx(1 / math.sqrt(1.01))
    assert M.mean_pairwise_l2([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]]) == pytest.approx((5 + 5 + 0) / 3)


# ----------------------------------------------------------------------------------------------------- toy world
def _old_prdc(real, fake, k=5):
    """The toy evaluator's own P/R/D/C as it was before it called `metrics.prdc` (commit d9e42ad), frozen here."""
    real, fake = real.double(), fake.double()
    m = fake.shape[0]

    def kth_radius(x):
        return torch.cdist(x, x).topk(k + 1, largest=False).values[:, k]

    r_real = kth_radius(real)
    d_rf = torch.cdist(real, fake)
    inside = d_rf <= r_real[:, None]
    out = {"precision": float(inside.any(0).double().mean()), "density": float(inside.double().sum(0).mean() / k),
           "coverage": float((d_rf.min(1).values <= r_real).double().mean())}
    out["recall"] = float((d_rf <= kth_radius(fake)[None, :]).any(1).double().mean()) if m > k else float("nan")
    return out


def _old_pairwise(x):
    m = x.shape[0]
    return float(torch.cdist(x.double(), x.double()).sum() / (m * (m - 1)))


def test_toy_evaluator_numbers_unchanged():
    """The toy evaluator's metrics now come from `metrics.prdc`; on the toy world's attribute features (exact and
    perturbed as a reader's would be) they equal the numbers of its former implementation. One deliberate difference:
    a fake lying exactly on a real ball's boundary (e.g. fakes that are copies of reals) was decided by the rounding
    of torch.cdist's |a|²+|b|²-2a·b and is now decided exactly (density 1.1625 before vs 1.175 now for 32 copies of
    64 world reals); the cases below have no such ties."""
    from dreamdist3d.recipes.toy_eval import pairwise_mean_distance, score_readings
    from dreamdist3d.toyworld.attributes import precision_recall_density_coverage, spec_feature
    from dreamdist3d.toyworld.objects import sample_objects
    from dreamdist3d.toyworld.refsets import get_refset

    rs = get_refset("warm-cones-cylinders")
    specs = rs.specs()
    real = torch.stack([spec_feature(s) for s in sample_objects(64, 0)])
    g = torch.Generator().manual_seed(0)
    world = torch.stack([spec_feature(s) for s in sample_objects(32, 1)])
    fakes = {
        "world": world,
        "world+noise": world + 0.05 * torch.randn(world.shape, generator=g),
        "refset": torch.stack([spec_feature(s) for s in specs]),
        "collapsed": torch.stack([spec_feature(specs[0])] * 12),
        "few": torch.stack([spec_feature(s) for s in specs[:3]]),
    }
    for name, fake in fakes.items():
        old, new = _old_prdc(real, fake), precision_recall_density_coverage(real, fake)
        for key in old:
            assert (math.isnan(old[key]) and math.isnan(new[key])) or new[key] == pytest.approx(old[key],
                                                                                                abs=1e-12), (name, key)
    assert pairwise_mean_distance(world) == pytest.approx(_old_pairwise(world), rel=1e-9)

    # score_readings (the evaluator's per-method numbers) on readings carrying these features
    readings = [SimpleNamespace(ok=True, feature=f, labels=s.labels) for f, s in zip(fakes["world+noise"],
                                                                                     sample_objects(32, 1))]
    s = score_readings(readings, rs.support, real)
    old = _old_prdc(real, fakes["world+noise"])
    for key in old:
        assert s[key] == pytest.approx(old[key], abs=1e-12)
    # distances now come from the differences themselves; torch.cdist's |a|²+|b|²-2a·b rounded at ~1e-10
    assert s["diversity"] == pytest.approx(_old_pairwise(fakes["world+noise"]), rel=1e-9)


def test_frechet_agrees_with_the_usual_scipy_sqrtm_formula():
    """FID code (pytorch-fid, torch-fidelity) takes tr(sqrtm(Σ1 Σ2)) with scipy; our eigen route gives the same."""
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((60, 12)), rng.standard_normal((50, 12)) @ rng.standard_normal((12, 12)) * 0.5 + 0.3
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    usual = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert M.frechet_distance(a, b) == pytest.approx(usual, rel=1e-8)
