"""The run report's tables: metrics logged as fractions print as labelled percentages."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.registry import get_task, task_names
from polymodal.runs import markdown_table as _table


def test_fraction_metrics_print_as_labelled_percentages() -> None:
    rows = [{"epoch": "0", "train_loss": "0.5", "val_accuracy": "0.625", "val_mae": "0.25", "val_t2v_medr": "3"}]
    keys = ["epoch", "train_loss", "val_accuracy", "val_mae", "val_t2v_medr"]
    table = _table(rows, keys, frozenset({"accuracy"}))
    assert table.splitlines()[0] == "| epoch | train_loss | val_accuracy | val_mae | val_t2v_medr |"
    assert table.splitlines()[2] == "| 0 | 0.5 | 62.5 % | 0.25 | 3 |"
    # evaluation tables name the metrics without the val_ prefix; without a declaration nothing is %
    assert "| 62.5 % |" in _table([{"accuracy": 0.625}], ["accuracy"], frozenset({"accuracy"}))
    assert _table([{"accuracy": 0.625}], ["accuracy"]).splitlines()[2] == "| 0.625 |"


@pytest.mark.parametrize("name", task_names())
def test_every_task_declares_its_fraction_metrics(name: str) -> None:
    fractions = get_task(name).fraction_metrics  # the report prints these as %
    assert isinstance(fractions, frozenset) and all(isinstance(k, str) for k in fractions)


@pytest.mark.parametrize("name, outputs", [
    ("wander.classification", {"logits": np.eye(3)[[0, 1, 2, 0]], "label": np.array([0, 1, 1, 0])}),
    ("wander.regression", {"pred": np.array([-1.2, 0.4, 2.0, 0.0]), "label": np.array([-1.0, 1.0, 2.5, 0.0])}),
    ("wander.retrieval", {"text_emb": np.eye(4), "video_emb": np.eye(4)[[0, 2, 1, 3]]}),
])
def test_wander_fraction_metrics_are_fractions(name: str, outputs: dict) -> None:
    task = get_task(name)
    metrics = task.metrics(outputs)
    assert task.fraction_metrics <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in task.fraction_metrics)
