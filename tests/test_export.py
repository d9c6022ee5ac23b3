"""Export (issue 7): analytic fields -> OBJ+MTL+PNG / GLB / PLY that reopen in trimesh with the right geometry,
the texture where the field's albedo says, and one transform across formats. Resolution 64, texture 256."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamdist3d.export import (
    ExportError,
    ExportTransform,
    SphereField,
    TwoPartField,
    export_field,
    make_analytic_field,
)
from dreamdist3d.export.bake import rasterize_uv, sample_texture
from dreamdist3d.export.isosurface import choose_threshold, otsu_threshold
from dreamdist3d.export.writers import atomic_write_bytes
from dreamdist3d.lift3d.base import get_activation

RES, TEX = 64, 256
RED, BLUE, GREEN = (0.85, 0.15, 0.1), (0.1, 0.3, 0.85), (0.1, 0.8, 0.2)


def _load_mesh(path: Path) -> trimesh.Trimesh:
    m = trimesh.load(str(path), process=False)
    if isinstance(m, trimesh.Scene):
        assert len(m.geometry) == 1, f"{path} holds {len(m.geometry)} meshes"
        m = next(iter(m.geometry.values()))
    return m


def _texture_image(mesh: trimesh.Trimesh) -> np.ndarray:
    mat = mesh.visual.material
    img = getattr(mat, "baseColorTexture", None)
    if img is None:
        img = getattr(mat, "image", None)
    assert img is not None, f"no texture image on the reloaded material {type(mat).__name__}"
    return np.asarray(img.convert("RGB"))


def _random_surface_samples(mesh: trimesh.Trimesh, n: int, seed: int = 0):
    """Random points on random faces: (points (n,3) export frame, uv (n,2)) by shared barycentrics."""
    rng = np.random.default_rng(seed)
    fi = rng.integers(0, len(mesh.faces), n)
    w = rng.dirichlet([1.0, 1.0, 1.0], n)
    f = mesh.faces[fi]
    pts = np.einsum("nk,nkd->nd", w, mesh.vertices[f])
    uv = np.einsum("nk,nkd->nd", w, mesh.visual.uv[f])
    return pts, uv


@pytest.fixture(scope="module")
def sphere_export(tmp_path_factory):
    field = SphereField()
    out = tmp_path_factory.mktemp("sphere")
    logs = []
    res = export_field(field, out, "glb,obj,ply", isosurface_resolution=RES, texture_size=TEX, log=logs.append)
    return field, res, out, logs


@pytest.fixture(scope="module")
def two_part_export(tmp_path_factory):
    field = TwoPartField(floater_radius=0.04)  # a detached floater well under 1 % of the faces
    out = tmp_path_factory.mktemp("two_part")
    logs = []
    res = export_field(field, out, "glb,obj,ply", isosurface_resolution=RES, texture_size=TEX, log=logs.append)
    return field, res, out, logs


def test_files_and_sidecar(sphere_export):
    _, res, out, _ = sphere_export
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model.export.json", "model.glb", "model.mtl", "model.obj", "model.ply", "model_albedo.png"]
    side = json.loads((out / "model.export.json").read_text())
    assert side["isosurface"]["threshold"] == 25.0 and side["isosurface"]["threshold_method"] == "config"
    assert side["mesh"]["faces"] == len(res.faces) and side["files"]["glb"] == "model.glb"
    m, minv = np.array(side["transform"]["world_to_export"]), np.array(side["transform"]["export_to_world"])
    np.testing.assert_allclose(m @ minv, np.eye(4), atol=1e-9)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_sphere_volume_watertight_and_colour(sphere_export):
    field, res, out, _ = sphere_export
    ply = _load_mesh(out / "model.ply")
    assert ply.is_watertight
    t = ExportTransform.from_dict(json.loads((out / "model.export.json").read_text())["transform"])
    world_volume = ply.volume / t.scale**3
    assert world_volume > 0  # outward-facing triangles
    assert abs(world_volume / field.volume - 1) < 0.02, (world_volume, field.volume)
    # vertices lie on the analytic sphere, and the vertex colours are its albedo there
    w = t.invert(np.asarray(ply.vertices))
    r = np.linalg.norm(w, axis=1)
    assert np.abs(r - field.radius).max() < 0.01
    ref = field.albedo(torch.tensor(w, dtype=torch.float32)).numpy()
    assert np.abs(ply.visual.vertex_colors[:, :3] / 255.0 - ref).max() < 2.5 / 255


def test_roundtrip_counts_and_uvs(sphere_export):
    _, res, out, _ = sphere_export
    nv_uv, nf = len(res.uv_mesh.vmapping), len(res.uv_mesh.faces)
    assert nv_uv > len(res.vertices)  # xatlas split vertices along seams
    for name in ("model.obj", "model.glb"):
        m = _load_mesh(out / name)
        assert (len(m.vertices), len(m.faces)) == (nv_uv, nf), name
        assert isinstance(m.visual, trimesh.visual.TextureVisuals), name
        uv = np.asarray(m.visual.uv)
        assert uv.shape == (nv_uv, 2) and uv.min() >= 0.0 and uv.max() <= 1.0, name
        np.testing.assert_allclose(m.vertices, res.vertices[res.uv_mesh.vmapping], atol=1e-5)
    ply = _load_mesh(out / "model.ply")
    assert (len(ply.vertices), len(ply.faces)) == (len(res.vertices), len(res.faces))
    np.testing.assert_array_equal(ply.faces, res.faces)


def test_glb_embeds_texture(sphere_export):
    _, _, out, _ = sphere_export
    data = (out / "model.glb").read_bytes()
    assert data[:4] == b"glTF"
    n = int.from_bytes(data[12:16], "little")
    gltf = json.loads(data[20 : 20 + n])
    assert len(gltf["images"]) == 1 and "bufferView" in gltf["images"][0] and "uri" not in gltf["images"][0]
    mat = gltf["materials"][0]["pbrMetallicRoughness"]
    assert "baseColorTexture" in mat and mat["metallicFactor"] == 0.0
    m = _load_mesh(out / "model.glb")
    assert _texture_image(m).shape == (TEX, TEX, 3)


def test_obj_mtl_reload_textured(sphere_export):
    _, _, out, _ = sphere_export
    assert "mtllib model.mtl" in (out / "model.obj").read_text()[:200]
    assert "map_Kd model_albedo.png" in (out / "model.mtl").read_text()
    m = _load_mesh(out / "model.obj")
    img = _texture_image(m)
    assert img.shape == (TEX, TEX, 3)


@pytest.mark.parametrize("name", ["model.obj", "model.glb"])
def test_texture_matches_albedo(sphere_export, name):
    field, _, out, _ = sphere_export
    m = _load_mesh(out / name)
    t = ExportTransform.from_dict(json.loads((out / "model.export.json").read_text())["transform"])
    pts, uv = _random_surface_samples(m, 4000)
    col = sample_texture(_texture_image(m), uv)
    ref = field.albedo(torch.tensor(t.invert(pts), dtype=torch.float32)).numpy()
    err = np.abs(col - ref)
    # 8-bit quantisation, bilinear lookup and seam dilation; the albedo varies by ~0.9 across the sphere
    assert err.mean() < 0.004 and np.quantile(err, 0.99) < 0.02 and err.max() < 0.08, (err.mean(), err.max())


def test_two_part_keeps_both_colours_and_drops_floater(two_part_export):
    field, res, out, logs = two_part_export
    assert res.cleanup.components == 2 and res.cleanup.components_kept == 1
    assert any("removed 1 of 2 connected components" in line for line in logs)
    ply = _load_mesh(out / "model.ply")
    vc = ply.visual.vertex_colors[:, :3] / 255.0
    near = lambda c: (np.abs(vc - np.array(c)).max(1) < 0.02).mean()  # noqa: E731
    assert near(RED) > 0.2 and near(BLUE) > 0.3 and near(GREEN) == 0.0
    # texture: per-sample colours from the GLB fall into the two part colours
    glb = _load_mesh(out / "model.glb")
    pts, uv = _random_surface_samples(glb, 3000, seed=1)
    col = sample_texture(_texture_image(glb), uv)
    t = res.transform
    part = field.part(torch.tensor(t.invert(pts), dtype=torch.float32)).numpy()
    assert set(np.unique(part)) == {0, 1}
    for k, c in ((0, RED), (1, BLUE)):
        d = np.abs(col[part == k] - np.array(c)).max(1)
        assert np.quantile(d, 0.95) < 0.03, (k, np.quantile(d, 0.95))
    # +Y up: the red sphere sits on top of the blue box; the unit bounding box is centred at the origin
    assert pts[part == 0][:, 1].mean() > pts[part == 1][:, 1].mean() + 0.2
    lo, hi = res.vertices.min(0), res.vertices.max(0)
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-9)
    assert abs((hi - lo).max() - 1.0) < 1e-9


def test_transform_axes():
    t = ExportTransform.fit(np.array([[-1.0, -1, -1], [1, 1, 1]]), "y")
    # threestudio z-up -> y-up; the front (azimuth 0, world +x) faces +z; a proper rotation
    np.testing.assert_allclose(t.apply_directions(np.array([[0.0, 0, 1], [1, 0, 0]])), [[0, 1, 0], [0, 0, 1]])
    assert np.isclose(np.linalg.det(t.rotation), 1.0)
    p = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(t.invert(t.apply(p)), p, atol=1e-12)


def test_vertex_colour_fallback(tmp_path):
    field = TwoPartField()
    res = export_field(field, tmp_path, "obj,glb", isosurface_resolution=32, texture=False, log=lambda s: None)
    assert res.uv_mesh is None and not (tmp_path / "model.mtl").exists()
    for name in ("model.obj", "model.glb"):
        m = _load_mesh(tmp_path / name)
        assert (len(m.vertices), len(m.faces)) == (len(res.vertices), len(res.faces)), name
        if name == "model.obj":  # sRGB bytes, as rendered
            vc = np.asarray(m.visual.vertex_colors)[:, :3].astype(float) / 255.0
        else:  # glTF's COLOR_0 is linear: float32, reloaded by trimesh as a "color" attribute beside the material
            linear = np.asarray(m.visual.vertex_attributes["color"], dtype=float)[:, :3]
            vc = get_activation("lin2srgb")(torch.from_numpy(linear)).numpy()  # back to sRGB, threestudio's formula
            assert np.abs(linear - vc).max() > 0.1  # stored linear, not the sRGB values themselves
        ref = field.albedo(torch.tensor(res.transform.invert(np.asarray(m.vertices)), dtype=torch.float32)).numpy()
        assert np.abs(vc - ref).max() < 2.5 / 255, name
    gltf = _gltf_json(tmp_path / "model.glb")
    colour = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    assert (colour["componentType"], colour["type"]) == (5126, "VEC3")  # float, no 8-bit banding in the darks


class _ScaledField:
    """Wraps a field with density a·σ + b (to make the default threshold fail)."""

    def __init__(self, base, a=1.0, b=0.0):
        self.base, self.a, self.b, self.bbox = base, a, b, base.bbox

    def density(self, p):
        return self.a * self.base.density(p) + self.b

    def albedo(self, p):
        return self.base.albedo(p)


def test_empty_field_error_names_key(tmp_path):
    with pytest.raises(ExportError, match="isosurface_threshold"):
        export_field(_ScaledField(SphereField(), a=0.0), tmp_path, "ply", isosurface_resolution=16, log=lambda s: None)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("a,b,why", [(0.1, 0.0, "empty surface"), (1.0, 26.0, "every sample is inside")])
def test_auto_threshold_when_default_fails(tmp_path, a, b, why):
    logs = []
    field = _ScaledField(SphereField(), a=a, b=b)
    res = export_field(field, tmp_path, "ply", isosurface_resolution=48, log=logs.append)
    iso = res.summary["isosurface"]
    assert iso["threshold_method"] == "otsu" and why in iso["threshold_reason"]
    assert any("Otsu" in line and why in line for line in logs)
    # the surface lies inside the density ramp (sdf in [-0.1, 0.1]) of the sphere of radius 0.5
    w = res.transform.invert(res.vertices)
    r = np.linalg.norm(w, axis=1)
    assert 0.4 < r.min() and r.max() < 0.6


def test_auto_threshold_off_and_exploded():
    grid = np.full((8, 8, 8), 30.0, dtype=np.float32)
    grid[3:5, 3:5, 3:5] = 90.0
    with pytest.raises(ExportError, match="isosurface_threshold"):
        choose_threshold(grid, 25.0, auto_method="off", log=lambda s: None)
    choice = choose_threshold(grid, 25.0, auto_method="otsu", log=lambda s: None)
    assert 30.0 < choice.value < 90.0
    # exploded (walls mostly inside, but not all samples): replaced too
    grid2 = np.full((8, 8, 8), 30.0, dtype=np.float32)
    grid2[2:6, 2:6, 2:6] = 0.0
    grid2[3:5, 3:5, 3:5] = 90.0
    c2 = choose_threshold(grid2, 25.0, log=lambda s: None)
    assert "exploded" in c2.reason and c2.value > 30.0
    assert 0.0 < otsu_threshold(np.array([0.0] * 50 + [100.0] * 50)) < 100.0


def test_rasterize_uv_covers_triangle_exactly():
    # one triangle covering the lower-left half of an 8x8 texture: texel centres ((i+.5)/8, (j+.5)/8) with i + j + 1 <=
    # 8, edge included
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2]])
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    texels, pts = rasterize_uv(uvs, faces, pos, 8)
    i, j = texels % 8, texels // 8
    assert len(texels) == 36 and bool(((i + j) <= 7).all())
    np.testing.assert_allclose(pts[:, 0], (i + 0.5) / 8)
    np.testing.assert_allclose(pts[:, 1], (j + 0.5) / 8)


def _charts(faces: np.ndarray, n_vertices: int) -> int:
    """How many charts: connected pieces of the unwrapped mesh (its vertices are split at every seam)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = faces.ravel(), np.roll(faces, 1, axis=1).ravel()
    return connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n_vertices, n_vertices)))[0]


def test_unwrap_caps_chart_growth_and_keeps_every_chart_on_its_own_texels():
    """The default caps a chart's boundary at BOUNDARY_PER_DIAGONAL × the mesh's diagonal (xatlas's own unlimited
    growth is minutes on a bumpy 128³ surface: benchmarks/README-export.md, table 3); `max_boundary_length: 0` gives
    xatlas's own back. Both unwrap every triangle as it is and lay no two charts on one texel."""
    from dreamdist3d.export.isosurface import extract_isosurface
    from dreamdist3d.export.mesh_ops import clean_mesh
    from dreamdist3d.export.uv import unwrap

    iso = extract_isosurface(TwoPartField(bumps=0.03, bump_frequency=20.0), 48, log=lambda s: None)
    v, f, _ = clean_mesh(iso.vertices, iso.faces)
    size = 512
    charts = {}
    for name, options in (("capped", None), ("xatlas", {"max_boundary_length": 0.0})):
        uvm = unwrap(v, f, size, 4, options)
        np.testing.assert_array_equal(v[uvm.vmapping][uvm.faces], v[f])  # the same triangles, in the same order
        texels, _ = rasterize_uv(torch.from_numpy(uvm.uvs), torch.from_numpy(uvm.faces),
                                 torch.from_numpy(v[uvm.vmapping]), size)
        t = uvm.uvs[uvm.faces].astype(np.float64)
        e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        uv_area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).sum() / 2
        covered = len(texels) / size**2
        assert covered > 0.3 and abs(uv_area - covered) < 0.01 * uv_area, (name, uv_area, covered)  # no overlap
        charts[name] = _charts(uvm.faces, len(uvm.uvs))
    assert charts["capped"] < charts["xatlas"], charts  # fewer, larger charts: fewer seams


def test_decimation(tmp_path):
    pytest.importorskip("fast_simplification", reason="fast-simplification (optional) is not installed")
    logs = []
    res = export_field(SphereField(), tmp_path, "ply", isosurface_resolution=48, target_faces=2000, log=logs.append)
    assert 1500 <= len(res.faces) <= 2100 and res.summary["mesh"]["watertight"]
    assert abs(res.summary["mesh"]["faces"] - 2000) < 500 and any("decimated" in s for s in logs)


def test_decimation_without_package_is_explained(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # import raises ImportError
    logs = []
    res = export_field(SphereField(), tmp_path, "ply", isosurface_resolution=24, target_faces=100, log=logs.append)
    assert len(res.faces) > 100 and any("pip install fast-simplification" in s for s in logs)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "model.glb"
    atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.glb"]


def test_bad_config_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="isosurface_resolutio"):
        export_field(SphereField(), tmp_path, "ply", isosurface_resolutio=32)
    with pytest.raises(ExportError, match="--format"):
        export_field(SphereField(), tmp_path, "stl")


def test_cli_analytic_and_run_hook(tmp_path, monkeypatch, capsys):
    from dreamdist3d.cli import main

    assert main(["export", "--analytic", "box", "--format", "ply", "--resolution", "24", "--out",
                 str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "model.ply").is_file() and (tmp_path / "a" / "model.export.json").is_file()

    run = tmp_path / "outputs" / "x" / "tag@20260101-000000"
    (run / "configs").mkdir(parents=True)
    (run / "configs" / "parsed.yaml").write_text("system:\n  geometry:\n    isosurface_threshold: 25.0\n"
                                                 "    isosurface_resolution: 24\n")
    # missing checkpoint -> clear error naming it
    assert main(["export", str(run)]) == 2
    assert "ckpts/last.ckpt" in capsys.readouterr().err
    (run / "ckpts").mkdir()
    (run / "ckpts" / "last.ckpt").write_bytes(b"")

    # the 3D runner not importable -> clear error naming the hook
    monkeypatch.setitem(sys.modules, "dreamdist3d.lift3d.system", None)
    assert main(["export", str(run), "--format", "ply"]) == 2
    assert "load_run_field" in capsys.readouterr().err

    # with the hook present: run dir and ckpt path both work; resolution comes from parsed.yaml
    calls = []
    fake = types.ModuleType("dreamdist3d.lift3d.system")

    def load_run_field(run_dir, ckpt=None):
        calls.append((Path(run_dir), Path(ckpt)))
        return make_analytic_field("sphere")

    fake.load_run_field = load_run_field
    monkeypatch.setitem(sys.modules, "dreamdist3d.lift3d.system", fake)
    assert main(["export", str(run / "ckpts" / "last.ckpt"), "--format", "ply"]) == 0
    assert calls == [(run, run / "ckpts" / "last.ckpt")]
    side = json.loads((run / "save" / "export" / "model.export.json").read_text())
    assert side["isosurface"]["resolution"] == 24 and side["source"].startswith(str(run))


def _gltf_json(path: Path) -> dict:
    """The JSON chunk of a .glb, read here byte by byte (not with the writer's own reader)."""
    data = path.read_bytes()
    assert data[:4] == b"glTF" and int.from_bytes(data[8:12], "little") == len(data)
    n = int.from_bytes(data[12:16], "little")
    assert data[16:20] == b"JSON" and n % 4 == 0
    return json.loads(data[20:20 + n])


@pytest.mark.parametrize("textured", [False, True], ids=["vertex-colours", "textured"])
@pytest.mark.parametrize("unlit", [False, True], ids=["lit", "unlit"])
def test_every_glb_has_an_explicit_non_metallic_material(tmp_path, textured, unlit):
    """glTF's default material is metallic 1: browsers showed the demo's vertex-colour meshes grey and sheened."""
    export_field(TwoPartField(), tmp_path, "glb", isosurface_resolution=24, texture=textured, texture_size=64,
                 unlit=unlit, log=lambda s: None)
    gltf = _gltf_json(tmp_path / "model.glb")
    prims = [p for m in gltf["meshes"] for p in m["primitives"]]
    assert prims and all("material" in p for p in prims)
    for p in prims:
        mat = gltf["materials"][p["material"]]
        pbr = mat["pbrMetallicRoughness"]
        assert pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 1
        assert pbr.get("baseColorFactor", [1, 1, 1, 1]) == [1, 1, 1, 1]  # the colours are the texture / vertices
        assert ("KHR_materials_unlit" in mat.get("extensions", {})) == unlit
    assert ("KHR_materials_unlit" in gltf.get("extensionsUsed", [])) == unlit
    assert ("COLOR_0" in prims[0]["attributes"]) == (not textured)
    m = _load_mesh(tmp_path / "model.glb")  # still a valid file with its geometry
    assert len(m.faces) > 0


def test_cli_export_unlit(tmp_path):
    from dreamdist3d.cli import main

    assert main(["export", "--analytic", "box", "--format", "glb", "--no-texture", "--unlit", "--resolution", "24",
                 "--out", str(tmp_path)]) == 0
    mat = _gltf_json(tmp_path / "model.glb")["materials"][0]
    assert "KHR_materials_unlit" in mat["extensions"] and mat["pbrMetallicRoughness"]["metallicFactor"] == 0
