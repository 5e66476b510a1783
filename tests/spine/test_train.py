"""The train loop end to end: Ray Train + DeepSpeed on CPU, shards streamed from S3 over HTTP."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import wander_config

from polymodal import storage
from polymodal.evaluate import evaluate_run
from polymodal.report import write_report
from polymodal.train.loop import fit, fit_local

ROOT = Path(__file__).resolve().parents[2]


def metrics_rows(cfg) -> list[dict[str, str]]:
    text = storage.read_text(storage.join(cfg.run_uri, "logs", "metrics.csv"), cfg.storage)
    return list(csv.DictReader(io.StringIO(text)))


def test_wander_beats_chance_and_no_fusion_through_ray_deepspeed(ray_cluster, wander_data, s3_bucket_uri):
    """2 CPU workers, ZeRO-2, fp32/gloo: the planted label is the sign of a cross-modal product,
    so adapters that fuse modalities fit it and a frozen backbone + head cannot. The wander run
    reads the small dataset once into the object store (data.cache_below_mb; the resume test below
    streams it from S3); the no-fusion baseline trains in this process (``fit_local``, the same
    worker loop): what it cannot learn does not depend on the runner, and a second Ray Train
    start-up would cost a minute."""
    results = {}
    for method, runner in (("wander", fit), ("none", fit_local)):
        cfg = wander_config(wander_data, s3_bucket_uri, f"learn-{method}", f"model.method={method}",
                            "optim.epochs=3", "optim.batch_size=16", "scaling.num_workers=2",
                            "deepspeed.zero_stage=2", "data.cache_below_mb=256")
        summary = runner(cfg, progress=False)
        assert summary["best_checkpoint"].startswith("s3://")
        evaluation, _ = evaluate_run(cfg, "test", progress=False)
        results[method] = evaluation["metrics"]["accuracy"]
        rows = metrics_rows(cfg)
        assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
        assert float(rows[0]["first_step_s"]) > 0  # dated from fit(), through the worker (Ray) or not
    print(f"test accuracy by method: {results}")
    assert results["wander"] >= 0.80, results           # chance is 0.5
    assert results["none"] <= 0.65, results             # additive features cannot fit a product
    assert results["wander"] - results["none"] >= 0.2, results
    # the report renders from the run folder: tables + a PNG curve
    report = write_report(cfg)
    assert "val_accuracy" in storage.read_text(report)
    assert storage.read_bytes(report.replace("report.md", "curves.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_ray_run_resumes_from_its_checkpoint_with_zero3(ray_cluster, wander_data, s3_bucket_uri):
    """Running the same name again continues from the latest checkpoint, not from step 0. Both runs
    stream their shards from S3 every epoch through Ray Data (``data.cache_below_mb=0``)."""
    first = wander_config(wander_data, s3_bucket_uri, "resume", "optim.epochs=1",
                          "deepspeed.zero_stage=3", "optim.max_steps_per_epoch=6", "data.cache_below_mb=0")
    fit(first, progress=False)
    steps_after_first = int(metrics_rows(first)[-1]["global_step"])
    assert steps_after_first == 6
    second = wander_config(wander_data, s3_bucket_uri, "resume", "optim.epochs=2",
                           "deepspeed.zero_stage=3", "optim.max_steps_per_epoch=6", "data.cache_below_mb=0")
    fit(second, progress=False)
    rows = metrics_rows(second)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert int(rows[-1]["global_step"]) == 12  # continued: 6 + 6, not 6 again
    # ZeRO-3 partitions optimizer state per rank: both ranks' shards are in the checkpoint
    ckpt = json.loads(storage.read_text(storage.join(second.run_uri, "summary.json")))["latest_checkpoint"]
    files = storage.listdir(storage.join(ckpt, "deepspeed", "state"))
    assert sum(f.startswith("zero_pp_rank_") for f in files) >= 2, files


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_each_zero_stage_trains_on_cpu(stage, wander_data, s3_bucket_uri):
    cfg = wander_config(wander_data, s3_bucket_uri, f"zero{stage}", "optim.epochs=2",
                        f"deepspeed.zero_stage={stage}", "scaling.num_workers=1")
    summary = fit_local(cfg, progress=False)
    rows = metrics_rows(cfg)
    print(f"ZeRO-{stage}: train loss {rows[0]['train_loss']} -> {rows[-1]['train_loss']}, "
          f"val accuracy {summary['metrics']['accuracy']:.3f}")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert summary["metrics"]["accuracy"] > 0.7
    # speed, measured by the loop: steady-state samples/s every epoch, the first step's time once
    assert all(float(r["steady_samples_per_s"]) > 0 for r in rows)
    assert 0 < float(rows[0]["first_step_s"]) < 300 and rows[1]["first_step_s"] == ""


@pytest.mark.faults
def test_killed_run_resumes_from_first_checkpoint(wander_data, s3_bucket_uri):
    """SIGKILL a training process once its first checkpoint is persisted; the rerun continues.

    8 epochs of 4 steps: the kill lands within an epoch or two of the first checkpoint, so the
    rerun still has epochs left to continue (30 epochs cost ~40 s more and showed nothing more)."""
    epochs = 8
    args = [sys.executable, "-m", "polymodal.cli", "-q", "train", "--local",
            "--config", str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"),
            "--set", "name=killed", "--set", f"storage_path={s3_bucket_uri}",
            "--set", f"model.backbone={wander_data['backbone']}",
            "--set", f"data.train={wander_data['train']}", "--set", f"data.val={wander_data['val']}",
            "--set", f"optim.epochs={epochs}", "--set", "optim.max_steps_per_epoch=4"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    killed_after, seen = None, []
    for line in proc.stdout:
        seen.append(line)
        if "checkpointed" in line:
            proc.send_signal(signal.SIGKILL)
            killed_after = line
            break
    proc.wait(timeout=120)
    assert killed_after is not None and proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    done_before = len(storage.listdir(storage.join(s3_bucket_uri, "killed", "checkpoints")))
    assert done_before >= 1

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = [ln for ln in rerun.stdout.splitlines() if "resumed from epoch" in ln]
    assert resumed, rerun.stdout[-2000:]
    resumed_epoch = int(resumed[0].split("resumed from epoch ")[1].split()[0])
    assert 0 <= resumed_epoch < epochs - 1
    first_line = next(ln for ln in rerun.stdout.splitlines() if "checkpointed" in ln)
    assert f"epoch {resumed_epoch + 2}/{epochs}" in first_line  # no completed epoch redone
    cfg = wander_config(wander_data, s3_bucket_uri, "killed", f"optim.epochs={epochs}")
    rows = metrics_rows(cfg)
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    assert [int(r["global_step"]) for r in rows] == [4 * (e + 1) for e in range(epochs)]
