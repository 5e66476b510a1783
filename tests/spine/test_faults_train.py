"""Process faults in training: a Tune driver SIGKILLed mid-sweep.

It waits out real restarts (tens of seconds on 2 cores) and carries the ``faults`` marker
(``make test-faults``). A Ray Train worker lost mid-run, restarted by ``failure.max_failures``
from its last checkpoint to the same final metrics as an uninterrupted run, is in
tests/spine/test_faults_multinode.py (two workers, ZeRO-2, the worker's whole node removed).
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
import time
from pathlib import Path

import pytest

from polymodal import storage

ROOT = Path(__file__).resolve().parents[2]


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
    """The shipped ASHA space (tune_spaces/wander.yaml, 2 epochs, 3 trials one at a time:
    ``max_concurrent_trials: 1``) run by ``polymodal tune``, SIGKILLed once Tune has recorded
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
