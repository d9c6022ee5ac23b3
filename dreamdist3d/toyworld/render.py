"""Pure-torch SDF renderer for toy objects, from MVDream cameras.

Sphere tracing with a fixed step budget, Lambert shading under a WORLD-fixed light plus ambient and sky terms
(so a surface point has the same colour from every view: a view-independent radiance field can reproduce the
renders exactly), white background, 2x supersampling averaged down, batched over objects and views.

Cameras are MVDream's: (V,16) or (N,V,16) camera-to-world matrices flattened row-major (as returned by
`dreamdist3d.backbones.cameras.get_camera`), z-up world, OpenGL camera axes (columns right / up / back). The
rotation is used as is; the camera position is the translation's direction times `distance` (MVDream's vectors
lie on the unit sphere). Pass `distance=None` to use the translation as given (e.g. threestudio c2w).

Framing used everywhere in the toy world (the 3D runner's test cameras should reuse these):
    FOVY_DEG = 40 (vertical = horizontal field of view, square images), CAMERA_DISTANCE = 3.0.
At that distance the frame's half-height at the origin is 3.0·tan(20°) = 1.09 world units; every object of the
grammar has a bounding radius below MAX_OBJECT_RADIUS = 1.05 (checked in the tests), so nothing is ever cut off.

Output rows are laid out (b f): row = n·V + v, the V views of one object next to each other, as MVDream batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from dreamdist3d.toyworld.objects import SHAPE_INDEX, SHAPES, ObjectSpec, bounding_radius, primitives

FOVY_DEG = 40.0
CAMERA_DISTANCE = 3.0
MAX_OBJECT_RADIUS = 1.05
DEFAULT_ELEVATION = 15.0  # MVDream's default sampling elevation
LIGHT_DIR = (-0.45, -0.60, 0.66)  # towards the key light, world z-up: above, in front (−y) and to the left (−x)
FILL_DIR = (0.55, 0.70, 0.45)  # towards a weaker fill light from behind-right, so back views are not dark
AMBIENT, DIFFUSE, FILL, SKY = 0.35, 0.50, 0.22, 0.12
BACKGROUND = 1.0
MARCH_STEPS = 40
HIT_EPS = 2e-3
COMPACT_EVERY = 4


# ----------------------------------------------------------------------------------------------------- batch
@dataclass
class ObjectBatch:
    """Per-object SDF parameters as tensors (N objects). part_type is -1 where an object has no part."""

    body_type: torch.Tensor  # (N,) long, index into SHAPES
    body_center: torch.Tensor  # (N,3)
    body_half: torch.Tensor  # (N,3)
    body_rgb: torch.Tensor  # (N,3)
    part_type: torch.Tensor  # (N,) long, -1 = none
    part_center: torch.Tensor  # (N,3)
    part_half: torch.Tensor  # (N,3)
    part_rgb: torch.Tensor  # (N,3)
    radius: torch.Tensor  # (N,) bounding radius around the origin

    @staticmethod
    def from_specs(specs: Sequence[ObjectSpec], device=None, dtype=torch.float32) -> "ObjectBatch":
        if len(specs) == 0:
            raise ValueError("ObjectBatch.from_specs: no objects")
        bt, bc, bh, brgb, pt, pc, ph, prgb, rad = [], [], [], [], [], [], [], [], []
        for s in specs:
            body, part = primitives(s)
            bt.append(SHAPE_INDEX[body.shape])
            bc.append(body.center)
            bh.append(body.half)
            brgb.append(body.rgb)
            if part is None:
                pt.append(-1)
                pc.append((0.0, 0.0, 0.0))
                ph.append((1.0, 1.0, 1.0))
                prgb.append((0.0, 0.0, 0.0))
            else:
                pt.append(SHAPE_INDEX[part.shape])
                pc.append(part.center)
                ph.append(part.half)
                prgb.append(part.rgb)
            rad.append(bounding_radius(s))
        f = lambda x: torch.tensor(x, dtype=dtype, device=device)  # noqa: E731
        return ObjectBatch(
            body_type=torch.tensor(bt, dtype=torch.long, device=device),
            body_center=f(bc),
            body_half=f(bh),
            body_rgb=f(brgb),
            part_type=torch.tensor(pt, dtype=torch.long, device=device),
            part_center=f(pc),
            part_half=f(ph),
            part_rgb=f(prgb),
            radius=f(rad),
        )

    def __len__(self) -> int:
        return int(self.body_type.shape[0])


@dataclass
class RenderOutput:
    image: torch.Tensor  # (M,3,H,W) float in [0,1], white background
    mask: torch.Tensor  # (M,1,H,W) float foreground coverage in [0,1] (fraction of supersamples that hit)
    depth: torch.Tensor  # (M,1,H,W) mean hit distance along the ray over covered supersamples (0 where empty)


# ----------------------------------------------------------------------------------------------------- SDFs
# q: (K,3) point in the primitive's frame (centre subtracted); h: (K,3) half-extents along x/y/z. Return (K,).
def _sd_ellipsoid(q, h):
    # |q/h| - 1 scaled by min(h): 1-Lipschitz and exact for a sphere
    return (torch.linalg.vector_norm(q / h, dim=-1) - 1.0) * h.min(dim=-1).values


def _sd_box(q, h):
    r = 0.12 * h.min(dim=-1).values
    d = q.abs() - (h - r[:, None])
    outside = torch.linalg.vector_norm(d.clamp(min=0.0), dim=-1)
    inside = d.max(dim=-1).values.clamp(max=0.0)
    return outside + inside - r


def _sd_cylinder(q, h):
    rho = 0.08 * torch.minimum(h[:, 0], h[:, 2])
    dxy = torch.linalg.vector_norm(q[:, :2], dim=-1) - (h[:, 0] - rho)
    dz = q[:, 2].abs() - (h[:, 2] - rho)
    d = torch.stack([dxy, dz], -1)
    return d.max(dim=-1).values.clamp(max=0.0) + torch.linalg.vector_norm(d.clamp(min=0.0), dim=-1) - rho


def _sd_cone(q, h):
    # capped cone, apex up: base radius r1 = h.x at z = -h.z, top radius 0 at z = +h.z (exact SDF)
    hh, r1 = h[:, 2], h[:, 0]
    qx = torch.linalg.vector_norm(q[:, :2], dim=-1)
    qy = q[:, 2]
    r_sel = torch.where(qy < 0, r1, torch.zeros_like(r1))
    ca_x = qx - torch.minimum(qx, r_sel)
    ca_y = qy.abs() - hh
    k2x, k2y = -r1, 2.0 * hh  # (r2 - r1, 2h) with r2 = 0
    # k1 = (0, h)
    tt = ((0.0 - qx) * k2x + (hh - qy) * k2y) / (k2x * k2x + k2y * k2y)
    tt = tt.clamp(0.0, 1.0)
    cb_x = qx + k2x * tt
    cb_y = qy - hh + k2y * tt
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    d2 = torch.minimum(ca_x * ca_x + ca_y * ca_y, cb_x * cb_x + cb_y * cb_y)
    return sign * d2.sqrt()


def _sd_torus(q, h):
    # upright ring in the x-z plane (axis along y): outer radius h.x, tube radius h.y
    big_r = h[:, 0] - h[:, 1]
    a = torch.linalg.vector_norm(q[:, [0, 2]], dim=-1) - big_r
    return torch.sqrt(a * a + q[:, 1] * q[:, 1]) - h[:, 1]


def _sd_capsule(q, h):
    r = h[:, 0]
    a = (h[:, 2] - r).clamp(min=0.0)
    z = q[:, 2] - torch.maximum(torch.minimum(q[:, 2], a), -a)
    return torch.sqrt(q[:, 0] * q[:, 0] + q[:, 1] * q[:, 1] + z * z) - r


_SDF = {
    "sphere": _sd_ellipsoid,
    "box": _sd_box,
    "cylinder": _sd_cylinder,
    "cone": _sd_cone,
    "torus": _sd_torus,
    "capsule": _sd_capsule,
}


def primitive_sdf(shape: str, q: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Signed distance of points q (K,3), in the primitive's frame, to a `shape` with half-extents (K,3)."""
    return _SDF[shape](q, half)


class _Scene:
    """SDF of one group of objects that share (body shape, part shape); per-ray parameters gathered once."""

    def __init__(self, body_shape: str, part_shape: Optional[str], bc, bh, pc, ph):
        self.body_fn = _SDF[body_shape]
        self.part_fn = _SDF[part_shape] if part_shape else None
        self.bc, self.bh, self.pc, self.ph = bc, bh, pc, ph

    def select(self, keep: torch.Tensor) -> "_Scene":
        s = _Scene.__new__(_Scene)
        s.body_fn, s.part_fn = self.body_fn, self.part_fn
        s.bc, s.bh = self.bc[keep], self.bh[keep]
        s.pc = self.pc[keep] if self.part_fn else self.pc
        s.ph = self.ph[keep] if self.part_fn else self.ph
        return s

    def both(self, p):
        db = self.body_fn(p - self.bc, self.bh)
        if self.part_fn is None:
            return db, None
        return db, self.part_fn(p - self.pc, self.ph)

    def __call__(self, p):
        db, dp = self.both(p)
        return db if dp is None else torch.minimum(db, dp)


# ----------------------------------------------------------------------------------------------------- cameras
def camera_rays(
    cameras: torch.Tensor,
    size: int,
    fovy_deg: float = FOVY_DEG,
    distance: Optional[float] = CAMERA_DISTANCE,
):
    """Rays through pixel centres. cameras (M,16) or (M,4,4) c2w -> origins (M,size*size,3), dirs (M,size*size,3).

    Pixel (i, j) (row i from the top) looks along R·(x·tan, y·tan, −1) with x, y in (−1, 1), y up."""
    c2w = cameras.reshape(-1, 4, 4)
    rot, trans = c2w[:, :3, :3], c2w[:, :3, 3]
    if distance is not None:
        trans = trans / trans.norm(dim=-1, keepdim=True).clamp(min=1e-8) * distance
    tan = math.tan(math.radians(fovy_deg) / 2.0)
    lin = (torch.arange(size, device=cameras.device, dtype=cameras.dtype) + 0.5) / size * 2.0 - 1.0
    y, x = torch.meshgrid(-lin, lin, indexing="ij")
    d_cam = torch.stack([x * tan, y * tan, -torch.ones_like(x)], -1).reshape(-1, 3)  # (P,3)
    dirs = torch.einsum("mij,pj->mpi", rot, d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = trans[:, None, :].expand_as(dirs)
    return origins, dirs


# ----------------------------------------------------------------------------------------------------- render
def render(
    objects: Union[ObjectBatch, Sequence[ObjectSpec]],
    cameras: torch.Tensor,
    resolution: int = 32,
    aa: int = 2,
    fovy_deg: float = FOVY_DEG,
    distance: Optional[float] = CAMERA_DISTANCE,
    steps: int = MARCH_STEPS,
    device: Optional[Union[str, torch.device]] = None,
) -> RenderOutput:
    """Render N objects from V cameras each -> RenderOutput with (N·V, …) rows in (b f) order.

    cameras: (V,16) shared by every object, or (N,V,16) per object (MVDream c2w, see module doc).
    resolution: output size (32 default, or 64); aa: supersampling factor (rendered at aa·resolution, average-pooled).
    distance: camera distance (None: use the cameras' translations unchanged). Deterministic."""
    if not isinstance(objects, ObjectBatch):
        objects = ObjectBatch.from_specs(list(objects), device=device)
    dev = objects.body_center.device if device is None else torch.device(device)
    dtype = objects.body_center.dtype
    n = len(objects)
    cams = cameras.to(device=dev, dtype=dtype)
    if cams.dim() == 2:
        cams = cams[None].expand(n, -1, -1)
    if cams.dim() != 3 or cams.shape[0] != n or cams.shape[-1] != 16:
        raise ValueError(f"cameras must be (V,16) or (N={n},V,16) MVDream c2w vectors, got {tuple(cameras.shape)}")
    v = cams.shape[1]
    s = resolution * aa
    p_count = s * s
    origins, dirs = camera_rays(cams.reshape(-1, 16), s, fovy_deg, distance)  # (M,P,3)
    m = n * v
    rgb = torch.full((m * p_count, 3), BACKGROUND, device=dev, dtype=dtype)
    hit = torch.zeros(m * p_count, device=dev, dtype=dtype)
    depth = torch.zeros(m * p_count, device=dev, dtype=dtype)
    light = torch.tensor(LIGHT_DIR, device=dev, dtype=dtype)
    light = light / light.norm()
    fill = torch.tensor(FILL_DIR, device=dev, dtype=dtype)
    fill = fill / fill.norm()
    obj = {k: getattr(objects, k).to(dev) for k in objects.__dataclass_fields__}

    combo = obj["body_type"] * (len(SHAPES) + 1) + (obj["part_type"] + 1)
    for key in torch.unique(combo).tolist():
        objs = (combo == key).nonzero().flatten()  # objects in this group
        rows = (objs[:, None] * v + torch.arange(v, device=dev)[None]).flatten()  # (R,)
        o = origins[rows].reshape(-1, 3)
        d = dirs[rows].reshape(-1, 3)
        ray_obj = objs.repeat_interleave(v * p_count)
        ray_id = (rows[:, None] * p_count + torch.arange(p_count, device=dev)[None]).flatten()
        # bounding-sphere entry/exit; rays that miss it stay background
        rad = obj["radius"][ray_obj] * 1.02 + 1e-3
        b = (o * d).sum(-1)
        c = (o * o).sum(-1) - rad * rad
        disc = b * b - c
        keep = disc > 0
        sq = disc.clamp(min=0).sqrt()
        t = (-b - sq).clamp(min=0.0)
        t_exit = -b + sq
        idx = keep.nonzero().flatten()
        o, d, t, t_exit, ray_obj, ray_id = o[idx], d[idx], t[idx], t_exit[idx], ray_obj[idx], ray_id[idx]
        body_shape = SHAPES[int(obj["body_type"][objs[0]])]
        pt = int(obj["part_type"][objs[0]])
        scene = _Scene(
            body_shape,
            SHAPES[pt] if pt >= 0 else None,
            obj["body_center"][ray_obj],
            obj["body_half"][ray_obj],
            obj["part_center"][ray_obj] if pt >= 0 else None,
            obj["part_half"][ray_obj] if pt >= 0 else None,
        )
        done_t, done_id, done_obj = [], [], []
        done_o, done_d = [], []
        for step in range(steps):
            if o.shape[0] == 0:
                break
            dist = scene(o + t[:, None] * d)
            t = t + dist
            last = step == steps - 1
            if (step + 1) % COMPACT_EVERY == 0 or last:
                converged = dist.abs() < HIT_EPS
                alive = (~converged) & (t < t_exit)
                if last:
                    alive = torch.zeros_like(alive)
                if converged.any():
                    ci = converged.nonzero().flatten()
                    done_t.append(t[ci])
                    done_id.append(ray_id[ci])
                    done_obj.append(ray_obj[ci])
                    done_o.append(o[ci])
                    done_d.append(d[ci])
                ai = alive.nonzero().flatten()
                if ai.shape[0] < o.shape[0]:
                    o, d, t, t_exit, ray_obj, ray_id = o[ai], d[ai], t[ai], t_exit[ai], ray_obj[ai], ray_id[ai]
                    scene = scene.select(ai)
        if not done_t:
            continue
        t = torch.cat(done_t)
        ray_id = torch.cat(done_id)
        ray_obj = torch.cat(done_obj)
        pos = torch.cat(done_o) + t[:, None] * torch.cat(done_d)
        hs = _Scene(
            body_shape,
            SHAPES[pt] if pt >= 0 else None,
            obj["body_center"][ray_obj],
            obj["body_half"][ray_obj],
            obj["part_center"][ray_obj] if pt >= 0 else None,
            obj["part_half"][ray_obj] if pt >= 0 else None,
        )
        normal = _normals(hs, pos)
        db, dp = hs.both(pos)
        albedo = obj["body_rgb"][ray_obj]
        if dp is not None:
            albedo = torch.where((dp < db)[:, None], obj["part_rgb"][ray_obj], albedo)
        lam = (normal @ light).clamp(min=0.0)
        sky = 0.5 + 0.5 * normal[:, 2]
        shade = AMBIENT + DIFFUSE * lam + FILL * (normal @ fill).clamp(min=0.0) + SKY * sky
        rgb[ray_id] = (albedo * shade[:, None]).clamp(0.0, 1.0)
        hit[ray_id] = 1.0
        depth[ray_id] = t

    img = rgb.reshape(m, s, s, 3).permute(0, 3, 1, 2)
    hit = hit.reshape(m, 1, s, s)
    depth = depth.reshape(m, 1, s, s)
    if aa > 1:
        img = F.avg_pool2d(img, aa)
        cover = F.avg_pool2d(hit, aa)
        depth = F.avg_pool2d(depth, aa) / cover.clamp(min=1e-6)
        hit = cover
    return RenderOutput(image=img.contiguous(), mask=hit.contiguous(), depth=depth.contiguous())


def _normals(scene: _Scene, pos: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Unit normals by the tetrahedron finite-difference gradient of the scene SDF (4 evaluations)."""
    ks = torch.tensor(
        [[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], device=pos.device, dtype=pos.dtype
    )
    g = torch.zeros_like(pos)
    for k in ks:
        g = g + k * scene(pos + eps * k)[:, None]
    return g / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def front_camera(elevation: float = DEFAULT_ELEVATION, azimuth: float = 0.0) -> torch.Tensor:
    """(1,16) MVDream camera of one view (azimuth 0 = the canonical front, looking from −y)."""
    from dreamdist3d.backbones.cameras import get_camera

    return get_camera(1, elevation=elevation, azimuth_start=azimuth)


def four_views(elevation: float = DEFAULT_ELEVATION, azimuth_start: float = 0.0) -> torch.Tensor:
    """(4,16) MVDream cameras 90° apart, as MVDream samples its 4-view sets."""
    from dreamdist3d.backbones.cameras import get_camera

    return get_camera(4, elevation=elevation, azimuth_start=azimuth_start, azimuth_span=360)


def render_specs(
    specs: Sequence[ObjectSpec],
    num_views: int = 1,
    elevation: float = DEFAULT_ELEVATION,
    azimuth_start: float = 0.0,
    resolution: int = 32,
    aa: int = 2,
    device=None,
) -> RenderOutput:
    """Convenience: render each spec from `num_views` MVDream cameras spread over 360° (1 = front view)."""
    from dreamdist3d.backbones.cameras import get_camera

    cams = get_camera(num_views, elevation=elevation, azimuth_start=azimuth_start, azimuth_span=360)
    return render(specs, cams, resolution=resolution, aa=aa, device=device)


__all__ = [
    "FOVY_DEG",
    "CAMERA_DISTANCE",
    "MAX_OBJECT_RADIUS",
    "DEFAULT_ELEVATION",
    "ObjectBatch",
    "RenderOutput",
    "render",
    "render_specs",
    "camera_rays",
    "primitive_sdf",
    "front_camera",
    "four_views",
]
