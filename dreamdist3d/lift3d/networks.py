"""Encodings and MLPs of threestudio's configs, in plain PyTorch.

- `HashGridEncoding`: Instant-NGP multi-resolution hash grid (threestudio's `otype: HashGrid` keys). Level l has
  `res_l = floor(base_resolution · per_level_scale^l)` cells per axis, i.e. (res_l+1)³ vertices, each holding
  `n_features_per_level` features in a table of `min(2^log2_hashmap_size, (res_l+1)³)` rows: dense indexing where the
  grid fits, else the spatial hash `(i·1) xor (j·2654435761) xor (k·805459861) mod T`. A point's feature is the
  trilinear interpolation of its 8 corner vertices. Init uniform ±1e-4 (tcnn's).
  Dense levels (a prefix: the resolution grows with the level) are read with `F.grid_sample` (trilinear,
  align_corners: vertex v of a level with r cells sits at x = v / r) on a (features, r+1, r+1, r+1) view of their
  rows — one fused kernel each way, several times faster on a CPU than gathering 8 corners. Hashed levels gather
  and scatter in chunks inside a custom autograd function that saves only the inputs, so memory is
  O(points × levels × features) however many corners are touched. tinycudann is used instead only when importable,
  on CUDA, and `backend` is "auto" or "tcnn".
- `SphericalHarmonicsEncoding`: tcnn's real SH basis (inputs in [0, 1], degree d → d² outputs).
- `VanillaMLP`: Linear(no bias) → act → … → Linear(no bias) → output activation, autocast off (threestudio's).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping

import torch
from torch import nn

from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import get_activation

_PRIMES = (1, 2654435761, 805459861)
_PRIMES32 = tuple(p - (1 << 32) if p >= (1 << 31) else p for p in _PRIMES)  # same low 32 bits, as int32


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


def _corner_lookup(x: torch.Tensor, res: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, dense: torch.Tensor):
    """x (n,3) in [0,1] -> (global row index (n,L,8) int32, trilinear weight (n,L,8) float).

    Corner c = 4·bx + 2·by + bz. Per-axis terms are combined by broadcasting (n,L,2,1,1)∘(n,L,1,2,1)∘(n,L,1,1,2).
    Dense levels (a prefix, since resolution grows with the level) add strided coordinates; hashed levels xor
    coordinate·prime in int32 wrap-around arithmetic, whose low bits equal tcnn's uint32 hash (tables are 2^k rows).
    """
    n, L = x.shape[0], res.shape[0]
    pos = x[:, None, :] * res.to(x.dtype)[None, :, None]  # (n, L, 3)
    p0f = torch.minimum(pos.floor().clamp_min(0), (res - 1).to(x.dtype)[None, :, None])
    frac = pos - p0f
    p0 = p0f.to(torch.int32)
    c = torch.stack([p0, p0 + 1], -1)  # (n, L, 3, 2) vertex coordinate per axis and bit
    wa = torch.stack([1.0 - frac, frac], -1)  # (n, L, 3, 2)
    w = wa[:, :, 0, :, None, None] * wa[:, :, 1, None, :, None] * wa[:, :, 2, None, None, :]  # (n, L, 2, 2, 2)
    n_dense = int(dense.sum())
    parts = []
    if n_dense:
        cd = c[:, :n_dense]
        stride = (res[:n_dense] + 1).to(torch.int32)[None, :, None]
        d0, d1, d2 = cd[:, :, 0], cd[:, :, 1] * stride, cd[:, :, 2] * (stride * stride)
        parts.append(d0[:, :, :, None, None] + d1[:, :, None, :, None] + d2[:, :, None, None, :])
    if n_dense < L:
        ch = c[:, n_dense:]
        h0 = ch[:, :, 0] * _PRIMES32[0]
        h1 = ch[:, :, 1] * _PRIMES32[1]
        h2 = ch[:, :, 2] * _PRIMES32[2]
        hashed = h0[:, :, :, None, None] ^ h1[:, :, None, :, None] ^ h2[:, :, None, None, :]
        parts.append(hashed & (sizes[n_dense:] - 1).to(torch.int32)[None, :, None, None, None])
    idx = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
    idx = idx + offsets.to(torch.int32)[None, :, None, None, None]
    return idx.reshape(n, L, 8), w.reshape(n, L, 8)


class _HashGridFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, res, offsets, sizes, dense, chunk: int):  # type: ignore[override]
        n, L, F = x.shape[0], res.shape[0], table.shape[1]
        out = x.new_empty((n, L, F), dtype=table.dtype)
        for s in range(0, n, chunk):
            idx, w = _corner_lookup(x[s : s + chunk], res, offsets, sizes, dense)
            feats = torch.index_select(table, 0, idx.reshape(-1)).reshape(*idx.shape, F)  # (n, L, 8, F)
            out[s : s + chunk] = torch.matmul(w.to(table.dtype)[:, :, None, :], feats)[:, :, 0]
        ctx.save_for_backward(x, res, offsets, sizes, dense)
        ctx.table_shape = table.shape
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, res, offsets, sizes, dense = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[1]:
            E, F = ctx.table_shape
            grad_table = grad_out.new_zeros((E, F))
            for s in range(0, x.shape[0], ctx.chunk):
                idx, w = _corner_lookup(x[s : s + ctx.chunk], res, offsets, sizes, dense)
                g = grad_out[s : s + ctx.chunk]  # (n, L, F)
                contrib = w[..., None].to(g.dtype) * g[:, :, None, :]  # (n, L, 8, F)
                grad_table.index_add_(0, idx.reshape(-1).long(), contrib.reshape(-1, F))
        return None, grad_table, None, None, None, None, None


class HashGridEncoding(nn.Module):
    """(N, 3) points in [0, 1] -> (N, n_levels · n_features_per_level) features (fp32)."""

    def __init__(
        self,
        n_input_dims: int = 3,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        chunk: int = 1 << 17,
    ) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ConfigError(f"HashGrid encoding supports 3 input dims, got n_input_dims={n_input_dims}")
        T = 2 ** int(log2_hashmap_size)
        res = [int(math.floor(base_resolution * per_level_scale**lv)) for lv in range(n_levels)]
        sizes, dense = [], []
        for r in res:
            full = (r + 1) ** 3
            dense.append(full <= T)
            sizes.append(full if full <= T else T)
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        if sum(sizes) >= 2**31:
            raise ConfigError(f"hash grid with {sum(sizes)} rows is too large (int32 indices); lower log2_hashmap_size "
                              "or n_levels")
        if dense != sorted(dense, reverse=True):  # resolution grows with the level, so dense levels come first
            raise ConfigError("hash grid levels must be dense first, hashed after (per_level_scale must be >= 1)")
        self.n_levels, self.n_features_per_level = n_levels, n_features_per_level
        self.n_output_dims = n_levels * n_features_per_level
        self.chunk = chunk
        self.register_buffer("res", torch.tensor(res, dtype=torch.long), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        self.params = nn.Parameter(torch.empty(sum(sizes), n_features_per_level).uniform_(-1e-4, 1e-4))

        self.n_dense = int(sum(dense))

    def _dense_levels(self, x: torch.Tensor) -> torch.Tensor:
        """x (n,3) in [0,1] -> (n, n_dense, F): trilinear reads of the dense levels (row = i + j·(r+1) + k·(r+1)²)."""
        grid = (x * 2.0 - 1.0)[None, None, None]  # (1,1,1,n,3): (x, y, z) -> (W, H, D)
        F_ = self.n_features_per_level
        outs = []
        for lv in range(self.n_dense):
            v, off = int(self.res[lv]) + 1, int(self.offsets[lv])
            vol = self.params[off : off + v**3].view(v, v, v, F_).permute(3, 0, 1, 2)[None]  # (1, F, D=k, H=j, W=i)
            outs.append(nn.functional.grid_sample(vol, grid, mode="bilinear", align_corners=True)[0, :, 0, 0].t())
        return torch.stack(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 3).float().clamp(0.0, 1.0)
        nd, parts = self.n_dense, []
        if nd:
            parts.append(self._dense_levels(x))
        if nd < self.n_levels:
            parts.append(_HashGridFn.apply(x, self.params, self.res[nd:], self.offsets[nd:], self.sizes[nd:],
                                           self.dense[nd:], self.chunk))
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return out.reshape(x.shape[0], self.n_output_dims)


class TcnnEncoding(nn.Module):
    """tinycudann encoding (optional accelerator); fp32 output like threestudio's TCNNEncoding."""

    def __init__(self, n_input_dims: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        import tinycudann as tcnn

        cfg = {k: v for k, v in dict(config).items() if k not in ("backend",)}
        self.encoding = tcnn.Encoding(n_input_dims, cfg, dtype=torch.float32)
        self.n_output_dims = self.encoding.n_output_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.reshape(-1, x.shape[-1]))


# Real spherical harmonics in tinycudann's order and signs, on directions x, y, z in [-1, 1].
def _sh_basis(d: torch.Tensor, degree: int) -> torch.Tensor:
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            1.0925484305920792 * x * y,
            -1.0925484305920792 * y * z,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * x * z,
            0.54627421529603959 * (xx - yy),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * x * y * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ]
    if degree > 4:
        raise ConfigError(f"SphericalHarmonics degree must be 1..4 here, got {degree}")
    return torch.stack(out, -1)


class SphericalHarmonicsEncoding(nn.Module):
    """(N, 3) in [0, 1] (tcnn's input range; direction = 2·in - 1) -> (N, degree²)."""

    def __init__(self, n_input_dims: int = 3, degree: int = 3) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ConfigError(f"SphericalHarmonics needs 3 input dims, got {n_input_dims}")
        self.degree = int(degree)
        self.n_output_dims = self.degree**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _sh_basis(x.reshape(-1, 3).float() * 2.0 - 1.0, self.degree)


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding (tcnn `Frequency`): [sin(2^k π x), cos(2^k π x)] for k < n_frequencies."""

    def __init__(self, n_input_dims: int = 3, n_frequencies: int = 6) -> None:
        super().__init__()
        self.n_frequencies = int(n_frequencies)
        self.n_output_dims = n_input_dims * self.n_frequencies * 2
        self.register_buffer("freqs", 2.0 ** torch.arange(self.n_frequencies, dtype=torch.float32) * math.pi,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, 1).float() * self.freqs  # (N, D, K)
        return torch.cat([torch.sin(x), torch.cos(x)], -1).reshape(x.shape[0], -1)


_HASHGRID_KEYS = ("otype", "n_levels", "n_features_per_level", "log2_hashmap_size", "base_resolution",
                  "per_level_scale", "backend", "interpolation")


def get_encoding(n_input_dims: int, config: Mapping[str, Any], where: str = "pos_encoding_config") -> nn.Module:
    config = dict(config)
    otype = config.get("otype")
    if otype in ("HashGrid", "ProgressiveBandHashGrid"):
        unknown = sorted(set(config) - set(_HASHGRID_KEYS) - {"start_level", "start_step", "update_steps"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where} (otype HashGrid); valid: "
                              f"{', '.join(_HASHGRID_KEYS)}")
        backend = config.get("backend", "auto")
        if backend not in ("auto", "torch", "tcnn"):
            raise ConfigError(f"{where}.backend must be auto, torch or tcnn, got {backend!r}")
        if backend == "tcnn" or (backend == "auto" and _tcnn_available()):
            return TcnnEncoding(n_input_dims, config)
        return HashGridEncoding(
            n_input_dims,
            n_levels=int(config.get("n_levels", 16)),
            n_features_per_level=int(config.get("n_features_per_level", 2)),
            log2_hashmap_size=int(config.get("log2_hashmap_size", 19)),
            base_resolution=int(config.get("base_resolution", 16)),
            per_level_scale=float(config.get("per_level_scale", 1.447269237440378)),
        )
    if otype == "SphericalHarmonics":
        return SphericalHarmonicsEncoding(n_input_dims, int(config.get("degree", 3)))
    if otype == "Frequency":
        return FrequencyEncoding(n_input_dims, int(config.get("n_frequencies", 6)))
    raise ConfigError(f"{where}.otype {otype!r} is not supported; use HashGrid, SphericalHarmonics or Frequency")


class VanillaMLP(nn.Module):
    """threestudio's VanillaMLP (also used for `FullyFusedMLP` configs): bias-free Linear layers, fp32, autocast off."""

    def __init__(self, dim_in: int, dim_out: int, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = dict(config)
        n_neurons = int(config.get("n_neurons", 64))
        n_hidden = int(config.get("n_hidden_layers", 1))
        act = str(config.get("activation", "ReLU"))
        if act != "ReLU":
            raise ConfigError(f"mlp_network_config.activation {act!r} is not supported (ReLU only, as threestudio)")
        layers = [nn.Linear(dim_in, n_neurons, bias=False), nn.ReLU(inplace=True)]
        for _ in range(n_hidden - 1):
            layers += [nn.Linear(n_neurons, n_neurons, bias=False), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(n_neurons, dim_out, bias=False))
        self.layers = nn.Sequential(*layers)
        self.output_activation = get_activation(config.get("output_activation", "none"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.output_activation(self.layers(x.float()))


def get_mlp(dim_in: int, dim_out: int, config: Mapping[str, Any], where: str = "mlp_network_config") -> nn.Module:
    otype = dict(config).get("otype", "VanillaMLP")
    if otype not in ("VanillaMLP", "FullyFusedMLP", "CutlassMLP"):
        raise ConfigError(f"{where}.otype {otype!r} is not supported; use VanillaMLP")
    return VanillaMLP(dim_in, dim_out, config)


def to_plain(cfg: Any) -> Dict[str, Any]:
    """A dataclass/omegaconf/dict config section as a plain dict."""
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


__all__ = [
    "HashGridEncoding",
    "SphericalHarmonicsEncoding",
    "FrequencyEncoding",
    "VanillaMLP",
    "get_encoding",
    "get_mlp",
    "to_plain",
]
