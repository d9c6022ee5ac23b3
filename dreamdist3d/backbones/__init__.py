"""Backbones: the Backbone object, noise schedules, MVDream's multi-view UNet, SD 2.1, the toy backbone, cameras,
the one loader (`load_backbone("mvdream:P" | "sd21:D" | "toy[:W]" | "module:fn")`, `load_text_side`) and the one
DDIM sampler (`ddim.ddim_sample`)."""

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.load import load_backbone, load_text_side
from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG, MultiViewUNet
from dreamdist3d.backbones.schedule import NoiseSchedule, scaled_linear_betas

__all__ = ["Backbone", "MultiViewUNet", "MVDREAM_SD21_CONFIG", "NoiseSchedule", "load_backbone", "load_text_side",
           "scaled_linear_betas"]
