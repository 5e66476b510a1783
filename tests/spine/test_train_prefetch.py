"""The train loop's batches read ahead on a background thread (``data.prefetch_batches``).

* :class:`polymodal.train.prefetch.Prefetched`: starts reading when it is made, reads while the
  consumer works (at most ``depth`` ready and one in hand), hands over the source's error where it
  happened, releases the source on ``close()`` and when dropped; depth 0 reads on the caller's thread.
  :class:`~polymodal.train.loop.TimedBatches` over it still counts a source slower than the consumer.
* A ``--local`` run: the first epoch's first batch is read while DeepSpeed builds the engine, the
  next epoch's while the epoch's checkpoint is written (each checked by holding that work until the
  batch is there: without the overlap the hold times out).
"""

from __future__ import annotations

import gc
import threading
import time

import pytest
from support import wander_config

from polymodal.train import loop
from polymodal.train.prefetch import Prefetched

WAIT_S = 20.0  # what a hold waits at most: only reached when the overlap is missing


def test_prefetched_starts_at_once_and_reads_ahead_while_the_consumer_works():
    made = []
    reached = [threading.Event() for _ in range(50)]

    def source():
        made.append(threading.current_thread().name)
        for k in range(50):
            reached[k].set()  # the reader is about to hand out item k
            yield k

    it = Prefetched(source, depth=2, name="reader")
    assert reached[0].wait(WAIT_S) and made == ["reader"]  # read on its thread before anyone asked
    assert next(it) == 0
    assert reached[2].wait(WAIT_S)  # items 1 and 2 read while the consumer holds item 0
    time.sleep(0.3)
    assert not reached[5].is_set()  # bounded: 2 ready, 1 in the reader's hand
    assert list(it) == list(range(1, 50))


def test_prefetched_hands_over_errors_in_place_and_releases_the_reader():
    def failing():
        yield 0
        yield 1
        raise ValueError("shard 3 row 7: bad field")

    it = Prefetched(failing, depth=4)
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(ValueError, match="shard 3 row 7"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)

    released = threading.Event()

    def endless():
        try:
            while True:
                yield "batch"
        finally:
            released.set()

    closed = Prefetched(endless, depth=2)
    assert next(closed) == "batch"
    closed.close()
    assert released.is_set() and list(closed) == []  # the reader's finally ran before close() returned

    released.clear()
    dropped = Prefetched(endless, depth=2)
    assert next(dropped) == "batch"
    del dropped  # a loop left by an exception: nobody calls close()
    gc.collect()
    assert released.wait(WAIT_S)


def test_depth_zero_reads_on_the_callers_thread_and_timed_batches_count_a_slow_reader():
    threads = []

    def source():
        for k in range(3):
            threads.append(threading.current_thread())
            yield k

    it = Prefetched(source, depth=0)
    assert threads == []  # nothing read before it is asked
    assert list(it) == [0, 1, 2] and set(threads) == {threading.current_thread()}

    def slow():
        for k in range(5):
            time.sleep(0.1)
            yield k

    timed = loop.TimedBatches(Prefetched(slow, depth=2))
    assert list(timed) == list(range(5))
    assert timed.wait_s >= 0.25  # 0.5 s of reading, the consumer idle: reading ahead cannot hide it


def test_local_run_reads_the_first_batch_under_the_engine_build_and_the_next_epoch_under_the_checkpoint(
        wander_data, tmp_path, monkeypatch):
    """Two epochs of 2 steps, no validation. DeepSpeed's ``initialize`` and epoch 0's checkpoint
    wait (up to 20 s) for the batch they should overlap."""
    import deepspeed

    first_of = {0: threading.Event(), 1: threading.Event()}
    held = {}
    epoch_of = loop.LocalBatches.epoch

    def noted(self, epoch, skip=0):
        for batch in epoch_of(self, epoch, skip):
            if epoch in first_of:
                first_of[epoch].set()
            yield batch

    real_init, real_report = deepspeed.initialize, loop.LocalReporter.report

    def initialize(*args, **kwargs):
        held["engine"] = first_of[0].wait(WAIT_S)
        return real_init(*args, **kwargs)

    def report(self, metrics, checkpoint_dir):
        if metrics.get("epoch") == 0:
            held["checkpoint"] = first_of[1].wait(WAIT_S)
        return real_report(self, metrics, checkpoint_dir)

    monkeypatch.setattr(loop.LocalBatches, "epoch", noted)
    monkeypatch.setattr(deepspeed, "initialize", initialize)
    monkeypatch.setattr(loop.LocalReporter, "report", report)
    cfg = wander_config(wander_data, str(tmp_path), "ahead", "optim.epochs=2", "optim.max_steps_per_epoch=2",
                        "data.val=null", "deepspeed.zero_stage=0")
    assert cfg.data.prefetch_batches == 2  # the default
    summary = loop.fit_local(cfg, progress=False)
    assert held == {"engine": True, "checkpoint": True}
    assert summary["metrics"]["global_step"] == 4
    assert 0.0 <= summary["metrics"]["data_wait_frac"] <= 1.0
