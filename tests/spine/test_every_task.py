"""Every registered task through one path, written once: a new system is covered by registering it.

Synthetic data (``Task.synth``, shared per session) -> a tiny-preset config pointed at it
(``Task.synth_overrides``) -> one epoch fitted in this process (``Task.fit``: collate, loss,
backward, predict and metrics inside the shared loop, or the task's own closed-form fit) ->
``Task.evaluate_run`` on the test split (the session's Ray cluster is up for tasks that evaluate
with Ray) -> the checkpoint loaded for serving (``ModelStore``: ``Task.load_checkpoint``, the index
where the task has one) -> one request built from the test split (``Task.example_request``) validated by the task's request model, answered by
``serve_predict`` and checked against its response model.
"""

from __future__ import annotations

import math

import pytest

from polymodal.config import validate_config
from polymodal.registry import get_task, task_names

# one epoch of a few rows is enough to run every hook; learning is each system's own test
FAST = {"optim": {"epochs": 1, "batch_size": 8, "warmup_steps": 0},
        "scaling": {"num_workers": 1, "use_gpu": False}, "checkpoint": {"num_to_keep": 1}}


def tiny_config(name: str, data: dict[str, str], storage_path: str):
    task = get_task(name)
    raw = {"task": name, "name": f"every-{name}", "seed": 0, "model": {"preset": "tiny"},
           "storage_path": storage_path, **FAST}
    for override in task.synth_overrides(data):
        key, value = override.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return validate_config(raw, source=f"the tiny config of {name}")


@pytest.mark.parametrize("name", task_names())
def test_a_task_fits_evaluates_and_serves(name, synthetic, ray_cluster, tmp_path):
    from polymodal.serving.app import ModelStore, parse_args

    task = get_task(name)
    data = synthetic(name)
    cfg = tiny_config(name, data, str(tmp_path / "runs"))

    summary = task.fit(cfg, progress=False, local=True)
    assert summary["best_checkpoint"] or summary["latest_checkpoint"], summary
    result, uri = task.evaluate_run(cfg, "test", progress=False)
    metrics = result["metrics"]
    assert metrics and uri.endswith("test.json")
    assert task.primary_metric in metrics or task.primary_metric in summary["metrics"]
    for key in task.fraction_metrics & set(metrics):  # the one metric convention: shares are fractions
        assert math.isnan(metrics[key]) or 0.0 <= metrics[key] <= 1.0, (key, metrics[key])

    try:
        request_model = task.request_model(cfg.model)
    except NotImplementedError:
        pytest.skip(f"{name} is not served")
    test_split = data.get("test", data["train"])
    try:
        task.open_index(test_split, cfg.storage)
        index = test_split
    except NotImplementedError:
        index = None
    store = ModelStore(parse_args({"checkpoint": cfg.run_uri, "index": index}))
    request = request_model.model_validate(task.example_request(cfg, test_split))
    (response,) = task.serve_predict(store.base.model, [request])
    store.response_model.model_validate(response.model_dump())
