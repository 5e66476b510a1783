"""Experiment tracking and what the train loop measures about itself.

* ``tracking: {mlflow: {uri, experiment}}``: validated like every section, off by default, a missing
  client names the ``tracking`` extra.
* A ``--local`` run logs its params, per-step and per-epoch metrics and artifacts to MLflow through
  a ``sqlite:///`` store (MLflow 3.17's "no server" store: its ``file:`` store now refuses to open
  unless ``MLFLOW_ALLOW_FILE_STORE=true``), TensorBoard gets one point per optimizer step of
  ``step/loss``, ``step/lr``, ``step/grad_norm`` and ``step/samples_per_s``, and metrics.csv holds
  ``data_wait_s`` / ``data_wait_frac``, larger in an epoch whose batches come slowly.
* Slow: a Ray Train run (``setup_mlflow`` in the rank-0 worker) and a Tune sweep
  (``MLflowLoggerCallback``) appear in a real ``mlflow server`` on 127.0.0.1, read back with
  ``MlflowClient``.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from support import deepspeed_process_group, wander_config

from polymodal import storage
from polymodal.config import validate_config
from polymodal.errors import ConfigError, PolymodalError
from polymodal.ports import free_port
from polymodal.train import loop

ROOT = Path(__file__).resolve().parents[2]
STEP_TAGS = ("step/loss", "step/lr", "step/grad_norm", "step/samples_per_s")


def _raw(**sections):
    return {"task": "wander.classification", "model": {"preset": "tiny", "backbone": "b"},
            "data": {"train": "s3://b/train"}, **sections}


def _rows(cfg) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(storage.join(cfg.run_uri, "logs", "metrics.csv")))))


def _mlflow_run(uri: str, experiment: str):
    """The one run of ``experiment`` and its client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


# --------------------------------------------------------------------------- config


def test_tracking_is_off_by_default_and_validated_like_every_section():
    assert validate_config(_raw()).tracking.mlflow is None
    cfg = validate_config(_raw(tracking={"mlflow": {"uri": "http://127.0.0.1:5000"}}))
    assert (cfg.tracking.mlflow.uri, cfg.tracking.mlflow.experiment) == ("http://127.0.0.1:5000", "polymodal")
    assert validate_config(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError) as err:
        validate_config(_raw(tracking={"mlflow": {"url": "http://x"}, "wandb": {}}))
    paths = dict(err.value.errors)
    assert "unknown key" in paths["tracking.mlflow.url"] and "unknown key" in paths["tracking.wandb"]
    assert "tracking.mlflow.uri" in paths  # the required key the typo left out


def test_a_missing_mlflow_client_names_the_extra(monkeypatch):
    from polymodal import tracking

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    cfg = validate_config(_raw(tracking={"mlflow": {"uri": "sqlite:///x.db"}}))
    with pytest.raises(PolymodalError, match=r"pip install 'polymodal\[tracking\]'"):
        tracking.start_run(cfg, ray_train=False)
    with pytest.raises(PolymodalError, match=r"polymodal\[tracking\]"):
        tracking.tune_callbacks(cfg)
    assert tracking.start_run(validate_config(_raw()), ray_train=False) is None  # off: never imported


def test_flatten_gives_mlflow_dotted_string_params():
    from polymodal.tracking import flatten

    assert flatten({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "name": "r", "tracking": {"mlflow": None}}) == {
        "optim.lr": "0.1", "optim.betas": "[0.9, 0.99]", "name": "r", "tracking.mlflow": "None"}


def test_own_grad_norm_matches_torch_clip_grad_norm():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.randn(2))]  # the last one without a gradient (frozen branch)
    for p in params[:2]:
        p.grad = torch.randn_like(p)
    ours = loop._grad_norm(params)
    assert ours == pytest.approx(float(torch.nn.utils.clip_grad_norm_(params[:2], max_norm=1e9)), rel=1e-6)


def test_the_loop_clips_as_deepspeed_would_where_it_takes_clipping_over():
    """ZeRO-0 in fp32: the loop's clip (torch's clip_grad_norm_ on the trainable parameters, DeepSpeed's
    clipping off) and its zero_grad over the trainable parameters only leave the same weights and
    gradients as DeepSpeed's own, step after step, with gradients far above the limit and a frozen
    layer; ZeRO-2 keeps DeepSpeed's clip."""
    import deepspeed

    deepspeed_process_group()

    def engine(stage: int):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 3))
        model[0].requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad]
        config = {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5, "zero_optimization": {"stage": stage},
                  "optimizer": {"type": "AdamW", "params": {"lr": 0.1, "torch_adam": True}}}
        return deepspeed.initialize(model=model, model_parameters=trainable, config=config)[0], trainable

    theirs, _ = engine(0)
    ours, trainable = engine(0)
    assert loop._take_over_clipping(theirs) == 0.5 and theirs.gradient_clipping() == 0.0
    theirs._config.gradient_clipping = 0.5  # this one keeps DeepSpeed's clip
    clip = loop._take_over_clipping(ours)
    loop._zero_only_trainable(ours, trainable)
    for step in range(4):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(step)) * 100
        for e in (theirs, ours):
            e.backward((e(x) ** 2).sum())
        norm = float(torch.nn.utils.clip_grad_norm_(trainable, clip))
        assert norm > 10 * clip  # the clip is in force
        for e in (theirs, ours):
            e.step()
        for a, b in zip(theirs.module.parameters(), ours.module.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            assert a.grad is None and b.grad is None  # zeroed by the step, trainable or not
    zero2, _ = engine(2)
    assert loop._take_over_clipping(zero2) == 0.0 and zero2.gradient_clipping() == 0.5


# --------------------------------------------------------------------------- a --local run


def test_local_run_logs_steps_to_tensorboard_data_wait_to_csv_and_all_to_mlflow(
        wander_data, tmp_path, monkeypatch):
    """Two epochs of 3 steps with ZeRO-0 (the gradient norm is the loop's own), MLflow on a sqlite
    store. Epoch 0's batches arrive 0.25 s late each (a slow source), epoch 1's at once; they are
    read on the loop's thread (``data.prefetch_batches=0``: read ahead, the model's build would
    hide this slow start, test_train_prefetch.py), so the loop waits for every one."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from polymodal.report import write_report

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fast_epoch = loop.LocalBatches.epoch

    def slow_first_epoch(self, epoch, skip=0):
        for batch in fast_epoch(self, epoch, skip):
            if self.train and epoch == 0:
                time.sleep(0.25)
            yield batch

    monkeypatch.setattr(loop.LocalBatches, "epoch", slow_first_epoch)
    cfg = wander_config(wander_data, str(tmp_path / "runs"), "tracked", "optim.epochs=2",
                        "optim.max_steps_per_epoch=3", "deepspeed.zero_stage=0", "data.prefetch_batches=0",
                        f"tracking.mlflow.uri={uri}",
                        "tracking.mlflow.experiment=local")
    loop.fit_local(cfg, progress=False)

    rows = _rows(cfg)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    frac = [float(r["data_wait_frac"]) for r in rows]
    wait = [float(r["data_wait_s"]) for r in rows]
    assert all(0.0 <= f <= 1.0 for f in frac), frac
    assert wait[0] >= 3 * 0.25 and frac[0] > frac[1], (wait, frac)  # the slow epoch waited, and more

    tb = EventAccumulator(str(tmp_path / "runs" / "tracked" / "logs" / "tensorboard"))
    tb.Reload()
    for tag in STEP_TAGS:
        points = tb.Scalars(tag)
        assert [p.step for p in points] == list(range(1, 7)), tag  # one point per optimizer step
        assert all(p.value == p.value and p.value >= 0 for p in points), tag
    assert all(p.value > 0 for p in tb.Scalars("step/grad_norm"))
    assert [p.step for p in tb.Scalars("data_wait_frac")] == [3, 6]  # per epoch, at its global step

    report = write_report(cfg)
    assert "data_wait_frac" in storage.read_text(report)

    client, run = _mlflow_run(uri, "local")
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["optim.lr"] == str(cfg.optim.lr) and run.data.params["task"] == cfg.task
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == list(range(1, 7))
    for key in ("train_loss", "val_accuracy", "data_wait_frac", "samples_per_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    assert client.get_metric_history(run.info.run_id, "data_wait_s")[0].value == pytest.approx(wait[0])
    assert _artifacts(client, run.info.run_id, "logs") == {"logs/metrics.csv", "logs/tensorboard"}
    assert {"report/report.md", "report/curves.png"} <= _artifacts(client, run.info.run_id, "report")


# --------------------------------------------------------------------------- a real MLflow server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (a free port): sqlite backend store and proxied artifacts in a
    temporary folder. Started only for the tests that ask (it takes ~15 s)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not come up: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_ray_train_run_and_tune_sweep_appear_in_a_real_mlflow_server(ray_cluster, wander_data, s3_bucket_uri,
                                                                     mlflow_server):
    """One Ray Train run (1 worker, 1 epoch of 3 steps) and a sweep of one such trial (a Ray Train
    start costs 20-30 s on 2 cores; one trial shows the callback's run), both tracked on the server;
    artifacts go through its proxy (``mlflow-artifacts:``)."""
    from polymodal.tune import load_space, run_sweep

    cfg = wander_config(wander_data, s3_bucket_uri, "train-tracked", "optim.epochs=1",
                        "optim.max_steps_per_epoch=3", "scaling.num_workers=1", "deepspeed.zero_stage=0",
                        f"tracking.mlflow.uri={mlflow_server}", "tracking.mlflow.experiment=ray-train")
    loop.fit(cfg, progress=False)
    client, run = _mlflow_run(mlflow_server, "ray-train")
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert run.data.params["scaling.num_workers"] == "1" and run.data.tags["polymodal.run"] == cfg.run_uri
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == [1, 2, 3]
    assert {"train_loss", "val_accuracy", "data_wait_frac", "step/grad_norm"} <= set(run.data.metrics)
    assert _artifacts(client, run.info.run_id, "logs") == {"logs/metrics.csv", "logs/tensorboard"}

    sweep_cfg = wander_config(wander_data, s3_bucket_uri, "base", "optim.epochs=1", "optim.max_steps_per_epoch=3",
                              "scaling.num_workers=1", "deepspeed.zero_stage=0",
                              f"tracking.mlflow.uri={mlflow_server}", "tracking.mlflow.experiment=sweep")
    space = load_space(str(ROOT / "tune_spaces" / "wander.yaml"), sweep_cfg).model_copy(
        update={"name": "tracked-sweep", "num_samples": 1, "max_concurrent_trials": 1})
    space = space.model_copy(update={"scheduler": space.scheduler.model_copy(update={"type": "fifo"})})
    result = run_sweep(sweep_cfg, space)
    assert result.complete, result.trials
    client, trial_run = _mlflow_run(mlflow_server, "sweep")
    assert trial_run.info.status == "FINISHED"
    [trial] = result.trials  # the trial's run: its sampled values as params, its reported results as metrics
    for key in ("model.down_dim", "model.rank_h", "model.rank_t", "optim.lr"):
        assert float(trial_run.data.params[key]) == pytest.approx(float(trial[key])), key
    assert {"train_loss", "accuracy", "data_wait_frac"} <= set(trial_run.data.metrics), trial_run.data.metrics
    assert trial_run.data.metrics["accuracy"] == pytest.approx(trial["accuracy_final"])
    assert _artifacts(client, trial_run.info.run_id), "no artifacts"
    # the trials' Train runs log nothing of their own: the callback's run is the trial's one
    assert client.get_experiment_by_name("ray-train") and len(client.search_runs(
        [client.get_experiment_by_name("ray-train").experiment_id])) == 1
