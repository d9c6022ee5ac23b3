"""dreamdist3d.reconstruct: feed-forward multi-view → 3D.

- gaussians.py: `Gaussians` (means, opacities, scales, rotations, colours) and quaternion math
- lgm.py, lgm_blocks.py: the LGM model (3DTopia/LGM's architecture, our modules, SDPA attention), configs big/small/tiny
- lgm_cameras.py: LGM's input cameras, its frame vs this repo's, Plücker rays, the input tensor
- lgm_load.py: strict offline loading of the official checkpoints (`load_lgm`), the shipped toy reconstructor
  (`load_reconstructor("toy")`, data/toy-lgm.safetensors) and dreamdist3d's own files (`save_lgm`)
- render.py: the Gaussian renderer (pure PyTorch, tiles sorted by depth; gsplat as CUDA fast path when importable)
- ply.py: 3D Gaussian Splatting .ply files (write/read)
- field.py: Gaussians as an export `Field` (density / albedo) for meshes
- refine.py: `refine_gaussians`, a reconstruction fitted to its own input views for a few steps
"""

from dreamdist3d.reconstruct.field import GaussianField
from dreamdist3d.reconstruct.gaussians import Gaussians
from dreamdist3d.reconstruct.lgm import LGM, LGM_CONFIGS, LGMConfig, lgm_config
from dreamdist3d.reconstruct.lgm_cameras import gaussians_to_world, lgm_cameras, lgm_input, plucker_rays, scene_scale
from dreamdist3d.reconstruct.lgm_load import (
    TOY_LGM,
    LGMCheckpointError,
    lgm_from_state_dict,
    load_lgm,
    load_reconstructor,
    save_lgm,
)
from dreamdist3d.reconstruct.ply import read_splat_ply, write_splat_ply
from dreamdist3d.reconstruct.render import SplatRender, render_gaussians

__all__ = [
    "GaussianField",
    "Gaussians",
    "LGM",
    "LGMCheckpointError",
    "LGMConfig",
    "LGM_CONFIGS",
    "gaussians_to_world",
    "lgm_cameras",
    "lgm_config",
    "lgm_from_state_dict",
    "lgm_input",
    "load_lgm",
    "load_reconstructor",
    "plucker_rays",
    "read_splat_ply",
    "render_gaussians",
    "SplatRender",
    "save_lgm",
    "scene_scale",
    "TOY_LGM",
    "write_splat_ply",
]
