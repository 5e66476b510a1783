"""Step-level control and the DeepSpeed pass-through.

* ``optim.max_steps``, ``checkpoint.every_steps``, ``eval.every_steps``: a ``--local`` run killed
  (an exception from inside the loss, after a step checkpoint) resumes mid-epoch and trains on
  exactly the batches an uninterrupted run trains on, in the same order; ``max_steps`` ends the
  run on its step with a checkpoint and an evaluation (three short runs: ``faults``, make
  test-faults). The rest is pure and fast.
* ``deepspeed.config``: a DeepSpeed file merged with the computed config, conflicts named by key,
  DeepSpeed's own validation, ZeRO-3 offload settings reachable, and a run that uses it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch
from support import wander_config

from polymodal import storage
from polymodal.config import validate_config
from polymodal.errors import ConfigError, PolymodalError
from polymodal.registry import get_task
from polymodal.train import loop
from polymodal.train.checkpoint import STATE_FILE, checkpoint_name, checkpoint_order
from polymodal.train.deepspeed_config import (build_deepspeed_config, deepspeed_config_for, merge_deepspeed_config,
                                              read_deepspeed_file)


def _cfg(**sections):
    return validate_config({"task": "wander.classification", "model": {"preset": "tiny", "backbone": "b"},
                            "data": {"train": "s3://b/train"}, **sections})


# --------------------------------------------------------------------------- pure pieces


def test_step_checkpoints_sort_inside_their_epoch():
    names = ["epoch_0001", "epoch_0000", "epoch_0001_step_00000012", "epoch_0000_step_00000004",
             "epoch_0000_step_00000002"]
    assert sorted(names, key=checkpoint_order) == [
        "epoch_0000_step_00000002", "epoch_0000_step_00000004", "epoch_0000", "epoch_0001_step_00000012",
        "epoch_0001"]
    assert checkpoint_name({"epoch": 3, "global_step": 40}) == "epoch_0003"  # a state.json from before steps
    assert checkpoint_name({"epoch": 3, "global_step": 40, "epoch_done": False}) == "epoch_0003_step_00000040"


def test_resume_position_continues_the_epoch_and_refuses_another_data_order():
    cfg = _cfg(seed=7, optim={"batch_size": 8})
    assert loop.resume_position({"epoch": 2}, cfg) == loop.DataPosition(epoch=3)
    mid = {"epoch": 2, "epoch_done": False, "batches": 5, "loss_sum": 2.5, "loss_n": 5, "seed": 7, "batch_size": 8}
    assert loop.resume_position(mid, cfg) == loop.DataPosition(2, 5, 2.5, 5)
    with pytest.raises(PolymodalError, match=r"seed=7.*now sets seed=1; set it back to 7"):
        loop.resume_position(mid, _cfg(seed=1, optim={"batch_size": 8}))
    with pytest.raises(PolymodalError, match=r"optim.batch_size=8.*optim.batch_size=4"):
        loop.resume_position(mid, _cfg(seed=7, optim={"batch_size": 4}))


class Counting:
    def __init__(self, name: str, n: int):
        self.name, self.n = name, n

    def epoch(self, epoch: int):
        for k in range(self.n):
            yield (self.name, epoch, k)


def test_mixed_batches_skip_is_the_tail_of_the_same_epoch():
    """A resumed mixed epoch: the same draws and source passes, less the first ``skip`` batches."""
    mix = loop.MixedBatches([Counting("a", 3), Counting("b", 2)], [2.0, 1.0], steps=25, seed=3)
    whole = list(mix.epoch(4))
    for skip in (0, 1, 7, 24, 25):
        assert list(mix.epoch(4, skip=skip)) == whole[skip:]


def test_step_clock_leaves_out_the_first_steps_and_dates_the_first_step_once(monkeypatch):
    """steady_samples_per_s counts the samples after the warm-up ticks over the time since them (x the
    workers); first_step_s is reported in the first epoch only."""
    from polymodal.train import throughput

    now = iter([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0] + [10.0, 10.2, 10.4] + [20.0])
    monkeypatch.setattr(throughput, "perf_counter", lambda: next(now))
    monkeypatch.setattr(throughput, "wall_clock", lambda: 107.0)
    clock = throughput.StepClock(started_at=100.0, world_size=2)
    clock.start_epoch()
    for _ in range(10):  # 10 steps of 8 rows: k0 = min(5, 10 // 4) = 2 warm-up ticks
        clock.tick(8)
    assert clock.epoch_metrics() == {"steady_samples_per_s": 8 * 8 * 2 / (5.0 - 1.0), "first_step_s": 7.0}
    clock.start_epoch()
    for _ in range(3):  # k0 = 1: only the first step is left out
        clock.tick(4)
    assert clock.epoch_metrics() == pytest.approx({"steady_samples_per_s": 2 * 4 * 2 / 0.4})
    clock.start_epoch()
    clock.tick(4)
    assert clock.epoch_metrics() == {}  # one step: no interval to time


def test_asha_sweep_refuses_step_checkpoints():
    """Tune counts every report as an iteration and ASHA compares trials there; step checkpoints
    add reports within epochs (without a validation), so an ASHA sweep refuses them."""
    from polymodal.config import load_config
    from polymodal.tune import load_space, validate_space

    from support import ROOT

    base = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"))
    space = load_space(str(ROOT / "tune_spaces" / "wander.yaml"), base)
    assert space.scheduler.type == "asha"
    validate_space(base, space)
    stepped = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"), ["checkpoint.every_steps=50"])
    with pytest.raises(ConfigError, match="scheduler.type: ASHA .*checkpoint.every_steps.*use scheduler.type: fifo"):
        validate_space(stepped, space)
    validate_space(stepped, space.model_copy(update={"scheduler": space.scheduler.model_copy(update={"type": "fifo"})}))


# --------------------------------------------------------------------------- deepspeed.config


def test_deepspeed_file_conflicts_are_named_by_key_and_all_reported():
    cfg = _cfg(optim={"batch_size": 4, "lr": 1e-3}, deepspeed={"zero_stage": 2})
    computed = build_deepspeed_config(cfg, world_size=2, device_type="cpu")
    user = {"train_micro_batch_size_per_gpu": 8, "train_batch_size": 8, "optimizer": {"params": {"lr": 1e-3}},
            "bf16": {"enabled": True}, "zero_optimization": {"stage": 3}, "scheduler": {"type": "WarmupLR"}}
    with pytest.raises(ConfigError) as err:
        merge_deepspeed_config(computed, user, cfg, world_size=2, device_type="cpu", source="s3://b/ds.json")
    text = str(err.value)
    assert "in s3://b/ds.json" in text
    assert ("deepspeed.config train_micro_batch_size_per_gpu=8 conflicts with optim.batch_size=4: "
            "set it in one place") in text.replace(": train_micro", " train_micro")
    assert "zero_optimization.stage=3 conflicts with deepspeed.zero_stage=2" in text
    assert "bf16.enabled=true conflicts with optim.precision=auto (fp32 on cpu)" in text
    assert "train_batch_size=8 conflicts with optim.batch_size x optim.grad_accum x 2 workers=8" not in text  # equal
    assert "optimizer.params.lr" not in text  # the same value is no conflict
    assert "scheduler: the learning-rate schedule is optim.schedule" in text
    assert len(err.value.errors) == 4


def test_zero3_offload_passes_through_and_is_validated_by_deepspeed():
    cfg = _cfg(deepspeed={"zero_stage": 3})
    computed = build_deepspeed_config(cfg, world_size=1, device_type="cpu")
    offload = {"offload_param": {"device": "nvme", "nvme_path": "/local_nvme", "pin_memory": True, "buffer_count": 6},
               "offload_optimizer": {"device": "cpu", "pin_memory": True}, "overlap_comm": True}
    merged = merge_deepspeed_config(computed, {"zero_optimization": offload, "steps_per_print": 50}, cfg,
                                    world_size=1, device_type="cpu")
    assert merged["zero_optimization"] == {**computed["zero_optimization"], **offload}  # our defaults replaced
    assert merged["steps_per_print"] == 50 and merged["train_micro_batch_size_per_gpu"] == 32
    hf = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
          "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}
    from_hf = merge_deepspeed_config(computed, hf, cfg, world_size=1, device_type="cpu")
    assert from_hf == {**computed, "zero_optimization": {**computed["zero_optimization"],
                                                         "stage3_gather_16bit_weights_on_model_save": True}}
    bad = [({"zero_optimization": {"offload_param": {"device": "gpu"}, "stage3_max_live": 1}},
            ["zero_optimization.offload_param.device: Input should be 'none', 'cpu' or 'nvme' (got 'gpu')",
             "zero_optimization.stage3_max_live: unknown key"]),
           ({"zero_optimization": {"offload_optimizer": {"device": "nvme"}}},
            ["zero_optimization.offload_optimizer.device=nvme needs zero_optimization.offload_optimizer.nvme_path"]),
           ({"bf16": {"enabled": False, "loss_scale": 2}}, ["loss_scale: unknown key"])]
    for user, messages in bad:
        with pytest.raises(ConfigError) as err:
            merge_deepspeed_config(computed, user, cfg, world_size=1, device_type="cpu")
        for message in messages:
            assert message in str(err.value), (user, str(err.value))
    stage2 = _cfg(deepspeed={"zero_stage": 2})
    with pytest.raises(ConfigError, match=r"offload_param \(device cpu\) needs ZeRO stage 3.*deepspeed.zero_stage: 3"):
        merge_deepspeed_config(build_deepspeed_config(stage2, world_size=1, device_type="cpu"),
                               {"zero_optimization": {"offload_param": {"device": "cpu"}}}, stage2,
                               world_size=1, device_type="cpu")


def test_deepspeed_file_is_read_as_json_or_yaml(tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"reduce_bucket_size": 500000}}')
    (tmp_path / "ds.yaml").write_text("zero_optimization:\n  reduce_bucket_size: 500000\n")
    assert read_deepspeed_file(str(tmp_path / "ds.json")) == read_deepspeed_file(str(tmp_path / "ds.yaml"))
    (tmp_path / "bad.json").write_text("zero_optimization:\n  x: 1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    for name, words in (("bad.json", "not valid JSON"), ("list.yaml", "must hold a mapping"),
                        ("missing.json", "file not found")):
        with pytest.raises(ConfigError, match=words):
            read_deepspeed_file(str(tmp_path / name))
    cfg = _cfg(deepspeed={"config": str(tmp_path / "ds.yaml")})
    assert deepspeed_config_for(cfg, world_size=1, device_type="cpu")["zero_optimization"]["reduce_bucket_size"] == 5e5


# --------------------------------------------------------------------------- a killed run resumes mid-epoch


class Killed(Exception):
    pass


def _record(monkeypatch, kill_at: int | None = None) -> list[list[str]]:
    """Patch the task's loss to note every training batch (one digest per row) and raise
    :class:`Killed` on call ``kill_at`` (1-based), before training on that batch."""
    task = get_task("wander.classification")
    real, seen = type(task).loss.__get__(task), []  # the task's own loss, not an earlier patch

    def loss(engine, batch):
        if kill_at is not None and len(seen) + 1 == kill_at:
            raise Killed(f"killed at batch {kill_at}")
        rows = next(iter(batch.values())).shape[0]
        seen.append([hashlib.sha1(b"".join(batch[k][r].cpu().numpy().tobytes() for k in sorted(batch))).hexdigest()
                     for r in range(rows)])
        return real(engine, batch)

    monkeypatch.setattr(task, "loss", loss)
    return seen


def _small_val(uri: str, out: str, rows: int = 48) -> str:
    """The first ``rows`` rows of the dataset at ``uri`` as a dataset at ``out`` (cheaper evaluations)."""
    from polymodal import shards

    manifest = shards.Manifest.load(uri)
    head = next(shards.iter_local_batches(uri, rows, manifest=manifest, shuffle=False))
    with shards.ShardWriter(out, task=manifest.task, split="val", columns=manifest.columns, progress=False) as w:
        w.write(head)
    return out


def _rows(cfg) -> list[dict[str, str]]:
    text = storage.read_text(storage.join(cfg.run_uri, "logs", "metrics.csv"), cfg.storage)
    return list(csv.DictReader(io.StringIO(text)))


def test_deepspeed_is_imported_without_mlflow_which_imports_as_before():
    """DeepSpeed's autotuner imports MLflow (seconds of entry-point scanning in every Train worker)
    unless ``import_deepspeed`` hides it; MLflow tracking still imports it afterwards. A fresh
    interpreter: this one imported DeepSpeed long ago."""
    code = ("import sys\n"
            "from polymodal.train.deepspeed_config import import_deepspeed\n"
            "ds = import_deepspeed()\n"
            "assert 'mlflow' not in sys.modules and import_deepspeed() is ds\n"
            "from deepspeed.autotuning import autotuner\n"
            "import mlflow\n"
            "print('RESULT', autotuner.has_mlflow, mlflow.__name__)\n")
    assert _last_line_of(code) == "RESULT False mlflow"  # (DeepSpeed prints its accelerator before)


def test_ray_worker_keeps_freed_memory_so_a_thread_stops_refaulting_its_pages():
    """The Ray Train loop runs on a thread of its own (a secondary glibc arena): a step's tensors
    freed and allocated again were faulted in afresh every time; ``keep_freed_memory`` (called by
    ``ray_train_loop``) keeps them. A fresh interpreter on a thread, its page faults counted."""
    code = ("import resource, threading, torch\n"
            "from polymodal.train.loop import keep_freed_memory\n"
            "def steps(out):\n"
            "    for _ in range(3):\n"
            "        [torch.ones(256, 1024) for _ in range(8)]\n"  # 1 MiB tensors, freed each round
            "    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
            "    for _ in range(20):\n"
            "        [torch.ones(256, 1024) for _ in range(8)]\n"
            "    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
            "def on_thread():\n"
            "    out = []\n"
            "    t = threading.Thread(target=steps, args=(out,)); t.start(); t.join()\n"
            "    return out[0]\n"
            "default = on_thread()\n"
            "kept = keep_freed_memory()\n"
            "print('RESULT', default, kept, on_thread())\n")
    line = _last_line_of(code)
    _, default, kept, after = line.split()
    if kept != "True":
        pytest.skip("not glibc's malloc: nothing to set")
    # a 1 MiB tensor spans 256 pages: by default the 20 rounds fault most of theirs in again; kept,
    # all 20 together fault fewer than one round's tensors would (128 seen beside a CPU hog, 0-4 idle)
    assert int(default) > 20 * 8 * 50 and int(after) < 8 * 256 and 20 * int(after) < int(default), line


def _last_line_of(code: str) -> str:
    """The last line ``code`` prints in a fresh interpreter with this one's import path."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.splitlines()[-1]


@pytest.mark.faults
def test_killed_run_resumes_mid_epoch_on_the_same_data_and_max_steps_ends_it(wander_data, s3_bucket_uri,
                                                                                monkeypatch, tmp_path):
    """Epochs of 6 steps (batch 16), a step checkpoint every 4 steps, an evaluation at step 5, and
    max_steps=10 (mid-epoch 2). One run goes straight through (without validation, and with a
    ``deepspeed.config`` on S3 that the engine is seen to use); another is killed at its 6th batch
    (after the step-4 checkpoint) and rerun: the batches trained on after the resume are the
    uninterrupted run's 5th to 10th, the metrics rows are not doubled, and both end on step 10.
    Data on S3 (validation: 48 of its rows, copied to a local folder), runs in a local folder."""
    ds_uri = storage.join(s3_bucket_uri, "ds.yaml")
    storage.write_text(ds_uri, "zero_optimization:\n  reduce_bucket_size: 300000\nsteps_per_print: 1000\n")
    steps = ["optim.batch_size=16", "optim.max_steps_per_epoch=6", "optim.epochs=3", "optim.max_steps=10",
             "checkpoint.every_steps=4", "eval.every_steps=5", "deepspeed.zero_stage=2"]
    import deepspeed

    engines, real_init = [], deepspeed.initialize

    def initialize(*args, **kwargs):
        out = real_init(*args, **kwargs)
        engines.append(out[0])
        return out

    monkeypatch.setattr(deepspeed, "initialize", initialize)
    straight = wander_config(wander_data, str(tmp_path), "straight", *steps, f"deepspeed.config={ds_uri}",
                             "data.val=null")
    whole = _record(monkeypatch)
    summary = loop.fit_local(straight, progress=False)
    assert len(whole) == 10 and summary["metrics"]["global_step"] == 10  # max_steps ends on the step
    assert engines[0].zero_reduce_bucket_size() == 300000 and engines[0].steps_per_print() == 1000
    assert [int(r["global_step"]) for r in _rows(straight)] == [6, 10]  # no validation: no step-5 row
    assert summary["latest_checkpoint"].endswith("epoch_0001_step_00000010")

    val = _small_val(wander_data["val"], str(tmp_path / "val"))
    killed = wander_config(wander_data, str(tmp_path), "killed", *steps, f"data.val={val}")
    first = _record(monkeypatch, kill_at=6)
    with pytest.raises(Killed):
        loop.fit_local(killed, progress=False)
    assert first == whole[:5]
    ckpts = storage.join(killed.run_uri, "checkpoints")
    state = json.loads(storage.read_text(storage.join(ckpts, "epoch_0000_step_00000004", STATE_FILE)))
    assert (state["epoch"], state["batches"], state["global_step"], state["epoch_done"]) == (0, 4, 4, False)

    rest = _record(monkeypatch)
    resumed = loop.fit_local(killed, progress=False)
    assert first[:4] + rest == whole  # no batch repeated, none skipped, the same order
    assert resumed["metrics"]["global_step"] == 10
    rows = _rows(killed)
    assert [int(r["global_step"]) for r in rows] == [5, 6, 10]  # the lost run's step-5 row replaced
    assert rows[0]["val_accuracy"] and rows[0]["epoch"] == "0"  # the step-5 evaluation
    kept = sorted(storage.listdir(ckpts), key=checkpoint_order)
    assert kept[-1] == "epoch_0001_step_00000010" and len(kept) <= 3  # num_to_keep=2, and the best
    assert torch.isfinite(torch.tensor(float(resumed["metrics"]["train_loss"])))

    again = _record(monkeypatch)
    loop.fit_local(killed, progress=False)
    assert again == []  # resumed at max_steps: nothing left to train
