"""The feed-forward stage: a run's 4-view sample -> 3D Gaussians in the run's scene, and the anchor they give.

`reconstruct_sample(cfg, anchor_views)`: the views of the 4-view sample (`lift3d.anchor.AnchorViews`: `preview`'s
images for the run's seed) at their cameras in the scene (the sampler's elevation and azimuths, MVDream a = scene
a − 90, at `system.anchor.camera_distance` with `fovy_deg`) go through the reconstructor named by
`system.anchor.reconstructor` (`reconstruct.load_reconstructor`: an LGM checkpoint, or "toy"), whose Gaussians come
back in the scene's frame and scale (`LGM.reconstruct_scene`). `refine_sample`: with `system.anchor.refine_steps` > 0
they are then fitted to those views for that many steps (`reconstruct.refine`), before anything uses them. The
feed-forward lift (`recipes/reconstruct.py`, `--lift lgm`) is this and nothing else.

`build_anchor(...)`: the anchor of a run (`system.anchor.source`): `preview` fits the 4-view sample itself; `lgm`
reconstructs it, writes the Gaussians to `anchor/gaussians.ply` and fits renders of them (`gaussian_targets`:
`lgm_azimuths` views around the object starting at the sample's first view, at each of `lgm_elevations`, their alpha
as masks), so SDS starts from the reconstruction (`--lift lgm+sds`) through the same system and losses;
`preview+lgm` fits the sample at its own cameras and the renders at the others (`anchor.join_targets`). Both take
the reconstruction refined as above when `refine_steps` > 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from dreamdist3d.backbones.cameras import c2w_from_spherical
from dreamdist3d.lift3d.anchor import (
    Anchor,
    AnchorConfig,
    AnchorTargets,
    AnchorViews,
    join_targets,
    prepare_views,
    preview_targets,
    sample_cameras,
)
from dreamdist3d.reconstruct import Gaussians, load_reconstructor, render_gaussians, write_splat_ply
from dreamdist3d.reconstruct.refine import refine_gaussians

GAUSSIANS_FILE = "gaussians.ply"


def reconstruct_sample(cfg: AnchorConfig, anchor_views: AnchorViews, device: torch.device | str = "cpu",
                       where: str = "system.anchor") -> Gaussians:
    """The Gaussians (N, …) of a 4-view sample in the run's scene, as the reconstructor gives them (see the module
    docstring; `refine_sample` is the feed-forward lift's next step)."""
    model = load_reconstructor(cfg.reconstructor, cfg.reconstructor_rotation, device,
                               config_key=f"{where}.reconstructor")
    c2w = sample_c2w(cfg, anchor_views).to(device)
    views = anchor_views.views.float().to(device)[None]  # (1, F, 3, H, W)
    return model.reconstruct_scene(views, c2w, cfg.fovy_deg)[0]


def sample_c2w(cfg: AnchorConfig, anchor_views: AnchorViews) -> torch.Tensor:
    """(F, 4, 4) the scene cameras of the 4-view sample's views."""
    elevations, azimuths = sample_cameras(anchor_views.sampler)
    return c2w_from_spherical(elevations, azimuths, cfg.camera_distance)


def refine_sample(cfg: AnchorConfig, anchor_views: AnchorViews, gaussians: Gaussians) -> Gaussians:
    """`gaussians` fitted to the 4-view sample for `system.anchor.refine_steps` steps (`reconstruct.refine`)."""
    if not cfg.refine_steps:
        return gaussians
    dev = gaussians.device
    views, c2w = anchor_views.views.float().to(dev), sample_c2w(cfg, anchor_views).to(dev)
    refined, _ = refine_gaussians(gaussians, views, c2w, cfg.fovy_deg, cfg.refine_steps, cfg.refine_lr,
                                  cfg.refine_mask_weight, cfg.mask_threshold, backend="auto")
    return refined


@torch.no_grad()
def gaussian_targets(cfg: AnchorConfig, gaussians: Gaussians, anchor_views: AnchorViews) -> AnchorTargets:
    """Renders of `gaussians` on white at `lgm_azimuths` × `lgm_elevations` scene cameras (the anchor's distance and
    field of view, the sample's size), with their alpha as masks."""
    first = float(sample_cameras(anchor_views.sampler)[1][0])
    azimuths = first + torch.arange(cfg.lgm_azimuths, dtype=torch.float32) * (360.0 / cfg.lgm_azimuths)
    elevations = torch.tensor([float(e) for e in cfg.lgm_elevations], dtype=torch.float32)
    elevations, azimuths = elevations.repeat_interleave(len(azimuths)), azimuths.repeat(len(elevations))
    size = int(anchor_views.views.shape[-1])
    c2w = c2w_from_spherical(elevations, azimuths, cfg.camera_distance).to(gaussians.device)
    out = render_gaussians(gaussians, c2w, cfg.fovy_deg, size, size, background=(1.0, 1.0, 1.0))
    return AnchorTargets(out.rgb.permute(0, 3, 1, 2).cpu(), elevations, azimuths, out.alpha.permute(0, 3, 1, 2).cpu())


def build_anchor(cfg: AnchorConfig, backbone, text_embeddings: torch.Tensor, seed: int, folder: Optional[Path],
                 device: torch.device | str = "cpu") -> Anchor:
    """The anchor of a run whose `system.anchor.source` is `preview` or `lgm` (see the module docstring)."""
    views = prepare_views(cfg, backbone, text_embeddings, seed, folder)
    if cfg.source == "preview":
        return Anchor(cfg, views, device)
    gaussians = refine_sample(cfg, views, reconstruct_sample(cfg, views, device))
    if folder is not None:
        write_splat_ply(Path(folder) / GAUSSIANS_FILE, gaussians)
    targets = gaussian_targets(cfg, gaussians, views)
    if cfg.source == "preview+lgm":
        targets = join_targets(preview_targets(views), targets, cfg.mask_threshold)
    return Anchor(cfg, views, device, targets=targets)


__all__ = ["GAUSSIANS_FILE", "build_anchor", "gaussian_targets", "reconstruct_sample", "refine_sample", "sample_c2w"]
