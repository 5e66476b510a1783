"""Metric functions shared by every system: pure numpy, no torch, no sklearn at runtime.

Every function takes whole-split arrays (the concatenated ``Task.predict`` outputs of all
workers) and returns a flat ``dict[str, float]`` that the train loop logs and Tune optimises.

Conventions
-----------
* Accuracies, F1 scores, recall@K and every other share are fractions in ``[0, 1]``, never
  percentages, in every system's metrics (what train, evaluate and Tune record); a Markdown
  report may print them as percentages, labelled ``%``. Ranks are 1-based ranks.
* Inputs with NaN or infinite values raise :class:`ValueError` naming the argument, because a
  metric silently computed over NaN would pick the wrong checkpoint.
* A metric that is undefined for the input (Pearson correlation of a constant vector, a
  non-zero accuracy when every target is zero) is returned as ``nan`` rather than raising, so
  one degenerate evaluation does not stop a training run.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ranking_metrics",
    "ranking_ranks",
    "retrieval_metrics",
    "retrieval_ranks",
]


def _as_finite(name: str, x: np.ndarray | list, ndims: tuple[int, ...]) -> np.ndarray:
    """Convert ``x`` to an array, checking its rank, that it is non-empty and finite.

    Parameters
    ----------
    name : str
        Argument name used in error messages.
    x : array-like
        Input values.
    ndims : tuple of int
        Allowed numbers of dimensions.

    Returns
    -------
    numpy.ndarray
        ``x`` as an array (no copy when already an array).
    """
    arr = np.asarray(x)
    if arr.ndim not in ndims:
        allowed = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name} must be {allowed}, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; metrics need at least one row")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise ValueError(
                f"{name} contains NaN or infinite values in {rows.size} row(s), first at row "
                f"{int(rows[0])}; check the model output (diverged training?) before scoring"
            )
    return arr


def ranking_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """1-based rank of each query's positive candidate among all candidates, ties counted against.

    The rank is ``1 + #(other candidates scoring higher than or equal to the positive)``: a tie
    always counts against the model, so a degenerate model that scores every candidate alike
    ranks the positive last (``C``), never first, and the rank does not depend on the order of
    the candidates. This is the stricter of the two usual conventions (an ``argsort`` that finds
    the positive first among equal scores is the flattering one).

    Parameters
    ----------
    scores : numpy.ndarray, shape (N, C)
        ``scores[n, c]`` is query ``n``'s score for candidate ``c``; higher is better.
    positives : numpy.ndarray of int, shape (N,)
        Index in ``0..C-1`` of query ``n``'s positive candidate. Several queries may share one
        candidate (several captions of one video).

    Returns
    -------
    numpy.ndarray of int64, shape (N,)
        Ranks in ``1..C``.

    Raises
    ------
    ValueError
        ``scores`` not a non-empty real (N, C) matrix or holding NaN/inf; ``positives`` of the
        wrong shape, not integers, or outside ``0..C-1``.
    """
    s = np.asarray(scores)
    t = np.asarray(positives)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(
            f"scores must be a non-empty 2-D (N queries, C candidates) matrix, got shape {s.shape}"
        )
    if s.dtype.kind not in "iuf":
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if not np.isfinite(s).all():
        raise ValueError(
            f"scores hold {int((~np.isfinite(s)).sum())} NaN or infinite value(s); a metric over "
            "them would rank at random (check the model's outputs)"
        )
    if t.shape != (s.shape[0],):
        raise ValueError(
            f"positives must be (N,) = ({s.shape[0]},), one candidate index per query, "
            f"got shape {t.shape}"
        )
    if t.dtype.kind not in "iu":
        raise ValueError(f"positives must hold integer candidate indices, got dtype {t.dtype}")
    bad = (t < 0) | (t >= s.shape[1])
    if bad.any():
        raise ValueError(
            f"positives index {int(t[bad][0])} is outside 0..{s.shape[1] - 1} "
            f"(C = {s.shape[1]} candidates)"
        )
    positive = s[np.arange(len(t)), t]  # (N,)
    # ">=" counts the positive itself (hence 1-based) and every tie (hence pessimistic).
    return (s >= positive[:, None]).sum(axis=1, dtype=np.int64)


def ranking_metrics(
    scores: np.ndarray, positives: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K, median and mean rank of each query's positive candidate.

    Parameters
    ----------
    scores : numpy.ndarray, shape (N, C)
        Query ``n``'s score for candidate ``c``; higher is better.
    positives : numpy.ndarray of int, shape (N,)
        Index of query ``n``'s positive candidate.
    ks : tuple of int
        The cut-offs K of ``r{K}``.

    Returns
    -------
    dict[str, float]
        ``r{K}`` for each K in ``ks``: the fraction in ``[0, 1]`` of queries whose positive ranks
        within K; ``medr`` and ``meanr``: the median and mean 1-based rank (see
        :func:`ranking_ranks`: ties count against the model).

    Raises
    ------
    ValueError
        Bad ``scores`` or ``positives`` (see :func:`ranking_ranks`), or a K below 1.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"every K in ks must be >= 1 (recall within the top K), got {tuple(ks)}")
    ranks = ranking_ranks(scores, positives)
    out = {f"r{int(k)}": float(np.mean(ranks <= k)) for k in ks}
    out["medr"] = float(np.median(ranks))
    out["meanr"] = float(np.mean(ranks))
    return out


def _check_square(sim: np.ndarray) -> np.ndarray:
    s = _as_finite("sim", sim, (2,))
    if s.shape[0] != s.shape[1]:
        raise ValueError(
            f"sim must be square (N_text == N_video, text i matches video i), got {s.shape}"
        )
    return s


def retrieval_ranks(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the matching item for each query in both directions of a square matrix.

    Parameters
    ----------
    sim : numpy.ndarray, shape (N, N)
        ``sim[i, j]`` is the similarity of text ``i`` and video ``j``; text ``i`` matches
        video ``i``.

    Returns
    -------
    t2v_ranks : numpy.ndarray of int64, shape (N,)
        Rank of video ``i`` among all videos for text ``i`` (:func:`ranking_ranks`).
    v2t_ranks : numpy.ndarray of int64, shape (N,)
        Rank of text ``j`` among all texts for video ``j``.
    """
    s = _check_square(sim)
    diagonal = np.arange(s.shape[0])
    return ranking_ranks(s, diagonal), ranking_ranks(s.T, diagonal)


def retrieval_metrics(sim: np.ndarray) -> dict[str, float]:
    """Text-to-video and video-to-text recall@K and rank statistics of a square matrix.

    Parameters
    ----------
    sim : numpy.ndarray, shape (N_text, N_video) with N_text == N_video
        Similarity matrix; the i-th text matches the i-th video. Higher is more similar.

    Returns
    -------
    dict[str, float]
        For each direction ``d`` in ``t2v`` (rank videos for each text, row-wise) and ``v2t``
        (rank texts for each video, column-wise) the keys of :func:`ranking_metrics` prefixed
        with ``{d}_``: ``{d}_r1``, ``{d}_r5``, ``{d}_r10`` (fractions), ``{d}_medr`` and
        ``{d}_meanr`` (1-based ranks; ties count against the model).

    Raises
    ------
    ValueError
        Non-square or empty matrix, or NaN/inf similarities.
    """
    s = _check_square(sim)
    diagonal = np.arange(s.shape[0])
    out = {}
    for prefix, matrix in (("t2v", s), ("v2t", s.T)):
        out.update({f"{prefix}_{k}": v for k, v in ranking_metrics(matrix, diagonal).items()})
    return out
