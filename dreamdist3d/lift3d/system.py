"""`mvdream-system`: the NeRF (geometry, material, background, renderer), the MVDream guidance and the prompt
processor; the SDS training step, validation images and the test turntable (threestudio's MVDreamSystem).

Loss: Σ_k g["loss_<k>"]·C(lambda_<k>) over the guidance outputs, plus the regularisers `lambda_orient`,
`lambda_sparsity`, `lambda_opaque`, `lambda_z_variance` when > 0. With `system.anchor.source: preview` the run is
anchored to the 4-view sample of its prompt sample (`dreamdist3d.lift3d.anchor`), with `lgm` to renders of that
sample's feed-forward reconstruction (`dreamdist3d.lift3d.reconstruction`): `lambda_anchor_rgb` and
`lambda_anchor_mask` weigh the fit to those views; the first `anchor.steps` steps fit them alone (no guidance call).
Optimizer: `system.optimizer` = {name, args, params: {dotted.module.path: {lr, ...}}} (threestudio's
parse_optimizer).

`load_run_field(run_dir, ckpt=None)` rebuilds only the field (geometry + material) of a finished run for export —
no diffusion model is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamdist3d.config import ConfigError, parse_structured
from dreamdist3d.images import save_png
from dreamdist3d.lift3d.anchor import Anchor, AnchorConfig, AnchorLRFactor
from dreamdist3d.lift3d.anchor import check_config as check_anchor_config
from dreamdist3d.lift3d.base import C, Updateable
from dreamdist3d.lift3d.reconstruction import build_anchor
from dreamdist3d.lift3d.saving import eval_image, write_turntable
from dreamdist3d.registry import components, find

LOSS_TERMS = ("sds", "anchor_rgb", "anchor_mask", "orient", "sparsity", "opaque", "z_variance", "eikonal")


def find_component(name: str, key: str):
    """The class registered as `name`; an unknown name is a ConfigError naming `key`."""
    try:
        return find(name)
    except KeyError:
        known = ", ".join(components)
        raise ConfigError(f"{key}: unknown component '{name}'; known components: {known}") from None


@dataclass
class SystemConfig:
    # BaseSystem
    loggers: dict = field(default_factory=dict)
    loss: dict = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: Optional[dict] = None
    weights: Optional[str] = None
    weights_ignore_modules: Optional[List[str]] = None
    cleanup_after_validation_step: bool = False
    cleanup_after_test_step: bool = False
    # BaseLift3DSystem
    geometry_type: str = "implicit-volume"
    geometry: dict = field(default_factory=dict)
    geometry_convert_from: Optional[str] = None
    geometry_convert_inherit_texture: bool = False
    geometry_convert_override: dict = field(default_factory=dict)
    material_type: str = "no-material"
    material: dict = field(default_factory=dict)
    background_type: str = "neural-environment-map-background"
    background: dict = field(default_factory=dict)
    renderer_type: str = "nerf-volume-renderer"
    renderer: dict = field(default_factory=dict)
    guidance_type: str = "multiview-diffusion-guidance"
    guidance: dict = field(default_factory=dict)
    prompt_processor_type: str = "dreamdistribution-prompt-processor"
    prompt_processor: dict = field(default_factory=dict)
    exporter_type: str = "mesh-exporter"
    exporter: dict = field(default_factory=dict)
    # MVDreamSystem
    visualize_samples: bool = False
    # dreamdist3d: anchor the run to the 4-view sample of its prompt sample (dreamdist3d.lift3d.anchor.AnchorConfig)
    anchor: dict = field(default_factory=dict)


def build_field(cfg: SystemConfig) -> tuple:
    """(geometry, material, background, renderer) from a system config (no guidance, no prompt processor)."""
    if cfg.geometry_convert_from:
        raise ConfigError("system.geometry_convert_from is not supported (no geometry conversion in dreamdist3d)")
    geometry = find_component(cfg.geometry_type, "system.geometry_type")(cfg.geometry, where="system.geometry")
    material = find_component(cfg.material_type, "system.material_type")(cfg.material, where="system.material")
    background = find_component(cfg.background_type, "system.background_type")(cfg.background,
                                                                               where="system.background")
    renderer = find_component(cfg.renderer_type, "system.renderer_type")(
        cfg.renderer, geometry=geometry, material=material, background=background, where="system.renderer"
    )
    return geometry, material, background, renderer


def optimizer_groups(params: Any) -> Dict[str, Dict[str, Any]]:
    """`system.optimizer.params` as {module path: hyperparameters}. A group's key is a dotted module path
    (`geometry.encoding`); a command-line override of it (`system.optimizer.params.geometry.encoding.lr=0.02`)
    arrives nested, `{geometry: {encoding: {lr: 0.02}}}`, and is merged into the same group, not read as a second
    group `geometry` holding the same parameters."""
    out: Dict[str, Dict[str, Any]] = {}

    def walk(path: str, node: Any) -> None:
        if node is not None and not isinstance(node, Mapping):
            raise ConfigError(f"system.optimizer.params.{path} must be a group of hyperparameters, e.g. {{lr: 0.01}}; "
                              f"got {node!r}")
        node = dict(node or {})
        subs = {k: v for k, v in node.items() if isinstance(v, Mapping)}
        hparams = {k: v for k, v in node.items() if k not in subs}
        if hparams or not subs:
            out.setdefault(path, {}).update(hparams)
        for k, v in subs.items():
            walk(f"{path}.{k}", v)

    for path, node in dict(params).items():
        walk(str(path), node)
    return out


@components.register("mvdream-system")
class MVDreamSystem(nn.Module, Updateable):
    Config = SystemConfig

    def __init__(
        self,
        cfg: Any,
        device: torch.device | str = "cpu",
        seed: int = 0,
        save_dir: Optional[str] = None,
        prompt_sample: Optional[Any] = None,
        backbone: Optional[Any] = None,
        build_guidance: bool = True,
    ) -> None:
        super().__init__()
        self.cfg: SystemConfig = parse_structured(SystemConfig, cfg if cfg is not None else {}, where="system")
        self.device = torch.device(device)
        self.check_loss_keys()
        self.anchor_cfg = parse_structured(AnchorConfig, self.cfg.anchor, where="system.anchor")
        check_anchor_config(self.anchor_cfg, self.cfg.loss.get("lambda_anchor_rgb", 0.0),
                            self.cfg.loss.get("lambda_anchor_mask", 0.0))
        self.geometry, self.material, self.background, self.renderer = build_field(self.cfg)
        self.to(self.device)
        self.save_dir = Path(save_dir) if save_dir else None
        self.guidance = None
        self.prompt_processor = None
        self.prompt_utils = None
        self.anchor: Optional[Anchor] = None
        if build_guidance:
            from dreamdist3d.lift3d.prompt_processor import PromptSample, check_view_dependence

            self.configure_optimizers()  # a bad system.optimizer fails now: before the guidance loads, nothing written
            check_view_dependence(bool(self.cfg.guidance.get("view_dependent_prompting", False)),
                                  bool(self.cfg.prompt_processor.get("view_dependent_prompting", False)))
            self.guidance = find_component(self.cfg.guidance_type, "system.guidance_type")(
                self.cfg.guidance, backbone=backbone, device=self.device, where="system.guidance"
            )
            pp_cfg = dict(self.cfg.prompt_processor)
            pp_path = pp_cfg.get("pretrained_model_name_or_path")
            g_path = self.guidance.cfg.ckpt_path or self.guidance.cfg.pretrained_model_name_or_path
            shared = backbone if backbone is not None else (self.guidance.backbone if (pp_path in (None,
                                                                                                   g_path)) else None)
            sample = PromptSample.from_state(prompt_sample) if isinstance(prompt_sample, dict) else prompt_sample
            self.prompt_processor = find_component(self.cfg.prompt_processor_type, "system.prompt_processor_type")(
                pp_cfg, backbone=shared, device=self.device, seed=seed,
                save_dir=str(self.save_dir.parent) if self.save_dir else None, sample=sample,
                where="system.prompt_processor",
            )
            self.prompt_utils = self.prompt_processor()
            if self.anchor_cfg.source != "none":
                sample = self.prompt_processor.sample
                self.anchor = build_anchor(self.anchor_cfg, self.guidance.backbone, sample.text_embeddings,
                                           int(sample.meta["seed"]),
                                           self.save_dir.parent / "anchor" if self.save_dir else None, self.device)
        self.global_step = 0

    # ------------------------------------------------------------------ config checks
    def check_loss_keys(self) -> None:
        for k in self.cfg.loss:
            if not k.startswith("lambda_") or k[len("lambda_") :] not in LOSS_TERMS:
                raise ConfigError(
                    f"unknown config key 'system.loss.{k}': valid keys are "
                    f"{', '.join('lambda_' + t for t in LOSS_TERMS)}"
                )

    def lam(self, name: str) -> float:
        return C(self.cfg.loss.get(f"lambda_{name}", 0.0), 0, self.global_step)

    # ------------------------------------------------------------------ state
    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """geometry.*, material.*, background.*, renderer.* (the guidance is frozen and never saved)."""
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if not k.startswith("guidance.")}

    def load_trainable_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("guidance.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit this system: missing {missing[:8]}, unexpected {unexpected[:8]}")

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        self.global_step = global_step

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self.renderer(**batch)

    def anchor_only(self) -> bool:
        """The anchor-only phase: the first `anchor.steps` steps of an anchored run (no SDS, no guidance call)."""
        return self.anchor is not None and self.global_step < self.anchor_cfg.steps

    def training_step(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        loss = torch.zeros((), device=self.device)
        logs: Dict[str, torch.Tensor] = {}
        out: Optional[Dict[str, torch.Tensor]] = None
        terms: Dict[str, torch.Tensor] = {}
        if self.anchor is not None and (self.lam("anchor_rgb") > 0 or self.lam("anchor_mask") > 0):
            anchored, out = self.anchor.losses(self.renderer)
            terms.update(anchored)
        g: Dict[str, torch.Tensor] = {}
        if not self.anchor_only():
            out = self(batch)  # the regularisers below look at the SDS render when there is one
            g = self.guidance(out["comp_rgb"], self.prompt_utils, **batch)
            terms.update(g)
        for name, value in terms.items():
            logs[f"train/{name}"] = value.detach()
            if name.startswith("loss_"):
                loss = loss + value * self.lam(name[len("loss_") :])
        if self.lam("orient") > 0:
            if "normal" not in out:
                raise ConfigError("system.loss.lambda_orient > 0 needs normals: set "
                                  "system.geometry.normal_type=finite_difference")
            w, n, d = out["weights"].detach(), out["normal"], out["t_dirs"]
            orient = (w * F.relu((n * d).sum(-1, keepdim=True)) ** 2).sum() / (out["opacity"] > 0).sum().clamp_min(1)
            logs["train/loss_orient"] = orient.detach()
            loss = loss + orient * self.lam("orient")
        if self.lam("sparsity") > 0:
            sp = (out["opacity"] ** 2 + 0.01).sqrt().mean()
            logs["train/loss_sparsity"] = sp.detach()
            loss = loss + sp * self.lam("sparsity")
        if self.lam("opaque") > 0:
            o = out["opacity"].clamp(1e-3, 1 - 1e-3)
            op = F.binary_cross_entropy(o, o)
            logs["train/loss_opaque"] = op.detach()
            loss = loss + op * self.lam("opaque")
        if self.lam("z_variance") > 0:
            m = out["opacity"] > 0.5
            zv = out["z_variance"][m].mean() if m.any() else out["z_variance"].sum() * 0
            logs["train/loss_z_variance"] = zv.detach()
            loss = loss + zv * self.lam("z_variance")
        logs["train/loss"] = loss.detach()
        if not torch.isfinite(loss.detach()):
            return {"loss": loss, "logs": logs, "non_finite": self.non_finite_source(out, logs, list(g))}
        return {"loss": loss, "logs": logs}

    @torch.no_grad()
    def non_finite_source(self, out: Dict[str, torch.Tensor], logs: Dict[str, torch.Tensor],
                          guidance_keys: Sequence[str] = ()) -> str:
        """Where a NaN/Inf loss came from, upstream first: the prompt sample, the field's parameters, the render,
        the guidance, a regulariser; with what to do about it."""
        def finite(t) -> bool:
            return not isinstance(t, torch.Tensor) or bool(torch.isfinite(t).all())

        pu = self.prompt_utils
        if pu is not None and not all(finite(getattr(pu, k, None)) for k in
                                      ("text_embeddings", "uncond_text_embeddings", "text_embeddings_vd",
                                       "uncond_text_embeddings_vd")):
            return ("the prompt sample holds NaN/Inf (system.prompt_processor: check the distribution file, its scale "
                    "and edits; a run's prompt_sample.safetensors is reused on resume)")
        bad = sorted({name.split(".")[0] for name, p in self.named_parameters()
                      if not name.startswith("guidance.") and not finite(p)})
        if bad:
            return (f"the parameters of {', '.join('system.' + b for b in bad)} became NaN/Inf in an earlier update: "
                    "lower the learning rates in system.optimizer")
        render = [k for k in ("comp_rgb", "opacity", "depth", "comp_normal") if k in out and not finite(out[k])]
        if render:
            return (f"the render ({', '.join(render)}) is NaN/Inf although the parameters are finite: the geometry or "
                    "renderer (system.geometry / system.renderer settings) produced it")
        guided = [k for k in guidance_keys if not finite(logs.get(f"train/{k}"))]
        terms = [k.split("/", 1)[-1] for k, v in logs.items() if k != "train/loss" and not finite(v)]
        if guided:
            return (f"the guidance returned NaN/Inf ({', '.join(guided)}) from a finite render and prompt: check "
                    "system.guidance (guidance_scale, min/max_step_percent) and the diffusion model")
        if terms:
            return f"the regulariser(s) {', '.join(terms)} are NaN/Inf: check system.loss"
        return "a loss weight (system.loss.lambda_*) is NaN/Inf, or the terms overflowed when summed"

    @torch.no_grad()
    def render_views(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return self(batch)

    def eval_image(self, out: Dict[str, torch.Tensor]) -> np.ndarray:
        """RGB | normal (if any) | opacity, side by side (threestudio's validation image)."""
        return eval_image(out)

    def validation_step(self, batch: Dict[str, Any], step: int) -> Path:
        out = self.render_views(batch)
        idx = int(batch["index"][0])
        return save_png(self.eval_image(out), self.save_dir / f"it{step}-{idx}.png")

    def test(self, batches, step: int, fps: int = 30, grid_frames: int = 8, progress=None) -> Dict[str, Path]:
        """Render the test orbit: it{step}-test/{i}.png, it{step}-test.mp4 (30 fps) and it{step}-test-grid.png."""
        renders = ((int(batch["index"][0]), self.render_views(batch)) for batch in batches)
        return write_turntable(self.save_dir, step, renders, fps=fps, grid_frames=grid_frames, progress=progress,
                               empty_hint="the field: there is no density to show. The checkpoint may be untrained "
                                          "or diverged; check system.geometry (density_bias, density_blob_scale) and "
                                          "the resume= checkpoint")

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        ocfg = dict(self.cfg.optimizer) or {"name": "AdamW", "args": {"lr": 0.01, "betas": [0.9, 0.99], "eps": 1e-15}}
        unknown = set(ocfg) - {"name", "args", "params"}
        if unknown:
            raise ConfigError(f"unknown config key(s) {sorted(unknown)} in system.optimizer (valid: name, args, "
                              "params)")
        name = ocfg.get("name", "AdamW")
        if not hasattr(torch.optim, name):
            raise ConfigError(f"system.optimizer.name: unknown torch optimizer '{name}'")
        args = dict(ocfg.get("args") or {})
        if "betas" in args:
            args["betas"] = tuple(args["betas"])
        params = ocfg.get("params")
        if params:
            groups, owner = [], {}
            for path, gargs in optimizer_groups(params).items():
                mod: Any = self
                for part in path.split("."):
                    if not hasattr(mod, part):
                        raise ConfigError(f"system.optimizer.params: '{path}' does not name a module of the system")
                    mod = getattr(mod, part)
                ps = list(mod.parameters()) if isinstance(mod, nn.Module) else [mod]
                for p in ps:
                    if id(p) in owner:
                        raise ConfigError(f"system.optimizer.params: '{owner[id(p)]}' and '{path}' hold the same "
                                          "parameters; give each module one group")
                    owner[id(p)] = path
                groups.append({"params": ps, "name": path, **gargs})
        else:
            groups = [{"params": [p for p in self.parameters() if p.requires_grad]}]
        for where, hp in [("system.optimizer.args", args)] + [(f"system.optimizer.params.{g['name']}", g)
                                                               for g in groups if "name" in g]:
            for key in ("lr", "eps", "weight_decay"):
                value = hp.get(key)
                if isinstance(value, str):  # YAML reads `inf`, `1e-3` as strings
                    try:
                        value = hp[key] = float(value)
                    except ValueError:
                        raise ConfigError(f"{where}.{key} must be a number, got {value!r}") from None
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise ConfigError(f"{where}.{key} must be a finite number, got {value}")
        optim = getattr(torch.optim, name)(groups, **args)
        for g in groups:  # torch keeps unknown keys in a group silently: a misspelt `lr` would be ignored
            unknown = sorted(set(g) - {"params", "name"} - set(optim.defaults))
            if unknown:
                raise ConfigError(f"system.optimizer.params.{g['name']}: unknown key(s) {unknown} for {name}; valid: "
                                  f"{', '.join(sorted(optim.defaults))}")
        sched = None
        if self.cfg.scheduler:
            scfg = dict(self.cfg.scheduler)
            sname = scfg.get("name")
            if not sname or not hasattr(torch.optim.lr_scheduler, sname):
                raise ConfigError(f"system.scheduler.name: unknown torch lr scheduler {sname!r}")
            try:
                sched = getattr(torch.optim.lr_scheduler, sname)(optim, **dict(scfg.get("args") or {}))
            except TypeError as e:  # a misspelt or missing argument
                raise ConfigError(f"system.scheduler.args: {e}") from None
        a = self.anchor_cfg
        if a.source != "none" and a.steps > 0 and a.lr_scale != 1.0:
            if sched is not None:
                raise ConfigError("system.anchor.lr_scale and system.scheduler cannot be combined: set "
                                  "system.anchor.lr_scale=1 or drop the scheduler")
            sched = torch.optim.lr_scheduler.LambdaLR(optim, AnchorLRFactor(a.lr_scale, a.steps))
        return optim, sched


# ---------------------------------------------------------------------------------------------- export seam
@dataclass
class RunField:
    """The export `Field` of a run: bbox (2,3), density(points (N,3)) -> (N,) σ, albedo(points) -> (N,3) in [0,1]."""

    geometry: nn.Module
    material: nn.Module
    bbox: torch.Tensor
    isosurface_threshold: Any = 25.0
    isosurface_resolution: int = 128
    step: int = 0

    @torch.no_grad()
    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.geometry.density(points.to(self.bbox))[..., 0]

    @torch.no_grad()
    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        feats = self.geometry.export(points.to(self.bbox))["features"]
        return self.material.export(feats)["albedo"]


def load_run_field(run_dir, ckpt=None, device: torch.device | str = "cpu") -> RunField:
    """The trained field of a run folder (`configs/parsed.yaml` + `ckpts/last.ckpt` or `ckpt`)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    parsed = run_dir / "configs" / "parsed.yaml"
    if not parsed.is_file():
        raise FileNotFoundError(f"{parsed} not found: {run_dir} is not a dreamdist3d/threestudio run folder")
    cfg = OmegaConf.load(parsed)
    sys_cfg = parse_structured(SystemConfig, cfg.get("system", {}), where="system")
    geometry, material, _, _ = build_field(sys_cfg)
    from dreamdist3d.lift3d.trainer import load_checkpoint
    from dreamdist3d.runs import latest_checkpoint

    path = Path(ckpt) if ckpt else latest_checkpoint(run_dir, "*.ckpt", last="last.ckpt")  # else the highest step
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'ckpts'} (train the run first, or pass ckpt=)")
    state = load_checkpoint(path)
    sd = state["state_dict"]
    for prefix, mod in (("geometry.", geometry), ("material.", material)):
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        mod.load_state_dict(sub, strict=True)
    geometry.to(device).eval()
    material.to(device).eval()
    g = geometry.cfg
    return RunField(
        geometry=geometry, material=material, bbox=geometry.bbox.to(device).float().clone(),
        isosurface_threshold=g.isosurface_threshold, isosurface_resolution=g.isosurface_resolution,
        step=int(state.get("global_step", 0)),
    )
