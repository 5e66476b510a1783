"""Text-to-video retrieval metrics over a full score matrix (pure numpy).

Unlike :func:`polymodal.metrics.retrieval_metrics` (a square matrix, text i matches video i), a
VIOLET retrieval split may hold several captions per video: the matrix is N texts x V distinct
videos and ``target`` names each text's video. Recalls are percentages, like VIOLET's other metrics
and the paper's tables.
"""

from __future__ import annotations

import numpy as np

__all__ = ["retrieval_ranks", "retrieval_metrics"]


def retrieval_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each text's true video among all videos, ties counted against the model.

    rank = 1 + #(other videos scoring higher than or equal to the true one). A model that scores
    every video alike thus ranks the truth last (V), never first, and the rank does not depend on
    the order of the videos.

    Parameters
    ----------
    scores : (N, V) float, higher = better match; row n scores every video for text n
    target : (N,) int, index in 0..V-1 of text n's video

    Returns
    -------
    (N,) int64 ranks in 1..V.
    """
    s = np.asarray(scores)
    t = np.asarray(target)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N texts, V videos) matrix, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite value(s); a metric over "
                         "them would rank at random (check the model's outputs)")
    if t.shape != (s.shape[0],):
        raise ValueError(f"target must be (N,) = ({s.shape[0]},), one video index per text, got shape {t.shape}")
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"target must hold integer video indices, got dtype {t.dtype}")
    bad = (t < 0) | (t >= s.shape[1])
    if bad.any():
        raise ValueError(f"target index {int(t[bad][0])} is outside 0..{s.shape[1] - 1} (V = {s.shape[1]} videos)")
    true = s[np.arange(len(t)), t]  # (N,)
    # ">=" counts the true video itself (hence 1-based) and every tie (hence pessimistic)
    return (s >= true[:, None]).sum(axis=1, dtype=np.int64)


def retrieval_metrics(scores: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Text-to-video R@1/5/10 (percent), median and mean rank.

    Parameters
    ----------
    scores : (N, V) float, text n's score for video v
    target : (N,) int, text n's video

    Returns
    -------
    ``r1``, ``r5``, ``r10``: percent of texts whose video ranks within 1, 5, 10; ``medr`` and
    ``mean_rank``: the median and mean 1-based rank (:func:`retrieval_ranks`, ties count against).
    """
    ranks = retrieval_ranks(scores, target)
    out = {f"r{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10)}
    out["medr"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out
