"""CapacityWatch (polymodal.train.capacity) without a cluster: Ray's GCS answers are stand-ins.

The watch on a real (simulated multi-node) cluster, where a node is lost and the restart waits
for a replacement, is tests/spine/test_faults_multinode.py::test_train_resumes_on_a_replacement_node.
"""

from __future__ import annotations

import logging
import time
import types

import pytest
from support import wander_config

from polymodal.train.capacity import CapacityWatch

JOB = "01000000"
LOST, KEPT = "a" * 56, "b" * 56


@pytest.fixture
def gcs(monkeypatch):
    """A stand-in GCS: ``state["pgs"]`` is the placement group table."""
    import ray

    state = {"pgs": {}}
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(get_job_id=lambda: JOB))
    monkeypatch.setattr(ray.util, "placement_group_table", lambda: state["pgs"])
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 5.0, "slot": 1.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": LOST, "Alive": False}, {"NodeID": KEPT, "Alive": True}])
    return state


def group(state: str, n: int = 2) -> dict:
    return {"state": state, "bundles": {i: {"CPU": 1.0, "slot": 1.0} for i in range(n)}}


def test_only_this_jobs_unplaced_worker_group_counts(gcs, tmp_path):
    cfg = wander_config({"backbone": "b", "train": "t", "val": "v", "test": "x"}, str(tmp_path), "run",
                        "scaling.num_workers=2")
    watch = CapacityWatch(cfg, {LOST, KEPT})
    watch._job = JOB
    gcs["pgs"] = {"1" * 28 + JOB: group("CREATED"), "2" * 28 + "02000000": group("PENDING"),
                  "3" * 28 + JOB: group("PENDING", n=1)}
    assert watch.waiting_bundles() is None  # placed; another job's; another size
    gcs["pgs"]["4" * 28 + JOB] = group("RESCHEDULING")
    assert watch.waiting_bundles() == [{"CPU": 1.0, "slot": 1.0}] * 2


def test_warns_once_the_wait_passes_the_threshold_naming_needs_and_lost_nodes(gcs, tmp_path, caplog):
    cfg = wander_config({"backbone": "b", "train": "t", "val": "v", "test": "x"}, str(tmp_path), "run",
                        "scaling.num_workers=2")
    caplog.set_level(logging.WARNING, logger="polymodal.train.capacity")
    gcs["pgs"] = {"1" * 28 + JOB: group("PENDING")}
    with CapacityWatch(cfg, {LOST, KEPT}, warn_after_s=1.0, poll_s=0.05):
        time.sleep(0.15)
        assert not caplog.records  # not yet (1 s: margin for a late wake-up on a busy machine)
        deadline = time.time() + 10  # (a busy machine schedules the watch's thread late)
        while not caplog.records and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # more polls, still within repeat_s
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1, said  # once, until repeat_s
    assert "'run'" in said[0] and "2 x {'CPU': 1.0, 'slot': 1.0}" in said[0], said
    assert "CPU 5 of 2, slot 1 of 2" in said[0] and LOST in said[0] and KEPT not in said[0], said
    assert "resumes from its last checkpoint" in said[0], said
