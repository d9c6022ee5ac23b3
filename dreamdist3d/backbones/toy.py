"""The toy backbone: a tiny CLIP-architecture text encoder and a tiny pixel-space multi-view UNet, trained from
scratch on the toy world (`dreamdist3d toyworld train`), behind the same `Backbone` API as MVDream.

Get it with `load_backbone("toy")` (`dreamdist3d.backbones.load`; `"toy:PATH"` for other weights), which calls
`toy_weights.load_toy_backbone` -> Backbone (name "toy", `vae=None` = pixel space, images in [-1, 1], resolution 32,
`supports_camera=True`, `schedule.prediction_type == "v_prediction"`). This module holds the architecture, the
schedule and the sampler; `toy_weights.py` the weights file (save/load). Nothing here knows the toy world (objects,
captions, renderer live in `dreamdist3d.toyworld`, which imports this, never the reverse).

- Text: `TextEncoder.from_config(CLIPTextConfig)` with the real CLIP BPE tokenizer (vocab 49408, 77 positions,
  SOS 49406, EOS 49407, pad 0), width 64, 3 layers, 4 heads. Its final-layer-normed states (B,77,64) condition the
  UNet. At initialisation the last linear of every residual branch (out_proj, fc2) is zero, so a fresh encoder
  passes each token's embedding straight to the final LayerNorm (with transformers' random init the branches
  swamp the 0.02-scale embeddings and every caption encodes to nearly the same states).
- UNet: `ToyMultiViewUNet`, a `MultiViewUNet` (MVDream's call signature and (b f) batch layout, cross-view
  self-attention, camera embedding) with two toy-specific changes, each measured necessary (see its docstring):
  8-group GroupNorms instead of 32 and a pooled-text embedding added to the timestep embedding, used by FiLM
  (`use_scale_shift_norm=True`). 3 channels, 32×32, model_channels 32, channel_mult [1,2,2] (32/64/64 channels at
  32/16/8 px), num_res_blocks [0,1,1], conv_resample=False (a cheap 32 px level), transformers (cross-view
  self-attention + cross-attention to the text) at 8×8 and in the middle, camera_dim 16.
- Schedule: `toy_schedule()`, 1000 steps with log-SNR linear in t from +9 (ᾱ_0 = 0.99988) to −10 (ᾱ_999 = 4.5e-5),
  **v prediction**. Not MVDream's scaled_linear/ε, on purpose: a flat-coloured object covers ~200 pixels of a
  32 px image, so its colour stays readable through noise that would hide it in a natural image (averaged over the
  object, the signal-to-noise ratio at scaled_linear's last step, ᾱ = 0.0047, is still ~1). A model trained on that
  schedule never needs the text, takes the colour from x_t, and at sampling time (x_T = pure noise) picks colours
  at random: in a trial the UNet's ε ignored the caption after 1,000 steps (cond vs uncond differed by 0.02%). Here
  a quarter of the training timesteps (t ≥ 750, ᾱ < 0.005) lie where only the text tells the object, and another
  quarter (t < 250) is nearly clean for crisp edges. ε prediction would still give those high-noise steps almost no
  weight (an x0 error costs sqrt(SNR) in ε), hence v, whose target there is −x0. Consumers must use
  `schedule.predict_eps` / `predict_x0` (as for SD 2.1 768-v); `schedule.diffusers_config()` carries the exact
  betas (`trained_betas`) and the prediction type. The sampler clamps x0 to [-1, 1] (pixel space).

Shipped weights: `dreamdist3d/backbones/data/toy-backbone.safetensors` (float16, about 3 MB, only the trained rows of
the token table; format and loader in `toy_weights.py`).

Sampling: `sample_toy` (the one DDIM sampler of `backbones.ddim`, η = 0, classifier-free guidance in the model's
output space, MVDream's timesteps, x0 clamped; 4 views with cameras or single views without) and `generate`
(captions -> images).
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from dreamdist3d.backbones.base import Backbone
from dreamdist3d.backbones.cameras import get_camera
from dreamdist3d.backbones.ddim import ddim_sample
from dreamdist3d.backbones.multiview_unet import MultiViewUNet, TimestepEmbedding
from dreamdist3d.backbones.schedule import NoiseSchedule
from dreamdist3d.text import ClipTokenizer, TextEncoder


def default_text_config() -> Dict[str, Any]:
    """transformers CLIPTextConfig kwargs of the toy text encoder (CLIP vocabulary and positions, tiny width)."""
    return dict(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        projection_dim=64,
        pad_token_id=0,
        bos_token_id=49406,
        eos_token_id=49407,
    )


def default_unet_config(context_dim: int = 64) -> Dict[str, Any]:
    """MultiViewUNet kwargs of the toy UNet (pixel space, 32 px, 32/64/64 channels, attention at 8×8).

    Chosen for speed on 2 CPU cores (1-thread CPU seconds per fwd+bwd of 48 multi-view + 16 single rows, measured
    side by side: 1 ResBlock per level with conv resampling 1.13 s, without conv resampling 0.97 s, this 0.77 s)."""
    return dict(
        image_size=32,
        in_channels=3,
        out_channels=3,
        model_channels=32,
        attention_resolutions=[4],
        num_res_blocks=[0, 1, 1],  # 32 px: only conv_in and one decoder ResBlock (the 32 px level is the costly one)
        channel_mult=[1, 2, 2],
        conv_resample=False,  # average-pool down / nearest up (the 64-channel up-conv at 32 px cost 15% of a step)
        use_scale_shift_norm=True,  # FiLM: the (time + camera + pooled text) embedding scales normalised features
        norm_groups=8,  # ToyMultiViewUNet: GroupNorm with 8 groups (4-8 channels each) instead of 32
        num_head_channels=32,
        use_spatial_transformer=True,
        use_linear_in_transformer=True,
        transformer_depth=1,
        context_dim=context_dim,
        use_checkpoint=False,
        legacy=False,
        camera_dim=16,
    )


@dataclass
class ToyBackboneConfig:
    """Everything needed to rebuild the toy backbone's architecture (stored in the weights file)."""

    text: Dict[str, Any] = field(default_factory=default_text_config)
    unet: Dict[str, Any] = field(default_factory=default_unet_config)
    resolution: int = 32
    schedule: str = "logsnr-linear"  # toy_schedule(logsnr_max, logsnr_min, num_train_timesteps)
    logsnr_max: float = 9.0
    logsnr_min: float = -10.0
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    embedding_seed: int = 49408  # seed of the regenerated token-embedding rows
    embedding_std: float = 0.02  # their scale (CLIP's own init std)

    def __post_init__(self) -> None:
        if int(self.unet.get("context_dim", -1)) != int(self.text["hidden_size"]):
            raise ValueError(
                f"ToyBackboneConfig: unet.context_dim ({self.unet.get('context_dim')}) must equal the text width "
                f"text.hidden_size ({self.text['hidden_size']})"
            )
        if self.schedule != "logsnr-linear":
            raise ValueError(f"ToyBackboneConfig.schedule: only 'logsnr-linear' is implemented, got {self.schedule!r}")
        if not self.logsnr_max > self.logsnr_min:
            raise ValueError("ToyBackboneConfig: logsnr_max must be above logsnr_min")

    def to_dict(self) -> Dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "ToyBackboneConfig":
        known = set(ToyBackboneConfig.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"toy backbone config: unknown key(s) {unknown}; expected {sorted(known)}")
        return ToyBackboneConfig(**d)


def small_test_config() -> ToyBackboneConfig:
    """A smaller architecture for fast tests of the trainer (same structure, fewer layers and channels)."""
    text = dict(default_text_config(), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                projection_dim=32)
    unet = dict(default_unet_config(32), channel_mult=[1, 1], num_res_blocks=[0, 1], attention_resolutions=[2])
    return ToyBackboneConfig(text=text, unet=unet)


# ----------------------------------------------------------------------------------------------------- UNet
class ToyMultiViewUNet(MultiViewUNet):
    """`MultiViewUNet` plus a pooled-text embedding: `text_embed(mean over the 77 positions of context)` is added
    to the timestep (+ camera) embedding, as SDXL adds its pooled text embedding. With `use_scale_shift_norm=True`
    every ResBlock then scales and shifts its normalised features by a function of the text.

    Why: at 32-64 channels, MVDream's GroupNorm(32 groups) is a per-channel (instance) norm, which erases any
    spatially uniform per-channel offset, in particular a colour pushed in by cross-attention that attends
    everywhere alike; the final `out` GroupNorm does so right before the output conv. Shape (a spatial pattern)
    survives that, colour does not: in a trial without this path the UNet's x0 prediction at high noise was the
    same brown for "a red box" and "a blue box" after 1,600 steps, while boxes, spheres and parts were right.
    A per-channel *scale* after the norm (FiLM) multiplies the object's spatial pattern by a text-dependent sign and
    size, which is the gate colour needs. Forward signature and batch layout are MultiViewUNet's."""

    def __init__(self, norm_groups: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        # fewer, wider groups in every GroupNorm (MVDream: 32 groups, i.e. 1-2 channels per group at this width)
        for m in self.modules():
            if isinstance(m, nn.GroupNorm):
                if m.num_channels % norm_groups:
                    raise ValueError(f"norm_groups={norm_groups} must divide every width (got {m.num_channels})")
                m.num_groups = int(norm_groups)
        self.config["norm_groups"] = int(norm_groups)
        ctx_dim = self.config["context_dim"]
        if not isinstance(ctx_dim, int):
            raise ValueError("ToyMultiViewUNet needs an int context_dim")
        self.text_embed = TimestepEmbedding(ctx_dim, self.model_channels * 4)

    def condition_embedding(self, context: torch.Tensor) -> torch.Tensor:
        """The pooled text (mean over the 77 positions) embedded like a timestep: (N, 4·mc), used by FiLM."""
        dtype = self.time_embed[0].weight.dtype
        return self.text_embed(context.to(dtype).mean(dim=1))

    def forward(self, x, timesteps, context, camera=None, num_frames: int = 1):
        n = x.shape[0]
        if not torch.is_tensor(context) or context.ndim != 3 or context.shape[0] != n:
            raise ValueError(f"context must be a ({n}, 77, D) tensor, got {getattr(context, 'shape', type(context))}")
        return super().forward(x, timesteps, context, camera=camera, num_frames=num_frames)


# ----------------------------------------------------------------------------------------------------- schedule
@dataclass
class ToyNoiseSchedule(NoiseSchedule):
    """A `NoiseSchedule` whose `diffusers_config()` carries its own betas (diffusers' `trained_betas`)."""

    def diffusers_config(self) -> Dict[str, object]:
        a = self.alphas_cumprod.double()
        betas = 1.0 - a / torch.cat([torch.ones(1, dtype=torch.float64), a[:-1]])
        cfg = dict(super().diffusers_config())
        cfg.update(trained_betas=betas.tolist(), beta_schedule="linear")
        return cfg


def toy_schedule(logsnr_max: float = 9.0, logsnr_min: float = -10.0, n: int = 1000,
                 prediction_type: str = "v_prediction") -> ToyNoiseSchedule:
    """ᾱ_t = sigmoid(λ_t), λ_t linear from logsnr_max (t=0) to logsnr_min (t=n-1); computed in float64."""
    lam = torch.linspace(float(logsnr_max), float(logsnr_min), int(n), dtype=torch.float64)
    return ToyNoiseSchedule(torch.sigmoid(lam), prediction_type)


# ----------------------------------------------------------------------------------------------------- token table
def initial_token_table(config: ToyBackboneConfig) -> torch.Tensor:
    """(vocab, D) float32: the token-embedding table the trainer starts from, regenerated from the config's seed."""
    g = torch.Generator().manual_seed(int(config.embedding_seed))
    vocab, width = int(config.text["vocab_size"]), int(config.text["hidden_size"])
    return torch.randn(vocab, width, generator=g, dtype=torch.float32) * float(config.embedding_std)


def table_checksum(table: torch.Tensor) -> List[float]:
    """A few numbers that identify a regenerated table (sums of rows 0, 1000, 49407 and of the whole table)."""
    t = table.double()
    return [round(float(t[i].sum()), 9) for i in (0, 1000, table.shape[0] - 1)] + [round(float(t.sum()), 6)]


# ----------------------------------------------------------------------------------------------------- build
def _zero_residual_branches(text: TextEncoder) -> None:
    """Zero the last linear of every attention and MLP branch (`out_proj`, `fc2`), so a fresh encoder is the
    identity on the residual stream followed by the final LayerNorm: each output position starts as its own
    normalised token + position embedding, and captions are distinguishable from step 0. With transformers' random
    init instead, the branch outputs (norm ~1) swamp the 0.02-scale embeddings, every caption encodes to nearly the
    same states (0.1 of 7 apart), and in a trial the UNet still ignored the text after 1,000 steps (cond and uncond
    ε differed by 0.02%). The zeroed weights still get gradients (a linear layer's weight gradient needs only its
    input), so the branches grow from zero during training."""
    for layer in text._core.encoder.layers:
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()


def build_toy_backbone(
    config: Optional[ToyBackboneConfig] = None,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    tokenizer: Optional[ClipTokenizer] = None,
) -> Backbone:
    """A freshly initialised toy backbone (what the trainer starts from): UNet and text layers from `seed`,
    token table from `config.embedding_seed`."""
    config = config or ToyBackboneConfig()
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(int(seed))
        text = TextEncoder.from_config(dict(config.text))
        with torch.no_grad():
            text.token_embedding.weight.copy_(initial_token_table(config))
            _zero_residual_branches(text)
        unet = ToyMultiViewUNet(**copy.deepcopy(config.unet))
    backbone = Backbone(
        name="toy",
        tokenizer=tokenizer or ClipTokenizer.default(),
        text_encoder=text,
        unet=unet,
        schedule=toy_schedule(config.logsnr_max, config.logsnr_min, config.num_train_timesteps, config.prediction_type),
        resolution=int(config.resolution),
        vae=None,
        supports_camera=config.unet.get("camera_dim") is not None,
        source="<fresh toy backbone>",
        extra={"toy_config": config.to_dict()},
    )
    return backbone.to(device)


def toy_config_of(backbone: Backbone) -> ToyBackboneConfig:
    cfg = backbone.extra.get("toy_config")
    if cfg is None:
        raise ValueError(f"backbone '{backbone.name}' is not a toy backbone (no extra['toy_config'])")
    return ToyBackboneConfig.from_dict(dict(cfg))


# ----------------------------------------------------------------------------------------------------- sampling
# Classifier-free guidance scale of the toy sampler, measured with `dreamdist3d toyworld eval --caption-check-only`
# over CFG 1.5-7 on the shipped weights: the rate of samples read back as their caption peaks here (single views:
# colour and shape 0.50 at CFG 2, 0.47 at 3, 0.33 at 5, 0.03 at 7); higher scales tint
# the white background and speckle the objects (the attribute reader then rejects them as out of world).
DEFAULT_GUIDANCE = 2.0
# DDIM steps of the toy sampler (2D samples, 4-view previews and the anchors of toy 3D runs).
DEFAULT_SAMPLE_STEPS = 25
# Learning steps of the toy recipes (demo, eval, arms; K=32 and K=1 alike). The `assign` objective trains each prompt
# on its own images only (about half a row per prompt per step at batch 4 × 4 rows), so it needs more steps than the
# official one, whose every row trains μ: at 300 steps the learned prompts of `cool-round-topped` decoded one by one
# lost the small part on top (in-distribution 0.00 for seed 0; 0.44 at 600, 0.56 at 1200; README, "The toy world").
# 600 keeps the main job under 3 minutes on 2 cores.
DEFAULT_LEARN_STEPS = 600


@torch.no_grad()
def sample_toy(
    backbone: Backbone,
    context: torch.Tensor,
    uncond: torch.Tensor,
    steps: int = DEFAULT_SAMPLE_STEPS,
    cfg: float = DEFAULT_GUIDANCE,
    num_frames: int = 4,
    elevation: float = 15.0,
    azimuth_start: float = 0.0,
    camera: Optional[torch.Tensor] = None,
    seed: int = 0,
    clip_x0: bool = True,
    max_batch: int = 16,
) -> torch.Tensor:
    """DDIM (η = 0) with classifier-free guidance from conditioning embeddings.

    context (n,77,D), uncond (77,D)|(1,77,D). num_frames=4: 4-view sets with MVDream cameras
    `get_camera(4, elevation, azimuth_start)` (or `camera` (4,16)); num_frames=1 with `camera=None`: single views
    without a camera (2D mode; pass a (1,16) camera to condition one view on it). clip_x0: clamp the predicted x0
    to [-1, 1] at each step (standard for pixel-space diffusion). Initial noise from a CPU generator (`seed`), drawn
    for all n samples at once (`backbones.ddim`). Returns images (n, F, 3, H, W) in [0, 1] on CPU."""
    if camera is None and int(num_frames) > 1:
        camera = get_camera(int(num_frames), elevation=elevation, azimuth_start=azimuth_start)
    return ddim_sample(backbone, context, uncond, steps=steps, cfg=cfg, camera=camera, num_frames=num_frames,
                       seed=seed, clip_x0=clip_x0, max_batch=max_batch)


@torch.no_grad()
def encode_captions(backbone: Backbone, captions: Sequence[str]) -> torch.Tensor:
    """(n,77,D) conditioning of caption strings."""
    return backbone.encode_text(list(captions))


@torch.no_grad()
def generate(
    backbone: Backbone,
    captions: Sequence[str],
    steps: int = DEFAULT_SAMPLE_STEPS,
    cfg: float = DEFAULT_GUIDANCE,
    num_frames: int = 4,
    seed: int = 0,
    negative: str = "",
    **kwargs,
) -> torch.Tensor:
    """Caption strings -> images (n, F, 3, 32, 32) in [0, 1] (see `sample_toy`)."""
    context = encode_captions(backbone, captions)
    uncond = backbone.encode_text([negative])
    return sample_toy(backbone, context, uncond, steps=steps, cfg=cfg, num_frames=num_frames, seed=seed, **kwargs)


__all__ = [
    "ToyBackboneConfig",
    "default_text_config",
    "default_unet_config",
    "small_test_config",
    "build_toy_backbone",
    "ToyMultiViewUNet",
    "toy_schedule",
    "ToyNoiseSchedule",
    "initial_token_table",
    "table_checksum",
    "toy_config_of",
    "sample_toy",
    "generate",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLE_STEPS",
    "encode_captions",
]
