"""Process faults in training: a Ray Train worker SIGKILLed mid-run, a Tune driver SIGKILLed mid-sweep.

Both wait out real restarts (tens of seconds on 2 cores) and carry the ``faults`` marker
(``make test-faults``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import checkpoint_epochs, registered_epoch, wander_config

from polymodal import storage
from polymodal.train.loop import fit

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, STEPS = 6, 4  # 4 optimizer steps per epoch: an epoch is ~1 s, the run ~20 s


def metrics_rows(cfg) -> list[dict[str, str]]:
    uri = storage.join(cfg.run_uri, "logs", "metrics.csv")
    if not storage.exists(uri, cfg.storage):
        return []
    return list(csv.DictReader(io.StringIO(storage.read_text(uri, cfg.storage))))


def train_worker_pids(address: str) -> set[int]:
    from ray.util.state import list_actors

    # the cluster's address: other Ray instances on this machine make the default ambiguous
    actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         raise_on_missing_output=False)
    return {a.pid for a in actors if a.pid}


def kill_worker_after_epoch(cfg, epoch: int, address: str, killed: dict[str, int], timeout: float = 120.0) -> None:
    """Once the checkpoint of ``epoch`` (or a later one) is registered, SIGKILL the run's Ray
    Train worker, which is then inside the next epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = registered_epoch(cfg)
        if done >= epoch:
            for pid in train_worker_pids(address):
                os.kill(pid, signal.SIGKILL)
                killed.update(pid=pid, after_epoch=done)
            return
        time.sleep(0.2)


@pytest.mark.faults
def test_killed_train_worker_resumes_from_last_checkpoint(ray_cluster, wander_data, s3_bucket_uri):
    """SIGKILL the Ray Train worker mid-run: FailureConfig restarts the worker group, which resumes
    from the latest checkpoint; the metrics log, step counter and final val metrics match an
    uninterrupted run of the same seed.

    With one worker, dropout 0, a seeded block order and per-epoch shuffle seeds, a run is
    deterministic and the resumed DeepSpeed state (weights, Adam moments, LR schedule) is exact,
    so the two runs agree to float rounding.
    """
    overrides = (f"optim.epochs={EPOCHS}", f"optim.max_steps_per_epoch={STEPS}", "scaling.num_workers=1",
                 "deepspeed.zero_stage=0", "failure.max_failures=1", f"checkpoint.num_to_keep={EPOCHS + 2}")
    clean = wander_config(wander_data, s3_bucket_uri, "clean", *overrides)
    expected = fit(clean, progress=False)

    cfg = wander_config(wander_data, s3_bucket_uri, "killed", *overrides)
    killed: dict[str, int] = {}
    killer = threading.Thread(target=kill_worker_after_epoch, args=(cfg, 1, ray_cluster.get_runtime_context().gcs_address, killed), daemon=True)
    killer.start()
    summary = fit(cfg, progress=False)
    killer.join(timeout=5)
    assert killed, "the Ray Train worker was never found and killed"

    rows = metrics_rows(cfg)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))  # each epoch logged once
    assert [int(r["global_step"]) for r in rows] == [STEPS * (e + 1) for e in range(EPOCHS)]
    # every epoch was checkpointed; the restart redid no epoch up to the registered checkpoint and at
    # most the one in flight at the kill (a restart from scratch would redo epochs 0 and 1 too)
    epochs = checkpoint_epochs(cfg)
    assert set(epochs) == set(range(EPOCHS)) and len(epochs) <= EPOCHS + 1, (epochs, killed)
    assert all(epochs.count(e) == 1 for e in range(killed["after_epoch"] + 1)), (epochs, killed)

    got, want = summary["metrics"], expected["metrics"]
    assert got["global_step"] == want["global_step"] == STEPS * EPOCHS
    for key in ("val_accuracy", "val_loss", "train_loss"):
        if key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (key, got, want)
    clean_rows = metrics_rows(clean)
    for row, ref in zip(rows, clean_rows):
        assert float(row["train_loss"]) == pytest.approx(float(ref["train_loss"]), rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------- Tune driver killed


def trial_states(sweep_uri: str) -> dict[str, str]:
    """Trial id -> status in the newest Tune experiment state saved to the sweep folder."""
    if not storage.exists(sweep_uri):
        return {}
    files = sorted(n for n in storage.listdir(sweep_uri) if n.startswith("experiment_state-"))
    if not files:
        return {}
    try:
        state = json.loads(storage.read_text(storage.join(sweep_uri, files[-1])))
    except (ValueError, FileNotFoundError):  # caught mid-upload
        return {}
    out = {}
    for trial_json, _ in state.get("trial_data", []):
        trial_id = re.search(r'"trial_id": "(\w+)"', trial_json)
        status = re.search(r'"status": "(\w+)"', trial_json)
        if trial_id and status:
            out[trial_id.group(1)] = status.group(1)
    return out


def starts(trial_run_uri: str) -> list[str]:
    uri = storage.join(trial_run_uri, "starts")
    return sorted(storage.listdir(uri)) if storage.exists(uri) else []


@pytest.mark.faults
def test_killed_tune_driver_resumes_without_rerunning_finished_trials(ray_cluster, wander_data, s3_bucket_uri,
                                                                      tmp_path):
    """The shipped ASHA space (tune_spaces/wander.yaml, 2 epochs, 3 trials one at a time: 6 CPUs fit
    one trial with its Ray Data headroom) run by ``polymodal tune``, SIGKILLed once Tune has recorded
    a finished trial and the next one has started; the same command again completes the sweep:
    finished trials are not started again, the one cut off and the unstarted one start once more,
    and the results (table, best config, one plot per param) appear. ASHA-stopped and killed
    trials give their Train workers' CPUs back. Three trials cover each of those states once.

    This also covers what tests/spine/test_tune.py's interrupted-then-resumed sweep (a graceful
    Ctrl+C in process, 190 s of ``make test``) did; a SIGKILLed driver is the harder case."""
    import ray
    import yaml

    from polymodal.config import load_config

    shipped = yaml.safe_load((ROOT / "tune_spaces" / "wander.yaml").read_text())
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({**shipped, "name": "killed-sweep", "num_samples": 3, "max_concurrent_trials": 1}))
    assert shipped["scheduler"]["type"] == "asha"
    args = [sys.executable, "-m", "polymodal.cli", "-q", "tune",
            "--config", str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"), "--space", str(space),
            "--set", "name=base", "--set", f"storage_path={s3_bucket_uri}",
            "--set", f"model.backbone={wander_data['backbone']}",
            "--set", f"data.train={wander_data['train']}", "--set", f"data.val={wander_data['val']}",
            "--set", "optim.epochs=2", "--set", "optim.max_steps_per_epoch=4",
            "--set", "scaling.num_workers=1", "--set", "deepspeed.zero_stage=0"]
    # the driver joins the session's cluster (its token comes from ~/.ray like this process's)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1"}
    sweep = storage.join(s3_bucket_uri, "sweeps", "killed-sweep")
    trials_uri = storage.join(sweep, "trials")
    reserved_before = _live_placement_groups()
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    finished: dict[str, str] = {}
    started: dict[str, list[str]] = {}
    deadline = time.time() + 600  # ~1 min on a quiet machine; a busy one is many times slower
    while time.time() < deadline and proc.poll() is None:
        finished = {t: s for t, s in trial_states(sweep).items() if s == "TERMINATED"}
        if finished and storage.exists(trials_uri):
            started = {t: starts(storage.join(trials_uri, t)) for t in storage.listdir(trials_uri)}
            if any(markers for t, markers in started.items() if t not in finished):
                break  # the trial after a finished one is running
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    log.close()
    output = (tmp_path / "first.log").read_text()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]
    # what the rerun resumes from: the last state the killed driver saved, and the trials' start markers
    finished = {t: s for t, s in trial_states(sweep).items() if s == "TERMINATED"}
    before = {t: starts(storage.join(trials_uri, t)) for t in storage.listdir(trials_uri)}
    assert finished and any(m for t, m in before.items() if t not in finished), (finished, before, output[-3000:])
    assert all(len(before[t]) == 1 for t in finished), before

    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "sweep unfinished" not in rerun.stdout, rerun.stdout[-3000:]
    states = trial_states(sweep)
    assert len(states) == 3 and set(states.values()) == {"TERMINATED"}, states
    for trial_id in finished:  # not started again by the resumed sweep
        assert starts(storage.join(trials_uri, trial_id)) == before[trial_id], trial_id
    # every other trial ran once more: the one cut off mid-way went on, the unstarted one started
    for trial_id in set(states) - set(finished):
        assert len(starts(storage.join(trials_uri, trial_id))) == len(before.get(trial_id, [])) + 1, trial_id

    results = storage.join(sweep, "results")
    table = list(csv.DictReader(io.StringIO(storage.read_text(storage.join(results, "results.csv")))))
    params = set(shipped["params"])
    assert len(table) == 3 and params <= set(table[0]), table
    assert {r["status"] for r in table} <= {"finished", "stopped early"}, table
    assert "| trial_id |" in storage.read_text(storage.join(results, "results.md"))
    best_row = max(table, key=lambda r: float(r["accuracy_best"]))
    best = load_config(storage.join(results, "best_config.yaml"))  # validates, ready for `polymodal train`
    assert best.model.down_dim == int(best_row["model.down_dim"])
    assert best.model.rank_h == int(best_row["model.rank_h"]) and best.model.rank_t == int(best_row["model.rank_t"])
    assert best.optim.lr == pytest.approx(float(best_row["optim.lr"]))
    for key in params:
        assert storage.read_bytes(storage.join(results, f"{key}.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    # ASHA-stopped and killed trials give their Train workers' CPUs back (Train's cleaner polls
    # every few seconds; a dead driver's actors go with it), so a long sweep never runs out of CPUs
    deadline = time.time() + 60
    while _live_placement_groups() - reserved_before and time.time() < deadline:
        time.sleep(1)
    assert not _live_placement_groups() - reserved_before, ray.util.placement_group_table()


def _live_placement_groups() -> set[str]:
    import ray

    return {pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"}
