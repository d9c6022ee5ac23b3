"""Anchored 3D runs: the object you picked is the object you get.

A 3D run draws one prompt sample; SDS alone then seeks what *every* image of that prompt sample shares, so the object
is a new realisation of it and a part the picked preview showed can wash out. With `system.anchor.source: preview` a
run with seed s first draws the 4-view sample of its own prompt sample — exactly the images `dreamdist3d preview`
shows for seed s (`sample2d.mvdream_preview.preview_views`: the same prompt sample, image noise seed s + 2**31, the
backbone's preview sampler and cameras) — and fits the field to those views: a photometric loss (`lambda_anchor_rgb`)
and a foreground-mask loss (`lambda_anchor_mask`) at the views' cameras, alone for `anchor.steps` steps, then beside
SDS of the same prompt sample (`lambda_sds`), with any of the weights scheduled as threestudio's `C(...)` values.

Cameras: view f of the sample has MVDream azimuth a_f (`PreviewSampler.azimuths`) and the sampler's elevation; in the
scene it is the threestudio camera at azimuth a_f − 90 (`backbones.cameras.threestudio_azimuth`), at
`anchor.camera_distance` with `anchor.fovy_deg`: the framing of the backbone's training views (toy world: 3.0, 40°).
Foreground: pixels farther than `mask_threshold` from the view's background colour (the median of its border, the
preview pick's rule, `sample2d.pick`); the photometric loss composites the render over that colour.

With `system.anchor.source: lgm` the same 4-view sample is first turned into 3D Gaussians by a feed-forward
reconstructor (`anchor.reconstructor`: an LGM checkpoint, or `toy`), and the field is fitted to renders of those
Gaussians from `lgm_azimuths` × `lgm_elevations` cameras around the object (their alpha as the masks): the
reconstruction, views the sample never showed included, is the anchor, then SDS refines it
(`lift3d/reconstruction.py`, which also saves the Gaussians as `anchor/gaussians.ply`). `preview+lgm` fits both: the
4-view sample itself at its own cameras (its foreground masks), and the renders only at the lgm cameras the sample
does not have — the sample's fidelity where it shows the object, the reconstruction's shape between its views.

Files in the run folder: `anchor/views.safetensors` (the float32 views, what they were drawn with; a resumed run
reuses it after checking it belongs to this run's prompt sample and settings) and `anchor/anchor.png` (the 2×2 grid
`preview` writes for one sample). Nothing here knows how the distribution was learned.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from dreamdist3d.backbones.cameras import threestudio_azimuth
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.data import camera_batch
from dreamdist3d.sample2d.mvdream_preview import PreviewSampler, image_grid, preview_sampler_for, preview_views
from dreamdist3d.sample2d.pick import FOREGROUND, background_colour, foreground_mask

SOURCES = ("none", "preview", "lgm", "preview+lgm")
VIEWS_FILE = "views.safetensors"
GRID_FILE = "anchor.png"
VIEWS_FORMAT = "dreamdist3d.anchor-views"


@dataclass
class AnchorConfig:
    """`system.anchor`: what a run is anchored to and how its views are drawn and framed."""

    # preview: the run's 4-view sample; lgm: its reconstruction's renders; preview+lgm: the sample at its own views and
    # the renders at the others; none: SDS only
    source: str = "none"
    steps: int = 0  # anchor-only steps at the start (no SDS, no guidance call)
    lr_scale: float = 1.0  # learning rates × this during the anchor-only steps (a photometric fit takes larger steps)
    # the preview sampler (None: the backbone's `dreamdist3d preview` defaults: MVDream 50 steps CFG 7.5; toy 25, 2)
    sampler_steps: Optional[int] = None
    guidance_scale: Optional[float] = None
    negative_prompt: str = ""
    elevation: float = 15.0
    azimuth_start: float = 0.0
    # how the views sit in the scene
    camera_distance: float = 3.0
    fovy_deg: float = 40.0
    resolution: Optional[int] = None  # render and fit at this size (None: the views' own size)
    # > 0: a random subset of the views' pixels per step (large views on small GPUs); 0: every pixel; None: every
    # pixel of a 4-view sample (preview), as many random pixels of the lgm renders (the same cost per step)
    rays_per_step: Optional[int] = None
    mask_threshold: float = FOREGROUND
    # source lgm: the feed-forward reconstructor and the renders of its Gaussians that are fitted
    reconstructor: Optional[str] = None  # an LGM checkpoint (.safetensors), or "toy" (the toy world's, shipped)
    reconstructor_rotation: Optional[str] = None  # fixed | legacy (LGM's rotation normalisation); None: from the file
    # > 0: the reconstruction's Gaussians are fitted to the 4-view sample for this many steps (`reconstruct.refine`:
    # render (+ mask) loss at the sample's cameras, learning rates × refine_lr) before the feed-forward lift
    # (`--lift lgm`) or an lgm anchor uses them
    refine_steps: int = 0
    refine_lr: float = 1.0
    refine_mask_weight: float = 0.0
    lgm_azimuths: int = 8  # renders around the object, starting at the sample's first view
    lgm_elevations: List[float] = field(default_factory=lambda: [0.0, 15.0, 30.0])


def check_config(cfg: AnchorConfig, lam_rgb: Any, lam_mask: Any, where: str = "system.anchor") -> None:
    """Config-time checks (before any model loads)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"{where}.source must be one of {', '.join(SOURCES)}, not {cfg.source!r}")
    if cfg.steps < 0 or (cfg.rays_per_step or 0) < 0:
        raise ConfigError(f"{where}.steps and {where}.rays_per_step must be ≥ 0")
    if not (0 < float(cfg.lr_scale) < float("inf")):
        raise ConfigError(f"{where}.lr_scale must be a finite number > 0, got {cfg.lr_scale}")
    if cfg.source != "none" and not (_positive(lam_rgb) or _positive(lam_mask)):
        raise ConfigError(f"{where}.source is '{cfg.source}' but system.loss.lambda_anchor_rgb and lambda_anchor_mask "
                          "are both 0: set them (e.g. system.loss.lambda_anchor_rgb=1000 "
                          "system.loss.lambda_anchor_mask=100)")
    if "lgm" in cfg.source and not cfg.reconstructor:
        raise ConfigError(f"{where}.source is '{cfg.source}' but {where}.reconstructor is not set: name an LGM "
                          f"checkpoint ({where}.reconstructor=model_fp16_fixrot.safetensors), or 'toy' in the toy "
                          "world")
    check_refine_config(cfg, where)
    if "lgm" in cfg.source and (cfg.lgm_azimuths < 1 or not cfg.lgm_elevations):
        raise ConfigError(f"{where}.lgm_azimuths must be ≥ 1 and {where}.lgm_elevations not empty")


def check_refine_config(cfg: AnchorConfig, where: str = "system.anchor") -> None:
    """The reconstruction's refinement keys (also checked by the feed-forward lift, which has no loss weights)."""
    if cfg.refine_steps < 0 or not (0 < float(cfg.refine_lr) < float("inf")) or not cfg.refine_mask_weight >= 0:
        raise ConfigError(f"{where}.refine_steps must be ≥ 0, {where}.refine_lr a finite number > 0 and "
                          f"{where}.refine_mask_weight ≥ 0; got {cfg.refine_steps}, {cfg.refine_lr}, "
                          f"{cfg.refine_mask_weight}")


def _positive(value: Any) -> bool:
    """Is a loss weight (a number or a `C(...)` schedule [start_step,] start, end, end_step) ever > 0?"""
    if isinstance(value, (int, float)):
        return float(value) > 0
    value = list(value)
    return max(float(value[-3]), float(value[-2])) > 0


class AnchorLRFactor:
    """The learning-rate factor of optimizer step `step` (torch's LambdaLR): `scale` for the anchor-only steps, then 1.
    A class, not a lambda, so the scheduler's state (saved in checkpoints) stays plain data."""

    def __init__(self, scale: float, steps: int) -> None:
        self.scale, self.steps = float(scale), int(steps)

    def __call__(self, step: int) -> float:
        return self.scale if step < self.steps else 1.0


def sampler_of(cfg: AnchorConfig, backbone) -> PreviewSampler:
    return preview_sampler_for(backbone, steps=cfg.sampler_steps, guidance_scale=cfg.guidance_scale,
                               negative_prompt=cfg.negative_prompt, elevation=cfg.elevation,
                               azimuth_start=cfg.azimuth_start)


def embedding_digest(text_embeddings: torch.Tensor) -> str:
    """sha256 of the prompt sample's float32 bytes: which prompt sample a set of views belongs to."""
    return hashlib.sha256(text_embeddings.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest()


@torch.no_grad()
def draw_views(backbone, text_embeddings: torch.Tensor, seed: int, sampler: PreviewSampler) -> torch.Tensor:
    """(F, 3, H, W) in [0, 1]: the 4-view sample of the prompt sample `text_embeddings` (1, 77, D) of seed `seed` —
    `preview_views` for one sample, so the same images `dreamdist3d preview --seed s` shows."""
    unet_dtype = next(backbone.unet.parameters()).dtype
    half = unet_dtype in (torch.float16, torch.bfloat16) and backbone.device.type == "cuda"
    with torch.autocast("cuda", dtype=unet_dtype) if half else nullcontext():
        return preview_views(backbone, text_embeddings.reshape(1, *text_embeddings.shape[-2:]), [int(seed)],
                             sampler, max_batch=1)[0].float()


def foreground_masks(views: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """views (F, 3, H, W) in [0,1] -> masks (F, 1, H, W) {0, 1} float and background colours (F, 3)."""
    return foreground_mask(views, threshold)[:, None].float(), background_colour(views)


@dataclass
class AnchorViews:
    """The views a run is anchored to, with what they were drawn with."""

    views: torch.Tensor  # (F, 3, H, W) float32 in [0, 1]
    seed: int
    sampler: PreviewSampler
    prompt_digest: str

    def meta(self) -> Dict[str, Any]:
        return {"format": VIEWS_FORMAT, "seed": self.seed, "sampler": asdict(self.sampler),
                "prompt_digest": self.prompt_digest}

    def save(self, folder: Path) -> Path:
        from dreamdist3d.images import save_png
        from dreamdist3d.io import atomic_save_safetensors

        save_png(image_grid(self.views[None]), folder / GRID_FILE)
        return atomic_save_safetensors({"views": self.views.cpu().float().contiguous()}, folder / VIEWS_FILE,
                                       {"dreamdist3d": json.dumps(self.meta())})

    @classmethod
    def load(cls, path: Path) -> "AnchorViews":
        from dreamdist3d.io import read_safetensors

        tensors, header = read_safetensors(path)
        meta = json.loads(header.get("dreamdist3d", "{}"))
        if meta.get("format") != VIEWS_FORMAT or "views" not in tensors:
            raise ValueError(f"{path} is not a dreamdist3d anchor-views file (written by an anchored 3D run)")
        return cls(tensors["views"], int(meta["seed"]), PreviewSampler(**meta["sampler"]), meta["prompt_digest"])


def prepare_views(cfg: AnchorConfig, backbone, text_embeddings: torch.Tensor, seed: int,
                  folder: Optional[Path]) -> AnchorViews:
    """The run's anchor views: read from `folder` when an earlier start of this run drew them (checked against this
    run's prompt sample, seed and sampler), else drawn now and written there."""
    sampler = sampler_of(cfg, backbone)
    digest = embedding_digest(text_embeddings)
    saved = folder / VIEWS_FILE if folder is not None else None
    if saved is not None and saved.is_file():
        have = AnchorViews.load(saved)
        want = AnchorViews(have.views, int(seed), sampler, digest)
        if have.meta() != want.meta():
            raise ConfigError(f"the saved anchor views ({saved}) were drawn for another prompt sample or other "
                              f"system.anchor settings ({have.meta()} vs {want.meta()}): start a new run, or delete "
                              f"{saved.parent} to draw them again")
        return have
    views = AnchorViews(draw_views(backbone, text_embeddings, seed, sampler), int(seed), sampler, digest)
    if folder is not None:
        views.save(folder)
    return views


@dataclass
class AnchorTargets:
    """Images a field is fitted to, with their cameras in the scene (threestudio degrees) and, optionally, their
    foreground masks (None: from the images, `foreground_masks`)."""

    views: torch.Tensor  # (F, 3, H, W) in [0, 1]
    elevations: torch.Tensor  # (F,) degrees
    azimuths: torch.Tensor  # (F,) threestudio degrees
    masks: Optional[torch.Tensor] = None  # (F, 1, H, W) in [0, 1]


def sample_cameras(sampler: PreviewSampler) -> Tuple[torch.Tensor, torch.Tensor]:
    """(elevations (F,), threestudio azimuths (F,)) in degrees of the views of a 4-view sample: MVDream azimuth a is
    the scene's azimuth a − 90."""
    azimuths = torch.tensor([threestudio_azimuth(a) for a in sampler.azimuths()], dtype=torch.float32)
    return torch.full_like(azimuths, float(sampler.elevation)), azimuths


def preview_targets(anchor_views: AnchorViews) -> AnchorTargets:
    """The 4-view sample itself at its own cameras (`system.anchor.source: preview`)."""
    return AnchorTargets(anchor_views.views.float(), *sample_cameras(anchor_views.sampler))


def join_targets(sample: AnchorTargets, other: AnchorTargets, threshold: float) -> AnchorTargets:
    """`sample` (masks from its foreground when it has none) followed by the views of `other` whose camera is not one
    of the sample's (within 0.01°), with their masks: one set of targets, the sample's own views taken from it."""
    same = ((other.elevations[:, None] - sample.elevations[None]).abs() < 1e-2) & (
        ((other.azimuths[:, None] - sample.azimuths[None] + 180.0) % 360.0 - 180.0).abs() < 1e-2)
    keep = ~same.any(dim=1)  # (F_other,)
    masks = sample.masks if sample.masks is not None else foreground_masks(sample.views, threshold)[0]
    other_masks = other.masks if other.masks is not None else foreground_masks(other.views, threshold)[0]
    return AnchorTargets(torch.cat([sample.views, other.views[keep]]),
                         torch.cat([sample.elevations, other.elevations[keep]]),
                         torch.cat([sample.azimuths, other.azimuths[keep]]),
                         torch.cat([masks.float(), other_masks[keep].float()]))


class Anchor:
    """The anchor of a run: target images, masks and background colours at the fit resolution, the camera rays of
    the views, and the losses of a render against them. The targets are the 4-view sample (`preview_targets`) unless
    given (`source: lgm`: renders of its reconstruction, `lift3d.reconstruction`)."""

    def __init__(self, cfg: AnchorConfig, anchor_views: AnchorViews, device: torch.device | str = "cpu",
                 targets: Optional[AnchorTargets] = None) -> None:
        self.cfg = cfg
        self.source = anchor_views
        sample_itself = targets is None
        targets = targets or preview_targets(anchor_views)
        views, given = targets.views.float(), targets.masks
        size = int(cfg.resolution or views.shape[-1])
        if size != views.shape[-1]:
            mode = "area" if size < views.shape[-1] else "bilinear"
            views = F.interpolate(views, (size, size), mode=mode)
            given = None if given is None else F.interpolate(given.float(), (size, size), mode=mode)
        masks, bg = foreground_masks(views, cfg.mask_threshold)
        masks = masks if given is None else given.float()
        n = views.shape[0]
        full = lambda v: torch.full((n,), float(v))  # noqa: E731
        batch = camera_batch(targets.elevations.float(), targets.azimuths.float(), full(cfg.camera_distance),
                             full(cfg.fovy_deg), size, size)
        self.device = torch.device(device)
        self.rays_o = batch["rays_o"].to(self.device)  # (F, H, W, 3)
        self.rays_d = batch["rays_d"].to(self.device)
        self.rgb = views.permute(0, 2, 3, 1).contiguous().to(self.device)  # (F, H, W, 3)
        self.mask = masks.permute(0, 2, 3, 1).contiguous().to(self.device)  # (F, H, W, 1)
        self.bg = bg[:, None, None, :].expand_as(self.rgb).contiguous().to(self.device)  # (F, H, W, 3)
        # rays_per_step None: every pixel of the sample itself; of other targets, as many as the sample has
        sample_pixels = 0 if sample_itself else anchor_views.views.shape[0] * size * size
        self.rays_per_step = sample_pixels if cfg.rays_per_step is None else cfg.rays_per_step

    def losses(self, renderer) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Render the views (all pixels, or `rays_per_step` random ones from torch's generator) ->
        ({"loss_anchor_rgb": MSE of the render over the views' background vs the views, "loss_anchor_mask": MSE of
        opacity vs the foreground masks}, the render)."""
        o, d, rgb, mask, bg = self.rays_o, self.rays_d, self.rgb, self.mask, self.bg
        k = self.rays_per_step
        if 0 < k < o.shape[0] * o.shape[1] * o.shape[2]:
            idx = torch.randint(0, o.shape[0] * o.shape[1] * o.shape[2], (k,)).to(self.device)
            o, d, rgb, mask, bg = (x.reshape(-1, x.shape[-1])[idx].reshape(1, 1, k, x.shape[-1])
                                   for x in (o, d, rgb, mask, bg))
        out = renderer(rays_o=o, rays_d=d, bg_color=bg)
        return {"loss_anchor_rgb": F.mse_loss(out["comp_rgb"], rgb),
                "loss_anchor_mask": F.mse_loss(out["opacity"], mask)}, out


__all__ = ["Anchor", "AnchorConfig", "AnchorLRFactor", "AnchorTargets", "AnchorViews", "GRID_FILE", "SOURCES",
           "VIEWS_FILE", "check_config", "check_refine_config", "draw_views", "embedding_digest", "foreground_masks",
           "join_targets", "prepare_views", "preview_targets", "sample_cameras", "sampler_of"]
