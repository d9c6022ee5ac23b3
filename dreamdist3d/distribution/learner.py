"""`PromptLearner`: K learnable prompts of L context tokens through the frozen text encoder.

Token layout of every prompt: `[SOS] prefix… ctx×L suffix… [EOS] pad…` (77 slots, pad id 0).

Position modes (stored in distribution files and honoured on load):
- "clean": the encoder input is token embeddings (ctx in its slots) + the position table, added once.
- "official": the arithmetic of the official DreamDistribution code, so its learned ctx gives its outputs. There the
  fixed tokens are embedded with `text_model.embeddings` (token + position) and the encoder adds the full position
  table again. With pe = 1 + #prefix tokens, slot j receives
    j < pe (SOS, prefix):         tok + 2·pos[j]
    pe ≤ j < pe+L (ctx):          ctx + pos[j]
    j ≥ pe+L (suffix, EOS, pad):  tok(suffix_ids[m+1]) + pos[m+1] + pos[j],  m = j − pe − L
  where suffix_ids is the separate tokenisation `[SOS, suffix…, EOS, pad…]` (two *different* position rows).

Pooling (`encode`) is always at the EOS of the prompt actually encoded. The official code pools at the EOS index of
its *constructor* prefix/suffix; in training (the only place it pools) the two agree, but for other prefixes the
official index is stale (it points inside the context tokens). `fit` never pools, so fitted Gaussians agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
from torch import nn

from dreamdist3d.distribution.gaussian import PromptGaussian, check_covariance, prompt_factor
from dreamdist3d.text import ClipTokenizer, TextEncoder

POSITION_MODES = ("clean", "official")


@dataclass(frozen=True)
class PromptLayout:
    """Where things sit in the 77 slots for one prefix/suffix."""

    prefix_ids: torch.Tensor  # (pe,) SOS + prefix tokens
    suffix_ids: torch.Tensor  # (77,) separate tokenisation [SOS, suffix…, EOS, pad…]
    n_ctx: int
    length: int = 77

    @property
    def ctx_start(self) -> int:
        return int(self.prefix_ids.shape[0])

    @property
    def n_suffix(self) -> int:
        """suffix tokens (no SOS/EOS)."""
        return int((self.suffix_ids == self.suffix_ids.new_tensor(49407)).nonzero()[0, 0]) - 1

    @property
    def eos_index(self) -> int:
        return self.ctx_start + self.n_ctx + self.n_suffix

    def token_ids(self) -> torch.Tensor:
        """(77,) the id at each slot; ctx slots = -1."""
        tail = self.suffix_ids[1 : self.length - self.ctx_start - self.n_ctx + 1]
        ctx = torch.full((self.n_ctx,), -1, dtype=torch.long)
        return torch.cat([self.prefix_ids, ctx, tail])


class PromptLearner(nn.Module):
    """K prompts × L learnable context vectors. `ctx` (K, L, D), init N(0, 0.02²) (the official code).

    `init_text` (CoOp's `ctx_init`, Textual Inversion's initializer token): every prompt starts from the token
    embeddings of this text in its first context slots (at most L tokens, the rest stay empty), plus the same
    N(0, 0.02²) draw, so the K prompts start as the text, slightly apart. "" = the official init (same draw)."""

    def __init__(
        self,
        text_encoder: TextEncoder,
        tokenizer: ClipTokenizer,
        n_ctx: int = 4,
        n_prompts: int = 32,
        prefix: str = "",
        suffix: str = "",
        position_mode: str = "clean",
        generator: Optional[torch.Generator] = None,
        init_text: str = "",
    ) -> None:
        super().__init__()
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
        if n_ctx < 1 or n_prompts < 1:
            raise ValueError(f"n_ctx and n_prompts must be ≥ 1, got n_ctx={n_ctx}, n_prompts={n_prompts}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.n_prompts = n_prompts
        self.prefix = prefix
        self.suffix = suffix
        self.position_mode = position_mode
        d = text_encoder.hidden_size
        init = torch.randn((n_prompts, n_ctx, d), generator=generator) * 0.02
        init_ids = tokenizer.encode(init_text)
        if len(init_ids) > n_ctx:
            raise ValueError(f"init text {init_text!r} is {len(init_ids)} tokens, more than the {n_ctx} context "
                             "tokens per prompt: shorten it or raise n_ctx")
        if init_ids:
            with torch.no_grad():
                words = text_encoder.embed_tokens(torch.tensor(init_ids, dtype=torch.long))  # (n, D)
            init[:, : len(init_ids)] += words.float().cpu()
        self.ctx = nn.Parameter(init.to(text_encoder.device, text_encoder.dtype))
        self.layout(prefix, suffix)  # validates the training prompt length now

    # ------------------------------------------------------------------ layout
    def layout(self, prefix: Optional[str] = None, suffix: Optional[str] = None) -> PromptLayout:
        prefix = self.prefix if prefix is None else prefix
        suffix = self.suffix if suffix is None else suffix
        tok = self.tokenizer
        p_ids = tok.encode(prefix)
        s_ids = tok.encode(suffix)
        total = 1 + len(p_ids) + self.n_ctx + len(s_ids) + 1
        length = self.text_encoder.max_length
        if total > length:
            raise ValueError(
                f"prompt too long: [SOS] + prefix {len(p_ids)} tokens + {self.n_ctx} context tokens + suffix "
                f"{len(s_ids)} tokens + [EOS] = {total} > {length}; shorten the prefix/suffix"
            )
        prefix_ids = torch.tensor([tok.sos_id] + p_ids, dtype=torch.long)
        suffix_ids = tok([suffix], context_length=length)[0]
        return PromptLayout(prefix_ids, suffix_ids, self.n_ctx, length)

    def input_embeddings(self, prefix: Optional[str] = None, suffix: Optional[str] = None) -> Tuple[torch.Tensor, int]:
        """Encoder input *before* the encoder adds its position table: (K, 77, D), and the EOS index.

        In "official" mode this equals the official `concat_custom` output."""
        lay = self.layout(prefix, suffix)
        enc = self.text_encoder
        k = self.n_prompts
        pe, n_ctx = lay.ctx_start, self.n_ctx
        pos = enc.position_embedding  # (77, D)
        head = enc.embed_tokens(lay.prefix_ids)  # (pe, D)
        n_tail = lay.length - pe - n_ctx
        if self.position_mode == "official":
            head = head + pos[:pe]
            tail = (enc.embed_tokens(lay.suffix_ids) + pos)[1 : 1 + n_tail]
        else:
            tail = enc.embed_tokens(lay.token_ids()[pe + n_ctx :])
        ctx = self.ctx.to(head.dtype)
        x = torch.cat([head.expand(k, -1, -1), ctx, tail.expand(k, -1, -1)], dim=1)
        return x, lay.eos_index

    # ------------------------------------------------------------------ the method
    def encode(self, prefix: Optional[str] = None, suffix: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """hidden (K, 77, D) of the K prompts and pooled (K, D) at the EOS of this prefix/suffix."""
        x, eos = self.input_embeddings(prefix, suffix)
        hidden = self.text_encoder(x, add_position=True)
        return hidden, hidden[:, eos]

    def encode_rows(self, index: torch.Tensor, prefix: Optional[str] = None,
                    suffix: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """`encode()`'s numbers for what a step of objective `assign` uses, for less: hidden (*index.shape, 77, D) of
        the prompts `index` (long) and pooled (K, D) of all K. The encoder's attention is causal, so the states at
        and before the EOS depend on no later token: the K pooled states come from the first EOS + 1 positions
        alone, and all 77 states only for the distinct prompts in `index`."""
        x, eos = self.input_embeddings(prefix, suffix)
        pooled = self.text_encoder(x[:, : eos + 1], add_position=True)[:, eos]
        distinct, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        hidden = self.text_encoder(x[distinct], add_position=True)[inverse]
        return hidden.view(*index.shape, *hidden.shape[1:]), pooled

    @staticmethod
    def orthogonal_loss(pooled: torch.Tensor) -> torch.Tensor:
        """Mean over off-diagonal pairs of squared cosine similarity. pooled (K, D) or (B, K, D) → scalar (0 for K=1;
        the official code gives NaN there)."""
        p = pooled if pooled.ndim == 3 else pooled[None]
        p = torch.nn.functional.normalize(p, dim=-1)
        cos2 = (p @ p.transpose(-1, -2)) ** 2  # (B, K, K)
        k = p.shape[-2]
        if k < 2:  # no pairs (K=1, textual-inversion-like): nothing to decorrelate
            return p.sum() * 0.0
        off = cos2.sum((-1, -2)) - cos2.diagonal(dim1=-2, dim2=-1).sum(-1)
        return (off / (k * (k - 1))).mean()

    @staticmethod
    def moments(hidden: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """mean and unbiased std over the K prompts: (K, 77, D) → 2 × (77, D); K=1 gives std 0."""
        mean = hidden.mean(0)
        std = hidden.std(0) if hidden.shape[0] > 1 else torch.zeros_like(mean)
        return mean, std

    def reparameterize(
        self,
        hidden: torch.Tensor,
        n_samples: Union[int, Tuple[int, ...]],
        generator: Optional[torch.Generator] = None,
        eps: Optional[torch.Tensor] = None,
        covariance: str = "diag",
    ) -> torch.Tensor:
        """Differentiable samples (*n_samples, 77, D) of the K prompts' Gaussian: diag μ + ε·σ with ε (*n, 77, D),
        or lowrank μ + Σ_k a_k·(h_k − μ)/√(K−1) with a = `eps` (*n, K) (kernel: the same, its Gaussian part)."""
        check_covariance(covariance)
        mean, std = self.moments(hidden)
        shape = (n_samples,) if isinstance(n_samples, int) else tuple(n_samples)
        tail = tuple(mean.shape) if covariance == "diag" else (hidden.shape[0],)
        if eps is None:
            eps = torch.randn((*shape, *tail), generator=generator, device=mean.device, dtype=mean.dtype)
        if covariance == "diag":
            return mean + eps.to(mean) * std
        return mean + torch.einsum("...k,kld->...ld", eps.to(mean), prompt_factor(hidden))

    @torch.no_grad()
    def fit(self, prefix: Optional[str] = None, suffix: Optional[str] = None) -> PromptGaussian:
        """The Gaussian over encoder states of the K prompts re-encoded with this prefix/suffix (edits), in diag mode
        with the low-rank factor kept (`with_covariance("lowrank")` samples the K prompts' full covariance)."""
        hidden, _ = self.encode(prefix, suffix)
        return PromptGaussian.from_points(hidden.float())

    @torch.no_grad()
    def interpret(self) -> str:
        """Nearest vocabulary token (L2, raw token table) to each slot of the K-mean context."""
        table = self.text_encoder.token_embedding.weight.float()
        mean_ctx = self.ctx.float().mean(0)  # (L, D)
        ids = torch.cdist(mean_ctx, table).argmin(-1)
        return self.tokenizer.decode(ids.tolist())
