"""Backbones: the Backbone object, noise schedules, MVDream's multi-view UNet and loaders, SD 2.1, cameras."""

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.multiview_unet import MVDREAM_SD21_CONFIG, MultiViewUNet
from dreamdist3d.backbones.schedule import NoiseSchedule, scaled_linear_betas

__all__ = ["Backbone", "MultiViewUNet", "MVDREAM_SD21_CONFIG", "NoiseSchedule", "scaled_linear_betas"]
