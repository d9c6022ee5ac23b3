"""Tiny random LGM weights for tests and the parity fixtures (not a real model).

`reference_weights(params, seed)` is the ONE rule the LGM parity fixtures (tests/data/lgm/make_fixtures.py) used for
the official model's weights, so a test regenerates them bit for bit instead of storing megabytes: numpy's legacy
`RandomState(seed).standard_normal(shape)` per parameter, in the given order (its stream is frozen across numpy
versions), then the rule of ../shared/reference/README.md in float64 (GroupNorm weight 1+0.1r, bias 0.1r; ndim >= 2:
r·1.5/sqrt(fan_in) with fan_in = prod(shape[1:]); other 0.1r), rounded to float16 and returned as float32 (exactly
representable in both). `weights_digest` is the sha256 the fixture json records for them.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dreamdist3d.io import atomic_save_safetensors
from dreamdist3d.reconstruct.lgm import LGM, LGMConfig
from dreamdist3d.reconstruct.lgm_load import CONFIG_METADATA_KEY

# The LGM of the parity fixture `lgm-tiny-a` and of the fast tests: the release's U-Net shape (one down level more
# than up levels, attention at the coarse levels and in the middle, splat_size = input_size / 2) at 16² input.
TINY_LGM_CONFIG = LGMConfig(input_size=16, down_channels=(32, 32, 64), down_attention=(False, True, True),
                            up_channels=(64, 32), up_attention=(True, False), splat_size=8, output_size=16)


def _is_norm(name: str) -> bool:
    """GroupNorm parameters of LGM: modules named norm, norm1, norm2, norm_out."""
    return name.rsplit(".", 2)[-2].startswith("norm")


def reference_weights(params: Iterable[Tuple[str, Sequence[int]]], seed: int = 0) -> Dict[str, torch.Tensor]:
    """{name: float32 tensor} for `(name, shape)` pairs in order, by the module docstring's rule."""
    rs = np.random.RandomState(seed)
    out: Dict[str, torch.Tensor] = {}
    for name, shape in params:
        shape = tuple(int(s) for s in shape)
        r = rs.standard_normal(shape)  # float64
        if _is_norm(name):
            v = 1 + 0.1 * r if name.endswith("weight") else 0.1 * r
        elif len(shape) >= 2:
            v = r * 1.5 / math.sqrt(math.prod(shape[1:]))
        else:
            v = 0.1 * r
        out[name] = torch.from_numpy(np.asarray(v, dtype=np.float16).astype(np.float32))
    return out


def weights_digest(weights: Dict[str, torch.Tensor]) -> str:
    """sha256 over the float16 bytes of the tensors, in the dict's order."""
    h = hashlib.sha256()
    for t in weights.values():
        h.update(t.to(torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()


def tiny_lgm(config: LGMConfig = TINY_LGM_CONFIG, seed: int = 0) -> LGM:
    """A float32 `LGM` with `reference_weights` (every parameter random, none zero)."""
    model = LGM(config)
    params = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(reference_weights(params, seed), strict=True)
    return model.eval()


def write_tiny_lgm_checkpoint(path: Union[str, Path], config: LGMConfig = TINY_LGM_CONFIG, seed: int = 0,
                              with_config: bool = True, dtype: torch.dtype = torch.float16,
                              extra: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """A .safetensors in the official key layout (`unet.*`, `conv.*`), float16 as the release; `with_config`
    puts the config (and rotation normalisation) into the header metadata, as dreamdist3d's own files carry it."""
    sd = {k: v.to(dtype) for k, v in tiny_lgm(config, seed).state_dict().items()}
    sd.update(extra or {})
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict())} if with_config else None
    atomic_save_safetensors(sd, path, metadata=meta)
    return Path(path)


__all__ = ["TINY_LGM_CONFIG", "reference_weights", "tiny_lgm", "weights_digest", "write_tiny_lgm_checkpoint"]
