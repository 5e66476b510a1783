"""``make demo`` writes later steps' data ahead (``Demo.write_ahead``): Ray tasks on the shared
cluster, one after another in step order; a step reads back what its ``data`` returned, or the
error it raised (``Demo.data_of``)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from polymodal.demo import Demo
from polymodal.registry import DemoStep

ROOT = Path(__file__).resolve().parents[2]


def _slow(demo):
    started = time.time()
    time.sleep(0.5)
    return {"step": "slow", "scale": demo.scale, "started": started, "ended": time.time()}


def _quick(demo):
    return {"step": "quick", "started": time.time()}


def _broken(demo):
    raise ValueError("shard 3 of s3://polymodal/demo/x is truncated")


def _step(name, data):
    return DemoStep(name, f"the {name} step", run=lambda demo: [], data=data)


@pytest.fixture
def by_value(ray_cluster):
    """This module's functions travel to the Ray workers by value (tests/ is not their import path)."""
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray_cluster.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_data_written_ahead_in_step_order_and_read_back(by_value, tmp_path):
    demo = Demo(root=ROOT, out=tmp_path, scale=0.5)
    demo.write_ahead([_step("slow", _slow), _step("none", None), _step("quick", _quick)])
    assert set(demo.ahead) == {"slow", "quick"}  # a step without data has nothing to wait for
    quick, slow = demo.data_of("quick"), demo.data_of("slow")
    assert slow["step"] == "slow" and slow["scale"] == 0.5  # the demo's settings travel with it
    assert quick["started"] >= slow["ended"]  # one after another: the machine's cores stay with the running step
    assert demo.ahead == {}


def test_a_failed_data_step_raises_its_error_where_the_step_reads_it(by_value, tmp_path):
    demo = Demo(root=ROOT, out=tmp_path)
    demo.write_ahead([_step("broken", _broken), _step("quick", _quick)])
    with pytest.raises(ValueError, match="shard 3 of s3://polymodal/demo/x is truncated"):
        demo.data_of("broken")
    with pytest.raises(ValueError, match="shard 3"):  # the next one waited on it, so it fails too
        demo.data_of("quick")
