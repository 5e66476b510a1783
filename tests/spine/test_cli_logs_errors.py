"""`polymodal --version`; -v / --log-level configuring polymodal's loggers (here and, through
POLYMODAL_LOG_LEVEL, in Ray workers); errors that name their extra or cross from a Ray worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from polymodal import logs
from polymodal.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"polymodal {version('polymodal')}"


def test_verbosity_flags_set_the_level_everywhere(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(logs.ENV, raising=False)
    assert logs.level_from() == "WARNING" and logs.ray_runtime_env() is None
    assert logs.level_from(1) == "INFO" and logs.level_from(2) == "DEBUG"
    assert logs.level_from(2, "error") == "ERROR"
    try:
        assert main(["models", "stage", str(tmp_path), "--out", str(tmp_path / "out"), "-v"]) == 2  # empty folder
        assert "holds no files" in capsys.readouterr().err
        assert os.environ[logs.ENV] == "INFO" and logging.getLogger("polymodal").level == logging.INFO
        assert logs.ray_runtime_env() == {"env_vars": {logs.ENV: "INFO"}}  # what Ray workers receive
        logging.getLogger("polymodal.models.x").info("a line a person reads")
        assert "INFO polymodal.models.x: a line a person reads" in capsys.readouterr().err
        with pytest.raises(ValueError, match="choose one of"):
            logs.configure("loud")
    finally:
        logs.configure("WARNING")
    assert main(["--log-level", "nonsense", "params"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_worker_process_takes_the_level_from_the_environment():
    """What a Train worker or Tune trial does on start: :func:`logs.configure` with no argument."""
    code = ("import logging; from polymodal import logs; logs.configure(); "
            "logging.getLogger('polymodal.train').debug('worker debug line')")
    env = {**os.environ, logs.ENV: "DEBUG", "PYTHONPATH": str(ROOT / "platform")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "DEBUG polymodal.train: worker debug line" in out.stderr


def test_a_missing_optional_dependency_names_its_extra(monkeypatch):
    from polymodal.errors import PolymodalError, require

    monkeypatch.setitem(sys.modules, "av", None)  # as if the video extra were not installed
    with pytest.raises(PolymodalError, match=r"decoding videos needs the 'av' package: pip install 'polymodal\[video\]'"):
        require("av", "video", "decoding videos")
    assert require("json", "x", "y").dumps([1]) == "[1]"


def test_errors_survive_the_trip_from_a_ray_worker():
    """An error raised in a Train worker is pickled back to the driver with its fields."""
    import pickle

    from polymodal.errors import ConfigError, ServeInputError, ShardError

    for err in (ConfigError([("model.x", "bad")], "c.yaml"), ConfigError([("a", "1"), ("b", "2")]),
                ShardError("truncated", shard="s3://b/d/part-0.parquet", column="x"),
                ServeInputError("inputs.m0", "expected 8 x 32")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
