"""Stable Diffusion 2.1 images from prompt distributions, through diffusers' own `StableDiffusionPipeline`.

The pipeline is loaded from a local diffusers folder (`local_files_only=True`, nothing downloaded). Each distribution
is re-fitted with the requested prefix/suffix (text edits) by the pipeline's own text encoder (wrapped as our
`TextEncoder`, run in float32 even when the pipeline is fp16/bf16) through the one distribution path
(`dreamdist3d.distribution.fit`: mean Σwμ, std sqrt(Σ(wγσ)²)), and every image gets its own draw (the seed rule)

    e_i = mean + ε_i·std (diag),  ε_i = randn((77, D), generator=torch.Generator("cpu").manual_seed(sample_seed_i))
    e_i = mean + Σ_k a_ik·F_k (lowrank), a_i = randn((K,), same generator)

which is fed as `prompt_embeds`. Latents come from a second per-image CPU generator seeded with `latent_seed_i`
(a different stream, so ε and the initial noise are never the same numbers), so a bare diffusers call

    pipe(prompt_embeds=e, negative_prompt=[negative] * B, generator=[torch.Generator().manual_seed(latent_seed_i)…],
         num_inference_steps=steps, guidance_scale=cfg)

with the same batch gives the same images bit for bit (tested). The negative embedding is what the pipeline itself
computes for `negative_prompt` (its `encode_prompt`), computed once per run instead of once per batch.

Seeds of image i (0-based) in a run with `--seed s`: sample_seed = s + i, latent_seed = s + i + 2**31
(`--same-latents`: latent_seed = s + 2**31 for every image, so images differ only by their prompt sample).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from dreamdist3d.distribution import DistributionSpec, PromptGaussian, PromptMixture, fit
from dreamdist3d.distribution.gaussian import LATENT_SEED_OFFSET, check_scale
from dreamdist3d.images import contact_sheet, labelled_grid, read_rgb, save_png, to_uint8
from dreamdist3d.io import BackgroundWriter, atomic_save_safetensors, kept_batches
from dreamdist3d.sample2d.metadata import embedding_stats, write_json
from dreamdist3d.sample2d.run_files import RUN_FILES as RUN_FILES  # re-exported (was defined here)
from dreamdist3d.sample2d.run_files import (
    check_out_folder,
    earlier_run_files,
    stopped_run_images,
    write_image,
)
from dreamdist3d.sample2d.sd21_pipeline import (
    DTYPES,
    SCHEDULERS,
    PathLike,
    attention_sliced,
    check_sd21_folder,
    dtype_name,
    load_sd21_pipeline,
    resolve_device,
    resolve_dtype,
    tokenizer_for,
)
from dreamdist3d.sample2d.sd21_pipeline import float32_weights as _float32
from dreamdist3d.text import ClipTokenizer, TextEncoder

DEFAULT_GAMMAS = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)
DEFAULT_MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
RECORD_KIND = "dreamdist3d.sample2d.sd21"


def image_seeds(seed: int, index: int, same_latents: bool = False) -> Tuple[int, int]:
    """(sample_seed, latent_seed) of image `index` of a run with base `seed`."""
    return seed + index, seed + (0 if same_latents else index) + LATENT_SEED_OFFSET


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class SampleSettings:
    n: int = 16
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    batch_size: int = 4
    negative: str = ""
    height: Optional[int] = None  # None: the pipeline's native size (unet sample_size × VAE factor)
    width: Optional[int] = None
    eta: float = 0.0
    same_latents: bool = False

    def validate(self) -> "SampleSettings":
        if self.n < 1:
            raise ValueError(f"--n must be ≥ 1, got {self.n}")
        if self.steps < 1:
            raise ValueError(f"--steps must be ≥ 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be ≥ 1, got {self.batch_size}")
        if not math.isfinite(self.cfg):
            raise ValueError(f"--cfg must be a finite number, got {self.cfg}")
        if self.seed < 0:
            raise ValueError(f"--seed must be ≥ 0, got {self.seed}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise ValueError(f"--{name} must be a multiple of 8 (the VAE factor), got {v}")
        return self


# ---------------------------------------------------------------------------------------------- the sampler
class SD21Sampler:
    """A diffusers SD 2.1 pipeline plus our tokenizer and the pipeline's text encoder wrapped as `TextEncoder`."""

    def __init__(self, pipe, tokenizer: ClipTokenizer, source: str = "", tokenizer_source: str = "") -> None:
        self.pipe = pipe
        self.tokenizer = tokenizer
        self.source = source
        self.tokenizer_source = tokenizer_source
        self.text_encoder = TextEncoder(pipe.text_encoder)
        self.timings: Dict[str, float] = defaultdict(float)

    @classmethod
    def from_folder(
        cls,
        folder: PathLike,
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        scheduler: Optional[str] = None,
        attention_slicing: bool = False,
        vae_tiling: bool = False,
    ) -> "SD21Sampler":
        t0 = time.perf_counter()
        pipe = load_sd21_pipeline(folder, device, dtype, scheduler, attention_slicing, vae_tiling)
        tok, tok_src = tokenizer_for(folder)
        out = cls(pipe, tok, source=str(folder), tokenizer_source=tok_src)
        out.timings["load"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.pipe.unet.parameters()).device  # (diffusers' .device walks offload hooks: slow)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.pipe.unet.parameters()).dtype

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def settings_record(self) -> Dict[str, Any]:
        import diffusers

        from dreamdist3d import __version__

        return {
            "sd21": self.source,
            "scheduler": type(self.pipe.scheduler).__name__,
            "prediction_type": self.pipe.scheduler.config.get("prediction_type"),
            "device": str(self.device),
            "dtype": dtype_name(self.dtype),
            "attention_slicing": attention_sliced(self.pipe),
            "vae_tiling": bool(getattr(self.pipe.vae, "use_tiling", False)),
            "tokenizer": self.tokenizer_source,
            "versions": {"dreamdist3d": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__},
        }

    @contextlib.contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[key] += time.perf_counter() - t0

    # ------------------------------------------------------------------ the method
    @torch.no_grad()
    def fit(self, spec: DistributionSpec) -> PromptMixture:
        """Load and re-fit every distribution of `spec` with its prefix/suffix (None: the training text), in float32."""
        with self._timed("fit"), _float32(self.pipe.text_encoder):
            return fit(spec, self.text_encoder, self.tokenizer)

    @torch.no_grad()
    def negative_embeds(self, text: str) -> torch.Tensor:
        """(1, 77, D) in the pipeline dtype: what the pipeline computes for `negative_prompt=[text]`."""
        with self._timed("negative"):
            d = self.pipe.text_encoder.config.hidden_size
            length = int(self.pipe.tokenizer.model_max_length)
            dummy = torch.zeros(1, length, d, device=self.device, dtype=self.pipe.text_encoder.dtype)
            _, neg = self.pipe.encode_prompt(None, self.device, 1, True, negative_prompt=[text], prompt_embeds=dummy)
        return neg

    @torch.no_grad()
    def draw(self, law: PromptGaussian, sample_seeds: Sequence[int]) -> torch.Tensor:
        """(B, 77, D) float32 samples of `law`: image b gets sample 0 of seed `sample_seeds[b]` (the seed rule)."""
        with self._timed("draw"):
            eps = torch.cat([law.noise(1, s) for s in sample_seeds])
            return law.sample(len(sample_seeds), scale=1.0, eps=eps)

    @torch.no_grad()
    def generate(
        self,
        embeds: torch.Tensor,
        latent_seeds: Sequence[int],
        negative: Optional[torch.Tensor] = None,
        steps: int = 50,
        cfg: float = 7.5,
        height: Optional[int] = None,
        width: Optional[int] = None,
        eta: float = 0.0,
    ) -> np.ndarray:
        """One pipeline call: embeds (B, 77, D) → uint8 images (B, H, W, 3); latents from per-image CPU generators."""
        if len(latent_seeds) != embeds.shape[0]:
            raise ValueError(f"{len(latent_seeds)} latent seeds for {embeds.shape[0]} embeddings")
        b = embeds.shape[0]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in latent_seeds]
        neg = None
        if negative is not None:
            neg = negative.to(self.device, self.dtype).expand(b, -1, -1)
        with self._timed("pipeline"):
            out = self.pipe(
                prompt_embeds=embeds.to(self.device, self.dtype),
                negative_prompt_embeds=neg,
                num_inference_steps=steps,
                guidance_scale=cfg,
                height=height,
                width=width,
                eta=eta,
                generator=gens,
                output_type="np",
            ).images
        return to_uint8(out)


# ---------------------------------------------------------------------------------------------- runs
def _base_record(sampler: SD21Sampler, settings: SampleSettings) -> Dict[str, Any]:
    return {
        "kind": RECORD_KIND,
        **sampler.settings_record(),
        "negative": settings.negative,
        "steps": settings.steps,
        "cfg": settings.cfg,
        "eta": settings.eta,
        "height": settings.height or sampler.native_size,
        "width": settings.width or sampler.native_size,
        "batch_size": settings.batch_size,
        "base_seed": settings.seed,
        "same_latents": settings.same_latents,
        "latent_generator": "torch.Generator('cpu') per image",
    }


def sample_to_folder(
    sampler: SD21Sampler,
    mixture: PromptMixture,
    settings: SampleSettings,
    out: PathLike,
    save_embeddings: bool = False,
    command: Optional[List[str]] = None,
    write_workers: int = 4,
    title: str = "",
    overwrite: bool = False,
    progress: bool = False,
) -> List[Dict[str, Any]]:
    """Draw `settings.n` images from `mixture`, write `<i>.png` (tEXt metadata) + `<i>.json`, `grid.png`, `run.json`
    (and `embeddings.safetensors` with `save_embeddings`). Image files are written on `write_workers` background
    threads (0: inline) while the next batch is generated. Returns the per-image records (what the sidecars hold).
    A folder holding a finished earlier run is refused unless `overwrite`, which first removes that run's files. A
    run stopped before its run.json (Ctrl-C) continues: every batch it wrote whole with these settings is kept (the
    images an uninterrupted run would have made: each image's seeds follow its index, batches are the same), the rest
    is drawn; a stopped run with other settings is refused as a finished one is. `progress`: a bar over the images."""
    settings.validate()
    out = Path(out)
    check_out_folder(out, overwrite)
    for old in earlier_run_files(out) if overwrite else []:  # no file of the earlier run may stay beside run.json
        old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    law = mixture.law()
    negative = sampler.negative_embeds(settings.negative) if settings.cfg > 1 else None
    base = {**_base_record(sampler, settings), **mixture.describe()}
    if command is not None:
        base["command"] = command
    kept = stopped_run_images(out, base, settings.n)
    batches = [list(range(start, min(settings.n, start + settings.batch_size)))
               for start in range(0, settings.n, settings.batch_size)]
    done = sum(len(idx) for idx in batches if all(i in kept for i in idx))
    if kept:
        print(f"[sample] continuing the stopped run in {out}: {done} of {settings.n} images kept", flush=True)
    records: List[Dict[str, Any]] = []
    images: List[np.ndarray] = []
    all_embeds: List[torch.Tensor] = []
    writer = BackgroundWriter(write_workers)
    bar = tqdm(total=settings.n, initial=done, desc="sample", unit="img", disable=not progress, dynamic_ncols=True,
               leave=False)
    try:
        for idx in batches:
            seeds = [image_seeds(settings.seed, i, settings.same_latents) for i in idx]
            embeds = sampler.draw(law, [s for s, _ in seeds])
            keep = all(i in kept for i in idx)
            if keep:
                batch = [read_rgb(out / f"{i:04d}.png") for i in idx]
            else:
                batch = sampler.generate(embeds, [s for _, s in seeds], negative, settings.steps, settings.cfg,
                                         settings.height, settings.width, settings.eta)
                bar.update(len(idx))
            with sampler._timed("write"):
                fed = embeds.to(sampler.dtype)
                for j, i in enumerate(idx):
                    name = f"{i:04d}.png"
                    stats = embedding_stats(embeds[j], law.mean, law.std, fed=fed[j])
                    rec = {**base, "file": name, "index": i, "sample_seed": seeds[j][0], "latent_seed": seeds[j][1],
                           "embedding": stats}
                    if not keep:
                        writer.submit(write_image, batch[j], out / name, rec, out / f"{i:04d}.json")
                    records.append(rec)
                    images.append(batch[j])
                if save_embeddings:
                    all_embeds.append(embeds.float().cpu())
        with sampler._timed("write"):
            names = [Path(d["path"]).name for d in base["distributions"]]
            head = f"{' + '.join(names)} | gamma {base['gamma']}"
            if len(names) > 1:
                head += f" | weights {base['weights']}"
            head += f" | seeds {settings.seed}..{settings.seed + settings.n - 1}"
            sheet = contact_sheet(images, [f"#{r['index']} s{r['sample_seed']}" for r in records],
                                  title=f"{title}\n{head}" if title else head)
            summary = {**base, "files": [r["file"] for r in records]}
            writer.submit(save_png, sheet, out / "grid.png", summary)
            if save_embeddings:
                atomic_save_safetensors(
                    {"embeddings": torch.cat(all_embeds), "mean": law.mean.float().cpu(), "std": law.std.float().cpu()},
                    out / "embeddings.safetensors",
                    {"dreamdist3d": json.dumps({"kind": RECORD_KIND, "files": summary["files"]})},
                )
            writer.close()
            write_json({**summary, "images": records, "timings_s": dict(sampler.timings)}, out / "run.json")
    finally:
        bar.close()
        writer.close()
    return records


def sweep_to_grid(
    sampler: SD21Sampler,
    mixture: PromptMixture,
    settings: SampleSettings,
    out: PathLike,
    kind: str = "scale",
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    mix_weights: Sequence[float] = DEFAULT_MIX_WEIGHTS,
    save_cells: bool = False,
    command: Optional[List[str]] = None,
    title: str = "",
    progress: bool = False,
) -> Tuple[Path, List[Dict[str, Any]]]:
    """The paper's figures: rows γ (kind="scale") or w between two distributions (kind="mix"); `settings.n` columns,
    each with one ε and one latent seed shared by all its rows. Writes `sweep-<kind>.png` (labelled) + `.json`.
    `progress`: a bar over the cells."""
    settings.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [Path(p.info["path"]).name for p in mixture.parts]
    if kind == "scale":
        rows = [(f"gamma={g:g}", mixture.law(gamma=g),
                 mixture.describe(gamma=g)) for g in (check_scale(g, "γ") for g in gammas)]
        heading = f"gamma sweep: {' + '.join(names)}"
    elif kind == "mix":
        if len(mixture.parts) != 2:
            raise ValueError(f"--kind mix needs exactly two --distribution files, got {len(mixture.parts)}")
        rows = []
        for w in mix_weights:
            w = float(w)
            if not 0.0 <= w <= 1.0:
                raise ValueError(f"mix sweep weights must lie in [0, 1] (weight of the second distribution), got {w}")
            ws = [1.0 - w, w]
            rows.append((f"w={w:g}", mixture.law(weights=ws), mixture.describe(weights=ws)))
        heading = f"mix sweep: w = weight of B | A = {names[0]}, B = {names[1]}"
    else:
        raise ValueError(f"--kind must be 'scale' or 'mix', got {kind!r}")
    edit = mixture.parts[0].info
    heading += (f" | prefix '{edit['prefix_used']}' suffix '{edit['suffix_used']}' | cfg {settings.cfg:g}, "
                f"{settings.steps} steps")
    negative = sampler.negative_embeds(settings.negative) if settings.cfg > 1 else None
    base = _base_record(sampler, settings)
    if command is not None:
        base["command"] = command
    cols = [image_seeds(settings.seed, c, settings.same_latents) for c in range(settings.n)]
    cells = [(r, c) for r in range(len(rows)) for c in range(settings.n)]
    chunks = [cells[start : start + settings.batch_size] for start in range(0, len(cells), settings.batch_size)]
    grid: List[List[Optional[np.ndarray]]] = [[None] * settings.n for _ in rows]
    records: List[Dict[str, Any]] = []

    def generate(i: int) -> Dict[str, torch.Tensor]:
        embeds = torch.cat([sampler.draw(rows[r][1], [cols[c][0]]) for r, c in chunks[i]])
        batch = sampler.generate(embeds, [cols[c][1] for _, c in chunks[i]], negative, settings.steps, settings.cfg,
                                 settings.height, settings.width, settings.eta)
        return {"embeds": embeds.cpu(), "images": torch.from_numpy(np.stack(batch))}

    key = {**{k: v for k, v in base.items() if k != "command"},  # the settings, not how the command was typed
           "sweep": kind, "rows": [r[0] for r in rows], "columns": cols, "mixture": mixture.describe()}
    with tqdm(total=len(cells), desc=f"sweep {kind}", unit="img", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:  # closed on a Ctrl-C too: the line after it starts clean
        kept = kept_batches(sweep_partial_folder(out, kind), key, len(chunks), generate,
                            lambda b: bar.update(len(b["images"])))  # a Ctrl-C keeps the finished batches
    for chunk, b in zip(chunks, kept):
        embeds, batch = b["embeds"], b["images"].numpy()
        with sampler._timed("write"):
            for j, (r, c) in enumerate(chunk):
                grid[r][c] = batch[j]
                law = rows[r][1]
                e = embeds[j].to(law.mean.device)
                rec = {"row": r, "col": c, "label": rows[r][0], "sample_seed": cols[c][0], "latent_seed": cols[c][1],
                       **rows[r][2], "embedding": embedding_stats(e, law.mean, law.std, fed=e.to(sampler.dtype))}
                if save_cells:
                    rec["file"] = f"sweep-{kind}-r{r}-c{c}.png"
                    save_png(batch[j], out / rec["file"], {**base, **rec})
                records.append(rec)
    with sampler._timed("write"):
        heading = f"{title}\n{heading}" if title else heading
        sheet = labelled_grid(grid, [r[0] for r in rows], [f"seed {s}" for s, _ in cols], title=heading)
        path = out / f"sweep-{kind}.png"
        summary = {**base, "sweep": kind, "rows": [r[0] for r in rows], "columns_sample_seeds": [s for s, _ in cols],
                   "columns_latent_seeds": [s for _, s in cols], "mixture": mixture.describe()}
        save_png(sheet, path, summary)
        write_json({**summary, "cells": records, "timings_s": dict(sampler.timings)}, out / f"sweep-{kind}.json")
    shutil.rmtree(sweep_partial_folder(out, kind), ignore_errors=True)
    return path, records


def sweep_partial_folder(out: PathLike, kind: str) -> Path:
    """Where a sweep's finished batches wait for its grid (`io.kept_batches`)."""
    return Path(out) / f"sweep-{kind}.partial"


__all__ = [
    "DEFAULT_GAMMAS",
    "DEFAULT_MIX_WEIGHTS",
    "DTYPES",
    "LATENT_SEED_OFFSET",
    "SCHEDULERS",
    "SD21Sampler",
    "SampleSettings",
    "check_sd21_folder",
    "sweep_partial_folder",
    "image_seeds",
    "load_sd21_pipeline",
    "resolve_device",
    "resolve_dtype",
    "sample_to_folder",
    "sweep_to_grid",
    "tokenizer_for",
]
