"""The `PromptDistribution` file (`.safetensors`): learned context `ctx` (K, L, D) + JSON metadata.

Metadata (safetensors header, key "dreamdist3d"): format and version, n_ctx, n_prompts, the training prefix/suffix,
the position mode, the fingerprint of the text encoder it was learned with (hidden size, layers, vocab, weight hash),
the backbone, steps, image count, a sha256 of `ctx` (`ctx_sha256`) and a sha256 of `ctx` and all the other metadata
(`sha256`), so a tampered or damaged file is refused. Files written before `sha256` existed have only `ctx_sha256`;
they load, with what they record verified. The file is recognised by its content (safetensors header or a torch
zip/pickle), not its suffix, and a `ctx` holding NaN/Inf is refused.

`PromptDistribution.load` also imports the official DreamDistribution `prompt_learner.pt` / `final-<step>.pt`
(`torch.load(weights_only=True)`, nothing else is unpickled), picking a class by index.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from dreamdist3d.distribution.errors import DistributionFileError, EncoderMismatchError
from dreamdist3d.distribution.gaussian import COVARIANCES
from dreamdist3d.distribution.learner import POSITION_MODES, PromptLearner
from dreamdist3d.io import atomic_save_safetensors, load_error_reason, read_safetensors
from dreamdist3d.text import ClipTokenizer, TextEncoder, fingerprints_match

FORMAT = "dreamdist3d.prompt-distribution"
FORMAT_VERSION = 1

# What the official trainer writes: checkpoint-N/prompt_learner.pt = {"model_state_dict": {"ctx"}};
# final-N.pt = {"epoch", "model_state_dict": full PromptLearner state, "optimizer_state_dict",
#               "lr_scheduler_state_dict"}.
_OFFICIAL_TOP_KEYS = {"model_state_dict", "epoch", "optimizer_state_dict", "lr_scheduler_state_dict"}
_OFFICIAL_MODEL_PREFIXES = ("ctx", "token_prefix", "token_suffix", "text_encoder.", "vision_encoder.", "embedder.")


@dataclass
class DistributionMeta:
    n_ctx: int
    n_prompts: int
    prefix: str = ""
    suffix: str = ""
    position_mode: str = "clean"
    covariance: str = "diag"  # the sampling mode it was learned with (official imports: diag, the paper's)
    text_encoder: Optional[Dict[str, Any]] = None  # TextEncoder.fingerprint(); None for imported official files
    backbone: str = ""
    steps: int = 0
    n_images: int = 0
    source: str = ""  # how the file came to be ("dreamdist3d learn", "official import of …")
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    ctx_sha256: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)
    sha256: str = ""  # of ctx and every other metadata key (see _file_hash); "" in files written before it existed


def _ctx_hash(ctx: torch.Tensor) -> str:
    return hashlib.sha256(ctx.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _file_hash(ctx: torch.Tensor, meta: Dict[str, Any]) -> str:
    """sha256 of ctx's bytes and the canonical JSON of the metadata without its own `sha256` key."""
    h = hashlib.sha256(ctx.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def describe_encoder(fp: Any) -> str:
    """A text-encoder fingerprint in a few words: sizes and a short hash of its weight signature."""
    if not isinstance(fp, dict):
        return "unknown"
    sig = hashlib.sha256(json.dumps(fp.get("signature")).encode()).hexdigest()[:8] if fp.get("signature") else "none"
    return (f"hidden {fp.get('hidden_size', '?')}, {fp.get('num_layers', '?')} layers, "
            f"vocab {fp.get('vocab_size', '?')}, weights {sig}")


def looks_like_safetensors(path: Union[str, Path]) -> bool:
    """True when the file starts as a safetensors file does: an 8-byte little-endian header size, then '{'."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def check_finite(ctx: torch.Tensor, path: Any) -> None:
    if not bool(torch.isfinite(ctx).all()):
        bad = int((~torch.isfinite(ctx)).sum())
        raise DistributionFileError(
            f"{path}: the learned context holds {bad} NaN/Inf value(s) of {ctx.numel()}; it would give black images. "
            "Use an earlier checkpoint of the run, or learn again (a lower lr, mixed_precision=no)"
        )


# A learned context beyond these is outside any text encoder's range (see `context_range_problem`).
OVERFLOW_NORM = 1e18  # float32 squares of such values overflow (|x|² > 3.4e38): attention turns them into NaN
RANGE_FACTOR = 1e3  # × the encoder's largest token embedding: the encoding no longer depends on the words around it


class DistributionRangeWarning(UserWarning):
    """A finite distribution whose learned context lies far outside its text encoder's range."""


def context_range_problem(ctx: torch.Tensor, token_table: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why a finite learned context (K, L, D) is far outside a text encoder's range, or None.

    Without the encoder (`token_table`, its (V, D) token embeddings) only a context whose float32 squares overflow
    is flagged; with it, also one whose largest token is more than RANGE_FACTOR × the largest token embedding.
    Norms are taken in float64, so the numbers reported are finite."""
    top = float(ctx.double().norm(dim=-1).max())
    if top > OVERFLOW_NORM:
        return (f"its learned tokens have norms up to {top:.3g}, beyond float32 once squared: any text encoder "
                "turns them into NaN (black images)")
    if token_table is not None:
        ref = float(token_table.double().norm(dim=-1).max())
        if top > RANGE_FACTOR * ref:
            return (f"its learned tokens have norms up to {top:.3g}, {top / ref:.3g}× the text encoder's largest token "
                    f"embedding ({ref:.3g}): far outside the encoder's range, its samples will not look like the "
                    "references")
    return None


@dataclass
class PromptDistribution:
    ctx: torch.Tensor  # (K, L, D)
    meta: DistributionMeta

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_learner(cls, learner: PromptLearner, backbone: str = "", steps: int = 0, n_images: int = 0,
                     source: str = "dreamdist3d learn", covariance: str = "diag", **extra: Any) -> "PromptDistribution":
        ctx = learner.ctx.detach().float().cpu().clone()
        meta = DistributionMeta(
            n_ctx=learner.n_ctx, n_prompts=learner.n_prompts, prefix=learner.prefix, suffix=learner.suffix,
            position_mode=learner.position_mode, covariance=covariance, text_encoder=learner.text_encoder.fingerprint(),
            backbone=backbone,
            steps=int(steps), n_images=int(n_images), source=source, extra=dict(extra),
        )
        return cls(ctx, meta)

    @classmethod
    def from_caption(cls, caption: str, text_encoder: TextEncoder, tokenizer: ClipTokenizer,
                     backbone: str = "") -> "PromptDistribution":
        """A plain caption as a degenerate distribution: K=1, its L word-token embeddings as the context, clean
        positions, so every sample (std 0) encodes exactly as the caption does. Lets a caption baseline run through
        everything that takes a distribution (the 3D prompt processor, previews, the evaluator)."""
        ids = tokenizer.encode(caption)
        if not ids:
            raise ValueError("from_caption: the caption is empty; an empty prompt has no tokens to hold")
        if len(ids) + 2 > text_encoder.max_length:
            raise ValueError(f"from_caption: {len(ids)} tokens + SOS/EOS > {text_encoder.max_length}; "
                             "shorten the caption")
        with torch.no_grad():
            ctx = text_encoder.embed_tokens(torch.tensor(ids, dtype=torch.long, device=text_encoder.device))
        meta = DistributionMeta(n_ctx=len(ids), n_prompts=1, position_mode="clean",
                                text_encoder=text_encoder.fingerprint(), backbone=backbone,
                                source=f"caption: {caption}")
        return cls(ctx.detach().float().cpu()[None], meta)

    def learner(self, text_encoder: TextEncoder, tokenizer: ClipTokenizer, check_encoder: bool = True,
                source: str = "") -> PromptLearner:
        """A PromptLearner holding this ctx, after checking it belongs to `text_encoder`."""
        where = source or "this distribution"
        if self.ctx.shape[-1] != text_encoder.hidden_size:
            raise EncoderMismatchError(
                f"{where} has context width {self.ctx.shape[-1]} but the text encoder has hidden size "
                f"{text_encoder.hidden_size}; load the backbone it was learned against "
                f"({self.meta.backbone or 'unknown'})"
            )
        fp = self.meta.text_encoder
        if check_encoder and fp is not None:
            have = text_encoder.fingerprint()
            if not fingerprints_match(have, fp):
                raise EncoderMismatchError(
                    f"{where} was learned with text encoder ({describe_encoder(fp)}; backbone "
                    f"'{self.meta.backbone or 'unknown'}') but got another ({describe_encoder(have)}); "
                    "load that backbone"
                )
        pl = PromptLearner(text_encoder, tokenizer, n_ctx=self.meta.n_ctx, n_prompts=self.meta.n_prompts,
                           prefix=self.meta.prefix, suffix=self.meta.suffix, position_mode=self.meta.position_mode)
        with torch.no_grad():
            pl.ctx.copy_(self.ctx.to(pl.ctx))
        return pl

    # ------------------------------------------------------------------ save / load
    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        ctx = self.ctx.detach().float().cpu()
        check_finite(ctx, f"refusing to write {path}")
        meta = DistributionMeta(**{**asdict(self.meta), "ctx_sha256": _ctx_hash(ctx),
                                   "created": (self.meta.created
                                               or datetime.now(timezone.utc).isoformat(timespec="seconds"))})
        meta.sha256 = _file_hash(ctx, asdict(meta))
        atomic_save_safetensors({"ctx": ctx}, path, {"dreamdist3d": json.dumps(asdict(meta))})
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: Union[str, Path], class_index: int = 0) -> "PromptDistribution":
        """Our `.safetensors`, or an official `.pt` (`class_index` picks one class of a multi-class file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"distribution file {path} does not exist")
        if not looks_like_safetensors(path):  # by content: a .safetensors renamed .pt is still read as one
            with open(path, "rb") as f:
                head = f.read(2)
            if path.suffix in (".pt", ".pth", ".ckpt", ".bin") or head == b"PK" or head[:1] == b"\x80":
                return import_official(path, class_index=class_index)
        tensors, header = read_safetensors(path)
        if "dreamdist3d" not in header:
            raise DistributionFileError(
                f"{path} is a safetensors file but not a dreamdist3d distribution (no 'dreamdist3d' metadata); "
                "make one with `dreamdist3d learn`, or pass an official prompt_learner.pt"
            )
        try:
            raw = json.loads(header["dreamdist3d"])
        except json.JSONDecodeError:
            raise DistributionFileError(f"{path}: its dreamdist3d metadata is not valid JSON (file damaged?)") from None
        if not isinstance(raw, dict):
            raise DistributionFileError(f"{path}: its dreamdist3d metadata is not a JSON object (file damaged?)")
        if raw.get("format") != FORMAT:
            raise DistributionFileError(f"{path} holds '{raw.get('format')}', not a prompt distribution ({FORMAT})")
        if not isinstance(raw.get("format_version", 0), int):
            raise DistributionFileError(f"{path}: its format_version is not a whole number (file damaged?)")
        if int(raw.get("format_version", 0)) > FORMAT_VERSION:
            raise DistributionFileError(
                f"{path} has format version {raw.get('format_version')}, newer than this dreamdist3d reads "
                f"({FORMAT_VERSION}); upgrade dreamdist3d"
            )
        if set(tensors) != {"ctx"}:
            raise DistributionFileError(f"{path}: expected exactly one tensor 'ctx', found {sorted(tensors)}")
        ctx = tensors["ctx"]
        if raw.get("sha256") and _file_hash(ctx.float(), raw) != raw["sha256"]:
            raise DistributionFileError(
                f"{path}: its context or metadata (training prefix/suffix, settings) does not match the recorded "
                "checksum; the file was modified or damaged: use an intact copy or learn it again"
            )
        missing = [k for k in ("n_ctx", "n_prompts") if not isinstance(raw.get(k), int)]
        if missing:
            raise DistributionFileError(f"{path}: its metadata lacks a whole-number {' and '.join(missing)} "
                                        "(file damaged?)")
        if not isinstance(raw.get("text_encoder"), (dict, type(None))):
            raise DistributionFileError(f"{path}: its text_encoder fingerprint is not a JSON object (file damaged?)")
        known = set(DistributionMeta.__dataclass_fields__)
        meta = DistributionMeta(**{k: v for k, v in raw.items() if k in known})
        if ctx.ndim != 3 or tuple(ctx.shape[:2]) != (meta.n_prompts, meta.n_ctx):
            raise DistributionFileError(
                f"{path}: ctx has shape {tuple(ctx.shape)}, metadata says (n_prompts={meta.n_prompts}, "
                f"n_ctx={meta.n_ctx}, D); the file is damaged"
            )
        if meta.ctx_sha256 and _ctx_hash(ctx.float()) != meta.ctx_sha256:
            raise DistributionFileError(f"{path}: ctx does not match its recorded checksum; "
                                        "the file was modified or damaged")
        if meta.position_mode not in POSITION_MODES:
            raise DistributionFileError(f"{path}: unknown position_mode {meta.position_mode!r}")
        if meta.covariance not in COVARIANCES:
            raise DistributionFileError(f"{path}: unknown covariance {meta.covariance!r} "
                                        f"(known: {', '.join(COVARIANCES)})")
        check_finite(ctx.float(), path)
        return cls(ctx.float(), meta)


def import_official(path: Union[str, Path], class_index: int = 0, prefix: str = "",
                    suffix: str = "") -> PromptDistribution:
    """Read an official DreamDistribution checkpoint (`torch.load(weights_only=True)`) into a PromptDistribution.

    The official model adds position embeddings twice, so the result uses position_mode="official".
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refused (non-weights content) or damaged file
        raise DistributionFileError(
            f"{path} cannot be read as an official DreamDistribution checkpoint "
            f"(read with weights_only=True: {load_error_reason(e, path)}); expected "
            "checkpoint-N/prompt_learner.pt or final-N.pt, or a .safetensors from `dreamdist3d learn`"
        ) from None
    if not isinstance(obj, dict):
        raise DistributionFileError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    if "model_state_dict" in obj:
        extra_top = set(obj) - _OFFICIAL_TOP_KEYS
        if extra_top:
            raise DistributionFileError(f"{path}: unexpected top-level keys {sorted(extra_top)} "
                                        "for an official checkpoint")
        state = obj["model_state_dict"]
    else:
        state = obj
    if not isinstance(state, dict):
        raise DistributionFileError(f"{path}: model_state_dict is not a dict")
    clean = {}
    for k, v in state.items():
        name = k
        for strip in ("_orig_mod.", "module."):
            name = name.replace(strip, "")
        clean[name] = v
    unexpected = [k for k in clean if not k.startswith(_OFFICIAL_MODEL_PREFIXES)]
    if unexpected:
        raise DistributionFileError(
            f"{path}: unexpected keys {sorted(unexpected)[:8]} in an official prompt-learner checkpoint "
            "(expected 'ctx' and optionally token_prefix/token_suffix/text_encoder.*/vision_encoder.*)"
        )
    if "ctx" not in clean:
        raise DistributionFileError(f"{path}: no 'ctx' tensor; keys are {sorted(clean)[:8]}")
    ctx = clean["ctx"]
    if not isinstance(ctx, torch.Tensor) or ctx.ndim != 4:
        raise DistributionFileError(f"{path}: official ctx must be (n_classes, K, n_ctx, D), "
                                    f"got {getattr(ctx, 'shape', ctx)}")
    n_cls = ctx.shape[0]
    if not 0 <= class_index < n_cls:
        raise DistributionFileError(f"{path} holds {n_cls} class(es); class index {class_index} is out of range")
    sel = ctx[class_index].float().clone()
    check_finite(sel, f"{path} class {class_index}")
    meta = DistributionMeta(
        n_ctx=int(sel.shape[1]), n_prompts=int(sel.shape[0]), prefix=prefix, suffix=suffix, position_mode="official",
        text_encoder=None, backbone="sd21 (official DreamDistribution)",
        source=f"official import of {path.name} class {class_index}",
        extra={"official_n_classes": int(n_cls)},
    )
    return PromptDistribution(sel, meta)
