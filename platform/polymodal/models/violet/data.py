"""VIOLET datasets: one clip (T sparsely sampled frames, packed as JPEGs) and one text per row.

Every kind shares the columns

* ``id`` string: unique row id, ``"<video id>#<k>"`` for the k-th text of that video;
* ``video`` string: the source video (or image) id, so retrieval can group texts of one clip;
* ``text`` string: the caption (pre-training, retrieval) or the question (QA);
* ``frames`` binary: T JPEGs concatenated (:func:`~.video.pack_jpegs`), ``size x size`` RGB;
* ``frame_bytes`` int32[T]: the byte length of each JPEG in ``frames``;

and adds, per kind (:data:`KINDS`),

* ``pretrain``: ``vt_codes`` int64[T, rows, cols], the visual tokenizer's codes of each frame,
  the masked visual-token modelling targets, computed once at ingestion;
* ``retrieval``: nothing;
* ``mcqa``: ``options`` string (a JSON list of the candidate answers) and ``answer`` int64, the
  index of the right one;
* ``oeqa``: ``answer`` int64, the index of the answer in the dataset's answer vocabulary (the
  top-K answers of the train split, ``manifest.meta["answer_vocab"]``), -1 when the answer is
  outside it (such rows are kept for evaluation, where they count as wrong), and ``answer_text``
  string, the normalised answer itself.

A dataset has one T: videos are T=4 for pre-training and T=5 for fine-tuning in the paper;
images (image-text pairs) are T=1 clips, in datasets of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .video import unpack_jpegs

TASKS = {"pretrain": "violet.pretrain", "retrieval": "violet.retrieval", "mcqa": "violet.mcqa",
         "oeqa": "violet.oeqa"}
KINDS = tuple(TASKS)
#: frames per clip in the paper: pre-training, and fine-tuning (retrieval, QA)
PRETRAIN_FRAMES = 4
FINETUNE_FRAMES = 5


def columns(kind: str, n_frames: int, grid: tuple[int, int] = (7, 7)) -> dict[str, dict[str, Any]]:
    """Column specs of a ``kind`` dataset with ``n_frames`` frames per clip (``grid``: the
    visual tokenizer's code grid per frame, pre-training only)."""
    check_kind(kind)
    if not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    out: dict[str, dict[str, Any]] = {
        "id": {"dtype": "string"},
        "video": {"dtype": "string"},
        "text": {"dtype": "string"},
        "frames": {"dtype": "binary"},
        "frame_bytes": {"dtype": "int32", "shape": [n_frames]},
    }
    if kind == "pretrain":
        out["vt_codes"] = {"dtype": "int64", "shape": [n_frames, int(grid[0]), int(grid[1])]}
    elif kind == "mcqa":
        out["options"] = {"dtype": "string"}
        out["answer"] = {"dtype": "int64"}
    elif kind == "oeqa":
        out["answer"] = {"dtype": "int64"}
        out["answer_text"] = {"dtype": "string"}
    return out


def check_kind(kind: str) -> str:
    if kind not in TASKS:
        raise ValueError(f"unknown VIOLET dataset kind {kind!r}; use one of {list(KINDS)}")
    return kind


def frames_of(batch: Mapping[str, Any]) -> np.ndarray:
    """Decode the packed JPEGs of a batch, (B, T, S, S, 3) uint8, or of one row (``frames`` a
    bytes object), (T, S, S, 3). A broken cell raises ValueError naming the row id."""
    blobs, lengths, ids = batch["frames"], np.asarray(batch["frame_bytes"]), batch.get("id")
    if isinstance(blobs, (bytes, bytearray)):
        return unpack_jpegs(bytes(blobs), lengths, where=f"row {ids!r}: frames")
    ids = [None] * len(blobs) if ids is None else list(ids)
    return np.stack([unpack_jpegs(bytes(b), n, where=f"row {i!r}: frames")
                     for b, n, i in zip(blobs, lengths, ids)])


def options_of(cell: str) -> list[str]:
    """The candidate answers of an MC-QA row (its ``options`` JSON cell)."""
    return list(json.loads(cell))


def normalise_answer(text: str) -> str:
    """Open-ended answers are compared lower-cased with single spaces, as in VQA-style scoring."""
    return " ".join(str(text).lower().split())


def answer_vocab(answers: Iterable[str], top_k: int) -> list[str]:
    """The ``top_k`` most frequent (normalised) answers, most frequent first; ties are broken
    alphabetically so the vocabulary does not depend on row order."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    counts = Counter(normalise_answer(a) for a in answers)
    return [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
