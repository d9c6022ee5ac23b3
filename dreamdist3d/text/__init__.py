"""Text side: the offline CLIP BPE tokenizer and the frozen text encoder called on token embeddings."""

from dreamdist3d.text.encoder import TextEncoder, fingerprints_match
from dreamdist3d.text.tokenizer import ClipTokenizer

__all__ = ["ClipTokenizer", "TextEncoder", "fingerprints_match"]
