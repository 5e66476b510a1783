"""Held-out evaluation of encoding models: per-voxel correlation and its summaries.

``top1`` / ``top5`` are the mean correlation of the best 1% / 5% of voxels (at least one voxel),
the usual way to report how well the best-predicted cortex does when most voxels are noise.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def voxel_correlations(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Pearson r per column of (T, V) arrays -> (V,); a constant column gives 0, not NaN."""
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if pred.shape != actual.shape or pred.ndim != 2:
        raise ValueError(f"predictions {pred.shape} and responses {actual.shape} must be the same (TRs, voxels)")
    pc = pred - pred.mean(0)
    ac = actual - actual.mean(0)
    denom = np.sqrt((pc * pc).sum(0) * (ac * ac).sum(0))
    num = (pc * ac).sum(0)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def summarize(r: np.ndarray) -> dict[str, float]:
    """``mean``, ``median``, ``top1``, ``top5`` (mean of the best 1% / 5% of voxels)."""
    r = np.sort(np.asarray(r, dtype=np.float64))[::-1]
    if r.size == 0:
        raise ValueError("no voxels to summarise")

    def top(frac: float) -> float:
        return float(r[:max(1, int(round(frac * r.size)))].mean())

    return {"mean": float(r.mean()), "median": float(np.median(r)), "top1": top(0.01), "top5": top(0.05)}


def per_story(pred: np.ndarray, actual: np.ndarray, story_index: np.ndarray, names: Sequence[str]
              ) -> list[dict[str, float | str | int]]:
    """One row per held-out story: its TRs and the summaries of its per-voxel correlations."""
    story_index = np.asarray(story_index)
    rows = []
    for i, name in enumerate(names):
        keep = story_index == i
        if keep.sum() < 3:
            raise ValueError(f"story {name!r} has {int(keep.sum())} TRs; correlations need at least 3")
        rows.append({"story": name, "trs": int(keep.sum()),
                     **summarize(voxel_correlations(pred[keep], actual[keep]))})
    return rows
