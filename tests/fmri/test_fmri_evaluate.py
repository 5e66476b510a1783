"""Encoding-model evaluation against scipy's Pearson r and explicit sorting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from polymodal.models.fmri.metrics import per_story, summarize, voxel_correlations


def test_voxel_correlations_match_scipy_and_constant_columns_are_zero():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((50, 6))
    P = Y * rng.uniform(-1, 1, 6) + rng.standard_normal((50, 6))
    P[:, 5] = 3.0                                     # a constant prediction
    r = voxel_correlations(P, Y)
    for v in range(5):
        assert r[v] == pytest.approx(pearsonr(P[:, v], Y[:, v])[0], abs=1e-12)
    assert r[5] == 0.0
    with pytest.raises(ValueError, match="same"):
        voxel_correlations(P[:, :3], Y)


def test_summaries_by_hand():
    r = np.arange(200) / 200.0                        # 0.000 ... 0.995
    s = summarize(r)
    assert s["mean"] == pytest.approx(r.mean()) and s["median"] == pytest.approx(np.median(r))
    assert s["top1"] == pytest.approx((0.995 + 0.990) / 2)          # best 2 of 200
    assert s["top5"] == pytest.approx(np.sort(r)[-10:].mean())       # best 10 of 200
    assert summarize(np.array([0.3]))["top1"] == pytest.approx(0.3)  # at least one voxel


def test_per_story_rows():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((40, 4))
    P = Y.copy()
    P[20:] = rng.standard_normal((20, 4))             # story b is not predicted
    rows = per_story(P, Y, np.repeat([0, 1], 20), ["a", "b"])
    assert [r["story"] for r in rows] == ["a", "b"] and rows[0]["trs"] == 20
    assert rows[0]["mean"] == pytest.approx(1.0) and abs(rows[1]["mean"]) < 0.5
    with pytest.raises(ValueError, match="story 'c' has 0 TRs"):
        per_story(P, Y, np.repeat([0, 1], 20), ["a", "b", "c"])
