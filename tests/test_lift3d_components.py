"""Unit tests of the 3D components against hand-written references of threestudio / MVDream-threestudio behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamdist3d.backbones.cameras import c2w_from_spherical, c2w_to_mvdream_camera, get_camera
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.background import SolidColorBackground
from dreamdist3d.lift3d.base import C
from dreamdist3d.lift3d.data import RandomMultiviewCameraDataModule
from dreamdist3d.lift3d.geometry import ImplicitVolume
from dreamdist3d.lift3d.material import NoMaterial
from dreamdist3d.lift3d.networks import HashGridEncoding, SphericalHarmonicsEncoding
from dreamdist3d.lift3d.renderer import NeRFVolumeRenderer, ray_aabb, segment_exclusive_cumsum

MV_DATA = {  # mvdream-sd21.yaml's data section
    "batch_size": [8, 4], "n_view": 4, "width": [64, 256], "height": [64, 256], "resolution_milestones": [5000],
    "camera_distance_range": [0.8, 1.0], "fovy_range": [15, 60], "elevation_range": [0, 30], "camera_perturb": 0.0,
    "center_perturb": 0.0, "up_perturb": 0.0, "n_val_views": 4, "eval_camera_distance": 3.0, "eval_fovy_deg": 40.0,
}
SMALL_GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
              "base_resolution": 4, "per_level_scale": 2.0}

# ---------------------------------------------------------------------------------------------- schedules
def test_scheduled_values_follow_threestudio_C():
    sched = [0, 0.98, 0.02, 8000]
    assert C(0.5, 0, 123) == 0.5
    assert C(sched, 0, 0) == pytest.approx(0.98)
    assert C(sched, 0, 4000) == pytest.approx(0.5)
    assert C(sched, 0, 20000) == pytest.approx(0.02)
    assert C([0.98, 0.5, 8000], 0, 8000) == pytest.approx(0.5)  # 3 elements: start at 0
    assert C([0, 1.0, 0.0, 10.0], 5, 99999) == pytest.approx(0.5)  # float end step counts epochs
    with pytest.raises(ConfigError):
        C([1, 2], 0, 0)


# ---------------------------------------------------------------------------------------------- hash grid
def _naive_hashgrid(enc: HashGridEncoding, x: torch.Tensor) -> torch.Tensor:
    outs = []
    for lv in range(enc.n_levels):
        r = int(enc.res[lv])
        pos = x * r
        p0 = pos.floor().long().clamp(0, r - 1)
        f = pos - p0
        acc = 0
        for b in range(8):
            bits = torch.tensor([(b >> 2) & 1, (b >> 1) & 1, b & 1])
            cc = p0 + bits
            w = torch.where(bits.bool(), f, 1 - f).prod(-1)
            if enc.dense[lv]:
                i = cc[:, 0] + cc[:, 1] * (r + 1) + cc[:, 2] * (r + 1) ** 2
            else:  # Instant-NGP spatial hash, in exact (int64) arithmetic
                i = (cc[:, 0] ^ (cc[:, 1] * 2654435761) ^ (cc[:, 2] * 805459861)) % int(enc.sizes[lv])
            acc = acc + enc.params[i + int(enc.offsets[lv])] * w[:, None]
        outs.append(acc)
    return torch.cat(outs, -1)


def test_hashgrid_matches_naive_trilinear_hash_and_its_gradient():
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0, chunk=64)
    assert enc.dense.tolist() == [True, True, False, False]  # (r+1)^3 <= 2^10 for r = 4, 8
    with torch.no_grad():
        enc.params.normal_()
    x = torch.rand(300, 3)
    x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 1.0]])  # grid corners and faces
    out, ref = enc(x), _naive_hashgrid(enc, x)
    assert out.shape == (300, 8)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(out)
    (ga,) = torch.autograd.grad((out * g).sum(), enc.params)
    (gb,) = torch.autograd.grad((ref * g).sum(), enc.params)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)


def test_hashgrid_default_levels_are_threestudios():
    enc = HashGridEncoding()  # 16 levels × 2 features, 2^19 table, base 16, scale 1.447
    assert enc.n_output_dims == 32
    assert int(enc.res[0]) == 16 and int(enc.res[-1]) == math.floor(16 * 1.447269237440378**15)
    assert int(enc.sizes.max()) == 2**19
    assert float(enc.params.detach().abs().max()) <= 1e-4  # tcnn's uniform ±1e-4 init


def test_spherical_harmonics_degree3_is_orthonormal():
    sh = SphericalHarmonicsEncoding(3, degree=3)
    d = F.normalize(torch.randn(400000, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = sh((d + 1) / 2)  # tcnn's [0, 1] input range
    assert y.shape == (400000, 9)
    gram = (y.T @ y) / y.shape[0] * 4 * math.pi
    torch.testing.assert_close(gram, torch.eye(9), atol=0.03, rtol=0)


# ---------------------------------------------------------------------------------------------- geometry
def test_implicit_volume_blob_bias_and_softplus():
    geo = ImplicitVolume({"pos_encoding_config": SMALL_GRID}, where="system.geometry")
    with torch.no_grad():
        for p in geo.density_network.parameters():
            p.zero_()
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.9]])
    sigma = geo(pts)["density"][:, 0]
    want = F.softplus(10.0 * (1 - pts.norm(dim=-1) / 0.5))  # blob_magic3d on raw points
    torch.testing.assert_close(sigma, want)
    assert geo.cfg.isosurface_threshold == 25.0 and geo.cfg.radius == 1.0
    with pytest.raises(ConfigError, match="system.geometry.densty_bias"):
        ImplicitVolume({"densty_bias": "blob_magic3d"}, where="system.geometry")


# ---------------------------------------------------------------------------------------------- renderer
def _renderer(**over):
    geo = ImplicitVolume({"pos_encoding_config": SMALL_GRID, "normal_type": None}, where="system.geometry")
    mat = NoMaterial({})
    bg = SolidColorBackground({"color": [0.2, 0.4, 0.6]})
    cfg = {"num_samples_per_ray": 128, **over}
    return NeRFVolumeRenderer(cfg, geometry=geo, material=mat, background=bg), geo


def _dense_reference(geo, rays_o, rays_d, n=512, bg=(0.2, 0.4, 0.6)):
    """Plain quadrature: n midpoint samples in the ray–box interval, T = exp(-cumsum σδ)."""
    tn, tf = ray_aabb(rays_o, rays_d, torch.full((3,), -1.0), torch.full((3,), 1.0))
    hit = tf > tn
    t = tn[:, None] + (tf - tn).clamp_min(0)[:, None] * (torch.arange(n) + 0.5)[None] / n
    delta = ((tf - tn).clamp_min(0) / n)[:, None].expand_as(t)
    pts = rays_o[:, None] + t[..., None] * rays_d[:, None]
    out = geo(pts.reshape(-1, 3))
    sigma = out["density"].reshape(t.shape) * hit[:, None]
    rgb = torch.sigmoid(out["features"]).reshape(*t.shape, 3)
    sd = sigma * delta
    T = torch.exp(-(torch.cumsum(sd, 1) - sd))
    w = T * (1 - torch.exp(-sd))
    op = w.sum(1, keepdim=True)
    return (w[..., None] * rgb).sum(1) + torch.tensor(bg) * (1 - op), op


@torch.no_grad()
def test_renderer_matches_dense_quadrature_and_pruning_only_drops_thin_density():
    torch.manual_seed(0)
    rend, geo = _renderer()
    dm = RandomMultiviewCameraDataModule({**MV_DATA, "batch_size": 4, "width": 16, "height": 16,
                                          "resolution_milestones": []})
    batch = dm.train_batch()
    ref_rgb, ref_op = _dense_reference(geo, batch["rays_o"].reshape(-1, 3), batch["rays_d"].reshape(-1, 3))
    rend.eval()
    rend.cfg.grid_prune, rend.cfg.prune_alpha_threshold = False, False
    out = rend(**batch)
    assert out["comp_rgb"].shape == (4, 16, 16, 3) and out["opacity"].shape == (4, 16, 16, 1)
    torch.testing.assert_close(out["opacity"].reshape(-1, 1), ref_op, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["comp_rgb"].reshape(-1, 3), ref_rgb, atol=1e-4, rtol=0)
    # threestudio's defaults: occupancy grid (σ·step > 0.01) and α ≥ 0.01 / T ≥ 1e-4 pruning (nerfacc's rules)
    # skip only the thin tail of the blob: small differences on grazing rays, none through the middle
    rend.cfg.grid_prune, rend.cfg.prune_alpha_threshold = True, True
    rend.update_occupancy()
    assert 0 < rend.binaries.float().mean() < 0.5  # the blob occupies a small part of the box
    out = rend(**batch)
    diff = (out["opacity"].reshape(-1, 1) - ref_op).abs()
    assert float(diff.mean()) < 0.03 and float(diff.max()) < 0.15
    torch.testing.assert_close(out["opacity"][:, 6:10, 6:10], ref_op.reshape(4, 16, 16, 1)[:, 6:10, 6:10], atol=1e-2,
                               rtol=0)
    # the blob (σ(0) ≈ 10, radius 0.5) is opaque in the middle of the frame and absent at the corners
    assert float(out["opacity"][:, 8, 8].min()) > 0.9 and float(out["opacity"][:, 0, 0].max()) < 0.05


def test_renderer_training_outputs_and_gradients():
    torch.manual_seed(0)
    rend, geo = _renderer(num_samples_per_ray=64)
    rend.train()
    rend.update_step(0, 0)  # occupancy update at step 0
    dm = RandomMultiviewCameraDataModule({**MV_DATA, "batch_size": 4, "width": 8, "height": 8,
                                          "resolution_milestones": []})
    out = rend(**dm.train_batch())
    for k in ("weights", "t_points", "t_intervals", "t_dirs", "ray_indices", "points", "density", "features",
              "z_variance"):
        assert k in out
    out["comp_rgb"].sum().backward()
    assert geo.encoding.params.grad is not None and geo.encoding.params.grad.abs().sum() > 0


def test_segment_exclusive_cumsum_per_ray():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    r = torch.tensor([0, 0, 0, 2, 2, 5])
    assert segment_exclusive_cumsum(v, r).tolist() == [0.0, 1.0, 3.0, 0.0, 4.0, 0.0]


# ---------------------------------------------------------------------------------------------- datamodule
def test_multiview_datamodule_groups_progressive_resolution_and_orbits():
    torch.manual_seed(0)
    dm = RandomMultiviewCameraDataModule({**MV_DATA, "eval_height": 8, "eval_width": 8}, where="data")
    dm.update_step(0, 10)
    b = dm.train_batch()
    assert b["rays_o"].shape == (8, 64, 64, 3) and b["c2w"].shape == (8, 4, 4) and b["height"] == 64
    g = lambda k: b[k].reshape(2, 4)  # noqa: E731  group-major: rows 0-3 are one object
    for k in ("elevation", "camera_distances", "fovy"):
        assert torch.all(g(k) == g(k)[:, :1])
    az = g("azimuth")
    torch.testing.assert_close((az[:, 1:] - az[:, :-1]), torch.full((2, 3), 90.0))
    rel = b["camera_distances"] * torch.tan(torch.deg2rad(b["fovy"]) / 2)  # relative_radius
    assert rel.min() >= 0.8 - 1e-5 and rel.max() <= 1.0 + 1e-5
    assert b["elevation"].min() >= 0 and b["elevation"].max() <= 30
    # an unperturbed camera equals the cameras helper's threestudio camera, and the centre ray hits the origin
    ref = c2w_from_spherical(b["elevation"], b["azimuth"], b["camera_distances"])
    torch.testing.assert_close(b["c2w"], ref, atol=1e-5, rtol=1e-5)
    centre = b["rays_d"][:, 31:33, 31:33].mean((1, 2))
    assert torch.cross(F.normalize(centre, dim=-1), F.normalize(-b["rays_o"][:, 0, 0], dim=-1),
                       dim=-1).norm(dim=-1).max() < 1e-4
    # MVDream camera vector: threestudio c2w at azimuth a == get_camera(elevation, a + 90)
    cam = c2w_to_mvdream_camera(b["c2w"][:1])
    ref_cam = get_camera(1, float(b["elevation"][0]), float(b["azimuth"][0]) + 90)
    torch.testing.assert_close(cam, ref_cam, atol=1e-5, rtol=1e-5)
    dm.update_step(0, 5000)
    assert dm.train_batch()["rays_o"].shape == (4, 256, 256, 3)
    test = list(dm.test_batches())
    assert len(test) == 120 and float(test[0]["azimuth"]) == 0.0 and float(test[-1]["azimuth"]) == 360.0
    assert test[5]["rays_o"].shape == (1, 8, 8, 3) and int(test[5]["index"]) == 5
    assert RandomMultiviewCameraDataModule(MV_DATA).cfg.eval_height == 512  # threestudio's default eval size
    assert [float(v["azimuth"]) for v in dm.val_batches()] == [0.0, 90.0, 180.0, 270.0]
    with pytest.raises(ConfigError, match="data.batch_size"):
        RandomMultiviewCameraDataModule({**MV_DATA, "batch_size": [6, 4]}, where="data")
    with pytest.raises(ConfigError, match="data.batchsize"):
        RandomMultiviewCameraDataModule({"batchsize": 4}, where="data")


def test_progressive_view_first_step_is_the_eval_view():
    dm = RandomMultiviewCameraDataModule(MV_DATA)
    dm.update_step(0, 0)  # threestudio: r = 0 at step 0 with progressive_until = 0
    b = dm.train_batch()
    assert torch.allclose(b["elevation"], torch.full((8,), 15.0)) and torch.all(b["azimuth"] == 0)


@torch.no_grad()
def test_two_level_occupancy_sampling_keeps_exactly_the_occupied_samples():
    torch.manual_seed(0)
    rend, geo = _renderer(num_samples_per_ray=512)  # blocks of 9 steps per 1/32 cell
    rend.update_occupancy()
    rend.binaries[20:, :, :] = False  # an irregular occupied set: part of the blob
    dm = RandomMultiviewCameraDataModule({**MV_DATA, "batch_size": 4, "width": 16, "height": 16,
                                          "resolution_milestones": []})
    b = dm.train_batch()
    o, d = b["rays_o"].reshape(-1, 3), b["rays_d"].reshape(-1, 3)
    torch.manual_seed(1)
    ri, t0, t1 = rend.sample(o, d, stratified=True)
    # brute force: every lattice step of every ray inside the box, kept when its midpoint's cell is occupied
    torch.manual_seed(1)
    u = torch.rand(o.shape[0])
    tn, tf = ray_aabb(o, d, torch.full((3,), -1.0), torch.full((3,), 1.0))
    k = torch.arange(512.0)
    t = tn[:, None] + (k[None] + u[:, None]) * rend.render_step_size
    valid = (t < tf[:, None]) & (tf > tn)[:, None]
    pts = o[:, None] + t[..., None] * d[:, None]
    occ = torch.zeros_like(valid)
    occ[valid] = rend.occupied(pts[valid])
    rr, cc = (valid & occ).nonzero(as_tuple=True)
    assert torch.equal(ri, rr)
    torch.testing.assert_close(0.5 * (t0 + t1), t[rr, cc], atol=1e-6, rtol=0)
