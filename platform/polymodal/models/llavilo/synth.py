"""Synthetic moment-retrieval data with a planted text-to-clip signal.

Construction (per query, see :func:`sample_moments`)
---------------------------------------------------
* A random unit "topic" ``t`` in R^D is the query: its ``n_words`` token features are
  ``t + word_noise * eps / sqrt(D)`` (then L2-normalised, as real text features are).
* The video has ``n_clips`` clips of ``clip_length`` s. Every clip gets Gaussian noise of norm
  about ``noise``; the clips inside 1-2 ground-truth windows (2-6 clips each) also get
  ``strength * a_c * t`` and the clips of 1-2 distractor windows get ``strength * a_c * u`` for
  other random unit topics ``u``, with a per-clip amplitude ``a_c ~ U(0.5, 1.5)``.
* The saliency of a GT clip is ``round(1 + 3 (a_c - 0.5))`` in {1, 2, 3, 4} (0 elsewhere), so the
  clips where the topic is strongest are the most salient, like QVHighlights' 0-4 annotator scores.

Clip features then go through :func:`~.data.prepare_video` (L2 per clip + Moment-DETR's two
temporal endpoint features), so a synthetic row looks like an imported one: ``video`` is
(n_clips, D + 2). Text and video share one space (``D``), so matching text to clips localises
the windows: the non-learned :func:`cosine_localiser` (cosine of each clip with the mean token,
threshold, contiguous runs) reaches R1@0.5 far above random windows (:func:`planted_signal`),
which is how the tests tell that the signal is there. With the defaults (strength 1, noise 1)
a GT clip's cosine with ``t`` is about 0.7 and a background clip's about 0 +- 0.18.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.shards import ShardWriter

from .data import TASK, moment_columns, pad_windows, prepare_text, prepare_video

__all__ = ["SPLIT_ROWS", "sample_moments", "write_synthetic", "qvh_ground_truth", "cosine_localiser",
           "random_windows", "planted_signal"]

#: queries per split at ``scale=1``; each split gets at least ``MIN_ROWS``
SPLIT_ROWS = {"train": 512, "val": 128, "test": 128}
MIN_ROWS = 16
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}
_SEG_LEN = (2, 6)  # clips per planted window (inclusive)


def _place_segments(rng: np.random.Generator, n_clips: int, lengths: list[int]) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) clip ranges with a gap of >= 1 clip; a segment that finds no
    room after 100 tries is dropped (only distractors come after the first GT segment)."""
    taken = np.zeros(n_clips + 2, dtype=bool)  # index c+1 is clip c; guards the ends
    out = []
    for length in lengths:
        length = min(length, n_clips)
        for _ in range(100):
            s = int(rng.integers(0, n_clips - length + 1))
            if not taken[s:s + length + 2].any():  # clips s-1 .. s+length (the gap) are free
                taken[s + 1:s + length + 1] = True
                out.append((s, s + length))
                break
    return out


def sample_moments(rng: np.random.Generator, n: int, *, n_clips: int = 32, clip_length: float = 2.0,
                   dim: int = 32, n_words: int = 8, strength: float = 1.0, noise: float = 1.0,
                   word_noise: float = 0.5, max_windows: int = 2, qid_start: int = 0,
                   vid_prefix: str = "synth") -> dict[str, np.ndarray]:
    """``n`` synthetic rows in the dataset schema (see the module docstring).

    Returns
    -------
    dict with the columns of :func:`~.data.moment_columns` (``video`` (n, n_clips, dim + 2),
    ``text`` (n, n_words, dim), ``windows`` (n, max_windows, 2) seconds, ``saliency``
    (n, n_clips), ...) plus the latent ``topic`` (n, dim) float32.
    """
    if n_clips < 2 * _SEG_LEN[1] or dim < 2 or n_words < 1 or max_windows < 1:
        raise ValueError(f"need n_clips >= {2 * _SEG_LEN[1]}, dim >= 2, n_words >= 1, max_windows >= 1; got "
                         f"n_clips={n_clips}, dim={dim}, n_words={n_words}, max_windows={max_windows}")
    cols: dict[str, list] = {k: [] for k in ("video", "video_mask", "windows", "n_windows", "saliency", "text",
                                             "text_mask", "topic")}
    for _ in range(n):
        topic = rng.standard_normal(dim)
        topic /= np.linalg.norm(topic)
        n_gt = int(rng.integers(1, max_windows + 1))
        n_dis = int(rng.integers(1, 3))
        lengths = [int(x) for x in rng.integers(_SEG_LEN[0], _SEG_LEN[1] + 1, size=n_gt + n_dis)]
        segments = _place_segments(rng, n_clips, lengths)
        gt, distractors = segments[:n_gt], segments[n_gt:]
        # The first segment always fits an empty video, so every query has >= 1 GT window.
        clips = noise * rng.standard_normal((n_clips, dim)) / math.sqrt(dim)  # (n_clips, dim), norm ~ noise
        saliency = np.zeros(n_clips, dtype=np.float32)
        for s, e in gt:
            amp = rng.uniform(0.5, 1.5, size=e - s)
            clips[s:e] += strength * amp[:, None] * topic[None, :]
            saliency[s:e] = np.rint(1.0 + 3.0 * (amp - 0.5))  # integer 1-4, like annotator scores
        for s, e in distractors:
            other = rng.standard_normal(dim)
            other /= np.linalg.norm(other)
            clips[s:e] += strength * rng.uniform(0.5, 1.5, size=e - s)[:, None] * other[None, :]
        video, vmask, _ = prepare_video([clips], n_clips, tef=True)
        words = topic[None, :] + word_noise * rng.standard_normal((n_words, dim)) / math.sqrt(dim)
        text, tmask = prepare_text(words, n_words)
        windows, nw = pad_windows(sorted((s * clip_length, e * clip_length) for s, e in gt), max_windows)
        for key, value in (("video", video), ("video_mask", vmask), ("windows", windows), ("n_windows", nw),
                           ("saliency", saliency), ("text", text), ("text_mask", tmask),
                           ("topic", topic.astype(np.float32))):
            cols[key].append(value)
    out = {k: np.stack(v) if k != "n_windows" else np.asarray(v, dtype=np.int32) for k, v in cols.items()}
    qids = np.arange(qid_start, qid_start + n, dtype=np.int64)
    out["qid"] = qids
    out["vid"] = np.asarray([f"{vid_prefix}_{q:06d}" for q in qids], dtype=object)
    out["query"] = np.asarray([f"synthetic query {q}" for q in qids], dtype=object)
    out["duration"] = np.full(n, n_clips * clip_length, dtype=np.float32)
    out["n_clips"] = np.full(n, n_clips, dtype=np.int32)
    return out


def write_synthetic(out_uri: str, *, seed: int = 0, scale: float = 1.0, n_clips: int = 32,
                    clip_length: float = 2.0, dim: int = 32, n_words: int = 8, strength: float = 1.0,
                    noise: float = 1.0, opts: StorageOptions | None = None,
                    progress: bool | str = True) -> dict[str, str]:
    """Write train/val/test synthetic moment-retrieval datasets under ``out_uri``.

    ``scale`` multiplies the split sizes 512 / 128 / 128 (each at least 16). qids are unique
    across splits (train 0.., then val, then test). Returns ``{"train": uri, "val": uri,
    "test": uri}``; identical arguments give identical data.
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    rows = {split: max(MIN_ROWS, int(round(r * scale))) for split, r in SPLIT_ROWS.items()}
    max_windows = 2
    columns = moment_columns(max_clips=n_clips, video_dim=dim + 2, max_windows=max_windows, saliency=True,
                             text_shape=(n_words, dim))
    meta: dict[str, Any] = {
        "dataset": "synthetic", "seed": seed, "clip_length": clip_length, "max_clips": n_clips, "tef": True,
        "feature_dims": [dim], "strength": strength, "noise": noise,
        "planted": "clips inside the GT windows carry strength * a * topic; text tokens = topic + noise",
    }
    out, qid = {}, 0
    for split, n in rows.items():
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        arrays = sample_moments(rng, n, n_clips=n_clips, clip_length=clip_length, dim=dim, n_words=n_words,
                                strength=strength, noise=noise, max_windows=max_windows, qid_start=qid,
                                vid_prefix=f"synth_{split}")
        arrays.pop("topic")
        uri = out[split] = storage.join(out_uri, split)
        with ShardWriter(uri, task=TASK, split=split, columns=columns, meta=meta, opts=opts,
                         progress=progress) as writer:
            writer.write(arrays)
        qid += n
    return out


# --------------------------------------------------------------------------- evaluation helpers


def qvh_ground_truth(rows: Mapping[str, np.ndarray], clip_length: float = 2.0) -> list[dict[str, Any]]:
    """QVHighlights-format GT rows (``qid, query, duration, vid, relevant_windows,
    relevant_clip_ids`` [+ ``saliency_scores``]) from dataset columns, for
    :func:`~.metrics.evaluate`.

    With a ``saliency`` column the relevant clips are those with saliency > 0 and each gets one
    "annotator" score (the stored mean); without one, the clips overlapping a window, and no
    ``saliency_scores`` (so the evaluator skips HL). For real QVHighlights prefer the original
    jsonl: it keeps the three separate annotators that HL-Hit1 looks at.
    """
    out = []
    has_sal = "saliency" in rows
    for i in range(len(rows["qid"])):
        nw = int(rows["n_windows"][i])
        windows = [[round(float(s), 4), round(float(e), 4)] for s, e in rows["windows"][i, :nw]]
        row: dict[str, Any] = {"qid": int(rows["qid"][i]), "query": str(rows["query"][i]),
                               "duration": float(rows["duration"][i]), "vid": str(rows["vid"][i]),
                               "relevant_windows": windows}
        n_clips = int(float(rows["duration"][i]) / clip_length)
        if has_sal:
            ids = np.flatnonzero(rows["saliency"][i, :n_clips] > 0)
            row["relevant_clip_ids"] = [int(c) for c in ids]
            row["saliency_scores"] = [[round(float(rows["saliency"][i, c]), 4)] for c in ids]
        else:
            ids = sorted({c for s, e in windows for c in range(int(s // clip_length),
                                                               min(n_clips, math.ceil(e / clip_length)))})
            row["relevant_clip_ids"] = ids
        out.append(row)
    return out


def _runs(on: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive True values in a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def cosine_localiser(rows: Mapping[str, np.ndarray], *, feature_dim: int, clip_length: float = 2.0,
                     threshold: float = 0.5) -> list[dict[str, Any]]:
    """Non-learned baseline: submission rows from clip-vs-query cosine similarity.

    Each clip's score is the cosine of its first ``feature_dim`` features (the tef columns are
    left out) with the mean of the real text tokens; clips scoring at least ``threshold`` times
    the video's best score form windows (maximal runs), ranked by their mean score. The clip
    scores double as ``pred_saliency_scores``.
    """
    out = []
    for i in range(len(rows["qid"])):
        n = int(rows["n_clips"][i])
        clips = rows["video"][i, :n, :feature_dim].astype(np.float64)  # (n, D)
        query = rows["text"][i][rows["text_mask"][i]].mean(axis=0).astype(np.float64)  # (D,)
        scores = clips @ query / (np.linalg.norm(clips, axis=1) * np.linalg.norm(query) + 1e-8)  # (n,)
        runs = _runs(scores >= threshold * scores.max())
        windows = sorted(([s * clip_length, e * clip_length, float(scores[s:e].mean())] for s, e in runs),
                         key=lambda w: -w[2])
        out.append({"qid": int(rows["qid"][i]), "pred_relevant_windows": windows,
                    "pred_saliency_scores": [float(x) for x in scores]})
    return out


def random_windows(rows: Mapping[str, np.ndarray], *, seed: int = 0, clip_length: float = 2.0) -> list[dict]:
    """Chance baseline: one random clip-aligned window (1 to half the video long) per query."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(rows["qid"])):
        n = int(rows["n_clips"][i])
        length = int(rng.integers(1, max(2, n // 2) + 1))
        start = int(rng.integers(0, n - length + 1))
        out.append({"qid": int(rows["qid"][i]),
                    "pred_relevant_windows": [[start * clip_length, (start + length) * clip_length, 1.0]],
                    "pred_saliency_scores": [float(x) for x in rng.random(n)]})
    return out


def planted_signal(rows: Mapping[str, np.ndarray], *, feature_dim: int, clip_length: float = 2.0,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Brief QVHighlights metrics of :func:`cosine_localiser` and :func:`random_windows` on ``rows``."""
    from .metrics import evaluate

    gt = qvh_ground_truth(rows, clip_length)
    localiser = cosine_localiser(rows, feature_dim=feature_dim, clip_length=clip_length)
    return {"localiser": evaluate(localiser, gt)["brief"],
            "random": evaluate(random_windows(rows, seed=seed, clip_length=clip_length), gt)["brief"]}
