"""The CLIP byte-level BPE tokenizer, offline.

Gives the ids OpenCLIP's `tokenize` gives (SD 2.1 / MVDream conditioning): text cleaned with ftfy and HTML
unescaping, whitespace collapsed, lower-cased; `[SOS] tokens [EOS]` padded with id 0 to 77; longer prompts cut to 77
with the last id forced to EOS.

Vocabulary sources:
- the BPE merges shipped as package data (`data/bpe_simple_vocab_16e6.txt.gz`, from OpenAI CLIP via open_clip,
  MIT licence in `data/LICENSE-bpe-vocab.txt`), for users who only have the MVDream `.pt`;
- a diffusers folder's `tokenizer/` (`vocab.json` + `merges.txt`), e.g. SD 2.1's.
"""

from __future__ import annotations

import gzip
import html
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import regex
import torch

SOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77
PAD_ID = 0

_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _byte_alphabet() -> Dict[int, str]:
    """Map each byte to a printable unicode character (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"),
                                                                                                       ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the vocabulary order


def clean_text(text: str) -> str:
    """ftfy fix + HTML unescape (twice, as OpenCLIP) + whitespace collapse + lower-case."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a dependency; keep working without it
        pass
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


class ClipTokenizer:
    """CLIP BPE tokenizer. `tok(["a photo"])` → LongTensor (N, 77)."""

    def __init__(self, vocab: Dict[str, int], merges: Sequence[Tuple[str, str]]) -> None:
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_alphabet = _byte_alphabet()
        self.byte_decoder = {c: b for b, c in self.byte_alphabet.items()}
        self.sos_id = self.encoder[SOS_TOKEN]
        self.eos_id = self.encoder[EOS_TOKEN]
        self.pad_id = PAD_ID
        self.context_length = CONTEXT_LENGTH
        self._cache: Dict[str, List[str]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bpe_file(cls, path: Union[str, Path, None] = None) -> "ClipTokenizer":
        """From an OpenAI/open_clip `bpe_simple_vocab_16e6.txt.gz`; default: the copy shipped with the package."""
        if path is None:
            raw = resources.files("dreamdist3d.text").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
            lines = gzip.decompress(raw).decode("utf-8").split("\n")
        else:
            lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
        alphabet = list(_byte_alphabet().values())
        tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOS_TOKEN, EOS_TOKEN]
        return cls({t: i for i, t in enumerate(tokens)}, merges)  # type: ignore[arg-type]

    @classmethod
    def from_folder(cls, folder: Union[str, Path]) -> "ClipTokenizer":
        """From a diffusers/transformers `tokenizer/` folder (or the model folder that contains one)."""
        folder = Path(folder)
        if (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        for f in (vocab_file, merges_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"{f} not found: a CLIP tokenizer folder needs vocab.json and merges.txt "
                    "(the `tokenizer/` folder of a diffusers Stable Diffusion 2.1 model)"
                )
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        merges = []
        for line in merges_file.read_text(encoding="utf-8").split("\n"):
            if not line or line.startswith("#version"):
                continue
            merges.append(tuple(line.split()))
        return cls(vocab, merges)  # type: ignore[arg-type]

    @classmethod
    def default(cls) -> "ClipTokenizer":
        return _default_tokenizer()

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    # ------------------------------------------------------------------ BPE
    def _bpe(self, word: str) -> List[str]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: List[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> List[int]:
        """Token ids of `text` without SOS/EOS."""
        ids: List[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_alphabet[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BPE ids (SOS/EOS/padding skipped)."""
        skip = {self.sos_id, self.eos_id}
        return "".join(self.token_text(i) for i in ids if int(i) not in skip).strip()

    def token_text(self, token_id: int) -> str:
        """Readable text of one token (word-end marker shown as a trailing space)."""
        piece = self.decoder[int(token_id)]
        if piece in (SOS_TOKEN, EOS_TOKEN):
            return piece
        end = piece.endswith("</w>")
        core = piece[:-4] if end else piece
        raw = bytearray(self.byte_decoder[c] for c in core).decode("utf-8", errors="replace")
        return raw + (" " if end else "")

    def count(self, text: str) -> int:
        """Number of BPE tokens of `text` (no SOS/EOS)."""
        return len(self.encode(text))

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
        """OpenCLIP-style ids: LongTensor (N, context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sos_id] + self.encode(text) + [self.eos_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eos_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@lru_cache(maxsize=1)
def _default_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_bpe_file()
