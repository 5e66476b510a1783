"""A sixth system defined only under tests/toysystem/ plugs in the way a separate package would:
an entry point of the group ``polymodal.systems`` in its installed metadata (a ``.dist-info``
folder on ``sys.path``, as pip writes it). With no edit to polymodal it gets ``data import``,
``data synth``, ``train --local``, ``evaluate`` and served requests; a second registration of a
taken name is refused naming both modules."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import polymodal.registry as reg
from polymodal.cli import main

HERE = Path(__file__).resolve().parent


@pytest.fixture
def toy_installed(tmp_path, monkeypatch):
    """The toy package 'installed': its folder importable and its entry point in a dist-info."""
    site = tmp_path / "site"
    dist = site / "polymodal_toy-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: polymodal-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[polymodal.systems]\ntoy = polymodal_toy:register\n")
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(reg, "REGISTRY", reg.Registry())  # a fresh process's registry
    yield
    sys.modules.pop("polymodal_toy", None)


def test_the_toy_system_trains_evaluates_and_serves_through_the_cli(toy_installed, tmp_path, capsys):
    assert "toy.classify" in reg.task_names()
    data = tmp_path / "data"
    assert main(["-q", "data", "synth", "--task", "toy.classify", "--out", str(data)]) == 0
    printed = capsys.readouterr().out
    assert f"--set data.train={data / 'train'}" in printed  # synth_overrides, printed for the user

    cfg = tmp_path / "toy.yaml"
    cfg.write_text(json.dumps({
        "task": "toy.classify", "name": "toy", "model": {"preset": "tiny"}, "storage_path": str(tmp_path / "runs"),
        "data": {s: str(data / s) for s in ("train", "val", "test")},
        "optim": {"epochs": 6, "lr": 0.01, "batch_size": 32}, "scaling": {"num_workers": 1}}))
    assert main(["-q", "train", "--config", str(cfg), "--local"]) == 0
    assert main(["-q", "evaluate", "--config", str(cfg), "--split", "test"]) == 0
    result = json.loads((tmp_path / "runs" / "toy" / "eval" / "test.json").read_text())
    # the label is linear in x: a trained probe is far above chance (0.5)
    assert result["metrics"]["accuracy"] >= 0.8, result

    from starlette.testclient import TestClient

    from polymodal.config import load_config
    from polymodal.serving.app import local_app

    # one replica's app in this process: the deployment's routes, validation and errors
    client = TestClient(local_app({"checkpoint": str(tmp_path / "runs" / "toy")}))
    body = reg.get_task("toy.classify").example_request(load_config(str(cfg)), str(data / "test"))
    reply = client.post("/v1/predict", json=body)
    assert reply.status_code == 200 and reply.json()["label"] in (0, 1), reply.text
    bad = client.post("/v1/predict", json={"x": [0.0] * 3})
    assert bad.status_code == 422 and "x" in bad.text


def test_the_toy_import_format_has_its_own_help(toy_installed, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["data", "import", "--format", "toy-csv", "--help"])
    out = capsys.readouterr().out
    assert "--split" in out and "--vq-tokenizer" not in out
    source = tmp_path / "rows.csv"
    source.write_text("x0,x1,x2,x3,x4,x5,x6,x7,label\n" + "0,1,2,3,4,5,6,7,1\n" * 3)
    assert main(["-q", "data", "import", "--format", "toy-csv", "--source", str(source), "--out",
                 str(tmp_path / "ds")]) == 0
    assert "3 rows" in capsys.readouterr().out


def test_a_name_taken_twice_is_refused_naming_both_modules(toy_installed):
    import polymodal_toy

    registry = reg.registry()
    with pytest.raises(reg.PolymodalError) as info:
        registry.add_task(polymodal_toy.ToyTask())
    message = str(info.value)
    assert "toy.classify" in message and message.count("polymodal_toy") == 2
    wander = registry.owner("import format", "mmsa")
    with pytest.raises(reg.PolymodalError) as info:
        registry.add_import_format(reg.Command("mmsa", "again", lambda p: None, polymodal_toy._csv_run))
    assert wander in str(info.value) and "polymodal_toy" in str(info.value)


def test_a_command_named_like_a_builtin_one_is_refused(toy_installed, capsys):
    import polymodal_toy

    reg.registry().add_data_command(reg.Command("inspect", "clashes", lambda p: None, polymodal_toy._csv_run))
    assert main(["data", "inspect", "x"]) == 2
    err = capsys.readouterr().err
    assert "data command 'inspect' of polymodal_toy clashes with polymodal's own command" in err


def test_train_local_prints_the_story_and_names_the_log_file(toy_installed, tmp_path, capsys, monkeypatch):
    """The default console of ``train --local``: polymodal's own lines (the parameter count, the
    epoch line, the summary, where it wrote) and the log file's name; DeepSpeed's and the
    libraries' messages and warnings are in that file instead."""
    import re

    log = tmp_path / "logs" / "polymodal.log"
    monkeypatch.setenv("POLYMODAL_LOG_FILE", str(log))
    data = tmp_path / "data"
    assert main(["-q", "data", "synth", "--task", "toy.classify", "--out", str(data)]) == 0
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(json.dumps({
        "task": "toy.classify", "name": "toy", "model": {"preset": "tiny"}, "storage_path": str(tmp_path / "runs"),
        "data": {s: str(data / s) for s in ("train", "val", "test")},
        "optim": {"epochs": 1, "lr": 0.01, "batch_size": 32}, "scaling": {"num_workers": 1}}))
    capsys.readouterr()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest: warnings would print to stderr
        assert main(["train", "--config", str(cfg), "--local"]) == 0
    out, err = capsys.readouterr()
    story = re.compile(r"^(\[polymodal\] |[{}]|  |run folder: |checkpoint: |metrics csv: |polymodal: log file |"
                       r"epoch \d+/\d+: )")
    lines = [line for line in (out + err).replace("\r", "\n").splitlines() if line.strip()]
    chatter = [line for line in lines if not story.match(line)]
    assert not chatter, chatter
    assert any(line.startswith("[polymodal] epoch 1/1 checkpointed") for line in lines), lines
    assert f"polymodal: log file (Ray, DeepSpeed and library messages, warnings): {log}" in err
    assert log.is_file()
