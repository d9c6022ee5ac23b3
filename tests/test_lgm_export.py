"""Gaussians into files: the 3DGS splat .ply (read back by plyfile and by our reader) and meshes through the export
`Field` protocol (GaussianField -> export_field -> GLB/OBJ/PLY reopened by trimesh)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamdist3d.export import check_field, export_field
from dreamdist3d.export.transform import UP_ROTATIONS
from dreamdist3d.reconstruct import Gaussians
from dreamdist3d.reconstruct.field import GaussianField
from dreamdist3d.reconstruct.gaussians import quaternion_to_matrix
from dreamdist3d.reconstruct.ply import SH_C0, read_splat_ply, splat_properties, write_splat_ply

IDENTITY = [1.0, 0.0, 0.0, 0.0]


def gaussians(rows) -> Gaussians:
    """rows of (mean, opacity, scales, quaternion, colour)."""
    cols = list(zip(*rows))
    return Gaussians(*(torch.tensor(c, dtype=torch.float32) for c in cols))


def random_set(n: int, seed: int) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(torch.randn(n, 3, generator=g) * 0.3, torch.rand(n, generator=g) * 0.98 + 0.01,
                     torch.rand(n, 3, generator=g) * 0.05 + 0.005,
                     torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
                     torch.rand(n, 3, generator=g))


# ------------------------------------------------------------------------------------------------ splat .ply
def test_splat_ply_layout_read_back_by_plyfile(tmp_path):
    plyfile = pytest.importorskip("plyfile", reason="plyfile is in the test extra (pip install -e '.[test]')")
    g = random_set(50, seed=0)
    g.opacities[:5] = 0.001  # pruned (LGM's save_ply drops opacity < 0.005)
    path = write_splat_ply(tmp_path / "splat.ply", g)
    ply = plyfile.PlyData.read(str(path))
    v = ply["vertex"]
    assert [p.name for p in v.properties] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                                              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("f4", "float32") for p in v.properties) and len(v) == 45
    kept = g.select(g.opacities >= 0.005)
    rot = torch.tensor(UP_ROTATIONS["y"], dtype=torch.float32)  # export frame: +y up, front towards +z
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    np.testing.assert_allclose(xyz, (kept.means @ rot.T).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.stack([v[f"f_dc_{i}"] for i in range(3)], 1), ((kept.colors - 0.5) / SH_C0).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(v["opacity"], torch.logit(kept.opacities).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.stack([v[f"scale_{i}"] for i in range(3)], 1), kept.scales.log().numpy(), atol=1e-5)
    q = torch.tensor(np.stack([v[f"rot_{i}"] for i in range(4)], 1))
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(45), atol=1e-6, rtol=0)
    r = quaternion_to_matrix(q)
    cov = (r * torch.tensor(np.stack([v[f"scale_{i}"] for i in range(3)], 1)).exp()[:, None, :].square()) @ r.mT
    torch.testing.assert_close(cov, rot @ kept.covariances() @ rot.T, atol=1e-6, rtol=1e-4)
    assert not np.any([v["nx"], v["ny"], v["nz"]])


def test_splat_ply_round_trip_and_options(tmp_path):
    g = random_set(30, seed=1)
    legacy = Gaussians(g.means, g.opacities, g.scales, g.rotations * 0.02, g.colors)  # non-unit, as legacy LGM
    back = read_splat_ply(write_splat_ply(tmp_path / "a.ply", legacy, min_opacity=0.0))
    torch.testing.assert_close(back.means, g.means, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.opacities, g.opacities, atol=1e-5, rtol=0)
    torch.testing.assert_close(back.colors, g.colors, atol=1e-6, rtol=0)
    torch.testing.assert_close(back.covariances(), legacy.covariances(), atol=1e-7, rtol=1e-4)
    z = read_splat_ply(write_splat_ply(tmp_path / "z.ply", g, min_opacity=0.0, up_axis="z", sh_degree=3), up_axis="z")
    torch.testing.assert_close(z.means, g.means, atol=1e-6, rtol=0)
    header = (tmp_path / "z.ply").read_bytes().split(b"end_header")[0].decode()
    assert "property float f_rest_44" in header and len(splat_properties(3)) == 62
    data = (tmp_path / "a.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-100])
    with pytest.raises(ValueError, match="cut.ply is truncated"):
        read_splat_ply(tmp_path / "cut.ply")
    with pytest.raises(ValueError, match="one object"):
        write_splat_ply(tmp_path / "b.ply", Gaussians(*(t[None] for t in (g.means, g.opacities, g.scales,
                                                                           g.rotations, g.colors))))


# ------------------------------------------------------------------------------------------------ meshes
def test_hand_placed_gaussians_export_to_meshes(tmp_path):
    """A red ball (isotropic, σ 0.2) and a blue bar (σ 0.3 along world x, turned 90° about z: along y) -> two
    components with the analytic extents (the level set o = 0.5 of α·G is at σ·sqrt(2 ln 2α)) and their colours."""
    trimesh = pytest.importorskip("trimesh")
    turn = [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]  # 90° about +z
    g = gaussians([((0.0, 0.0, 0.0), 0.99, (0.2, 0.2, 0.2), IDENTITY, (0.9, 0.1, 0.1)),
                   ((0.0, 0.0, 0.6), 0.99, (0.3, 0.08, 0.08), turn, (0.1, 0.1, 0.9))])
    field = GaussianField(g)
    check_field(field)
    k = math.sqrt(2 * math.log(2 * 0.99))
    assert field.density(torch.tensor([[0.2 * k, 0.0, 0.0]])).item() == pytest.approx(25.0, rel=1e-4)
    res = export_field(field, tmp_path, "glb,obj,ply", isosurface_resolution=64, texture_size=64, normalize=False,
                       up_axis="z", log=lambda s: None)
    mesh = trimesh.load(res.files["ply"], process=False)
    lo, hi = mesh.bounds
    np.testing.assert_allclose(lo, [-0.2 * k, -0.3 * k, -0.2 * k], atol=0.02)
    np.testing.assert_allclose(hi, [0.2 * k, 0.3 * k, 0.6 + 0.08 * k], atol=0.02)
    parts = mesh.split(only_watertight=False)
    assert len(parts) == 2
    for part in parts:
        rgb = part.visual.vertex_colors[:, :3].mean(0) / 255
        want = (0.9, 0.1, 0.1) if part.bounds[1, 2] < 0.3 else (0.1, 0.1, 0.9)
        np.testing.assert_allclose(rgb, want, atol=0.03)
    glb = trimesh.load(res.files["glb"], force="mesh")
    assert glb.visual.material.baseColorTexture is not None
    np.testing.assert_allclose(glb.extents, hi - lo, atol=0.02)


def test_field_grid_matches_brute_force():
    g = random_set(300, seed=2)
    field = GaussianField(g, max_pairs=5000)  # several chunks
    pts = (torch.rand(2000, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 0.6
    d = pts[:, None, :] - g.means[None]  # (P,N,3)
    prec = torch.linalg.inv(g.covariances())
    m2 = torch.einsum("pni,nij,pnj->pn", d, prec, d)
    w = torch.where(m2 <= 9, g.opacities * torch.exp(-0.5 * m2), 0)
    torch.testing.assert_close(field.occupancy(pts), w.sum(1), atol=1e-5, rtol=1e-4)
    hit = w.sum(1) > 1e-3
    want = (w[:, :, None] * g.colors).sum(1) / w.sum(1, keepdim=True)
    torch.testing.assert_close(field.albedo(pts)[hit], want[hit], atol=1e-4, rtol=1e-4)
    far = torch.tensor([[5.0, 5.0, 5.0]])
    assert field.density(far).item() == 0
    torch.testing.assert_close(field.albedo(far)[0], g.colors[(g.means - far).norm(dim=-1).argmin()])
    with pytest.raises(ValueError, match="nothing to mesh"):
        GaussianField(Gaussians(g.means, g.opacities * 0, g.scales, g.rotations, g.colors))
