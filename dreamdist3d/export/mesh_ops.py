"""Mesh clean-up after marching cubes: weld, drop degenerate faces, remove small floaters, optional decimation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np

__all__ = ["CleanupInfo", "clean_mesh", "decimate", "vertex_normals"]


@dataclass
class CleanupInfo:
    components: int  # connected components before removal
    components_kept: int
    faces_removed: int  # faces in removed components


def _trimesh(vertices: np.ndarray, faces: np.ndarray):
    import trimesh

    return trimesh.Trimesh(vertices=vertices, faces=faces, process=False)


def clean_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    remove_floaters: float = 0.01,
    keep_largest: bool = False,
) -> Tuple[np.ndarray, np.ndarray, CleanupInfo]:
    """Weld duplicate vertices, drop degenerate faces, then drop small connected components.

    `remove_floaters` follows threestudio's `isosurface_outlier_n_faces_threshold`: below 1 it is a fraction of the
    total face count, from 1 on an absolute face count; components with fewer faces are removed (0 keeps all).
    `keep_largest` keeps only the component with most faces. The largest component is always kept.
    """
    import trimesh

    m = _trimesh(vertices, faces)
    m.merge_vertices()
    m.update_faces(m.nondegenerate_faces())
    m.remove_unreferenced_vertices()
    n_faces = len(m.faces)
    labels = trimesh.graph.connected_component_labels(m.face_adjacency, node_count=n_faces)
    counts = np.bincount(labels) if n_faces else np.zeros(0, dtype=np.int64)
    n_comp = len(counts)
    if n_comp <= 1:
        return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64), CleanupInfo(n_comp, n_comp, 0)
    if keep_largest:
        keep = np.zeros(n_comp, dtype=bool)
        keep[int(np.argmax(counts))] = True
    else:
        limit = remove_floaters * n_faces if remove_floaters < 1 else remove_floaters
        keep = counts >= limit
        keep[int(np.argmax(counts))] = True
    face_mask = keep[labels]
    m.update_faces(face_mask)
    m.remove_unreferenced_vertices()
    info = CleanupInfo(n_comp, int(keep.sum()), int((~face_mask).sum()))
    return np.asarray(m.vertices), np.asarray(m.faces, dtype=np.int64), info


def decimate(
    vertices: np.ndarray, faces: np.ndarray, target_faces: int, log: Callable[[str], None] = print
) -> Tuple[np.ndarray, np.ndarray]:
    """Quadric decimation to about `target_faces` faces with `fast-simplification` (optional dependency).

    Without the package this logs why and returns the mesh unchanged.
    """
    if target_faces <= 0 or len(faces) <= target_faces:
        return vertices, faces
    try:
        import fast_simplification
    except ImportError:
        log(
            f"[export] decimation to {target_faces} faces skipped: the optional package fast-simplification is "
            "not installed (pip install fast-simplification); keeping all "
            f"{len(faces)} faces"
        )
        return vertices, faces
    v, f = fast_simplification.simplify(
        np.ascontiguousarray(vertices, dtype=np.float64), np.ascontiguousarray(faces, dtype=np.int32),
        target_count=int(target_faces),
    )
    v, f, _ = clean_mesh(np.asarray(v), np.asarray(f, dtype=np.int64), remove_floaters=0)
    log(f"[export] decimated {len(faces)} -> {len(f)} faces (fast-simplification)")
    return v, f


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3), outward for counter-clockwise faces."""
    tri = vertices[faces]  # (F, 3, 3)
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3), length = 2·area
    vn = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    fallback = np.array([0.0, 1.0, 0.0])
    return np.where(norm > 1e-20, vn / np.maximum(norm, 1e-20), fallback)
