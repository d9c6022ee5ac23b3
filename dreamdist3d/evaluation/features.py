"""Image (and text) features from LOCAL transformers folders, batched, cached per image content hash.

Three encoders, each a folder written by `save_pretrained` (config.json, weights, preprocessor_config.json):
- `dinov2` (`--dinov2`, a `Dinov2Model`): the final-layer-normed CLS token (`pooler_output`), as FD-DINOv2
  (Stein et al. 2023) uses it;
- `clip` (`--clip`, a `CLIPModel`): the projected image embedding (CLIP-I) and, for `--prompt`, the projected text
  embedding (CLIP-T);
- `dino` (`--dino`, a `ViTModel`, e.g. DINO ViT-S/16): the final-layer-normed CLS token (DINO-I, the DreamBooth
  protocol).
Preprocessing is the folder's own image-processor config read by transformers' `AutoImageProcessor` with its PIL
backend (no torchvision). Nothing downloads (`local_files_only=True`); a missing or wrong folder is an error that
names the command-line flag.

The cache (`FeatureCache`) is one safetensors file keyed by `<model fingerprint>/<content hash>`: the fingerprint
hashes the folder's config and image-processor config and the names, sizes and modification times of its weight
files, so another model (or re-saved weights) never reuses features.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dreamdist3d.hf_loading import quiet_hf_loading

# kind -> (flag, model_type in config.json, transformers class name)
ENCODERS: Dict[str, Tuple[str, str, str]] = {
    "dinov2": ("--dinov2", "dinov2", "Dinov2Model"),
    "clip": ("--clip", "clip", "CLIPModel"),
    "dino": ("--dino", "vit", "ViTModel"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SAVE_EVERY_S = 30.0  # the feature cache is saved at most this often while embedding (and when it ends)


def resolve_device(name: Optional[str] = None) -> torch.device:
    """`None`/"auto": the first CUDA device if torch sees one, else the CPU; otherwise the device named."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def folder_fingerprint(folder: Path) -> str:
    """Short hash of what decides a folder's features (configs; weight file names, sizes and mtimes)."""
    h = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        p = folder / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b""))
    for p in sorted(folder.iterdir()):
        if p.suffix in WEIGHT_SUFFIXES:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass
class Encoder:
    kind: str  # "dinov2" | "clip" | "dino"
    folder: Path
    model: Any
    processor: Any
    device: torch.device
    fingerprint: str
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def flag(self) -> str:
        return ENCODERS[self.kind][0]

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """(N, D) float32 features of PIL images."""
        pv = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pv = pv.to(self.device, dtype=next(self.model.parameters()).dtype)
        if self.kind == "clip":
            out = self.model.visual_projection(self.model.vision_model(pixel_values=pv).pooler_output)
        elif self.kind == "dinov2":
            out = self.model(pixel_values=pv).pooler_output
        else:
            out = self.model(pixel_values=pv).last_hidden_state[:, 0]
        return out.float().cpu().numpy()

    @torch.no_grad()
    def embed_text(self, text: str) -> np.ndarray:
        """(1, D) projected CLIP text embedding of `text` (CLIP folders only)."""
        if self.kind != "clip":
            raise ValueError(f"{self.flag}: text embeddings need a CLIPModel folder")
        tok = self.tokenizer()
        ids = tok([text])  # (1, 77), [SOS] … [EOS] then pad
        eos = int((ids[0] == tok.eos_id).nonzero()[0])
        n_pos = int(self.model.config.text_config.max_position_embeddings)
        ids = ids[:, :n_pos] if eos < n_pos else ids  # a shorter text context: the prompt must fit it
        mask = (torch.arange(ids.shape[1]) <= eos).long()[None]
        ids = ids.clone()
        ids[0, eos + 1:] = tok.eos_id  # pad as transformers' CLIP tokenizer does; masked out anyway
        out = self.model.text_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).pooler_output
        return self.model.text_projection(out).float().cpu().numpy()

    def tokenizer(self):
        """The folder's CLIP BPE (vocab.json + merges.txt) or, for the standard 49408-token vocabulary, the one
        shipped with dreamdist3d."""
        if self._tokenizer is None:
            from dreamdist3d.text.tokenizer import ClipTokenizer

            if (self.folder / "vocab.json").is_file() or (self.folder / "tokenizer").is_dir():
                self._tokenizer = ClipTokenizer.from_folder(self.folder)
            elif int(self.model.config.text_config.vocab_size) == 49408:
                self._tokenizer = ClipTokenizer.default()
            else:
                raise ValueError(f"--clip {self.folder}: no vocab.json/merges.txt and a text vocabulary of "
                                 f"{self.model.config.text_config.vocab_size} tokens (not CLIP's 49408): cannot "
                                 "tokenize --prompt")
        return self._tokenizer


def _processor_kwargs() -> Dict[str, Any]:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"backend": "pil"} if major >= 5 else {"use_fast": False}


def load_encoder(kind: str, folder, device: Optional[str] = None, where: Optional[str] = None) -> Encoder:
    """Load one encoder from a local transformers folder; errors name the flag (`--dinov2`, `--clip`, `--dino`) and
    the folder, or `where` instead where another option gave the folder."""
    import transformers

    flag, model_type, cls_name = ENCODERS[kind]
    folder = Path(folder)
    where = where or f"{flag} {folder}"
    expect = f"a local transformers {cls_name} folder (config.json with model_type {model_type!r}, weights, " \
             "preprocessor_config.json)"
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: no such folder; expected {expect}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{where}: no config.json; expected {expect}")
    try:
        found = json.loads(cfg_path.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: config.json is not JSON ({e})") from None
    if found != model_type:
        raise ValueError(f"{where}: config.json has model_type {found!r}; expected {expect}")
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{where}: no preprocessor_config.json (the image-processor config that "
                                f"says how to resize and normalise images); expected {expect}")
    cls = getattr(transformers, cls_name)
    kwargs = {"add_pooling_layer": False} if kind == "dino" else {}
    try:
        with quiet_hf_loading():
            model = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
            processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True,
                                                                        **_processor_kwargs())
    except (OSError, ValueError, EnvironmentError) as e:
        raise ValueError(f"{where}: cannot load {cls_name} offline: {e}") from None
    dev = resolve_device(device)
    model.eval().to(dev)
    return Encoder(kind, folder, model, processor, dev, f"{kind}-{folder_fingerprint(folder)}")


# ----------------------------------------------------------------------------------------------------- cache
class FeatureCache:
    """Features keyed by (model fingerprint, image content hash), in one safetensors file."""

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.data: Dict[str, torch.Tensor] = {}
        if self.path.is_file():
            from safetensors.torch import load_file

            self.data = load_file(str(self.path))
        self.dirty = False

    def get(self, model: str, key: str) -> Optional[np.ndarray]:
        t = self.data.get(f"{model}/{key}")
        return None if t is None else t.numpy()

    def put(self, model: str, key: str, feat: np.ndarray) -> None:
        self.data[f"{model}/{key}"] = torch.from_numpy(np.ascontiguousarray(feat, dtype=np.float32))
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            from dreamdist3d.io import atomic_save_safetensors

            atomic_save_safetensors(self.data, self.path, metadata={"format": "dreamdist3d-eval-feature-cache-1"})
            self.dirty = False


def embed_items(encoder: Encoder, items: Sequence[Any], cache: FeatureCache, batch_size: int = 32,
                progress: bool = True, desc: str = "", save_every_s: float = SAVE_EVERY_S) -> Tuple[np.ndarray, int]:
    """(N, D) features of `items` (each with `.key`, a content hash, and `.load()` -> PIL RGB image) and how many
    were embedded now (the rest came from the cache).

    The cache file is rewritten whole, so it is saved at most every `save_every_s` seconds (saving it after every
    batch made a large set's writes grow with the square of its size) and once more when the loop ends, however it
    ends: a Ctrl-C keeps every feature embedded so far."""
    from tqdm.auto import tqdm

    feats: List[Optional[np.ndarray]] = [cache.get(encoder.fingerprint, it.key) for it in items]
    todo = [i for i, f in enumerate(feats) if f is None]
    bar = tqdm(total=len(todo), desc=desc or encoder.kind, unit="img", disable=not progress or not todo, leave=False)
    saved = time.monotonic()
    try:
        for s in range(0, len(todo), batch_size):
            idx = todo[s:s + batch_size]
            out = encoder.embed_images([items[i].load() for i in idx])
            for i, f in zip(idx, out):
                feats[i] = f
                cache.put(encoder.fingerprint, items[i].key, f)
            if time.monotonic() - saved >= save_every_s:
                cache.save()
                saved = time.monotonic()
            bar.update(len(idx))
    finally:
        cache.save()
        bar.close()
    if not items:
        return np.zeros((0, 0), np.float32), 0
    return np.stack(feats).astype(np.float64), len(todo)


__all__ = ["ENCODERS", "Encoder", "FeatureCache", "embed_items", "folder_fingerprint", "load_encoder", "resolve_device"]
