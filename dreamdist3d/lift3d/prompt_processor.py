"""`dreamdistribution-prompt-processor`: one prompt *sample* from a learned distribution per run, as threestudio's
`PromptProcessorOutput`.

The distribution file(s) are fitted with the frozen text encoder (configured prefix/suffix edits), scaled by γ
(`scale`) and optionally mixed (`mixture`: weighted files, the official `generate.py` rule); then ONE sample
`mean + ε·std` is drawn with ε from a CPU generator seeded by the run's seed (or `seed`). The sample is written to
the run folder (`prompt_sample.safetensors`) and stored in checkpoints, so a resumed run uses the same one.

The uncond/negative embedding comes from the real text encoder (`negative_prompt`). View-dependent prompting is off
by default (MVDream runs it off); with `view_dependent_prompting: true` each direction ("side", "front", "back",
"overhead") is the distribution re-fitted with a suffix edit `<suffix>, <dir> view` (or a prefix edit
`<dir> view of <prefix>` with `view_dependent_prompt_front`) and sampled with the SAME ε — one object, four views.

`PromptProcessorOutput.get_text_embeddings(...)` returns `cat([cond (B), uncond (B)])`, cond first (threestudio).
The pieces here are plain functions so the threestudio extension in custom/ can delegate to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dreamdist3d.backbones.load import load_text_side
from dreamdist3d.config import ConfigError
from dreamdist3d.distribution.conditioning import DistributionSpec, fit, load_files, resolve_covariance
from dreamdist3d.distribution.errors import EncoderMismatchError
from dreamdist3d.lift3d.base import BaseObject
from dreamdist3d.registry import register

SAMPLE_FILE = "prompt_sample.safetensors"
SAMPLE_FORMAT = "dreamdist3d.prompt-sample"
DIRECTIONS = ("side", "front", "back", "overhead")


# ---------------------------------------------------------------------------------------------- directions
def shift_azimuth_deg(azimuth: torch.Tensor) -> torch.Tensor:
    """Azimuth (degrees) into [-180, 180)."""
    return (azimuth + 180) % 360 - 180


@dataclass
class DirectionConfig:
    name: str
    prompt: Callable[[str], str]
    negative_prompt: Callable[[str], str]
    condition: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_directions(front_threshold: float, back_threshold: float, overhead_threshold: float,
                    prefix_style: bool) -> List[DirectionConfig]:
    """threestudio's 4 directions in its fixed order: 0 side, 1 front, 2 back, 3 overhead (later matches win)."""
    ident = lambda s: s  # noqa: E731
    if prefix_style:
        fmt = {"side": "side view of {}", "front": "front view of {}", "back": "backside view of {}",
               "overhead": "overhead view of {}"}
    else:
        fmt = {"side": "{}, side view", "front": "{}, front view", "back": "{}, back view",
               "overhead": "{}, overhead view"}
    conds = {
        "side": lambda ele, azi, dis: torch.ones_like(ele, dtype=torch.bool),
        "front": lambda ele, azi,
        dis: (shift_azimuth_deg(azi) > -front_threshold) & (shift_azimuth_deg(azi) < front_threshold),
        "back": lambda ele, azi,
        dis: (shift_azimuth_deg(azi) > 180 - back_threshold) | (shift_azimuth_deg(azi) < -180 + back_threshold),
        "overhead": lambda ele, azi, dis: ele > overhead_threshold,
    }
    return [DirectionConfig(n, (lambda s, f=fmt[n]: f.format(s)), ident, conds[n]) for n in DIRECTIONS]


def direction_indices(directions: Sequence[DirectionConfig], elevation, azimuth, camera_distances) -> torch.Tensor:
    idx = torch.zeros_like(elevation, dtype=torch.long)
    for i, d in enumerate(directions):
        idx[d.condition(elevation, azimuth, camera_distances)] = i
    return idx


def shifted_expotional_decay(a: float, b: float, c: float, r: torch.Tensor) -> torch.Tensor:
    return a * torch.exp(-b * r) + c


def check_view_dependence(guidance: bool, processor: bool, where: str = "system") -> None:
    """The guidance asks for direction embeddings only if the processor prepares them: checked when the config is
    read, not at the first training step after the diffusion model has loaded."""
    if guidance and not processor:
        raise ConfigError(f"{where}.guidance.view_dependent_prompting is true but "
                          f"{where}.prompt_processor.view_dependent_prompting is false: set both to the same value "
                          "(MVDream runs with both false)")


# ---------------------------------------------------------------------------------------------- output
@dataclass
class PromptProcessorOutput:
    """threestudio's PromptProcessorOutput (TS fields incl. `prompt` / `prompts_vd`)."""

    text_embeddings: torch.Tensor  # (1, 77, D)
    uncond_text_embeddings: torch.Tensor  # (1, 77, D)
    text_embeddings_vd: torch.Tensor  # (4, 77, D), indexed by direction
    uncond_text_embeddings_vd: torch.Tensor  # (4, 77, D)
    directions: List[DirectionConfig]
    direction2idx: Dict[str, int]
    use_perp_neg: bool
    perp_neg_f_sb: Tuple[float, float, float]
    perp_neg_f_fsb: Tuple[float, float, float]
    perp_neg_f_fs: Tuple[float, float, float]
    perp_neg_f_sf: Tuple[float, float, float]
    prompt: str = ""
    prompts_vd: List[str] = field(default_factory=list)
    view_dependent_available: bool = True  # False: _vd are copies of the main sample (processor flag off)

    def get_text_embeddings(self, elevation, azimuth, camera_distances,
                            view_dependent_prompting: bool = True) -> torch.Tensor:
        """(B,) degrees -> (2B, 77, D) = cat([cond, uncond])."""
        B = elevation.shape[0]
        if view_dependent_prompting:
            if not self.view_dependent_available:
                raise ConfigError(
                    "system.guidance.view_dependent_prompting is true but the prompt processor did not prepare "
                    "direction samples: set system.prompt_processor.view_dependent_prompting=true"
                )
            idx = direction_indices(self.directions, elevation.cpu(), azimuth.cpu(),
                                    camera_distances.cpu()).to(self.text_embeddings.device)
            cond = self.text_embeddings_vd[idx]
            uncond = self.uncond_text_embeddings_vd[idx]
        else:
            cond = self.text_embeddings.expand(B, -1, -1)
            uncond = self.uncond_text_embeddings.expand(B, -1, -1)
        return torch.cat([cond, uncond], dim=0)

    def get_text_embeddings_perp_neg(self, elevation, azimuth, camera_distances, view_dependent_prompting: bool = True):
        """Perp-Neg embeddings (4B, 77, D) and weights (B, 2), threestudio's rule."""
        if not view_dependent_prompting:
            raise ConfigError("Perp-Neg requires view-dependent prompting "
                              "(system.guidance.view_dependent_prompting=true)")
        if not self.view_dependent_available:
            raise ConfigError("Perp-Neg needs system.prompt_processor.view_dependent_prompting=true")
        B = elevation.shape[0]
        idx = direction_indices(self.directions, elevation.cpu(), azimuth.cpu(), camera_distances.cpu())
        azi = shift_azimuth_deg(azimuth.cpu().float())
        side, front, back, overhead = (self.text_embeddings_vd[i] for i in range(4))
        uncond = self.uncond_text_embeddings
        pos, negs, weights = [], [], []
        for b in range(B):
            a = float(azi[b])
            if int(idx[b]) == 3:
                pos.append(overhead)
                negs += [uncond[0], uncond[0]]
                weights.append(torch.zeros(2))
            elif abs(a) < 90:
                r = 1 - abs(a) / 90
                pos.append(r * front + (1 - r) * side)
                negs += [front, side]
                rt = torch.tensor(r)
                weights.append(torch.stack([-shifted_expotional_decay(*self.perp_neg_f_fs, rt),
                                            -shifted_expotional_decay(*self.perp_neg_f_sf, 1 - rt)]))
            else:
                r = 2 - abs(a) / 90
                pos.append(r * side + (1 - r) * back)
                negs += [side, front]
                rt = torch.tensor(r)
                weights.append(torch.stack([-shifted_expotional_decay(*self.perp_neg_f_sb, rt),
                                            -shifted_expotional_decay(*self.perp_neg_f_fsb, rt)]))
        emb = torch.cat([torch.stack(pos), uncond.expand(B, -1, -1), torch.stack(negs)], 0)
        return emb, torch.stack(weights).to(emb)


# ---------------------------------------------------------------------------------------------- the sample
@dataclass(frozen=True)
class SampleSpec:
    """What a run's ONE prompt sample depends on: the distribution spec, the seed and the view directions."""

    dist: DistributionSpec
    seed: int = 0
    view_dependent: bool = False
    # view_dependent_prompt_front: "<dir> view of <prefix>" instead of "<suffix>, <dir> view"
    prefix_style: bool = False


@dataclass
class PromptSample:
    text_embeddings: torch.Tensor  # (1, 77, D)
    text_embeddings_vd: Optional[torch.Tensor]  # (4, 77, D) or None
    eps: torch.Tensor  # (77, D): the one normal draw behind every embedding here
    meta: Dict[str, Any]

    def save(self, path) -> Path:
        from dreamdist3d.io import atomic_save_safetensors

        tensors = {"text_embeddings": self.text_embeddings.cpu().float(), "eps": self.eps.cpu().float()}
        if self.text_embeddings_vd is not None:
            tensors["text_embeddings_vd"] = self.text_embeddings_vd.cpu().float()
        atomic_save_safetensors(tensors, path, {"dreamdist3d": json.dumps({"format": SAMPLE_FORMAT, **self.meta})})
        return Path(path)

    @classmethod
    def load(cls, path) -> "PromptSample":
        from dreamdist3d.io import read_safetensors

        tensors, header = read_safetensors(path)
        meta = json.loads(header.get("dreamdist3d", "{}"))
        if meta.pop("format", None) != SAMPLE_FORMAT:
            raise ValueError(f"{path} is not a dreamdist3d prompt sample (written by the prompt processor)")
        return cls(tensors["text_embeddings"], tensors.get("text_embeddings_vd"), tensors["eps"], meta)

    def state(self) -> Dict[str, Any]:
        """For checkpoints."""
        return {"text_embeddings": self.text_embeddings.cpu(),
                "text_embeddings_vd": None if self.text_embeddings_vd is None else self.text_embeddings_vd.cpu(),
                "eps": self.eps.cpu(), "meta": dict(self.meta)}

    @classmethod
    def from_state(cls, st: Dict[str, Any]) -> "PromptSample":
        return cls(st["text_embeddings"], st.get("text_embeddings_vd"), st["eps"], dict(st["meta"]))


def direction_edit(direction: str, prefix_style: bool):
    """The prefix/suffix edit of one view direction (threestudio's view-dependent prompt text)."""
    if prefix_style:
        word = "backside" if direction == "back" else direction
        return lambda prefix, suffix: (f"{word} view of {prefix}".strip(), suffix)
    return lambda prefix, suffix: (prefix, f"{suffix}, {direction} view")


def draw_prompt_sample(spec: SampleSpec, text_encoder, tokenizer, dists=None) -> PromptSample:
    """Fit, mix, and draw the ONE sample of a run: sample 0 of `spec.seed` (the distribution seed rule); with view
    dependence each direction's re-fitted law is drawn with the SAME noise."""
    dists = dists if dists is not None else load_files(spec.dist)
    mixture = fit(spec.dist, text_encoder, tokenizer, dists)
    law = mixture.law()
    eps = law.noise(1, spec.seed)  # (1, *noise_shape)
    text = law.sample(1, eps=eps).float().cpu()  # (1, 77, D)
    vd = None
    if spec.view_dependent:
        vd = torch.cat([fit(spec.dist, text_encoder, tokenizer, dists, edit=direction_edit(d, spec.prefix_style))
                        .law().sample(1, eps=eps).float().cpu() for d in DIRECTIONS])
    return PromptSample(text, vd, eps[0], spec_meta(spec, dists, mixture.covariance, text_encoder))


def spec_meta(spec: SampleSpec, dists, covariance: str, text_encoder) -> Dict[str, Any]:
    return {
        "files": [{"path": c.path, "weight": float(c.weight), "scale": float(c.scale), "class_index": c.class_index,
                   "ctx_sha256": d.meta.ctx_sha256 or ""} for c, d in zip(spec.dist.components, dists)],
        "prefix": spec.dist.prefix,
        "suffix": spec.dist.suffix,
        "covariance": covariance,
        "seed": int(spec.seed),
        "view_dependent": bool(spec.view_dependent),
        "prefix_style": bool(spec.prefix_style),
        "text_encoder": text_encoder.fingerprint(),
    }


def sample_matches(sample: PromptSample, spec: SampleSpec, dists, text_encoder) -> List[str]:
    """Differences between what `sample` was drawn with and `spec` (empty: the sample belongs to this spec)."""
    want = spec_meta(spec, dists, resolve_covariance(spec.dist, dists), text_encoder)
    have = {"covariance": "diag", **sample.meta}  # samples drawn before the covariance modes existed are diag
    diffs = []
    for k in ("prefix", "suffix", "covariance", "seed", "view_dependent", "prefix_style"):
        if want[k] != have.get(k):
            diffs.append(f"{k}: saved {have.get(k)!r}, config {want[k]!r}")
    strip = lambda fs: [(f["weight"], f["scale"], f.get("class_index", 0), f["ctx_sha256"]) for f in fs]  # noqa: E731
    if strip(want["files"]) != strip(have.get("files", [])):
        diffs.append("distribution files / weights / scales differ")
    return diffs


def describe(spec: DistributionSpec) -> str:
    """For logs: "a photo of <cathedrals>"."""
    many = len(spec.components) > 1
    text = "+".join(f"<{Path(c.path).stem}>" + (f"*{c.weight:g}" if many else "") for c in spec.components)
    return " ".join(x for x in (spec.prefix or "", text, spec.suffix or "") if x)


# ---------------------------------------------------------------------------------------------- shared glue
@dataclass
class PreparedPrompt:
    sample: PromptSample
    uncond: torch.Tensor  # (1, 77, D) from the text encoder
    prompt: str  # for logs: "a photo of <cathedrals>"
    spec: SampleSpec
    summary: str = ""  # for logs: which files, law, γ, seed and sample, and where the sample came from


def describe_sample(spec: SampleSpec, dists, covariance: str, origin: str) -> str:
    """One log line saying what a run is conditioned on (threestudio would print its placeholder `prompt`)."""
    many = len(spec.dist.components) > 1
    files = " + ".join(f"{c.path} (" + (f"weight {c.weight:g}, " if many else "") + f"γ {c.scale:g})"
                       for c in spec.dist.components)
    learned = dists[0].meta
    prefix = (f"prefix {learned.prefix!r} (as learned)" if spec.dist.prefix is None else
              f"prefix {spec.dist.prefix!r}")
    suffix = (f"suffix {learned.suffix!r} (as learned)" if spec.dist.suffix is None else
              f"suffix {spec.dist.suffix!r}")
    vd = ", with view-dependent direction samples" if spec.view_dependent else ""
    return (f"prompt sample: sample 0 of seed {spec.seed} (the prompt of 2D image 0 and preview 0 with --seed "
            f"{spec.seed}) from {files}; law {covariance}, {prefix}, {suffix}{vd}; {origin}")


def prepare_prompt(
    *, distribution: Optional[str], scale: float, mixture: Sequence[Any], prefix: Optional[str], suffix: Optional[str],
    seed: int, view_dependent: bool, prefix_style: bool, class_index: int, negative_prompt: str,
    text_encoder, tokenizer, where: str = "system.prompt_processor", sample_path=None,
    sample: Optional[PromptSample] = None, device="cpu", covariance: Optional[str] = None,
) -> PreparedPrompt:
    """Everything a distribution prompt processor needs — ours and the threestudio extension's.

    Uses `sample` (from a checkpoint) or the file at `sample_path` when present (after checking it was drawn with
    these settings), else draws the one sample; writes it to `sample_path`; encodes the negative prompt."""
    try:
        dist_spec = DistributionSpec.from_config(distribution, scale, mixture, class_index, prefix, suffix, covariance,
                                                 where=where)
    except ValueError as e:  # (a missing file is a FileNotFoundError, not caught here)
        raise ConfigError(str(e)) from None
    spec = SampleSpec(dist_spec, seed=int(seed), view_dependent=view_dependent, prefix_style=prefix_style)
    saved = Path(sample_path) if sample_path else None
    enc_device = text_encoder.device
    text_encoder.to(device)  # encode where the run computes, then give the memory back
    origin = "from the checkpoint resumed" if sample is not None else f"drawn, saved to {saved}" if saved else "drawn"
    try:
        dists = load_files(dist_spec)
        if sample is None and saved is not None and saved.is_file():
            sample = PromptSample.load(saved)
            origin = f"read back from {saved}"
        if sample is not None:
            diffs = sample_matches(sample, spec, dists, text_encoder)
            if diffs:
                raise ConfigError(
                    f"the saved prompt sample ({saved or 'checkpoint'}) was drawn with other settings: "
                    f"{'; '.join(diffs)}. "
                    f"Start a new run (or delete {saved.name if saved else SAMPLE_FILE}) to draw a new sample"
                )
        else:
            try:
                sample = draw_prompt_sample(spec, text_encoder, tokenizer, dists)
            except EncoderMismatchError:
                raise
            except ValueError as e:  # prompt too long after the edit
                raise ConfigError(f"{e} (prefix/suffix come from {where}.prefix/suffix)") from None
        ids = tokenizer([negative_prompt]).to(text_encoder.device)
        with torch.no_grad():
            uncond = text_encoder.encode_ids(ids).float().cpu()
    finally:
        text_encoder.to(enc_device)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    if saved is not None:
        sample.save(saved)
    summary = describe_sample(spec, dists, sample.meta.get("covariance", "diag"), origin)
    return PreparedPrompt(sample, uncond, describe(dist_spec), spec, summary)


# ---------------------------------------------------------------------------------------------- the processor
@register("dreamdistribution-prompt-processor")
class DreamDistributionPromptProcessor(BaseObject):
    @dataclass
    class Config:
        # threestudio PromptProcessor.Config (same names and defaults)
        prompt: str = "a hamburger"  # used only for logging here; the condition is the distribution sample
        prompt_front: Optional[str] = None
        prompt_side: Optional[str] = None
        prompt_back: Optional[str] = None
        prompt_overhead: Optional[str] = None
        negative_prompt: str = ""
        pretrained_model_name_or_path: Optional[str] = None  # MVDream checkpoint giving the text encoder
        overhead_threshold: float = 60.0
        front_threshold: float = 45.0
        back_threshold: float = 45.0
        view_dependent_prompt_front: bool = False
        use_cache: bool = True
        spawn: bool = True
        use_perp_neg: bool = False
        perp_neg_f_sb: Tuple[float, float, float] = (1, 0.5, -0.606)
        perp_neg_f_fsb: Tuple[float, float, float] = (1, 0.5, +0.967)
        perp_neg_f_fs: Tuple[float, float, float] = (4, 0.5, -2.426)
        perp_neg_f_sf: Tuple[float, float, float] = (4, 0.5, -2.426)
        use_prompt_debiasing: bool = False
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"
        prompt_debiasing_mask_ids: Optional[Any] = None
        # the distribution
        distribution: Optional[str] = None
        class_index: int = 0  # which class of a multi-class official prompt_learner.pt
        prefix: Optional[str] = None  # None: the training prefix
        suffix: Optional[str] = None
        scale: float = 1.0  # γ
        mixture: List[Any] = field(default_factory=list)  # [{path, weight, scale}, ...]; weights sum to 1
        covariance: Optional[str] = None  # diag | lowrank | kernel; None: what the file records (official files: diag)
        seed: Optional[int] = None  # None: the run's seed
        view_dependent_prompting: bool = False

    cfg: Config

    def configure(self, backbone=None, device="cpu", seed: int = 0, save_dir: Optional[str] = None,
                  sample: Optional[PromptSample] = None) -> None:
        cfg, w = self.cfg, self.where or "system.prompt_processor"
        if cfg.use_prompt_debiasing:
            raise ConfigError(f"{w}.use_prompt_debiasing works on prompt text; a distribution has none: set it false")
        for k in ("prompt_front", "prompt_side", "prompt_back", "prompt_overhead"):
            if getattr(cfg, k) is not None:
                raise ConfigError(f"{w}.{k}: manual view prompts are text; with a distribution use "
                                  "view_dependent_prompting")
        if cfg.use_perp_neg and not cfg.view_dependent_prompting:
            raise ConfigError(f"{w}.use_perp_neg needs {w}.view_dependent_prompting=true")
        self.device = torch.device(device)
        if backbone is not None:
            enc, tok = backbone.text_encoder, backbone.tokenizer
        else:
            tok, enc = load_text_side(cfg.pretrained_model_name_or_path, key=f"{w}.pretrained_model_name_or_path")
        prepared = prepare_prompt(
            distribution=cfg.distribution, scale=cfg.scale, mixture=cfg.mixture, prefix=cfg.prefix, suffix=cfg.suffix,
            seed=int(cfg.seed if cfg.seed is not None else seed), view_dependent=cfg.view_dependent_prompting,
            prefix_style=cfg.view_dependent_prompt_front, class_index=cfg.class_index,
            negative_prompt=cfg.negative_prompt,
            text_encoder=enc, tokenizer=tok, where=w, sample_path=(Path(save_dir) / SAMPLE_FILE) if save_dir else None,
            sample=sample, device=self.device, covariance=cfg.covariance,
        )
        self.spec, self.sample, self.uncond = prepared.spec, prepared.sample, prepared.uncond
        self.directions = make_directions(cfg.front_threshold, cfg.back_threshold, cfg.overhead_threshold,
                                          cfg.view_dependent_prompt_front)
        self.direction2idx = {d.name: i for i, d in enumerate(self.directions)}
        self.prompt = prepared.prompt
        self.prompts_vd = [d.prompt(self.prompt) for d in self.directions]
        print(prepared.summary, flush=True)


    def state(self) -> Dict[str, Any]:
        return self.sample.state()

    def __call__(self) -> PromptProcessorOutput:
        s, dev = self.sample, self.device
        text = s.text_embeddings.to(dev, torch.float32)
        vd = s.text_embeddings_vd.to(dev, torch.float32) if s.text_embeddings_vd is not None else text.expand(4, -1, -1)
        uncond = self.uncond.to(dev, torch.float32)
        cfg = self.cfg
        return PromptProcessorOutput(
            text_embeddings=text,
            uncond_text_embeddings=uncond,
            text_embeddings_vd=vd,
            uncond_text_embeddings_vd=uncond.expand(4, -1, -1),
            directions=self.directions,
            direction2idx=self.direction2idx,
            use_perp_neg=cfg.use_perp_neg,
            perp_neg_f_sb=tuple(cfg.perp_neg_f_sb),
            perp_neg_f_fsb=tuple(cfg.perp_neg_f_fsb),
            perp_neg_f_fs=tuple(cfg.perp_neg_f_fs),
            perp_neg_f_sf=tuple(cfg.perp_neg_f_sf),
            prompt=self.prompt,
            prompts_vd=self.prompts_vd,
            view_dependent_available=s.text_embeddings_vd is not None,
        )
