"""Metric functions shared by every system: pure numpy, no torch, no sklearn at runtime.

Every function takes whole-split arrays (the concatenated ``Task.predict`` outputs of all
workers) and returns a flat ``dict[str, float]`` that the train loop logs and Tune optimises.

Conventions
-----------
* Accuracies, F1 scores, recall@K and every other share are fractions in ``[0, 1]``, never
  percentages, in every system's metrics (what train, evaluate and Tune record); a Markdown
  report may print them as percentages, labelled ``%``. Ranks are 1-based ranks.
* F1 scores follow :func:`sklearn.metrics.f1_score`: the classes scored are the union of the
  classes present in the labels and in the predictions; ``f1_macro`` is their unweighted mean,
  ``f1_weighted`` their mean weighted by support (count in ``labels``).
* Inputs with NaN or infinite values raise :class:`ValueError` naming the argument, because a
  metric silently computed over NaN would pick the wrong checkpoint.
* A metric that is undefined for the input (Pearson correlation of a constant vector, a
  non-zero accuracy when every target is zero) is returned as ``nan`` rather than raising, so
  one degenerate evaluation does not stop a training run.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "classification_metrics",
    "ranking_metrics",
    "ranking_ranks",
    "regression_metrics",
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


def _as_int_labels(name: str, x: np.ndarray) -> np.ndarray:
    """Return integer class ids from an integer or integral-float array of shape (N,)."""
    if x.dtype.kind == "f":
        if not np.all(x == np.round(x)):
            raise ValueError(f"{name} must hold integer class ids, got non-integral floats")
    return x.astype(np.int64, copy=False)


def _f1_scores(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Macro and support-weighted F1 over the union of observed classes (sklearn semantics).

    Parameters
    ----------
    pred, true : numpy.ndarray, shape (N,)
        Predicted and true class ids (any integer or bool dtype), ``N >= 1``.

    Returns
    -------
    f1_macro, f1_weighted : float
    """
    classes, inverse = np.unique(np.concatenate([true, pred]), return_inverse=True)
    n = true.shape[0]
    t_idx, p_idx = inverse[:n], inverse[n:]
    k = classes.shape[0]
    tp = np.bincount(t_idx[t_idx == p_idx], minlength=k).astype(np.float64)
    support = np.bincount(t_idx, minlength=k).astype(np.float64)
    predicted = np.bincount(p_idx, minlength=k).astype(np.float64)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + support); every class here was either
    # predicted or present, so the denominator is positive and no zero-division rule is needed.
    f1 = 2.0 * tp / (predicted + support)
    return float(f1.mean()), float((f1 * support).sum() / support.sum())


def classification_metrics(
    logits_or_pred: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Accuracy and F1 for single-label classification.

    Parameters
    ----------
    logits_or_pred : numpy.ndarray, shape (N, C) or (N,)
        Either per-class scores (logits or probabilities; the prediction is the arg-max, first
        index on ties) or already-predicted integer class ids.
    labels : numpy.ndarray, shape (N,)
        True integer class ids.

    Returns
    -------
    dict[str, float]
        ``accuracy``, ``f1_macro``, ``f1_weighted`` in ``[0, 1]``; F1 follows sklearn
        (classes = union of labels and predictions, see the module docstring).

    Raises
    ------
    ValueError
        Empty input, mismatched lengths, non-integral labels, or NaN/inf in either argument.
    """
    scores = _as_finite("logits_or_pred", logits_or_pred, (1, 2))
    true = _as_int_labels("labels", _as_finite("labels", labels, (1,)))
    if scores.shape[0] != true.shape[0]:
        raise ValueError(
            f"logits_or_pred has {scores.shape[0]} rows but labels has {true.shape[0]}; "
            "they must describe the same examples"
        )
    if scores.ndim == 2:
        if scores.shape[1] == 0:
            raise ValueError("logits_or_pred has zero classes (shape (N, 0))")
        pred = np.argmax(scores, axis=1)
    else:
        pred = _as_int_labels("logits_or_pred", scores)
    f1_macro, f1_weighted = _f1_scores(pred, true)
    return {
        "accuracy": float(np.mean(pred == true)),
        "f1_macro": f1_macro,
        "f1_weighted": f1_weighted,
    }


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Sentiment-regression metrics with the CMU-MOSI / MOSEI conventions of MMSA.

    These match MMSA's ``eval_mosi_regression`` (and Wander's ``eval_senti``) so numbers are
    comparable with published tables:

    * ``mae``: mean absolute error on the raw (unclipped) values.
    * ``pearson``: Pearson correlation of raw values; ``nan`` when either side is constant
      (including ``N == 1``).
    * ``acc7``: clip both sides to ``[-3, 3]``, round to the nearest integer with
      :func:`numpy.round` (round half to even, as MMSA does, so 2.5 -> 2 and -0.5 -> -0),
      and compare the seven classes -3..3.
    * ``acc2`` / ``f1``: binarise as *negative vs non-negative*, ``x >= 0``, on all rows;
      ``f1`` is the support-weighted F1 of that binarisation.
    * ``acc2_nonzero`` / ``f1_nonzero``: drop rows whose *target* is exactly 0, binarise as
      *negative vs positive*, ``x > 0``; ``nan`` when every target is 0.

    Parameters
    ----------
    pred : numpy.ndarray, shape (N,) or (N, 1)
        Predicted sentiment scores.
    target : numpy.ndarray, shape (N,) or (N, 1)
        True sentiment scores (MOSI: in ``[-3, 3]``).

    Returns
    -------
    dict[str, float]
        ``mae``, ``pearson``, ``acc2``, ``acc2_nonzero``, ``f1``, ``f1_nonzero``, ``acc7``.

    Raises
    ------
    ValueError
        Empty input, mismatched lengths, or NaN/inf in either argument.
    """
    p = _as_finite("pred", pred, (1, 2)).astype(np.float64).reshape(len(pred), -1)
    t = _as_finite("target", target, (1, 2)).astype(np.float64).reshape(len(target), -1)
    if p.shape[1] != 1 or t.shape[1] != 1:
        raise ValueError(
            f"pred and target must be (N,) or (N, 1), got {np.shape(pred)} and {np.shape(target)}"
        )
    p, t = p[:, 0], t[:, 0]
    if p.shape[0] != t.shape[0]:
        raise ValueError(
            f"pred has {p.shape[0]} rows but target has {t.shape[0]}; "
            "they must describe the same examples"
        )

    p_c, t_c = p - p.mean(), t - t.mean()
    denom = np.sqrt((p_c**2).sum() * (t_c**2).sum())
    # Correlation is undefined for a constant side; report nan instead of dividing by zero.
    pearson = float((p_c * t_c).sum() / denom) if denom > 0 else float("nan")

    acc7 = float(np.mean(np.round(np.clip(p, -3.0, 3.0)) == np.round(np.clip(t, -3.0, 3.0))))

    bin_p, bin_t = p >= 0, t >= 0
    _, f1 = _f1_scores(bin_p, bin_t)

    nonzero = t != 0
    if nonzero.any():
        nz_p, nz_t = p[nonzero] > 0, t[nonzero] > 0
        acc2_nonzero = float(np.mean(nz_p == nz_t))
        _, f1_nonzero = _f1_scores(nz_p, nz_t)
    else:
        acc2_nonzero = f1_nonzero = float("nan")

    return {
        "mae": float(np.mean(np.abs(p - t))),
        "pearson": pearson,
        "acc2": float(np.mean(bin_p == bin_t)),
        "acc2_nonzero": acc2_nonzero,
        "f1": f1,
        "f1_nonzero": f1_nonzero,
        "acc7": acc7,
    }


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
