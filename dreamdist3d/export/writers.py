"""Atomic writers: OBJ + MTL + PNG, GLB with the texture embedded, PLY with vertex colours, JSON sidecar.

Every file is written through `dreamdist3d.io.atomic_write_bytes` (a temporary file in its destination folder moved
into place with `os.replace`), so a reader never sees a half-written mesh and an interrupted export leaves the old
files intact; files get the usual umask mode.

GLB pitfall: trimesh only embeds an image when the mesh's visual is a `TextureVisuals` whose material carries it
(`PBRMaterial.baseColorTexture` here); a `ColorVisuals`, or a material without an image, silently exports an
untextured mesh. `write_glb` builds exactly that visual and then checks the written bytes contain an image.

GLB material: trimesh writes a vertex-colour mesh with no material, and glTF's default material is metallic
(metallicFactor 1), which three.js viewers (the gallery's `<model-viewer>`) show grey and sheened whatever the
colours. Every GLB gets an explicit material: metallic 0, roughness 1, base colour white (the texture or the vertex
colours are the colour); `unlit=True` adds `KHR_materials_unlit`, so viewers show the colours as they are, without
light (SDS colour without shading is appearance, not albedo under light).

GLB vertex colours: glTF's COLOR_0 is *linear* (a linear multiplier of the base colour; three.js, model-viewer and
Blender's importer read it so), while our colours are sRGB-encoded, as rendered and as OBJ/PLY carry them. Written as
they are, viewers showed every vertex-colour GLB pale (a dark red as pink). `write_glb` stores them converted to
linear, as float32 (8-bit linear would band in the darks).
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from dreamdist3d.io import atomic_write_bytes, atomic_write_text  # the one atomic writer

__all__ = ["atomic_write_bytes", "atomic_write_text", "encode_png", "glb_with_material", "glb_with_vertex_colours",
           "read_glb_json", "srgb_to_linear", "write_obj", "write_glb", "write_ply", "write_json"]

PathLike = Union[str, os.PathLike]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _fmt_rows(prefix: str, a: np.ndarray, fmt: str) -> str:
    if len(a) == 0:
        return ""
    row = prefix + " " + " ".join([fmt] * a.shape[1])
    return "\n".join(row % tuple(r) for r in a.tolist()) + "\n"


def _fmt_faces(f1: np.ndarray, corner: str, k: int) -> str:
    """Face lines with the same 1-based index repeated k times per corner (v, v/vt, v//vn, v/vt/vn)."""
    if len(f1) == 0:
        return ""
    row = "f " + " ".join([corner] * 3)
    vals = np.repeat(f1, k, axis=1)
    return "\n".join(row % tuple(r) for r in vals.tolist()) + "\n"


def write_obj(
    path: PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: Optional[np.ndarray] = None,
    uvs: Optional[np.ndarray] = None,
    texture: Optional[np.ndarray] = None,
    vertex_colors: Optional[np.ndarray] = None,
    material_name: str = "material_0",
) -> Dict[str, Path]:
    """Wavefront OBJ. With `uvs` and `texture`: also `<stem>.mtl` (map_Kd) and `<stem>_albedo.png` beside it.

    One index per vertex for position, uv and normal (`f a/a/a`), so the file reloads with the same vertex count.
    `vertex_colors` (V, 3|4) uint8 are written as the common `v x y z r g b` extension when there is no texture.
    """
    path = Path(path)
    stem = path.stem
    out: Dict[str, Path] = {}
    textured = uvs is not None and texture is not None
    lines = ["# dreamdist3d export\n"]
    if textured:
        lines.append(f"mtllib {stem}.mtl\n")
    if vertex_colors is not None and not textured:
        rgb = np.asarray(vertex_colors)[:, :3].astype(np.float64) / 255.0
        lines.append(_fmt_rows("v", np.concatenate([vertices, rgb], 1), "%.6f"))
    else:
        lines.append(_fmt_rows("v", vertices, "%.6f"))
    if textured:
        lines.append(_fmt_rows("vt", uvs, "%.6f"))
    if normals is not None:
        lines.append(_fmt_rows("vn", normals, "%.5f"))
    if textured:
        lines.append(f"usemtl {material_name}\n")
    f1 = np.asarray(faces, dtype=np.int64) + 1
    if textured and normals is not None:
        lines.append(_fmt_faces(f1, "%d/%d/%d", 3))
    elif textured:
        lines.append(_fmt_faces(f1, "%d/%d", 2))
    elif normals is not None:
        lines.append(_fmt_faces(f1, "%d//%d", 2))
    else:
        lines.append(_fmt_faces(f1, "%d", 1))
    if textured:
        png_name = f"{stem}_albedo.png"
        out["png"] = atomic_write_bytes(path.parent / png_name, encode_png(texture))
        mtl = (
            "# dreamdist3d export\n"
            f"newmtl {material_name}\n"
            "Ka 1.000000 1.000000 1.000000\n"
            "Kd 1.000000 1.000000 1.000000\n"
            "Ks 0.000000 0.000000 0.000000\n"
            "Ns 1.000000\n"
            "d 1.000000\n"
            "illum 1\n"
            f"map_Kd {png_name}\n"
        )
        out["mtl"] = atomic_write_text(path.parent / f"{stem}.mtl", mtl)
    out["obj"] = atomic_write_text(path, "".join(lines))
    return out


def write_glb(
    path: PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: Optional[np.ndarray] = None,
    uvs: Optional[np.ndarray] = None,
    texture: Optional[np.ndarray] = None,
    vertex_colors: Optional[np.ndarray] = None,
    unlit: bool = False,
) -> Path:
    """Binary glTF 2.0: textured (PBR baseColorTexture, embedded PNG) or vertex colours; either way with an explicit
    material, metallic 0 and roughness 1 (`unlit`: also KHR_materials_unlit; see the module docstring)."""
    import trimesh
    from PIL import Image

    if uvs is not None and texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            name="albedo",
            baseColorTexture=Image.fromarray(np.ascontiguousarray(texture)),
            baseColorFactor=[255, 255, 255, 255],
            metallicFactor=0.0,
            roughnessFactor=1.0,
        )
        visual = trimesh.visual.TextureVisuals(uv=np.asarray(uvs, dtype=np.float64), material=material)
    else:
        visual = None  # vertex colours are added below, linear (see the module docstring)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, visual=visual, process=False)
    data = mesh.export(file_type="glb", include_normals=normals is not None)
    if uvs is not None and texture is not None and b"image/png" not in data:
        raise RuntimeError(f"trimesh wrote {path} without the texture image (TextureVisuals pitfall); not saving it")
    if visual is None and vertex_colors is not None:
        data = glb_with_vertex_colours(data, vertex_colors)
    return atomic_write_bytes(path, glb_with_material(data, unlit))


_GLB_JSON, _GLB_BIN = 0x4E4F534A, 0x004E4942


def read_glb_json(data: bytes) -> dict:
    """The JSON chunk of a GLB file."""
    length, kind = struct.unpack_from("<II", data, 12)
    if data[:4] != b"glTF" or kind != _GLB_JSON:
        raise ValueError("not a binary glTF file (no glTF header and JSON chunk)")
    return json.loads(data[20:20 + length])


def _glb_bin(data: bytes) -> bytes:
    """The BIN chunk's bytes of a GLB file (b"" when it has none)."""
    start = 20 + struct.unpack_from("<I", data, 12)[0]
    if len(data) < start + 8:
        return b""
    length, kind = struct.unpack_from("<II", data, start)
    if kind != _GLB_BIN:
        raise ValueError("GLB: the chunk after the JSON is not BIN")
    return data[start + 8:start + 8 + length]


def _pack_glb(gltf: dict, binary: bytes) -> bytes:
    """A GLB file of `gltf` and its BIN chunk (4-byte aligned: JSON padded with spaces, BIN with zeros)."""
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    body = struct.pack("<II", len(text), _GLB_JSON) + text
    if binary:
        binary += b"\0" * (-len(binary) % 4)
        body += struct.pack("<II", len(binary), _GLB_BIN) + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear (the sRGB transfer function, IEC 61966-2-1)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def glb_with_vertex_colours(data: bytes, colours: np.ndarray) -> bytes:
    """`data` (a GLB of one primitive with V vertices) with COLOR_0 = `colours` (V, 3|4) uint8 sRGB, stored linear
    as float32 VEC3 (a new accessor and buffer view at the end of the BIN chunk)."""
    gltf, binary = read_glb_json(data), _glb_bin(data)
    prims = [p for m in gltf.get("meshes", []) for p in m.get("primitives", [])]
    count = len(colours)
    if len(prims) != 1 or gltf["accessors"][prims[0]["attributes"]["POSITION"]]["count"] != count:
        raise ValueError(f"GLB vertex colours: expected one primitive of {count} vertices")
    linear = srgb_to_linear(np.asarray(colours)[:, :3] / 255.0).astype("<f4")  # (V, 3)
    offset = len(binary) + (-len(binary) % 4)
    binary = binary + b"\0" * (offset - len(binary)) + linear.tobytes()
    gltf.setdefault("bufferViews", []).append({"buffer": 0, "byteOffset": offset, "byteLength": linear.nbytes,
                                               "target": 34962})  # ARRAY_BUFFER
    gltf["accessors"].append({"bufferView": len(gltf["bufferViews"]) - 1, "componentType": 5126, "count": count,
                              "type": "VEC3"})  # FLOAT
    prims[0]["attributes"]["COLOR_0"] = len(gltf["accessors"]) - 1
    gltf["buffers"][0]["byteLength"] = len(binary)
    return _pack_glb(gltf, binary)


def glb_with_material(data: bytes, unlit: bool = False) -> bytes:
    """`data` (a GLB) where every primitive has a material with metallicFactor 0 and roughnessFactor 1 (one white
    material is added for primitives without one); `unlit` marks every material KHR_materials_unlit."""
    gltf = read_glb_json(data)
    materials = gltf.setdefault("materials", [])
    default = None
    for mesh in gltf.get("meshes", []):
        for prim in mesh.get("primitives", []):
            if "material" not in prim:
                if default is None:
                    default = len(materials)
                    materials.append({"name": "vertex_colors",
                                      "pbrMetallicRoughness": {"baseColorFactor": [1.0, 1.0, 1.0, 1.0]}})
                prim["material"] = default
    for mat in materials:
        pbr = mat.setdefault("pbrMetallicRoughness", {})
        pbr["metallicFactor"], pbr["roughnessFactor"] = 0.0, 1.0
        if unlit:
            mat.setdefault("extensions", {})["KHR_materials_unlit"] = {}
    if unlit and materials:
        used = gltf.setdefault("extensionsUsed", [])
        if "KHR_materials_unlit" not in used:
            used.append("KHR_materials_unlit")
    return _pack_glb(gltf, _glb_bin(data))


def write_ply(
    path: PathLike,
    vertices: np.ndarray,
    faces: np.ndarray,
    vertex_colors: Optional[np.ndarray] = None,
    normals: Optional[np.ndarray] = None,
) -> Path:
    """Binary little-endian PLY with per-vertex RGBA colours (uchar red/green/blue/alpha)."""
    import trimesh

    visual = None
    if vertex_colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.asarray(vertex_colors, dtype=np.uint8))
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, visual=visual, process=False)
    data = mesh.export(file_type="ply", encoding="binary", include_attributes=False)
    return atomic_write_bytes(path, data)


def write_json(path: PathLike, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
