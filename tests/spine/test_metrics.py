"""polymodal.metrics against independent references (sklearn, scipy, per-row loops)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from polymodal.metrics import (
    classification_metrics,
    ranking_metrics,
    ranking_ranks,
    regression_metrics,
    retrieval_metrics,
    retrieval_ranks,
)

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


# ---------------------------------------------------------------- retrieval


def _loop_ranks(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: per-row argsort; the match is placed after every tie (pessimistic)."""
    n = sim.shape[0]
    t2v, v2t = np.zeros(n, dtype=int), np.zeros(n, dtype=int)
    for i in range(n):
        # Sort by descending score; among equal scores the match goes last (key 1 > 0).
        order = sorted(range(n), key=lambda j: (-sim[i, j], j == i))
        t2v[i] = order.index(i) + 1
        order = sorted(range(n), key=lambda j: (-sim[j, i], j == i))
        v2t[i] = order.index(i) + 1
    return t2v, v2t


def test_retrieval_hand_worked_3x3() -> None:
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # text 0: match best -> rank 1
            [0.8, 0.5, 0.7],  # text 1: two videos above -> rank 3
            [0.3, 0.6, 0.4],  # text 2: video 1 above -> rank 2
        ]
    )
    t2v, v2t = retrieval_ranks(sim)
    np.testing.assert_array_equal(t2v, [1, 3, 2])
    # video 0: column [0.9, 0.8, 0.3] -> 1; video 1: [0.1, 0.5, 0.6] -> 2; video 2 -> 2
    np.testing.assert_array_equal(v2t, [1, 2, 2])
    got = retrieval_metrics(sim)
    assert got["t2v_r1"] == pytest.approx(1 / 3)
    assert got["t2v_r5"] == 1.0 and got["t2v_r10"] == 1.0
    assert got["t2v_medr"] == 2.0 and got["t2v_meanr"] == pytest.approx(2.0)
    assert got["v2t_r1"] == pytest.approx(1 / 3)
    assert got["v2t_medr"] == 2.0 and got["v2t_meanr"] == pytest.approx(5 / 3)


def test_retrieval_ties_are_pessimistic() -> None:
    t2v, v2t = retrieval_ranks(np.ones((4, 4)))
    np.testing.assert_array_equal(t2v, [4, 4, 4, 4])
    np.testing.assert_array_equal(v2t, [4, 4, 4, 4])
    assert retrieval_metrics(np.ones((4, 4)))["t2v_r1"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_per_row_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    # Quantised scores so ties happen often; a diagonal boost so ranks spread out.
    sim = np.round(rng.normal(size=(n, n)) + 1.5 * np.eye(n), 1).astype(np.float32)
    t2v, v2t = retrieval_ranks(sim)
    ref_t2v, ref_v2t = _loop_ranks(sim)
    np.testing.assert_array_equal(t2v, ref_t2v)
    np.testing.assert_array_equal(v2t, ref_v2t)
    got = retrieval_metrics(sim)
    for prefix, ref in (("t2v", ref_t2v), ("v2t", ref_v2t)):
        for k in (1, 5, 10):
            assert got[f"{prefix}_r{k}"] == pytest.approx(np.mean(ref <= k))
        assert got[f"{prefix}_medr"] == pytest.approx(np.median(ref))
        assert got[f"{prefix}_meanr"] == pytest.approx(np.mean(ref))


def test_retrieval_edge_cases() -> None:
    one = retrieval_metrics(np.array([[0.3]]))
    assert one["t2v_r1"] == 1.0 and one["v2t_medr"] == 1.0
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="sim contains NaN"):
        retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3))


# ---------------------------------------------------------------- ranking (N queries x C candidates)


def _sorted_ranks(scores: np.ndarray, positives: np.ndarray) -> list[int]:
    """Reference: sort each row's candidates best first, the positive after every candidate tied
    with it; its 1-based position is the rank."""
    ranks = []
    for n, row in enumerate(scores.tolist()):
        true = int(positives[n])
        order = sorted(range(len(row)), key=lambda c: (-row[c], c == true))
        ranks.append(order.index(true) + 1)
    return ranks


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n, c", [(1, 1), (1, 7), (9, 1), (12, 12), (23, 5), (17, 40)])
def test_ranking_matches_a_brute_force_sort(n: int, c: int, ties: bool) -> None:
    rng = np.random.default_rng(n * 1000 + c * 10 + ties)
    # few distinct values: many ties, also with the positive
    scores = rng.integers(0, 4, size=(n, c)).astype(np.float64) if ties else rng.normal(size=(n, c))
    positives = rng.integers(0, c, size=n)
    ref = _sorted_ranks(scores, positives)
    assert ranking_ranks(scores, positives).tolist() == ref
    ks = (1, 2, 5, 10)
    got = ranking_metrics(scores, positives, ks=ks)
    want = {f"r{k}": sum(r <= k for r in ref) / n for k in ks}
    want.update(medr=float(statistics.median(ref)), meanr=sum(ref) / n)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_ranking_hand_worked_cases() -> None:
    perfect = ranking_metrics(np.eye(4), np.arange(4))
    assert perfect == {"r1": 1.0, "r5": 1.0, "r10": 1.0, "medr": 1.0, "meanr": 1.0}
    # every query prefers the highest-numbered candidate: query n's candidate n ranks 5 - n
    reversed_ = ranking_metrics(np.tile(np.arange(5.0), (5, 1)), np.arange(5))
    assert reversed_ == {"r1": 0.2, "r5": 1.0, "r10": 1.0, "medr": 3.0, "meanr": 3.0}
    # a constant scorer ranks every positive last (ties count against), never first
    flat = ranking_metrics(np.zeros((3, 12)), np.array([0, 5, 11]))
    assert flat == {"r1": 0.0, "r5": 0.0, "r10": 0.0, "medr": 12.0, "meanr": 12.0}
    # one caption of video 0, two of video 1 (N != C): ranks 1, 1, 2
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert ranking_ranks(scores, np.array([0, 1, 1])).tolist() == [1, 1, 2]
    assert ranking_metrics(scores, np.array([0, 1, 1])) == pytest.approx(
        {"r1": 2 / 3, "r5": 1.0, "r10": 1.0, "medr": 1.0, "meanr": 4 / 3})
    assert ranking_metrics(scores, np.array([0, 1, 1]), ks=(2,)) == pytest.approx(
        {"r2": 1.0, "medr": 1.0, "meanr": 4 / 3})


def test_square_retrieval_is_ranking_in_both_directions() -> None:
    rng = np.random.default_rng(3)
    sim = np.round(rng.normal(size=(15, 15)), 1)
    got = retrieval_metrics(sim)
    for prefix, matrix in (("t2v", sim), ("v2t", sim.T)):
        for key, value in ranking_metrics(matrix, np.arange(15)).items():
            assert got[f"{prefix}_{key}"] == value


@pytest.mark.parametrize("scores, positives, match", [
    (np.zeros(4), np.zeros(4, int), "matrix"),
    (np.zeros((0, 3)), np.zeros(0, int), "non-empty"),
    (np.zeros((2, 0)), np.zeros(2, int), "non-empty"),
    (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
    (np.array([[0.0, np.inf]]), np.array([0]), "NaN or infinite"),
    (np.zeros((2, 3)), np.zeros(3, int), r"\(N,\) = \(2,\)"),
    (np.zeros((2, 3)), np.zeros(2), "integer"),
    (np.zeros((2, 3)), np.array([0, 3]), "outside 0..2"),
    (np.zeros((2, 3)), np.array([-1, 0]), "outside 0..2"),
    (np.zeros((2, 3), dtype=bool), np.array([0, 0]), "real numbers"),
])
def test_ranking_rejects_bad_input(scores, positives, match) -> None:
    with pytest.raises(ValueError, match=match):
        ranking_metrics(scores, positives)


def test_ranking_rejects_a_cut_off_below_one() -> None:
    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(np.eye(3), np.arange(3), ks=(0, 1))
