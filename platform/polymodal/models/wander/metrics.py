"""Wander's metrics: single-label classification (accuracy, F1), multi-label binary targets
(IEMOCAP's per-emotion accuracy and F1) and MOSI / MOSEI sentiment regression (MAE, Pearson,
acc2, acc7, F1) with MMSA's conventions, over whole-split arrays.

The spine's conventions hold (:mod:`polymodal.metrics`: fractions in [0, 1], NaN or infinite
inputs raise, an undefined metric is ``nan``); retrieval is the spine's
:func:`polymodal.metrics.ranking_metrics`, which VIOLET shares. F1 scores follow
:func:`sklearn.metrics.f1_score`: the classes scored are the union of the classes present in the
labels and in the predictions; ``f1_macro`` is their unweighted mean, ``f1_weighted`` their mean
weighted by support (count in ``labels``).
"""

from __future__ import annotations

import numpy as np

from polymodal.metrics import _as_finite

__all__ = ["classification_metrics", "multilabel_metrics", "regression_metrics"]


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


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-target accuracy and weighted F1 for K independent binary targets, and their means.

    This is Multimodal-Transformer's ``eval_iemocap`` (yaohungt/Multimodal-Transformer
    ``src/eval_metrics.py``): for each emotion, ``accuracy_score`` and
    ``f1_score(average="weighted")`` of the 0/1 prediction against the 0/1 truth. There the model
    emits two logits per emotion and predicts their arg-max; here it emits one logit per target
    and predicts ``logit > 0``, which is the same decision for the logit pair ``(0, logit)``.

    Parameters
    ----------
    logits : numpy.ndarray, shape (N, K)
        One score per target; positive means "present".
    labels : numpy.ndarray, shape (N, K)
        True 0/1 targets.

    Returns
    -------
    dict[str, float]
        ``acc_<k>`` and ``f1_<k>`` for every target k (0-based, in the dataset's label order;
        IEMOCAP: 0 Neutral, 1 Happy, 2 Sad, 3 Angry), ``accuracy`` and ``f1``: their means over
        the targets. All in ``[0, 1]``.

    Raises
    ------
    ValueError
        Empty input, mismatched shapes, labels other than 0/1, or NaN/inf in either argument.
    """
    scores = _as_finite("logits", logits, (2,))
    true = _as_int_labels("labels", _as_finite("labels", labels, (2,)))
    if scores.shape != true.shape:
        raise ValueError(f"logits has shape {scores.shape} but labels has {true.shape}; both must be (N, K)")
    if not np.isin(true, (0, 1)).all():
        raise ValueError("labels must be 0/1 targets, got other values")
    pred = (scores > 0).astype(np.int64)
    out: dict[str, float] = {}
    for k in range(true.shape[1]):
        out[f"acc_{k}"] = float(np.mean(pred[:, k] == true[:, k]))
        out[f"f1_{k}"] = _f1_scores(pred[:, k], true[:, k])[1]
    n = true.shape[1]
    out["accuracy"] = sum(out[f"acc_{k}"] for k in range(n)) / n
    out["f1"] = sum(out[f"f1_{k}"] for k in range(n)) / n
    return out


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
