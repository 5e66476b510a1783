"""VIOLET's metrics: accuracies as fractions in [0, 1] over whole-split arrays.

Text-to-video retrieval ranks are the spine's (:func:`polymodal.metrics.ranking_metrics`), which
Wander's retrieval task shares.
"""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, answer: np.ndarray) -> float:
    """Fraction of rows whose prediction equals the answer; ``answer == -1`` never does."""
    return float(np.mean(pred == answer)) if len(answer) else float("nan")


def pretrain_metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """``vtm_acc`` over every positive pair and one in-batch negative per video (NaN rows, from a
    one-row batch, are left out), and ``mlm_acc`` / ``mvm_acc`` over the masked items, each only
    when ``outputs`` has its ``<name>_hit`` / ``<name>_n`` counts (its objective is switched on)."""
    pairs = np.concatenate([outputs["vtm_pos"], outputs["vtm_neg"]])
    pairs = pairs[~np.isnan(pairs)]
    out = {"vtm_acc": float(pairs.mean()) if len(pairs) else float("nan")}
    for name in ("mlm", "mvm"):
        if f"{name}_n" not in outputs:  # objective switched off
            continue
        n = int(outputs[f"{name}_n"].sum())
        out[f"{name}_acc"] = float(outputs[f"{name}_hit"].sum() / n) if n else float("nan")
    return out
