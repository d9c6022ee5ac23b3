"""The field protocol the exporter reads, a chunked evaluator, and analytic fields for tests and demos.

A `Field` is anything with

- `bbox: Tensor (2, 3)`: min and max corners of the region to mesh, in the field's world frame (threestudio's:
  z up, azimuth 0 = +x = the object's front). Its device is where `density` and `albedo` are evaluated.
- `density(points (N, 3)) -> (N,)`: volume density *after* the activation (threestudio's `σ`, the quantity
  `isosurface_threshold` is compared to: the surface is `density == threshold`, inside is `density > threshold`).
- `albedo(points (N, 3)) -> (N, 3)`: surface colour in [0, 1] (for `no-material`: `sigmoid(features)`).

Both are called on float32 points on `bbox.device`, in chunks, under `torch.no_grad()`; they must not keep state
between calls. Nothing else (no `nn.Module`, no config) is required, so a NeRF geometry, a test lambda or an
analytic shape all fit.

The analytic fields below use a linear density ramp around a signed distance function `sdf` (negative inside):
`density = clamp(level * (1 - sdf / ramp), 0, 2 * level)`, which equals `level` (default 25.0, threestudio's
`implicit-volume` threshold) exactly on the surface, so marching cubes at the default threshold recovers the
analytic shape to within interpolation error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Protocol, Tuple, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Field",
    "check_field",
    "field_device",
    "eval_chunked",
    "SphereField",
    "BoxField",
    "TwoPartField",
    "ANALYTIC_FIELDS",
    "make_analytic_field",
]


@runtime_checkable
class Field(Protocol):
    bbox: Tensor  # (2, 3): [min corner, max corner]

    def density(self, points: Tensor) -> Tensor:  # (N, 3) -> (N,)
        ...

    def albedo(self, points: Tensor) -> Tensor:  # (N, 3) -> (N, 3) in [0, 1]
        ...


def check_field(field: object) -> None:
    """Raise a clear TypeError/ValueError when `field` does not follow the protocol."""
    missing = [name for name in ("bbox", "density", "albedo") if not hasattr(field, name)]
    if missing:
        raise TypeError(
            f"{type(field).__name__} is not an export Field: missing {', '.join(missing)} "
            "(need bbox (2,3) tensor, density(points (N,3)) -> (N,), albedo(points (N,3)) -> (N,3))"
        )
    bbox = torch.as_tensor(field.bbox)
    if bbox.shape != (2, 3):
        raise ValueError(f"field.bbox must have shape (2, 3) [min, max], got {tuple(bbox.shape)}")
    if not bool((bbox[1] > bbox[0]).all()):
        raise ValueError(f"field.bbox max corner must exceed min corner on every axis, got {bbox.tolist()}")


def field_device(field: Field) -> torch.device:
    bbox = field.bbox
    return bbox.device if isinstance(bbox, Tensor) else torch.device("cpu")


@torch.no_grad()
def eval_chunked(fn: Callable[[Tensor], Tensor], points: Tensor, chunk: int, device: torch.device) -> Tensor:
    """Evaluate `fn` on `points (N, 3)` in chunks on `device`; returns a float32 CPU tensor (N, ...)."""
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    outs = []
    for start in range(0, points.shape[0], chunk):
        p = points[start : start + chunk].to(device=device, dtype=torch.float32)
        out = fn(p)
        outs.append(out.detach().to("cpu", torch.float32))
    if not outs:
        return torch.zeros(0)
    return torch.cat(outs, 0)


# ---------------------------------------------------------------------------------------------------- analytic


def _ramp(sdf: Tensor, level: float, ramp: float) -> Tensor:
    return (level * (1.0 - sdf / ramp)).clamp(0.0, 2.0 * level)


def _sphere_sdf(p: Tensor, center: Tensor, radius: float) -> Tensor:
    return (p - center).norm(dim=-1) - radius


def _box_sdf(p: Tensor, center: Tensor, half: Tensor) -> Tensor:
    q = (p - center).abs() - half
    outside = q.clamp(min=0.0).norm(dim=-1)
    inside = q.max(dim=-1).values.clamp(max=0.0)
    return outside + inside


def _default_bbox() -> Tensor:
    return torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


@dataclass
class SphereField:
    """A sphere whose albedo varies smoothly with position (0.5 + 0.45 · (p - c) / r, per channel), so that a
    texture that lands in the wrong place is visible in tests."""

    radius: float = 0.5
    center: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    level: float = 25.0
    ramp: float = 0.1
    bbox: Tensor = field(default_factory=_default_bbox)

    def sdf(self, points: Tensor) -> Tensor:
        return _sphere_sdf(points, points.new_tensor(self.center), self.radius)

    def density(self, points: Tensor) -> Tensor:
        return _ramp(self.sdf(points), self.level, self.ramp)

    def albedo(self, points: Tensor) -> Tensor:
        c = points.new_tensor(self.center)
        return (0.5 + 0.45 * (points - c) / self.radius).clamp(0.0, 1.0)

    @property
    def volume(self) -> float:
        return 4.0 / 3.0 * torch.pi * self.radius**3


@dataclass
class BoxField:
    """An axis-aligned box with an albedo gradient along its diagonal."""

    half: Tuple[float, float, float] = (0.5, 0.35, 0.25)
    center: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    level: float = 25.0
    ramp: float = 0.1
    bbox: Tensor = field(default_factory=_default_bbox)

    def sdf(self, points: Tensor) -> Tensor:
        return _box_sdf(points, points.new_tensor(self.center), points.new_tensor(self.half))

    def density(self, points: Tensor) -> Tensor:
        return _ramp(self.sdf(points), self.level, self.ramp)

    def albedo(self, points: Tensor) -> Tensor:
        c, h = points.new_tensor(self.center), points.new_tensor(self.half)
        t = ((points - c) / h).clamp(-1.0, 1.0)  # (N, 3) in [-1, 1]
        return torch.stack([0.25 + 0.2 * t[:, 0], 0.55 + 0.2 * t[:, 1], 0.35 + 0.2 * t[:, 2]], -1).clamp(0, 1)

    @property
    def volume(self) -> float:
        h = self.half
        return 8.0 * h[0] * h[1] * h[2]


@dataclass
class TwoPartField:
    """A red sphere resting on (slightly sunk into) a blue box, z up, plus an optional tiny floater sphere.

    The two parts form one connected surface; each point takes the colour of the part whose surface is nearer.
    `floater_radius > 0` adds a small detached sphere (green) that floater removal should delete.
    """

    sphere_center: Tuple[float, float, float] = (0.0, 0.0, 0.2)
    sphere_radius: float = 0.35
    box_center: Tuple[float, float, float] = (0.0, 0.0, -0.3)
    box_half: Tuple[float, float, float] = (0.55, 0.45, 0.2)
    sphere_color: Tuple[float, float, float] = (0.85, 0.15, 0.1)
    box_color: Tuple[float, float, float] = (0.1, 0.3, 0.85)
    floater_center: Tuple[float, float, float] = (0.7, 0.7, 0.7)
    floater_radius: float = 0.0
    floater_color: Tuple[float, float, float] = (0.1, 0.8, 0.2)
    level: float = 25.0
    ramp: float = 0.1
    bbox: Tensor = field(default_factory=_default_bbox)
    # > 0: a ripple of this height (sin·sin·sin of `bump_frequency` radians per unit) over the whole surface, a bumpy
    # surface like a NeRF's for the unwrap benchmark
    bumps: float = 0.0
    bump_frequency: float = 20.0

    def _sdfs(self, points: Tensor) -> Tensor:  # (N, P)
        s = _sphere_sdf(points, points.new_tensor(self.sphere_center), self.sphere_radius)
        b = _box_sdf(points, points.new_tensor(self.box_center), points.new_tensor(self.box_half))
        parts = [s, b]
        if self.floater_radius > 0:
            parts.append(_sphere_sdf(points, points.new_tensor(self.floater_center), self.floater_radius))
        return torch.stack(parts, -1)

    def sdf(self, points: Tensor) -> Tensor:
        d = self._sdfs(points).min(-1).values
        if self.bumps > 0:
            d = d + self.bumps * torch.sin(self.bump_frequency * points).prod(-1)
        return d

    def part(self, points: Tensor) -> Tensor:
        """(N,) index of the part a point belongs to: 0 sphere, 1 box, 2 floater."""
        return self._sdfs(points).argmin(-1)

    def density(self, points: Tensor) -> Tensor:
        return _ramp(self.sdf(points), self.level, self.ramp)

    def albedo(self, points: Tensor) -> Tensor:
        colors = points.new_tensor([self.sphere_color, self.box_color, self.floater_color])
        return colors[self.part(points)]


ANALYTIC_FIELDS: Dict[str, Callable[..., Field]] = {
    "sphere": SphereField,
    "box": BoxField,
    "two-part": TwoPartField,
}


def make_analytic_field(name: str, device: Optional[torch.device | str] = None, **kwargs) -> Field:
    """Build one of `ANALYTIC_FIELDS` by name; `device` moves its bbox (and so its evaluation) there."""
    if name not in ANALYTIC_FIELDS:
        raise ValueError(f"unknown analytic field '{name}'; choose one of {', '.join(ANALYTIC_FIELDS)}")
    f = ANALYTIC_FIELDS[name](**kwargs)
    if device is not None:
        f.bbox = f.bbox.to(device)
    return f
