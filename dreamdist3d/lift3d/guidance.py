"""`multiview-diffusion-guidance`: MVDream score distillation, as MVDream-threestudio computes it.

forward(rgb (B,H,W,3) in [0,1], prompt_utils, elevation, azimuth, camera_distances, c2w, ...):
1. emb = prompt_utils.get_text_embeddings(...) -> (2B,77,D) = [cond; uncond] (cond first);
2. z = scale·VAE.encode(2·resize(rgb, image_size²) − 1) — a posterior *sample* (identity in pixel space);
3. one timestep t ~ U{min_step..max_step} for the whole batch;
4. no grad: z_t = q_sample(z, ε); ε̂_c, ε̂_u = UNet([z_t; z_t], t, emb, camera=[cam; cam], num_frames=n_view);
   ε̂ = ε̂_u + s(ε̂_c − ε̂_u);
5. recon_loss: x̂0 = (z_t − sqrt(1−ᾱ)ε̂)/sqrt(ᾱ); with r = recon_std_rescale > 0 the CFG x̂0 of each n_view group is
   rescaled towards the std of the no-CFG x̂0_c: x̂0 ← r·(std(x̂0_c)/std(x̂0))·x̂0 + (1−r)·x̂0;
   loss_sds = ½‖z − sg(x̂0)‖²/B (so ∂loss/∂z = (z − x̂0)/B);
   otherwise ("original SDS"): grad = (1−ᾱ)(ε̂ − ε) (clamped by grad_clip), loss = ½‖z − sg(z − grad)‖²/B.
Camera: the batch c2w through `c2w_to_mvdream_camera` (translation normalised; the batch tensor is not modified).
min/max_step follow the `C(...)` schedules of min/max_step_percent, recomputed every training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.cameras import c2w_to_mvdream_camera
from dreamdist3d.backbones.load import load_backbone
from dreamdist3d.config import ConfigError
from dreamdist3d.lift3d.base import BaseModule, C
from dreamdist3d.registry import register


@register("multiview-diffusion-guidance")
class MultiviewDiffusionGuidance(BaseModule):
    @dataclass
    class Config(BaseModule.Config):
        model_name: str = "sd-v2.1-base-4view"
        ckpt_path: Optional[str] = None  # MVDream-threestudio's key; same meaning as pretrained_model_name_or_path
        pretrained_model_name_or_path: Optional[str] = None  # MVDream checkpoint path, or a backbone spec (toy, …)
        guidance_scale: float = 50.0
        grad_clip: Optional[Any] = None  # only used by the recon_loss=false branch (a C(...) schedule)
        half_precision_weights: bool = True  # on CUDA: UNet weights in fp16, called under fp16 autocast
        min_step_percent: Any = 0.02
        max_step_percent: Any = 0.98
        camera_condition_type: str = "rotation"
        view_dependent_prompting: bool = False
        n_view: int = 4
        image_size: int = 256
        recon_loss: bool = True
        recon_std_rescale: float = 0.5

    cfg: Config

    def configure(self, backbone: Optional[Backbone] = None, device: torch.device | str = "cpu") -> None:
        cfg = self.cfg
        if cfg.camera_condition_type != "rotation":
            raise ConfigError(f"{self.where}.camera_condition_type must be 'rotation' (the only one MVDream has)")
        for key in ("guidance_scale", "recon_std_rescale"):  # before the backbone loads; NaN gives a NaN loss
            if not math.isfinite(float(getattr(cfg, key))):
                raise ConfigError(f"{self.where}.{key} must be a finite number, got {getattr(cfg, key)}")
        self.device = torch.device(device)
        if backbone is None:
            key = f"{self.where}.ckpt_path" if cfg.ckpt_path else f"{self.where}.pretrained_model_name_or_path"
            backbone = load_backbone(cfg.ckpt_path or cfg.pretrained_model_name_or_path, device="cpu", config_key=key,
                                     default_kind="mvdream")
        if not backbone.supports_camera:
            raise ConfigError(f"{self.where}: backbone '{backbone.name}' has no camera conditioning; MVDream guidance "
                              "needs one")
        self.backbone = backbone
        half = cfg.half_precision_weights and self.device.type == "cuda"
        self.weights_dtype = torch.float16 if half else torch.float32
        # the UNet and VAE are frozen and not part of the trainable state (kept out of the module tree/checkpoints)
        backbone.unet.to(self.device, self.weights_dtype).requires_grad_(False).eval()
        if backbone.vae is not None:
            backbone.vae.to(self.device).requires_grad_(False).eval()
        self.num_train_timesteps = backbone.schedule.num_train_timesteps
        self.alphas_cumprod = backbone.schedule.alphas_cumprod.to(self.device)
        self.set_min_max_steps(0, 0)

    def set_min_max_steps(self, epoch: int, global_step: int) -> None:
        T = self.num_train_timesteps
        self.min_step = int(T * C(self.cfg.min_step_percent, epoch, global_step))
        self.max_step = int(T * C(self.cfg.max_step_percent, epoch, global_step))
        if not 0 <= self.min_step <= self.max_step < T:
            raise ConfigError(
                f"{self.where}.min_step_percent/max_step_percent give steps {self.min_step}..{self.max_step}, "
                f"outside 0..{T - 1} or reversed"
            )

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self._global_step = global_step
        self.set_min_max_steps(epoch, global_step)

    # ------------------------------------------------------------------ pieces
    @property
    def latent_size(self) -> int:
        return self.cfg.image_size // self.backbone.downsample

    def encode_images(self, rgb_bchw: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> scaled latents (B,C,h,w) (with grad; a posterior sample, as MVDream)."""
        x = F.interpolate(rgb_bchw, (self.cfg.image_size, self.cfg.image_size), mode="bilinear", align_corners=False)
        return self.backbone.encode_images(x * 2.0 - 1.0)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
        if self.weights_dtype == torch.float16:
            with torch.autocast(device_type=x.device.type, dtype=torch.float16):
                out = self.backbone(x, t, emb, camera=cam, num_frames=self.cfg.n_view)
            return out.float()
        return self.backbone(x.to(self.weights_dtype), t, emb.to(self.weights_dtype), camera=cam.to(self.weights_dtype),
                             num_frames=self.cfg.n_view).float()

    def _x0(self, z_t: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1.0 / a) * z_t - torch.sqrt(1.0 / a - 1.0) * eps

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        rgb: torch.Tensor,
        prompt_utils: Any,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        camera_distances: torch.Tensor,
        c2w: torch.Tensor,
        rgb_as_latents: bool = False,
        fovy: Optional[torch.Tensor] = None,
        timestep: Optional[int] = None,
        text_embeddings: Optional[torch.Tensor] = None,
        input_is_latent: bool = False,
        **kwargs,
    ) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        B = rgb.shape[0]
        if B % cfg.n_view != 0:
            raise ConfigError(f"batch size {B} is not a multiple of {self.where}.n_view={cfg.n_view} (set "
                              "data.batch_size)")
        if text_embeddings is None:
            text_embeddings = prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances,
                                                               cfg.view_dependent_prompting)
        emb = text_embeddings.to(self.device)
        if input_is_latent:
            z = rgb
        else:
            rgb_bchw = rgb.permute(0, 3, 1, 2)
            if rgb_as_latents:
                s = self.latent_size
                z = F.interpolate(rgb_bchw, (s, s), mode="bilinear", align_corners=False) * 2 - 1
            else:
                z = self.encode_images(rgb_bchw)
        z = z.float().contiguous()
        if timestep is None:
            t = torch.randint(self.min_step, self.max_step + 1, (1,), dtype=torch.long).to(self.device)
        else:
            t = torch.tensor([int(timestep)], dtype=torch.long, device=self.device)
        t_expand = t.repeat(2 * B)
        a = self.alphas_cumprod[t].float().reshape(1, 1, 1, 1)
        with torch.no_grad():
            noise = torch.randn(z.shape, dtype=z.dtype, device=z.device)  # (randn_like would follow z's strides)
            z_t = a.sqrt() * z + (1 - a).sqrt() * noise
            cam = c2w_to_mvdream_camera(c2w.to(self.device)).repeat(2, 1).to(emb)
            out = self._unet(torch.cat([z_t, z_t]), t_expand, emb, cam)
            out = self.backbone.schedule.predict_eps(torch.cat([z_t, z_t]), out, t_expand)
            eps_c, eps_u = out.chunk(2)
            eps_hat = eps_u + cfg.guidance_scale * (eps_c - eps_u)
            if cfg.recon_loss:
                x0 = self._x0(z_t, eps_hat, a)
                r = cfg.recon_std_rescale
                if r > 0:
                    x0_c = self._x0(z_t, eps_c, a)
                    g = B // cfg.n_view
                    std_c = x0_c.reshape(g, -1).std(1) + 1e-8
                    std_cfg = x0.reshape(g, -1).std(1) + 1e-8
                    factor = (std_c / std_cfg).repeat_interleave(cfg.n_view).reshape(B, 1, 1, 1)
                    x0 = r * (factor * x0) + (1 - r) * x0
                target = x0
            else:
                w = 1 - a
                grad = torch.nan_to_num(w * (eps_hat - noise))
                if cfg.grad_clip is not None:
                    clip = C(cfg.grad_clip, 0, getattr(self, "_global_step", 0))
                    grad = grad.clamp(-clip, clip)
                target = z - grad
        loss = 0.5 * F.mse_loss(z, target.detach(), reduction="sum") / B
        grad_z = (z.detach() - target) / B
        return {
            "loss_sds": loss,
            "grad_norm": grad_z.norm(),
            "timestep": t.float(),
            "min_step": torch.tensor(float(self.min_step)),
            "max_step": torch.tensor(float(self.max_step)),
        }
