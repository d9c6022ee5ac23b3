"""Fit a feed-forward reconstruction to the views it came from: a few steps on the Gaussians themselves.

A reconstructor predicts every Gaussian in one pass and blurs what it sees (the toy one, 1.35 M parameters, leaves
ragged edges and rounds or squares bodies its input views show plainly). `refine_gaussians` takes its Gaussians and
the input views at their cameras and runs `steps` Adam steps on all Gaussian parameters against those views: the
squared error of the render composited over each view's background colour, plus `mask_weight` × the squared error
of the render's alpha against the view's foreground mask (`sample2d.pick.foreground_mask`, the anchor's rule). No
diffusion model and no field are involved, so a step costs one differentiable render of the input views (the torch
rasteriser, or gsplat where asked); the Gaussians keep the reconstruction's shape wherever the views say nothing.

Parameters are optimised unconstrained, as 3D Gaussian Splatting does: means as they are, log scales, logit
opacities, quaternions normalised in the forward pass (the set is made `canonical()` first, so legacy LGM output with
non-unit quaternions keeps its covariances and every backend draws the same Gaussians), logit colours.
Per-parameter learning rates are `BASE_LR` × `lr` (so `lr` is one dial); the base rates are 3DGS's ratios (opacity
fastest, positions slowest), raised for a fit of tens of steps instead of thousands.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from dreamdist3d.reconstruct.gaussians import Gaussians
from dreamdist3d.reconstruct.render import render_gaussians
from dreamdist3d.sample2d.pick import FOREGROUND, background_colour, foreground_mask

BASE_LR: Dict[str, float] = {"means": 2e-3, "scales": 1e-2, "opacities": 5e-2, "rotations": 1e-2, "colors": 5e-2}
EPS = 1e-4  # opacities and colours are kept inside (EPS, 1 - EPS) before the logit


def _logit(x: Tensor) -> Tensor:
    return torch.logit(x.clamp(EPS, 1 - EPS))


def refine_gaussians(gaussians: Gaussians, views: Tensor, c2w: Tensor, fovy_deg: float, steps: int,
                     lr: float = 1.0, mask_weight: float = 0.0, threshold: float = FOREGROUND,
                     backend: str = "torch") -> Tuple[Gaussians, Dict[str, float]]:
    """One object's Gaussians (N, …), its views (F, 3, H, W) in [0, 1] at scene cameras `c2w` (F, 4, 4) with
    vertical field of view `fovy_deg` -> (the refined Gaussians, detached, on the same device; {"loss_first",
    "loss_last"}). `steps` 0 returns the Gaussians unchanged."""
    if gaussians.batch_shape:
        raise ValueError("refine_gaussians takes one object's Gaussians (N, …); index the batch first")
    if steps < 0 or not lr > 0 or mask_weight < 0:
        raise ValueError(f"refine: steps must be ≥ 0, lr > 0 and mask_weight ≥ 0, got {steps}, {lr}, {mask_weight}")
    if steps == 0:
        return gaussians.detach(), {}
    dev = gaussians.device
    target = views.float().to(dev)  # (F, 3, H, W)
    h, w = target.shape[-2:]
    background = background_colour(target)[:, None, None, :]  # (F, 1, 1, 3)
    mask = foreground_mask(target, threshold).float()[..., None]  # (F, H, W, 1)
    target = target.permute(0, 2, 3, 1)  # (F, H, W, 3)
    c2w = c2w.float().to(dev)
    g = gaussians.detach().to(torch.float32).canonical()  # unit quaternions, the same covariances (legacy LGM too)
    params = {
        "means": g.means.clone(),
        "scales": g.scales.clamp(min=1e-8).log(),
        "opacities": _logit(g.opacities),
        "rotations": g.rotations.clone(),
        "colors": _logit(g.colors),
    }
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam([{"params": [p], "lr": BASE_LR[k] * lr} for k, p in params.items()], eps=1e-15)

    def current() -> Gaussians:
        return Gaussians(params["means"], params["opacities"].sigmoid(), params["scales"].exp(),
                         torch.nn.functional.normalize(params["rotations"], dim=-1), params["colors"].sigmoid())

    losses = []
    with torch.enable_grad():  # callers may hold no_grad (a reconstruction is made under it)
        for _ in range(steps):
            out = render_gaussians(current(), c2w, fovy_deg, h, w, background=(0.0, 0.0, 0.0), backend=backend)
            rgb = out.rgb + (1 - out.alpha) * background  # over each view's own background colour
            loss = (rgb - target).square().mean() + mask_weight * (out.alpha - mask).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return current().detach(), {"loss_first": losses[0], "loss_last": losses[-1]}


__all__ = ["BASE_LR", "refine_gaussians"]
