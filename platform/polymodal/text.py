"""Texts through the tensor-only batch path: a task's ``collate`` (which has no tokenizer) turns
strings into zero-padded UTF-8 byte rows, and the model decodes and tokenizes them itself."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor


def encode_texts(texts: Sequence[str], max_bytes: int = 512) -> np.ndarray:
    """B strings -> (B, L) uint8 zero-padded UTF-8 (L = longest, at most ``max_bytes``)."""
    raw = [str(t).encode("utf-8")[:max_bytes] for t in texts]
    out = np.zeros((len(raw), max(1, max((len(r) for r in raw), default=1))), dtype=np.uint8)
    for i, r in enumerate(raw):
        out[i, :len(r)] = np.frombuffer(r, dtype=np.uint8)
    return out


def decode_texts(text_bytes: Tensor) -> list[str]:
    """(B, L) uint8, zero-padded UTF-8 -> B strings (inverse of :func:`encode_texts`)."""
    arr = text_bytes.detach().cpu().numpy().astype(np.uint8)
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace") for row in arr]
