"""The quiet console (issue 19 item 7): at the default level Ray's workers reach the console only
with polymodal's own lines, every line goes to the log file, and Ray Data shows no progress bars
or execution plans; ``-v`` (INFO) leaves Ray's output as it is."""

from __future__ import annotations

import logging

import pytest

from polymodal import logs


@pytest.fixture
def log_path(tmp_path, monkeypatch):
    path = tmp_path / "polymodal.log"
    monkeypatch.setenv(logs.FILE_ENV, str(path))
    yield path
    logs.configure("WARNING")


def _batch(*lines: str) -> dict:
    # what Ray's log monitor hands the driver for one worker (ray._private.worker.print_logs)
    return {"ip": "127.0.0.1", "pid": 4242, "actor_name": "RayTrainWorker", "task_name": None, "is_err": False,
            "lines": list(lines)}


CHATTER = ("Found credentials in environment variables.",
           "- split(2, equal=True):  50%|#####     | 1.0/2.0 [00:01<?, ? row/s]",
           "[2026-12-07 05:26:26,827 E 5530 5571] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher'",
           "Checkpoint successfully created at: Checkpoint(filesystem=py::fsspec+s3, path=runs/x)")
STORY = ("[polymodal] epoch 1/4 checkpointed: train_loss=0.6931, lr=0.003",
         "\x1b[36m12:00:01 WARNING polymodal.shards: skipped 2 rows of shard 3")


def test_only_polymodal_lines_of_a_worker_reach_the_console(log_path, monkeypatch):
    """Ray's printer of worker output on the driver, swapped as ``init_ray`` swaps it after
    ``ray.init(log_to_driver=True)``: a fake printer records what would reach the console."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    printed: list[list[str]] = []
    dispatcher = ray_logging.WorkerStandardStreamDispatcher()
    dispatcher.add_handler("ray_print_logs", lambda data: None)  # as ray.init(log_to_driver=True) leaves it
    monkeypatch.setattr(ray_worker, "global_worker_stdstream_dispatcher", dispatcher)
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data["lines"]))

    logs.configure("WARNING")
    assert logs._filter_worker_output() and logs._filter_worker_output()  # installed once, idempotent
    assert [name for name, _ in dispatcher.handlers] == ["ray_print_logs"]
    dispatcher.emit(_batch(*CHATTER, *STORY))
    assert printed == [list(STORY)]
    written = log_path.read_text()
    for line in CHATTER:
        assert f"(RayTrainWorker pid=4242) {line}" in written
    assert "(RayTrainWorker pid=4242) 12:00:01 WARNING polymodal.shards" in written  # colour codes dropped

    dispatcher.emit(_batch(*CHATTER))  # nothing of ours: nothing printed
    notice = {"lines": ["WARNING: 8 PYTHON worker processes have been started on node"], "pid": "raylet",
              "is_err": False}
    ray_worker.print_to_stdstream(notice, ignore_prefix=False)  # how Ray prints the raylet's notices
    assert len(printed) == 1
    assert "(raylet) WARNING: 8 PYTHON worker processes" in log_path.read_text()
    logs.configure("INFO")  # -v: Ray's printer gets every line again
    dispatcher.emit(_batch(*CHATTER))
    ray_worker.print_to_stdstream(notice, ignore_prefix=False)
    assert printed[-2:] == [list(CHATTER), notice["lines"]]


def test_quiet_ray_data_prints_no_plan_and_no_progress(ray_cluster, log_path, capfd, monkeypatch):
    import ray.data
    from ray.data import DataContext

    ctx = DataContext.get_current()
    for name in ("enable_progress_bars", "print_on_execution_start"):
        # Ray's defaults, as in a fresh process (an earlier quiet command in this session turned
        # them off); restored after the test
        monkeypatch.setattr(ctx, name, True)

    def run() -> str:
        capfd.readouterr()
        assert len(ray.data.range(40, override_num_blocks=2).map_batches(lambda b: b).take_all()) == 40
        out, err = capfd.readouterr()
        return out + err

    # -v: Ray Data's console handler lets its INFO records (the plan) through; quiet, it does not.
    # (Checked on the handler: which sys.stderr a full run's capture gives Ray's handler at this
    # point depends on the tests before it.)
    plan = logging.LogRecord("ray.data", logging.INFO, __file__, 0, "Execution plan of Dataset", None, None)
    console = [h for h in logging.getLogger("ray.data").handlers if logs._is_console(h)]
    logs.configure("INFO")
    logs.quiet_ray()  # (nothing to quiet at INFO)
    assert console and all(h.filter(plan) for h in console)
    logs.configure("WARNING")
    logs.quiet_ray()
    assert not any(h.filter(plan) for h in console)
    assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
    shown = run()
    assert "Execution plan" not in shown and "Running Dataset" not in shown and "%|" not in shown, shown
