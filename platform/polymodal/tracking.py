"""Experiment tracking with MLflow, through Ray's own integrations (``tracking: {mlflow: {uri, experiment}}``).

* A training run is one MLflow run, opened by the rank-0 worker: under Ray Train with
  :func:`ray.air.integrations.mlflow.setup_mlflow` (the other ranks get a no-op), under
  ``train --local`` with the MLflow client directly; both then log the same way
  (:class:`MlflowRun`): the flattened config as params, per-step scalars (``step/loss``,
  ``step/lr``, ``step/grad_norm``, ``step/samples_per_s``) sent in one batch per epoch, not per step,
  every ``logs/metrics.csv`` row at its global step, and at the end ``logs/`` (metrics.csv,
  TensorBoard files) as artifacts. ``polymodal report`` adds the report and its plots to the newest
  run of the same run folder (tag ``polymodal.run``).
* A Tune sweep: :class:`ray.air.integrations.mlflow.MLflowLoggerCallback` on the Tune driver, one
  MLflow run per trial with the sampled values as params and every reported result as metrics
  (:func:`tune_callbacks`).

The MLflow client is optional (``pip install 'polymodal[tracking]'``); nothing here imports it
unless the config asks for tracking.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from polymodal.config import ExperimentConfig, MlflowOptions
from polymodal.errors import require

#: tag holding the run folder, so the report (written later, by another process) finds the run
RUN_TAG = "polymodal.run"
#: prefix of the per-step scalars, which share names with metrics.csv's per-epoch columns
STEP_PREFIX = "step/"


def _mlflow(what: str):
    return require("mlflow", "tracking", what)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": "0.1"}``: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def _tags(cfg: ExperimentConfig) -> dict[str, str]:
    return {RUN_TAG: cfg.run_uri, "polymodal.task": cfg.task}


class MlflowRun:
    """The MLflow run of one training run, on rank 0. Per-step scalars are kept in memory and sent in
    one request at each :meth:`log_row` (an epoch's end or a step evaluation), so a step never waits
    on the tracking server."""

    def __init__(self, mlflow: Any, uri: str, run_id: str):
        self.mlflow, self.run_id = mlflow, run_id
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.pending: list[Any] = []

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(STEP_PREFIX + k, float(v), now, step) for k, v in scalars.items()]

    def log_row(self, row: dict[str, Any]) -> None:
        """A metrics.csv row (numbers only) at its global step, with the step scalars logged so far."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["global_step"])
        metrics = self.pending + [Metric(k, float(v), now, step) for k, v in row.items()
                                  if k != "global_step" and isinstance(v, (int, float)) and v == v]
        self.pending = []
        self.client.log_batch(self.run_id, metrics=metrics)  # the client splits it into the server's limits

    def finish(self, logs_dir: Path) -> None:
        """Send what is pending, ``logs_dir`` (metrics.csv, tensorboard/) as artifacts ``logs/``; end the run."""
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.client.log_artifacts(self.run_id, str(logs_dir), "logs")
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run()  # the run setup_mlflow made active in this worker
        else:
            self.client.set_terminated(self.run_id)


def start_run(cfg: ExperimentConfig, *, ray_train: bool) -> MlflowRun | None:
    """Open the MLflow run of ``cfg`` on rank 0 (None when tracking is off). ``ray_train``: inside a Ray
    Train worker, through Ray's ``setup_mlflow``; else (``--local``) with the client directly, which
    leaves no active run behind in the caller's process."""
    opts = cfg.tracking.mlflow
    if opts is None:
        return None
    mlflow = _mlflow("experiment tracking (tracking.mlflow)")
    params = flatten(cfg.to_dict())
    if ray_train:
        from ray.air.integrations.mlflow import setup_mlflow

        # sets the tracking URI and experiment (created if missing), starts the active run, logs params
        session = setup_mlflow(config=params, tracking_uri=opts.uri, experiment_name=opts.experiment,
                               create_experiment_if_not_exists=True,  # Ray's default refuses a new one
                               run_name=cfg.name, tags=_tags(cfg), rank_zero_only=True)
        return MlflowRun(session, opts.uri, session.active_run().info.run_id)
    client = mlflow.tracking.MlflowClient(tracking_uri=opts.uri)
    experiment = client.get_experiment_by_name(opts.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(opts.experiment)
    run = client.create_run(experiment_id, run_name=cfg.name, tags=_tags(cfg))
    from mlflow.entities import Param

    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
    return MlflowRun(mlflow, opts.uri, run.info.run_id)


def latest_run_id(opts: MlflowOptions, cfg: ExperimentConfig) -> str | None:
    """The newest MLflow run logged for ``cfg``'s run folder, or None."""
    mlflow = _mlflow("experiment tracking (tracking.mlflow)")
    client = mlflow.tracking.MlflowClient(tracking_uri=opts.uri)
    experiment = client.get_experiment_by_name(opts.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{cfg.run_uri}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def log_report(cfg: ExperimentConfig, report_dir: Path) -> str | None:
    """Add the files of ``report_dir`` (report.md, plots) as artifacts ``report/`` to the run's newest
    MLflow run; return its id (None when tracking is off or the run was never tracked)."""
    opts = cfg.tracking.mlflow
    if opts is None:
        return None
    run_id = latest_run_id(opts, cfg)
    if run_id is not None:
        mlflow = _mlflow("experiment tracking (tracking.mlflow)")
        mlflow.tracking.MlflowClient(tracking_uri=opts.uri).log_artifacts(run_id, str(report_dir), "report")
    return run_id


def tune_callbacks(cfg: ExperimentConfig) -> list[Any]:
    """Tune callbacks from ``cfg.tracking``: :class:`~ray.air.integrations.mlflow.MLflowLoggerCallback`
    (one MLflow run per trial: its sampled values as params, every reported result as metrics, the
    trial's folder as artifacts) when MLflow is on, else none."""
    opts = cfg.tracking.mlflow
    if opts is None:
        return []
    _mlflow("experiment tracking of a sweep (tracking.mlflow)")
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=opts.uri, experiment_name=opts.experiment, save_artifact=True,
                                 tags={"polymodal.sweep_of": cfg.run_uri, "polymodal.task": cfg.task})]
