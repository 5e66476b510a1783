"""polymodal.metrics against independent references (sklearn, scipy, per-row loops)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from polymodal.metrics import (
    ranking_metrics,
    ranking_ranks,
    retrieval_metrics,
    retrieval_ranks,
)

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
