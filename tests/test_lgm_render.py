"""The Gaussian renderer: against a plain per-Gaussian reference of the 3DGS rasteriser, analytic splats, this repo's
camera conventions (camera_batch), depth order, legacy quaternions, gradients, and gsplat where it can run."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import F32

from dreamdist3d.backbones.cameras import c2w_from_spherical
from dreamdist3d.lift3d.data import camera_batch
from dreamdist3d.reconstruct import Gaussians
from dreamdist3d.reconstruct.render import gsplat_available, render_gaussians


def reference_render(g: Gaussians, c2w: torch.Tensor, fovy: float, h: int, w: int, bg: torch.Tensor,
                     near: float = 0.2, tile: int = 16):
    """One view, one Gaussian at a time (nearest first), from the 3DGS CUDA code's rules, written independently of
    render.py: the EWA Jacobian by autograd (no Gaussian here leaves the 1.3·fov clamp), tiles by each Gaussian's
    3-sigma rectangle, sequential compositing with the 1/255, 0.99 and T < 1e-4 rules."""
    rot, pos = c2w[:3, :3], c2w[:3, 3]
    f = 0.5 * h / math.tan(math.radians(fovy) / 2)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    view = flip @ rot.T  # world -> OpenCV camera axes

    def to_pixel(p_cam):
        return torch.stack([f * p_cam[0] / p_cam[2] + w / 2 - 0.5, f * p_cam[1] / p_cam[2] + h / 2 - 0.5])

    jj, ii = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    color = torch.zeros(h, w, 3)
    trans = torch.ones(h, w)
    done = torch.zeros(h, w, dtype=torch.bool)
    cams = (g.means - pos) @ view.T
    for i in torch.argsort(cams[:, 2], stable=True).tolist():
        p = cams[i]
        if p[2] <= near:
            continue
        jac = torch.autograd.functional.jacobian(to_pixel, p)  # (2,3)
        cov = jac @ view @ g.covariances()[i] @ view.T @ jac.T + 0.3 * torch.eye(2)
        inv = torch.linalg.inv(cov)
        lam = 0.5 * (cov[0, 0] + cov[1, 1]) + torch.sqrt(torch.clamp(((cov[0, 0] - cov[1, 1]) / 2) ** 2
                                                                     + cov[0, 1] ** 2, min=0.1))
        r = math.ceil(3 * math.sqrt(float(lam)))
        u, v = to_pixel(p).tolist()
        tx0, tx1 = [min(max(int(math.floor(a / tile)), 0), -(-w // tile)) for a in (u - r, u + r + tile - 1)]
        ty0, ty1 = [min(max(int(math.floor(a / tile)), 0), -(-h // tile)) for a in (v - r, v + r + tile - 1)]
        in_rect = ((ii // tile >= tx0) & (ii // tile < tx1) & (jj // tile >= ty0) & (jj // tile < ty1))
        dx, dy = u - ii, v - jj
        power = -0.5 * (inv[0, 0] * dx * dx + inv[1, 1] * dy * dy) - inv[0, 1] * dx * dy
        alpha = torch.clamp(g.opacities[i] * torch.exp(power), max=0.99)
        use = in_rect & (power <= 0) & (alpha >= 1 / 255) & ~done
        test = trans * (1 - alpha)
        stop = use & (test < 1e-4)
        done |= stop
        use &= ~stop
        color += torch.where(use[..., None], (alpha * trans)[..., None] * g.colors[i], 0.0)
        trans = torch.where(use, test, trans)
    return color + trans[..., None] * bg, 1 - trans


def random_gaussians(n: int, seed: int, spread: float = 0.3) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=(torch.rand(n, 3, generator=g) * 2 - 1) * spread,
        opacities=torch.rand(n, generator=g) * 0.95 + 0.05,
        scales=torch.rand(n, 3, generator=g) * 0.12 + 0.02,
        rotations=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        colors=torch.rand(n, 3, generator=g),
    )


def single(mean, scale=0.05, opacity=0.9, color=(1.0, 0.0, 0.0)) -> Gaussians:
    return Gaussians(torch.tensor([mean], dtype=torch.float32), torch.tensor([opacity]),
                     torch.full((1, 3), scale), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([color]))


def test_matches_the_reference_rasteriser():
    g = random_gaussians(80, seed=0)
    c2w = c2w_from_spherical(torch.tensor([20.0, -10.0]), torch.tensor([30.0, 200.0]), 1.6)
    bg = torch.tensor([0.2, 0.5, 1.0])
    out = render_gaussians(g, c2w, 45.0, 29, 37, background=bg, backend="torch", max_elements=5000)
    assert out.rgb.shape == (2, 29, 37, 3) and out.alpha.shape == (2, 29, 37, 1) and out.depth.shape == (2, 29, 37, 1)
    for v in range(2):
        rgb, alpha = reference_render(g, c2w[v], 45.0, 29, 37, bg)
        torch.testing.assert_close(out.rgb[v], rgb, atol=2e-5, rtol=0)
        torch.testing.assert_close(out.alpha[v, ..., 0], alpha, atol=2e-5, rtol=0)
    assert 0.2 < float(out.alpha.mean()) < 0.95  # neither empty nor saturated
    assert (out.alpha > 1 - 1e-3).any()  # some pixels stop early (T < 1e-4)


def test_single_splat_is_the_projected_gaussian():
    """A Gaussian at the centre of an odd-sized view: peak = opacity, falloff exp(-k²/2(σ²+0.3)) with σ = f·s/d."""
    d, s, fovy, size = 2.0, 0.04, 40.0, 33
    out = render_gaussians(single((0.0, 0.0, 0.0), s, 0.8, (0.2, 0.6, 1.0)), c2w_from_spherical(0.0, 0.0, d), fovy,
                           size, size, background=(0.0, 0.0, 0.0), backend="torch")
    alpha = out.alpha[0, ..., 0]
    c = size // 2
    assert alpha.argmax() == c * size + c
    torch.testing.assert_close(out.rgb[0, c, c], torch.tensor([0.2, 0.6, 1.0]) * 0.8, atol=1e-6, rtol=0)
    sigma2 = (0.5 * size / math.tan(math.radians(fovy) / 2) * s / d) ** 2 + 0.3
    for k in (1, 2, 3):
        want = 0.8 * math.exp(-k * k / (2 * sigma2))
        assert alpha[c, c + k].item() == pytest.approx(want, rel=1e-4)
        assert alpha[c - k, c].item() == pytest.approx(want, rel=1e-4)
    torch.testing.assert_close(out.depth[0, c, c, 0], torch.tensor(0.8 * d), atol=1e-5, rtol=0)


def test_this_repos_camera_conventions():
    """Up (+z) is up in the image, and a Gaussian on camera_batch's ray of pixel (row 5, col 11) lands there."""
    batch = camera_batch(torch.tensor([10.0]), torch.tensor([30.0]), torch.tensor([2.0]), torch.tensor([50.0]),
                         24, 32)
    c2w = batch["c2w"]
    up = render_gaussians(single((0.0, 0.0, 0.4)), c2w, 50.0, 24, 32, backend="torch").alpha[0, ..., 0]
    assert divmod(int(up.argmax()), 32)[0] < 12  # above the centre row
    on_ray = batch["rays_o"][0, 5, 11] + 1.8 * batch["rays_d"][0, 5, 11]
    a = render_gaussians(single(on_ray.tolist(), scale=0.01), c2w, 50.0, 24, 32, backend="torch").alpha[0, ..., 0]
    assert divmod(int(a.argmax()), 32) == (5, 11)
    # the azimuth-0 camera sits on +x; world +y is to its right (larger column)
    right = render_gaussians(single((0.0, 0.4, 0.0)), c2w_from_spherical(0.0, 0.0, 2.0), 50.0, 24, 32,
                             backend="torch").alpha[0, ..., 0]
    assert divmod(int(right.argmax()), 32)[1] > 16


def test_depth_order_and_culling():
    red, blue = single((0.3, 0.0, 0.0), 0.1, 0.99, (1.0, 0.0, 0.0)), single((-0.3, 0.0, 0.0), 0.1, 0.99, (0, 0, 1.0))
    both = Gaussians(*(torch.cat([getattr(red, k), getattr(blue, k)]) for k in
                       ("means", "opacities", "scales", "rotations", "colors")))
    front = c2w_from_spherical(0.0, torch.tensor([0.0, 180.0]), 2.0)  # from +x, then from -x
    rgb = render_gaussians(both, front, 40.0, 17, 17, backend="torch").rgb[:, 8, 8]
    assert rgb[0, 0] > 0.95 and rgb[0, 2] < 0.05  # red is nearer from +x
    assert rgb[1, 2] > 0.95 and rgb[1, 0] < 0.05
    behind = render_gaussians(single((3.0, 0.0, 0.0)), c2w_from_spherical(0.0, 0.0, 2.0), 40.0, 9, 9,
                              background=(0.1, 0.2, 0.3), backend="torch")
    assert behind.alpha.abs().max() == 0
    torch.testing.assert_close(behind.rgb, torch.tensor([0.1, 0.2, 0.3]).expand(1, 9, 9, 3))


def test_legacy_quaternions_render_as_the_official_renderer_draws_them():
    """Non-unit quaternions (legacy LGM) go through the unnormalised formula, like diff-gaussian-rasterization;
    `canonical()` gives unit quaternions that render the same."""
    g = random_gaussians(30, seed=1)
    g = Gaussians(g.means, g.opacities, g.scales, g.rotations * 0.05, g.colors)
    c2w = c2w_from_spherical(15.0, 40.0, 1.6)
    a = render_gaussians(g, c2w, 45.0, 24, 24, backend="torch")
    b = render_gaussians(g.canonical(), c2w, 45.0, 24, 24, backend="torch")
    torch.testing.assert_close(a.rgb, b.rgb, atol=1e-5, rtol=0)
    unit = Gaussians(g.means, g.opacities, g.scales, torch.nn.functional.normalize(g.rotations, dim=-1), g.colors)
    assert (render_gaussians(unit, c2w, 45.0, 24, 24, backend="torch").rgb - a.rgb).abs().max() > 0.05


def test_gradients_reach_every_field():
    g = random_gaussians(20, seed=2)
    leaves = [t.clone().requires_grad_(True) for t in (g.means, g.opacities, g.scales, g.rotations, g.colors)]
    out = render_gaussians(Gaussians(*leaves), c2w_from_spherical(20.0, 10.0, 1.5), 45.0, 16, 16, backend="torch")
    (out.rgb.square().mean() + out.alpha.mean()).backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().max() > 0


def test_errors():
    g = random_gaussians(4, seed=3)
    c2w = c2w_from_spherical(0.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="backend"):
        render_gaussians(g, c2w, 40.0, 8, 8, backend="cuda")
    with pytest.raises(ValueError, match="one object"):
        render_gaussians(Gaussians(*(t[None] for t in (g.means, g.opacities, g.scales, g.rotations, g.colors))),
                         c2w, 40.0, 8, 8)
    if not (gsplat_available() and torch.cuda.is_available()):
        with pytest.raises(RuntimeError, match="gsplat"):
            render_gaussians(g, c2w, 40.0, 8, 8, backend="gsplat")


NO_GSPLAT = ("gsplat is not installed (the optional CUDA fast path)" if not gsplat_available()
             else "gsplat needs CUDA" if not torch.cuda.is_available() else "")


@pytest.mark.skipif(bool(NO_GSPLAT), reason=NO_GSPLAT)
def test_gsplat_matches_the_torch_backend():
    g = random_gaussians(200, seed=4).to("cuda")
    c2w = c2w_from_spherical(torch.tensor([20.0, 0.0]), torch.tensor([30.0, 250.0]), 1.6).cuda()
    a = render_gaussians(g, c2w, 45.0, 64, 48, backend="torch")
    b = render_gaussians(g, c2w, 45.0, 64, 48, backend="gsplat")
    assert (a.rgb - b.rgb).abs().mean() < 2e-3
    assert (a.rgb - b.rgb).abs().max() < 5e-2
    assert (a.alpha - b.alpha).abs().mean() < 2e-3


def test_gaussians_below_the_alpha_floor_change_nothing():
    """Gaussians of opacity < 1/255 are culled before tiling: the image and every gradient equal those of the set
    without them (their alpha never reaches 1/255 at any pixel)."""
    gen = torch.Generator().manual_seed(3)
    n = 40
    opacities = torch.rand(n, generator=gen) * 0.9 + 0.05
    opacities[::3] = 0.003  # below 1/255
    g = Gaussians((torch.rand(n, 3, generator=gen) - 0.5) * 0.8, opacities, torch.rand(n, 3, generator=gen) * 0.1
                  + 0.05, torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
                  torch.rand(n, 3, generator=gen))
    c2w = c2w_from_spherical(torch.tensor([10.0, 30.0]), torch.tensor([0.0, 120.0]), 2.5)
    live = opacities >= 1 / 255

    def render_of(gs):
        leaves = [t.clone().requires_grad_(True) for t in (gs.means, gs.colors, gs.opacities)]
        out = render_gaussians(Gaussians(leaves[0], leaves[2], gs.scales, gs.rotations, leaves[1]), c2w, 40.0, 24, 24,
                               backend="torch")
        (out.rgb.square().sum() + out.alpha.sum()).backward()
        return out, leaves

    full, grads_full = render_of(g)
    some, grads_some = render_of(g.select(live))
    torch.testing.assert_close(full.rgb, some.rgb, **F32)
    torch.testing.assert_close(full.alpha, some.alpha, **F32)
    for a, b in zip(grads_full, grads_some):
        torch.testing.assert_close(a.grad[live], b.grad, **F32)
        assert (a.grad[~live] == 0).all()
