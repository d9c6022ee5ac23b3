"""The frozen CLIP text transformer, called on token embeddings.

`TextEncoder` wraps a transformers `CLIPTextModel` (so weights and layers are transformers'), and runs it the way
SD 2.1 and MVDream condition their UNets: input embeddings (+ position embeddings), causal self-attention, final
LayerNorm, all 77 positions returned. It accepts *embeddings*, not ids, which is what prompt learning needs.

Built from
- a diffusers model folder's `text_encoder/` (SD 2.1's is already cut at the penultimate layer), or
- OpenCLIP-format keys (`cond_stage_model.model.*` inside the MVDream checkpoint), converted; `layer="penultimate"`
  keeps the first `layers-1` blocks, as `FrozenOpenCLIPEmbedder` does.

The layers are transformers' modules, but the loop over them is ours (see `_causal_self_attention`): transformers
5.x no longer applies the old `causal_attention_mask=` keyword, and its attention rounds differently from the 4.36
code the official fixtures were made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Set, Tuple, Union

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from dreamdist3d.hf_loading import quiet_hf_loading

OPENCLIP_UNUSED_SUFFIXES = ("text_projection", "logit_scale")
# transformers >= 4.36 chooses an attention implementation per model; older ones (threestudio pins 4.28) have no such
# setting (`attn_implementation=` is a TypeError there). Our forward never calls transformers' attention either way.
_HAS_ATTN_IMPLEMENTATION = hasattr(CLIPTextConfig, "_attn_implementation")


class TextEncoder(nn.Module):
    """Frozen CLIP text transformer. `forward(inputs_embeds (B,77,D)) -> hidden (B,77,D)`."""

    def __init__(self, clip: CLIPTextModel) -> None:
        super().__init__()
        self.clip = clip
        self.clip.requires_grad_(False)
        self.clip.eval()

    # ------------------------------------------------------------------ structure (transformers 4.x and 5.x)
    @property
    def _core(self) -> nn.Module:
        return getattr(self.clip, "text_model", self.clip)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._core.embeddings.token_embedding

    @property
    def position_embedding(self) -> torch.Tensor:
        """(77, D) position table."""
        return self._core.embeddings.position_embedding.weight

    @property
    def hidden_size(self) -> int:
        return int(self.clip.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return len(self._core.encoder.layers)

    @property
    def vocab_size(self) -> int:
        return int(self.token_embedding.num_embeddings)

    @property
    def max_length(self) -> int:
        return int(self.position_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def train(self, mode: bool = True) -> "TextEncoder":  # frozen: always eval (no dropout)
        super().train(False)
        return self

    # ------------------------------------------------------------------ compute
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (…, L) -> (…, L, D), no position embedding."""
        return self.token_embedding(ids.to(self.device))

    def forward(self, inputs_embeds: torch.Tensor, add_position: bool = True) -> torch.Tensor:
        """inputs_embeds (B, L, D) -> final-layer-normed hidden states (B, L, D), causal attention."""
        core = self._core
        x = inputs_embeds.to(self.dtype)
        length = x.shape[-2]
        if add_position:
            x = x + self.position_embedding[:length]
        mask = torch.full((length, length), torch.finfo(x.dtype).min, dtype=x.dtype, device=x.device).triu(1)
        for layer in core.encoder.layers:
            x = x + layer.self_attn.out_proj(_causal_self_attention(layer.self_attn, layer.layer_norm1(x), mask))
            x = x + layer.mlp(layer.layer_norm2(x))
        return core.final_layer_norm(x)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, 77) -> hidden (B, 77, D): the conditioning SD 2.1 / MVDream get for a text prompt."""
        return self.forward(self.embed_tokens(ids))

    @torch.no_grad()
    def fingerprint(self) -> Dict[str, object]:
        """Identity of this encoder: shape facts and a signature of sampled weights.

        The signature (token-embedding rows of common tokens, position rows, final-LN weights) identifies the
        weights without hashing a 350M-parameter tower, and survives casting to fp16/bf16 or moving devices:
        compare with `fingerprints_match`, which allows that rounding.
        """
        ids = torch.tensor([320, 1125, 539, 49406, 49407], device=self.device).clamp(max=self.vocab_size - 1)
        sig = torch.cat(
            [
                self.token_embedding.weight[ids, :4].flatten(),
                self.position_embedding[[0, 5, 20], :4].flatten(),
                self._core.final_layer_norm.weight[:4],
                self._core.final_layer_norm.bias[:4],
            ]
        )
        return {
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "vocab_size": self.vocab_size,
            "signature": [round(float(v), 6) for v in sig.float().cpu()],
        }

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_config(cls, config: Union[CLIPTextConfig, Mapping]) -> "TextEncoder":
        if not isinstance(config, CLIPTextConfig):
            config = CLIPTextConfig(**dict(config))
        if _HAS_ATTN_IMPLEMENTATION:
            config._attn_implementation = "sdpa"
        return cls(CLIPTextModel(config))

    @classmethod
    def from_hf_state_dict(cls, config: Union[CLIPTextConfig, Mapping],
                           state_dict: Mapping[str, torch.Tensor]) -> "TextEncoder":
        """From transformers `CLIPTextModel` weights (keys with or without the 4.x `text_model.` prefix)."""
        enc = cls.from_config(config)
        sd = {k[len("text_model.") :] if k.startswith("text_model.") else k: v for k, v in state_dict.items()}
        _load_strict(enc._core, sd, "transformers CLIPTextModel")
        return enc

    @classmethod
    def from_diffusers(
        cls, folder: Union[str, Path], device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32
    ) -> "TextEncoder":
        """From a local diffusers model folder (`<folder>/text_encoder/`) or a text_encoder folder itself."""
        folder = Path(folder)
        sub = folder / "text_encoder" if (folder / "text_encoder").is_dir() else folder
        if not (sub / "config.json").is_file():
            raise FileNotFoundError(
                f"no text encoder at {sub}: expected a diffusers Stable Diffusion 2.1 folder with "
                "text_encoder/config.json and its weights (model.safetensors)"
            )
        extra = {"attn_implementation": "sdpa"} if _HAS_ATTN_IMPLEMENTATION else {}
        with quiet_hf_loading():  # incl. its "newly initialized weights" warning: we check the keys below
            clip, info = CLIPTextModel.from_pretrained(
                str(sub), local_files_only=True, torch_dtype=dtype, output_loading_info=True, **extra
            )
        missing = [k for k in info["missing_keys"] if not k.endswith("position_ids")]
        if missing or info["mismatched_keys"]:
            # transformers only warns and leaves these weights random. A folder saved by transformers 5.x has no
            # `text_model.` key prefix, which 4.x (threestudio's pinned 4.28) expects: read the file ourselves,
            # strictly.
            return cls.from_hf_state_dict(clip.config, _read_weights(sub, missing)).to(device=device, dtype=dtype)
        return cls(clip).to(device)

    @classmethod
    def from_openclip_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        prefix: str = "",
        heads: Optional[int] = None,
        layer: str = "penultimate",
    ) -> Tuple["TextEncoder", Set[str]]:
        """Convert OpenCLIP text-tower keys (`<prefix>token_embedding.weight`, `transformer.resblocks.N.*`, …).

        Returns the encoder and the set of keys it consumed (including the ones that cannot affect the output under
        `layer`: the skipped last block, `text_projection`, `logit_scale`), so callers can check every key is used.
        `heads` defaults to width // 64 (OpenCLIP's head width for ViT-H/14 and other released towers).
        """
        keys = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        need = ["token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias"]
        missing = [prefix + k for k in need if k not in keys]
        if missing:
            raise KeyError(f"not an OpenCLIP text tower: missing {', '.join(missing)}")
        used: Set[str] = set()

        def get(k: str) -> torch.Tensor:
            used.add(keys[k])
            return state_dict[keys[k]]

        vocab, width = get("token_embedding.weight").shape
        n_blocks = 1 + max(int(k.split(".")[2]) for k in keys if k.startswith("transformer.resblocks."))
        if layer == "penultimate":
            n_used = n_blocks - 1
        elif layer == "last":
            n_used = n_blocks
        else:
            raise ValueError(f"layer must be 'penultimate' or 'last', got {layer!r}")
        intermediate = get("transformer.resblocks.0.mlp.c_fc.weight").shape[0]
        config = CLIPTextConfig(
            vocab_size=int(vocab),
            hidden_size=int(width),
            intermediate_size=int(intermediate),
            num_hidden_layers=int(n_used),
            num_attention_heads=int(heads or max(1, width // 64)),
            max_position_embeddings=int(get("positional_embedding").shape[0]),
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=int(width),
        )
        sd: Dict[str, torch.Tensor] = {
            "embeddings.token_embedding.weight": get("token_embedding.weight"),
            "embeddings.position_embedding.weight": get("positional_embedding"),
            "final_layer_norm.weight": get("ln_final.weight"),
            "final_layer_norm.bias": get("ln_final.bias"),
        }
        for i in range(n_used):
            src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
            q, k, v = get(src + "attn.in_proj_weight").chunk(3, dim=0)
            qb, kb, vb = get(src + "attn.in_proj_bias").chunk(3, dim=0)
            sd.update(
                {
                    dst + "self_attn.q_proj.weight": q, dst + "self_attn.q_proj.bias": qb,
                    dst + "self_attn.k_proj.weight": k, dst + "self_attn.k_proj.bias": kb,
                    dst + "self_attn.v_proj.weight": v, dst + "self_attn.v_proj.bias": vb,
                    dst + "self_attn.out_proj.weight": get(src + "attn.out_proj.weight"),
                    dst + "self_attn.out_proj.bias": get(src + "attn.out_proj.bias"),
                    dst + "layer_norm1.weight": get(src + "ln_1.weight"),
                    dst + "layer_norm1.bias": get(src + "ln_1.bias"),
                    dst + "layer_norm2.weight": get(src + "ln_2.weight"),
                    dst + "layer_norm2.bias": get(src + "ln_2.bias"),
                    dst + "mlp.fc1.weight": get(src + "mlp.c_fc.weight"),
                    dst + "mlp.fc1.bias": get(src + "mlp.c_fc.bias"),
                    dst + "mlp.fc2.weight": get(src + "mlp.c_proj.weight"),
                    dst + "mlp.fc2.bias": get(src + "mlp.c_proj.bias"),
                }
            )
        with torch.device("meta"):
            enc = cls.from_config(config)
        enc._core.load_state_dict(_with_buffers(enc._core, sd), strict=True, assign=True)
        enc.clip.requires_grad_(False)
        # position_ids (a buffer in some transformers versions) must be real after the meta build.
        emb = enc._core.embeddings
        if hasattr(emb, "position_ids"):
            emb.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)
        # Keys that exist in the checkpoint but cannot change the output: the skipped last block, the projection.
        inert = {
            keys[k]
            for k in keys
            if k in OPENCLIP_UNUSED_SUFFIXES
            or (k.startswith("transformer.resblocks.") and int(k.split(".")[2]) >= n_used)
        }
        consumed = used | inert
        unknown = set(keys.values()) - consumed
        if unknown:
            raise KeyError(f"unexpected OpenCLIP text keys: {sorted(unknown)[:8]}")
        return enc, consumed


def _read_weights(folder: Path, missing: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The state dict of a transformers model folder (one model.safetensors or pytorch_model.bin)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(str(folder / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise KeyError(f"text encoder weights in {folder} do not fit CLIPTextModel: missing {sorted(missing)[:8]}")


def _with_buffers(module: nn.Module, sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Add persistent buffers the checkpoint format does not carry (e.g. `position_ids` in transformers 4.x)."""
    own = module.state_dict(keep_vars=True)
    out = dict(sd)
    for name in own:
        if name not in out and name.endswith("position_ids"):
            out[name] = torch.arange(own[name].shape[-1])[None].expand(own[name].shape).clone()
    return out


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(_with_buffers(module, dict(sd)), strict=False)
    if missing or unexpected:
        raise KeyError(f"{what} weights do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")


def _causal_self_attention(attn: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CLIP self-attention before `out_proj`: h (B, L, D) -> (B, L, D).

    Written out (q scaled before q·kᵀ, additive causal mask, softmax, ·v) because this is the exact arithmetic of
    the CLIP text encoders that SD 2.1 / MVDream / DreamDistribution were run with (transformers 4.36 eager and
    OpenCLIP), so hidden states match the official ones bit for bit on CPU; transformers 5.x's own attention
    scales after the product (≈2e-6 apart) and changed its mask keywords between versions.
    """
    b, length, d = h.shape
    heads = attn.num_heads
    hd = d // heads
    split = lambda t: t.view(b, length, heads, hd).transpose(1, 2)  # noqa: E731  (B, H, L, hd)
    q = split(attn.q_proj(h) * hd**-0.5)
    k = split(attn.k_proj(h))
    v = split(attn.v_proj(h))
    w = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, length, d)


def fingerprints_match(a: Mapping, b: Mapping, rtol: float = 2e-2, atol: float = 2e-3) -> bool:
    """True when two `TextEncoder.fingerprint()`s describe the same weights (up to fp16/bf16 rounding)."""
    for key in ("hidden_size", "num_layers", "vocab_size"):
        if a.get(key) != b.get(key):
            return False
    sa, sb = a.get("signature"), b.get("signature")
    if sa is None or sb is None or len(sa) != len(sb):
        return False
    return bool(torch.allclose(torch.tensor(sa), torch.tensor(sb), rtol=rtol, atol=atol))
