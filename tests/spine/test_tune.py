"""Tune sweeps: search-space validation, a real ASHA sweep over Ray Train, interrupt + resume."""

from __future__ import annotations

import csv
import io
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from support import wander_config
from ray import tune

from polymodal import storage
from polymodal.config import load_config
from polymodal.errors import ConfigError
from polymodal.tune import SearchSpace, _concurrency, load_space, run_sweep, validate_space

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("space_file", SPACES, ids=lambda p: p.stem)
def test_shipped_spaces_validate_against_shipped_configs(space_file, config):
    cfg = load_config(str(config))
    declared = yaml.safe_load(space_file.read_text()).get("task")
    if declared != cfg.task:
        with pytest.raises(ConfigError, match=f"this space is for {declared}"):
            load_space(str(space_file), cfg)
        return
    space = load_space(str(space_file), cfg)
    assert space.params and space.num_samples >= 1


def test_bad_path_and_bad_distribution_are_reported_together(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\n"
                   "params:\n"
                   "  model.rnak_h: {choice: [2, 4]}\n"          # misspelt path
                   "  optim.lr: {loguniform: [0.01, 0.001]}\n"   # low above high
                   "  model.down_dim: {choice: [8, 0]}\n"        # 0 is out of range for d
                   "  optim.epochs: {normal: [1, 2]}\n")         # no such distribution
    with pytest.raises(ConfigError) as info:
        load_space(str(bad), load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml")))
    paths = {path for path, _ in info.value.errors}
    assert paths == {"params.model.rnak_h", "params.optim.lr", "params.model.down_dim", "params.optim.epochs"}
    text = str(info.value)
    assert "model.rnak_h is not a config field" in text and "unknown distribution 'normal'" in text
    assert "value 0 is rejected" in text and str(bad) in text


def test_param_overrides_replace_entries_and_are_validated(capsys):
    """``load_space(params=...)`` / ``polymodal tune --param``: the 3-layer tiny LLM cannot take
    the paper's N in {2, 4, 6, 8}, so the override narrows it; bad overrides are config errors."""
    from polymodal.cli import main

    cfg = load_config(str(ROOT / "jobs" / "configs" / "llavilo_tiny.yaml"))
    source = str(ROOT / "tune_spaces" / "llavilo.yaml")
    space = load_space(source, cfg, {"model.top_n": {"choice": [1, 2]}, "model.nms_iou": {"choice": [0.5, 0.7]}})
    assert space.params["model.top_n"].choice == [1, 2] and space.params["model.nms_iou"].choice == [0.5, 0.7]
    assert list(space.params["optim.lr"].loguniform) == [1.0e-4, 3.0e-3]  # the rest of the file stays
    with pytest.raises(ConfigError) as info:
        load_space(source, cfg, {"model.top_n": {"choice": [0, 2]}, "model.no_such": {"choice": [1]}})
    assert {path for path, _ in info.value.errors} == {"params.model.top_n", "params.model.no_such"}
    with pytest.raises(ConfigError, match="use 'val_map' instead of 'map'"):
        validate_space(cfg, space.model_copy(update={"metric": "map"}))
    config = str(ROOT / "jobs" / "configs" / "llavilo_tiny.yaml")
    assert main(["tune", "--config", config, "--space", source, "--param", "model.top_n"]) != 0
    assert "expected KEY=DISTRIBUTION" in capsys.readouterr().err


def test_grid_with_optuna_and_oversized_concurrency_are_errors():
    cfg = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"))
    space = load_space(str(ROOT / "tune_spaces" / "wander.yaml"), cfg)
    with pytest.raises(ConfigError, match="params.optim.lr: grid needs search.algorithm: random"):
        validate_space(cfg, SearchSpace.model_validate(
            {"name": "g", "params": {"optim.lr": {"grid": [0.1, 0.2]}}, "search": {"algorithm": "optuna"}}))
    # 1 driver + 2 workers + 2 for Ray Data per trial: two trials do not fit in 6 CPUs
    busy = space.model_copy(update={"max_concurrent_trials": 2})
    with pytest.raises(ConfigError, match="max_concurrent_trials <= 1"):
        _concurrency(cfg, busy, 6.0)
    assert _concurrency(cfg, space, 10.0) == 2  # 2 x (driver 1 + workers 2 + Ray Data 2)


_INTERRUPTS_LEFT = [1]  # module state: Tune restores the callback with the sweep, and must not fire again


class InterruptAfterFirstTrial(tune.Callback):
    """Ctrl+C the sweep (Tune's SIGUSR1 = graceful stop, state saved) in the middle of the
    trial that follows the first finished one."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _INTERRUPTS_LEFT and any(t.status == "TERMINATED" for t in trials):
            _INTERRUPTS_LEFT.pop()
            os.kill(os.getpid(), signal.SIGUSR1)


def starts(run_uri: str) -> int:
    uri = storage.join(run_uri, "starts")
    return len(storage.listdir(uri)) if storage.exists(uri) else 0


def test_asha_sweep_interrupted_then_resumed(ray_cluster, wander_data, s3_bucket_uri):
    """3 trials, one at a time (6 CPUs fit one trial with its Ray Data headroom), ASHA over 2 epochs; interrupted after the first trial finishes,
    resumed: finished trials are not rerun, the interrupted one continues, the unstarted one starts,
    results appear. Three trials cover each of those states once (a fourth cost ~50 s)."""
    cfg = wander_config(wander_data, s3_bucket_uri, "base", "optim.epochs=2", "optim.max_steps_per_epoch=4",
                        "scaling.num_workers=1", "deepspeed.zero_stage=0")
    space = load_space(str(ROOT / "tune_spaces" / "wander.yaml"), cfg).model_copy(
        update={"name": "wander-test", "num_samples": 3, "max_concurrent_trials": 1})

    reserved_before = _live_placement_groups()
    first = run_sweep(cfg, space, callbacks=[InterruptAfterFirstTrial()])
    assert not first.complete, first.trials
    done = {r["trial_id"]: r for r in first.trials if r["status"] in ("finished", "stopped early")}
    assert done, first.trials
    trials_uri = storage.join(first.sweep_uri, "trials")
    started_before = {r["trial_id"]: starts(storage.join(trials_uri, r["trial_id"])) for r in first.trials}

    second = run_sweep(cfg, space)
    assert second.complete, second.trials
    rows = {r["trial_id"]: r for r in second.trials}
    assert len(rows) == 3 and all(r["status"] in ("finished", "stopped early") for r in rows.values()), rows
    for trial_id, before in done.items():  # kept, not re-executed
        assert rows[trial_id] == before
        assert starts(storage.join(trials_uri, trial_id)) == 1
    # every other trial ran once more: the one cut off mid-way continued, the rest started
    for trial_id in set(rows) - set(done):
        assert starts(storage.join(trials_uri, trial_id)) == started_before.get(trial_id, 0) + 1, trial_id

    table = list(csv.DictReader(io.StringIO(storage.read_text(second.results_csv))))
    assert len(table) == 3 and {"model.down_dim", "model.rank_h", "model.rank_t", "optim.lr"} <= set(table[0])
    assert "| trial_id |" in storage.read_text(second.results_md)
    best = load_config(second.best_config)  # validates, ready for `polymodal train`
    assert best.model.down_dim == second.best_values["model.down_dim"]
    assert best.model.rank_h == second.best_values["model.rank_h"]
    assert best.model.rank_t == second.best_values["model.rank_t"]
    assert best.optim.lr == pytest.approx(second.best_values["optim.lr"])
    assert second.best_metric == max(r["accuracy_best"] for r in rows.values())
    assert set(second.plots) == set(space.params)
    for uri in second.plots.values():
        assert storage.read_bytes(uri)[:8] == PNG
    # ASHA-stopped and interrupted trials give their Train workers' CPUs back (Train's cleaner
    # polls every few seconds), so a long sweep never runs out of CPUs
    deadline = time.time() + 60
    while _live_placement_groups() - reserved_before and time.time() < deadline:
        time.sleep(1)
    assert not _live_placement_groups() - reserved_before, ray_cluster.util.placement_group_table()


def _live_placement_groups() -> set[str]:
    import ray

    return {pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"}
