"""The ONE path from distribution files to conditioning: spec → fit → sample.

    spec = DistributionSpec.from_lists(["cathedral.safetensors"], suffix="at night")
    mixture = fit(spec, text_encoder, tokenizer)   # reads each file once, re-encodes its K prompts with the edit
    x = mixture.sample(4, seed=0)                  # (4, 77, D) float32; sample i from a generator seeded seed+i

Every user of a distribution goes through here: SD 2.1 sampling and sweeps, MVDream previews, the 3D prompt
processor (ours and the threestudio extension), the toy demo and evaluator, and `inspect`.

- A spec is one or more files with a weight w and a scale γ each (weights sum to 1), the class index of official
  multi-class files, a prefix/suffix edit (None: each file's training text) and the covariance mode (None: what the
  files record; official imports record the paper's `diag`).
- `fit` re-encodes each file's K prompts with the edit and mixes them by the official rule (`PromptGaussian.mix`);
  `PromptMixture.law(gamma, weights)` re-mixes without re-encoding (the γ and mixing sweeps).
- The seed rule (`PromptGaussian.noise`): sample i of seed s uses a CPU generator seeded with s + i, so "seed s" is
  the same prompt sample in 2D image 0, preview 0 and the 3D run with seed s.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.distribution.file import DistributionRangeWarning, PromptDistribution, context_range_problem
from dreamdist3d.distribution.gaussian import COVARIANCES, PromptGaussian, check_covariance, check_scale

Edit = Callable[[str, str], Tuple[str, str]]  # (prefix, suffix) as resolved → (prefix, suffix) encoded


@dataclass(frozen=True)
class Component:
    """One distribution of a spec: file, weight w, diversity scale γ, class index (official multi-class files)."""

    path: str
    weight: float = 1.0
    scale: float = 1.0
    class_index: int = 0


def _broadcast(values: Optional[Sequence], k: int, default, flag: str) -> list:
    if values is None or len(values) == 0:
        return [default] * k
    if len(values) == 1:
        return list(values) * k
    if len(values) != k:
        raise ValueError(f"{flag} got {len(values)} values for {k} distribution files; give one value or one per file")
    return list(values)


@dataclass(frozen=True)
class DistributionSpec:
    """Everything a prompt sample depends on, except the seed."""

    components: Tuple[Component, ...]
    prefix: Optional[str] = None  # None: each distribution's training prefix
    suffix: Optional[str] = None
    covariance: Optional[str] = None  # None: what the files record (diag | lowrank | kernel)
    key: str = "--distribution"  # the flag / config key named in errors

    def __post_init__(self) -> None:
        if not self.components:
            raise ValueError(f"{self.key}: give at least one distribution file (.safetensors from `dreamdist3d learn`, "
                             "or an official prompt_learner.pt)")
        ws = [c.weight for c in self.components]
        if not all(math.isfinite(w) for w in ws):
            raise ValueError(f"{self._weights_where()}: mixture weights must be finite numbers, got {ws}; "
                             f"{self._weights_example()}")
        if abs(sum(ws) - 1.0) > 1e-6:
            raise ValueError(f"{self._weights_where()}: mixture weights must sum to 1, got {ws} (sum {sum(ws):.6g}); "
                             f"{self._weights_example()}")
        for c in self.components:
            check_scale(c.scale, f"{self.key}: scale γ")
            if c.class_index < 0:
                raise ValueError(f"{self.key}: class index must be ≥ 0, got {c.class_index}")
        if self.covariance is not None:
            check_covariance(self.covariance, f"{self.key}: covariance")

    def _weights_where(self) -> str:
        return "--weight" if self.key.startswith("--") else self.key

    def _weights_example(self) -> str:
        """How to give two equal weights, in the words of where the weights came from (flags or a yaml key)."""
        if self.key.startswith("--"):
            return "e.g. --weight 0.5 0.5 for two distributions"
        return f"e.g. {self.key}: [{{path: a.safetensors, weight: 0.5}}, {{path: b.safetensors, weight: 0.5}}]"

    @classmethod
    def from_lists(cls, paths: Sequence, weights: Optional[Sequence[float]] = None,
                   scales: Optional[Sequence[float]] = None, class_indices: Optional[Sequence[int]] = None,
                   prefix: Optional[str] = None, suffix: Optional[str] = None, covariance: Optional[str] = None,
                   key: str = "--distribution") -> "DistributionSpec":
        """CLI-style lists (one value broadcasts; weights default to equal shares). Missing files fail here, before
        anything heavy is loaded."""
        if not paths:
            raise ValueError(f"{key}: give at least one distribution file (.safetensors from `dreamdist3d learn`, "
                             "or an official prompt_learner.pt)")
        k = len(paths)
        for p in paths:
            if not Path(p).expanduser().is_file():
                raise FileNotFoundError(f"{key}: distribution file {p} does not exist; give a .safetensors written by "
                                        "`dreamdist3d learn` (or an official prompt_learner.pt)")
        if weights is None or len(weights) == 0:
            ws = [1.0 / k] * k
        elif len(weights) != k:
            raise ValueError(f"--weight got {len(weights)} values for {k} distribution files; give one weight per file")
        else:
            ws = [float(w) for w in weights]
        ss = [float(s) for s in _broadcast(scales, k, 1.0, "--scale")]
        cs = [int(c) for c in _broadcast(class_indices, k, 0, "--class-index")]
        comps = tuple(Component(str(Path(p).expanduser()), w, s, c) for p, w, s, c in zip(paths, ws, ss, cs))
        return cls(comps, prefix, suffix, covariance, key)

    @classmethod
    def from_config(cls, distribution: Optional[str], scale: float = 1.0, mixture: Sequence[Any] = (),
                    class_index: int = 0, prefix: Optional[str] = None, suffix: Optional[str] = None,
                    covariance: Optional[str] = None, where: str = "system.prompt_processor") -> "DistributionSpec":
        """A config's `distribution` (one file) or `mixture` ([{path, weight, scale}, …]) under `where`."""
        if mixture:
            if distribution:
                raise ValueError(f"set either {where}.distribution or {where}.mixture, not both")
            items = []
            for i, item in enumerate(mixture):
                item = dict(item)
                unknown = set(item) - {"path", "weight", "scale"}
                if unknown or "path" not in item:
                    raise ValueError(f"{where}.mixture[{i}] must be {{path, weight, scale}}; got keys {sorted(item)}")
                items.append(item)
            return cls.from_lists([str(x["path"]) for x in items],
                                  [float(x.get("weight", 1.0 / len(items))) for x in items],
                                  [float(x.get("scale", scale)) for x in items], [class_index], prefix, suffix,
                                  covariance, key=f"{where}.mixture")
        if not distribution:
            raise ValueError(f"{where}.distribution is not set: give the distribution file, e.g. "
                             f"`{where}.distribution=cathedrals.safetensors` (or {where}.mixture)")
        return cls.from_lists([str(distribution)], None, [scale], [class_index], prefix, suffix, covariance,
                              key=f"{where}.distribution")


def load_files(spec: DistributionSpec) -> List[PromptDistribution]:
    """Each file of the spec, read once."""
    out = []
    for c in spec.components:
        p = Path(c.path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{spec.key}: distribution file {p} does not exist; give a .safetensors written by "
                                    "`dreamdist3d learn` (or an official prompt_learner.pt), e.g. "
                                    f"`{spec.key}=cathedrals.safetensors`")
        out.append(PromptDistribution.load(p, class_index=c.class_index))
    return out


def resolve_covariance(spec: DistributionSpec, dists: Sequence[PromptDistribution]) -> str:
    """The spec's mode, or the one the files record (they must agree)."""
    if spec.covariance is not None:
        return spec.covariance
    modes = {d.meta.covariance for d in dists}
    if len(modes) > 1:
        raise ValueError(f"{spec.key}: the files were learned with different covariance modes {sorted(modes)}; "
                         f"choose one ({' | '.join(COVARIANCES)}) with --covariance or the config's covariance key")
    return modes.pop()


@dataclass
class FittedComponent:
    component: Component
    gaussian: PromptGaussian  # (77, D) float32, γ not applied
    info: Dict[str, Any]


@dataclass
class PromptMixture:
    """The fitted spec: one Gaussian per file; `law()` is the Gaussian prompts are drawn from."""

    spec: DistributionSpec
    parts: List[FittedComponent]
    covariance: str

    def law(self, gamma: float = 1.0, weights: Optional[Sequence[float]] = None) -> PromptGaussian:
        """The mixed law; `gamma` multiplies every component's scale (γ sweeps), `weights` override (mix sweeps).
        One file with weight 1 is N(μ, γ²Σ) directly, so γ=0 gives μ exactly."""
        gamma = check_scale(gamma, "γ")
        ws = [p.component.weight for p in self.parts] if weights is None else [float(w) for w in weights]
        if len(ws) != len(self.parts):
            raise ValueError(f"{len(ws)} weights for {len(self.parts)} distributions")
        if len(self.parts) == 1 and ws[0] == 1.0:
            return self.parts[0].gaussian.scaled(self.parts[0].component.scale * gamma)
        return PromptGaussian.mix([(p.gaussian, w, p.component.scale * gamma) for p, w in zip(self.parts, ws)])

    def sample(self, n: int, seed: int, start: int = 0, gamma: float = 1.0) -> torch.Tensor:
        """(n, 77, D) float32 on the law's device: samples start … start+n−1 of `seed` (the seed rule)."""
        law = self.law(gamma)
        return law.sample(n, eps=law.noise(n, seed, start))

    def describe(self, gamma: float = 1.0, weights: Optional[Sequence[float]] = None) -> Dict[str, Any]:
        """The metadata of this mixture: γ, weights, scales, edit, covariance, and each file's identity."""
        ws = [p.component.weight for p in self.parts] if weights is None else [float(w) for w in weights]
        scales = [p.component.scale * gamma for p in self.parts]
        return {
            "gamma": scales[0] if len(scales) == 1 else scales,
            "weights": ws,
            "scales": scales,
            "covariance": self.covariance,
            "edit": {"prefix": self.spec.prefix, "suffix": self.spec.suffix},
            "distributions": [{**p.info, "weight": w, "scale": s} for p, w, s in zip(self.parts, ws, scales)],
        }


@torch.no_grad()
def fit(spec: DistributionSpec, text_encoder, tokenizer, distributions: Optional[Sequence[PromptDistribution]] = None,
        edit: Optional[Edit] = None, check_encoder: bool = True) -> PromptMixture:
    """Re-encode every file's K prompts with the spec's prefix/suffix (then `edit`, e.g. a view direction) through
    `text_encoder` and return the mixture. `distributions`: the files already read by `load_files(spec)`."""
    dists = list(distributions) if distributions is not None else load_files(spec)
    covariance = resolve_covariance(spec, dists)
    parts = []
    for comp, dist in zip(spec.components, dists):
        try:
            learner = dist.learner(text_encoder, tokenizer, check_encoder=check_encoder, source=comp.path)
        except EncoderMismatchError as e:
            raise EncoderMismatchError(f"{spec.key}: {e}") from None
        prefix = learner.prefix if spec.prefix is None else spec.prefix
        suffix = learner.suffix if spec.suffix is None else spec.suffix
        if edit is not None:
            prefix, suffix = edit(prefix, suffix)
        try:
            gaussian = learner.fit(prefix=prefix, suffix=suffix).with_covariance(covariance)
        except ValueError as e:  # prompt too long for the encoder
            raise ValueError(f"{spec.key} ({comp.path}): {e}") from None
        _check_range(spec.key, comp.path, dist, gaussian, text_encoder)
        meta = dist.meta
        info = {
            "path": str(comp.path),
            "class_index": comp.class_index,
            "n_prompts": meta.n_prompts,
            "n_ctx": meta.n_ctx,
            "position_mode": meta.position_mode,
            "learned_covariance": meta.covariance,
            "backbone": meta.backbone,
            "training_prefix": meta.prefix,
            "training_suffix": meta.suffix,
            "prefix_used": prefix,
            "suffix_used": suffix,
            "ctx_sha256": meta.ctx_sha256,
            "source": meta.source,
        }
        parts.append(FittedComponent(comp, gaussian, info))
    return PromptMixture(spec, parts, covariance)


def _check_range(key: str, path: str, dist: PromptDistribution, gaussian: PromptGaussian, text_encoder) -> None:
    """A file whose encoded states are NaN/Inf is refused; one far outside the encoder's range is warned about."""
    problem = context_range_problem(dist.ctx, text_encoder.token_embedding.weight.detach())
    parts = [gaussian.mean, gaussian.std] + ([gaussian.factor] if gaussian.factor is not None else [])
    if not all(bool(torch.isfinite(t).all()) for t in parts):
        raise DistributionFileError(
            f"{key}: {path}: its learned context encodes to NaN/Inf states"
            + (f" ({problem.split(':')[0]})" if problem else "")
            + "; it would give black images. The file is damaged or came from a diverged run: use an earlier "
            "checkpoint of its run, or learn again (a lower lr)")
    if problem:
        warnings.warn(f"{key}: {path}: {problem} (a damaged file, or a diverged run?)", DistributionRangeWarning,
                      stacklevel=3)


__all__ = ["Component", "DistributionSpec", "FittedComponent", "PromptMixture", "fit", "load_files",
           "resolve_covariance"]
