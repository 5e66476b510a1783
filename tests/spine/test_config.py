"""Configs: every YAML in the repo validates; bad ones list every error with its dotted path."""

from pathlib import Path

import pytest
import yaml

from polymodal.config import apply_overrides, load_config, parse_override, validate_config
from polymodal.errors import ConfigError
from polymodal.registry import get_task, task_names

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(str(path))
    assert cfg.task in task_names()
    # the round trip through YAML gives the same config back
    again = validate_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize("task_name", task_names())
@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_every_task_has_both_presets(task_name, preset):
    task = get_task(task_name)
    # fields the preset cannot know (paths: backbone, tokenizer) get a placeholder
    required = {n for n, f in task.model_config_cls.model_fields.items() if f.is_required()}
    model = {"preset": preset, **{n: "x" for n in required - set(task.presets[preset]())}}
    raw = {"task": task_name, "model": model, "data": {"train": "d"}}
    cfg = validate_config(raw)
    assert isinstance(cfg.model, task.model_config_cls)


def _base():
    return yaml.safe_load((ROOT / "jobs" / "configs" / "wander_tiny.yaml").read_text())


def test_all_errors_reported_at_once_with_dotted_paths():
    raw = _base()
    raw["optim"]["lr"] = -1
    raw["optim"]["bacth_size"] = 8          # typo: unknown key
    raw["deepspeed"]["zero_stage"] = 5
    raw["model"]["rank_h"] = "four"
    raw["model"]["colour"] = "red"
    with pytest.raises(ConfigError) as info:
        validate_config(raw, "bad.yaml")
    paths = {p for p, _ in info.value.errors}
    assert {"optim.lr", "optim.bacth_size", "deepspeed.zero_stage", "model.rank_h", "model.colour"} <= paths
    text = str(info.value)
    assert "bad.yaml" in text and "unknown key" in text


def test_unknown_task_and_preset_are_named():
    raw = _base()
    raw["task"] = "wander.segmentation"
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert info.value.errors[0][0] == "task" and "wander.classification" in info.value.errors[0][1]
    raw = _base()
    raw["model"]["preset"] = "huge"
    with pytest.raises(ConfigError, match="model.preset"):
        validate_config(raw)


def test_cross_field_rule_offload_params_needs_stage3():
    raw = _base()
    raw["deepspeed"] = {"zero_stage": 2, "offload_params": True}
    with pytest.raises(ConfigError, match="zero_stage: 3"):
        validate_config(raw)


def test_overrides_are_typed_by_yaml_and_validated():
    raw = apply_overrides(_base(), ["optim.lr=1e-2", "model.rank_h=2", "scaling.num_workers=1"])
    cfg = validate_config(raw)
    assert cfg.optim.lr == pytest.approx(1e-2) and cfg.model.rank_h == 2 and cfg.scaling.num_workers == 1
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")
    with pytest.raises(ConfigError, match="optim.epochs"):
        validate_config(apply_overrides(_base(), ["optim.epochs=0"]))


def test_preset_values_fill_and_yaml_overrides_win():
    task = get_task("wander.classification")
    raw = _base()
    raw["model"] = {"preset": "paper", "backbone": "b", "down_dim": 3}
    cfg = validate_config(raw)
    assert cfg.model.down_dim == 3
    assert cfg.model.rank_h == task.presets["paper"]()["rank_h"]


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
