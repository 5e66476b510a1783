"""Every registered task through one path, written once: a new system is covered by registering it.

Synthetic data (``Task.synth``, shared per session) -> a tiny-preset config pointed at it
(``Task.synth_overrides``) -> one epoch fitted in this process (``Task.fit``: collate, loss,
backward, predict and metrics inside the shared loop, or the task's own closed-form fit) ->
``Task.evaluate_run`` on the test split (the session's Ray cluster is up for tasks that evaluate
with Ray) -> the checkpoint loaded for serving (``ModelStore``: ``Task.load_checkpoint``, the index
where the task has one) -> one request built from the test split (``Task.example_request``) validated by the task's request model, answered by
``serve_predict`` and checked against its response model -> the app a replica runs
(``local_app``) fuzzed with bodies shaped like that request (edge values, lists cut or grown, keys
dropped, added or retyped, odd encodings): every answer is 2xx of the response model or a 4xx
that says why, and the good request is served afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from fuzzing import Client, budget, fuzz_json_bodies

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


@dataclass
class Fitted:
    """A task fitted for one epoch on its synthetic data (once per module)."""

    task: Any
    cfg: Any
    data: dict[str, str]
    summary: dict[str, Any]

    @property
    def test_split(self) -> str:
        return self.data.get("test", self.data["train"])

    def serve_args(self) -> dict[str, Any]:
        """Serve args for the run, with the test split as the index where the task has one."""
        try:
            self.task.open_index(self.test_split, self.cfg.storage)
            index = self.test_split
        except NotImplementedError:
            index = None
        return {"checkpoint": self.cfg.run_uri, "index": index}

    def request_model(self) -> Any:
        try:
            return self.task.request_model(self.cfg.model)
        except NotImplementedError:
            pytest.skip(f"{self.task.name} is not served")


@pytest.fixture(scope="module")
def fitted(request, synthetic, ray_cluster, tmp_path_factory) -> Fitted:
    name = request.param
    task, data = get_task(name), synthetic(name)
    cfg = tiny_config(name, data, str(tmp_path_factory.mktemp(f"every-{name}")))
    return Fitted(task, cfg, data, task.fit(cfg, progress=False, local=True))


def every_task(test):
    return pytest.mark.parametrize("fitted", task_names(), indirect=True)(test)


@every_task
def test_a_task_fits_and_evaluates(fitted):
    task, cfg, summary = fitted.task, fitted.cfg, fitted.summary
    assert summary["best_checkpoint"] or summary["latest_checkpoint"], summary
    result, uri = task.evaluate_run(cfg, "test", progress=False)
    metrics = result["metrics"]
    assert metrics and uri.endswith("test.json")
    assert task.primary_metric in metrics or task.primary_metric in summary["metrics"]
    for key in task.fraction_metrics & set(metrics):  # the one metric convention: shares are fractions
        assert math.isnan(metrics[key]) or 0.0 <= metrics[key] <= 1.0, (key, metrics[key])


@every_task
def test_a_task_serves_its_example_request(fitted):
    from polymodal.serving.app import ModelStore, parse_args

    request_model = fitted.request_model()
    store = ModelStore(parse_args(fitted.serve_args()))
    example = fitted.task.example_request(fitted.cfg, fitted.test_split)
    (response,) = fitted.task.serve_predict(store.base.model, [request_model.model_validate(example)])
    store.response_model.model_validate(response.model_dump())


@budget(20, 150)
@every_task
def test_a_task_app_answers_fuzzed_bodies_with_2xx_or_a_4xx_reason(fitted, n):
    from polymodal.serving.app import local_app

    fitted.request_model()  # skips a task that is not served
    client = Client(local_app(fitted.serve_args()))
    example = fitted.task.example_request(fitted.cfg, fitted.test_split)
    try:
        fuzz_json_bodies(client, example, fitted.task.response_model(fitted.cfg.model), n)
    finally:
        client.close()
