"""Wander's metrics against independent references (sklearn, scipy, MMSA's regression code)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from polymodal.models.wander.metrics import classification_metrics, regression_metrics

# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_classes", [2, 5])
def test_classification_matches_sklearn_from_logits(seed: int, num_classes: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(97, num_classes)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=97)
    pred = logits.argmax(1)
    got = classification_metrics(logits, labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert got["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(labels, pred, average="weighted"))


def test_classification_from_predicted_ids_with_unpredicted_and_unseen_classes() -> None:
    # Class 3 is predicted but never true, class 2 is true but never predicted: both count
    # in the macro average exactly as sklearn counts them.
    labels = np.array([0, 0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 1, 3, 0, 1, 0])
    got = classification_metrics(pred, labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert got["f1_macro"] == pytest.approx(
        f1_score(labels, pred, average="macro", zero_division=0)
    )
    assert got["f1_weighted"] == pytest.approx(
        f1_score(labels, pred, average="weighted", zero_division=0)
    )


def test_classification_hand_worked() -> None:
    # Class 0: TP=1 FP=1 FN=1 -> F1 = 2/4 = 0.5; class 1: TP=1 FP=1 FN=1 -> 0.5.
    got = classification_metrics(np.array([0, 1, 1, 0]), np.array([0, 0, 1, 1]))
    assert got == {"accuracy": 0.5, "f1_macro": 0.5, "f1_weighted": 0.5}


def test_classification_all_one_class_and_single_row() -> None:
    labels = np.zeros(6, dtype=np.int64)
    assert classification_metrics(labels, labels) == {
        "accuracy": 1.0,
        "f1_macro": 1.0,
        "f1_weighted": 1.0,
    }
    pred = np.array([0, 0, 1, 0, 1, 0])
    got = classification_metrics(pred, labels)
    assert got["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(labels, pred, average="weighted"))
    one = classification_metrics(np.array([[0.1, 0.9]]), np.array([1]))
    assert one == {"accuracy": 1.0, "f1_macro": 1.0, "f1_weighted": 1.0}


def test_classification_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([[0.1, np.nan], [0.2, 0.3]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="rows"):
        classification_metrics(np.zeros((3, 2)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.zeros((0, 2)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="integer"):
        classification_metrics(np.zeros((2, 2)), np.array([0.5, 1.0]))


# ---------------------------------------------------------------- regression


def _mmsa_reference(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """MMSA's eval_mosi_regression, transcribed with sklearn/scipy as the references."""
    a7_p, a7_t = np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0)
    nz = np.array([i for i, e in enumerate(truth) if e != 0])
    return {
        "mae": float(np.mean(np.absolute(pred - truth))),
        "pearson": float(pearsonr(pred, truth)[0]),
        "acc7": float(np.sum(np.round(a7_p) == np.round(a7_t)) / len(truth)),
        "acc2": accuracy_score(truth >= 0, pred >= 0),
        "f1": f1_score(truth >= 0, pred >= 0, average="weighted"),
        "acc2_nonzero": accuracy_score(truth[nz] > 0, pred[nz] > 0),
        "f1_nonzero": f1_score(truth[nz] > 0, pred[nz] > 0, average="weighted"),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_matches_mmsa_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # MOSI targets are averages of annotator scores: many exact zeros and x.5 values.
    truth = rng.integers(-6, 7, size=200) / 2.0
    pred = np.clip(truth + rng.normal(scale=1.5, size=200), -4.0, 4.0)
    pred[:5] = [0.0, 2.5, -0.5, 3.7, -3.2]  # exercise >= 0, half-to-even and clipping
    got = regression_metrics(pred.astype(np.float32), truth.astype(np.float32))
    want = _mmsa_reference(pred.astype(np.float32).astype(np.float64), truth)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_regression_hand_worked() -> None:
    pred = np.array([0.0, 2.5, -1.4, 3.6])
    truth = np.array([0.0, 2.0, 1.0, 3.0])
    got = regression_metrics(pred, truth)
    assert got["mae"] == pytest.approx((0 + 0.5 + 2.4 + 0.6) / 4)
    # rounded classes: pred [0, 2, -1, 3] (2.5 -> 2: half to even) vs truth [0, 2, 1, 3]
    assert got["acc7"] == pytest.approx(0.75)
    # >= 0: pred [T, T, F, T], truth [T, T, T, T]
    assert got["acc2"] == pytest.approx(0.75)
    # non-zero targets only (rows 1..3): pred > 0 [T, F, T], truth [T, T, T]
    assert got["acc2_nonzero"] == pytest.approx(2 / 3)


def test_regression_edge_cases() -> None:
    single = regression_metrics(np.array([1.0]), np.array([1.0]))
    assert single["mae"] == 0.0 and single["acc2"] == 1.0 and single["acc7"] == 1.0
    assert math.isnan(single["pearson"])  # undefined for one point
    zeros = regression_metrics(np.array([0.3, -0.2]), np.zeros(2))
    assert math.isnan(zeros["acc2_nonzero"]) and math.isnan(zeros["f1_nonzero"])
    assert zeros["acc2"] == 0.5
    col = regression_metrics(np.array([[0.5], [-1.0]]), np.array([1.0, -1.0]))
    assert col["acc2"] == 1.0
    with pytest.raises(ValueError, match="pred contains NaN"):
        regression_metrics(np.array([0.1, np.nan]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="target contains NaN"):
        regression_metrics(np.array([0.1, 0.2]), np.array([np.inf, 1.0]))
    with pytest.raises(ValueError, match="rows"):
        regression_metrics(np.zeros(3), np.zeros(2))
