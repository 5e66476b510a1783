"""Tune sweeps: search-space validation and concurrency checks (the real ASHA sweep over Ray Train,
killed and resumed, is in test_faults_train.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from polymodal.config import load_config
from polymodal.errors import ConfigError
from polymodal.tune import SearchSpace, _concurrency, _data_cpus, load_space, validate_space

ROOT = Path(__file__).resolve().parents[2]
SPACES = sorted((ROOT / "tune_spaces").glob("*.yaml"))
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


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
    assert _concurrency(cfg, space, 6.0, data_cpus=0.0) == 2  # splits read into memory: 2 x (1 + 2)


def test_trials_spare_ray_data_cpus_only_for_streamed_splits():
    cfg = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"))  # data.cache_below_mb: 256 (the default)
    small, big = (SimpleNamespace(shards=[SimpleNamespace(bytes=b)] * 4) for b in (2**20, 2**27))
    assert _data_cpus(cfg, {"train": small, "val": small}) == 0.0
    assert _data_cpus(cfg, {"train": big, "val": small}) == 2.0  # 512 MiB of train shards stream
    assert _data_cpus(cfg, None) == 2.0  # unknown splits (swept data paths) count as streamed


# The interrupted-then-resumed ASHA sweep over Ray Train lives in tests/spine/test_faults_train.py
# (make test-faults): there the driver is SIGKILLed, a harder case than the Ctrl+C it used to get here.
