"""The `polymodal` command line, driven in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "report", "params", "s3"):
        assert command in out


def _import_formats() -> list[str]:
    from polymodal.registry import registry

    return registry().names("import format")


@pytest.mark.parametrize("fmt", _import_formats())
def test_every_import_format_resumes_and_says_so(fmt, capsys):
    """Every registered `data import` format continues an interrupted import; --restart starts over."""
    with pytest.raises(SystemExit) as info:
        main(["data", "import", "--format", fmt, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--restart" in out and "continues an interrupted one" in out, out


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "wander"
    assert main(["-q", "data", "synth", "--task", "wander.classification", "--out", str(out),
                 "--scale", "0.05"]) == 0
    return out


def test_synth_then_inspect_verifies_checksums(local_data, capsys):
    assert main(["data", "inspect", str(local_data / "train")]) == 0
    out = capsys.readouterr().out
    assert "wander.classification" in out and "verified: checksum" in out


def test_inspect_names_a_corrupt_shard(local_data, tmp_path, capsys):
    import shutil

    bad = tmp_path / "train"
    shutil.copytree(local_data / "train", bad)
    shard = sorted(bad.glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, so only the checksum can catch it
    shard.write_bytes(bytes(data))
    assert main(["data", "inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert shard.name in err and err.startswith("polymodal: error:")


def test_params_prints_one_row_per_variant(local_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: wander.classification\nmodel: {{preset: tiny, backbone: {local_data / 'backbone'}}}\n"
                   f"data: {{train: {local_data / 'train'}}}\n")
    assert main(["params", "--config", str(cfg), "--vary", "model.method=wander,none,full"]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[1:]}
    assert rows["model.method=full"][3] == "100.000%"
    # the frozen-backbone baselines train far fewer parameters than full fine-tuning
    as_int = {k: int(v[1].replace(",", "")) for k, v in rows.items()}
    assert as_int["model.method=none"] < as_int["model.method=wander"] < as_int["model.method=full"]


def test_params_prints_the_papers_count_and_the_ratio(local_data, tmp_path, capsys, monkeypatch):
    """A task that knows the paper's trainable count for a configuration gets it printed beside ours."""
    from polymodal.registry import get_task

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: wander.classification\nmodel: {{preset: tiny, backbone: {local_data / 'backbone'}}}\n"
                   f"data: {{train: {local_data / 'train'}}}\n")
    task_cls = type(get_task("wander.classification"))
    monkeypatch.setattr(task_cls, "reference_params", lambda self, model_cfg: {"Table 9, d = 8": 1000})
    assert main(["params", "--config", str(cfg)]) == 0
    row = capsys.readouterr().out.splitlines()[1]
    ours = int(row.split()[1].replace(",", ""))
    assert "paper 1,000 (Table 9, d = 8)" in row and f"ours/paper {ours / 1000:.3f}" in row


def test_bad_override_is_reported_with_its_path(local_data, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"task: wander.classification\nmodel: {{preset: tiny, backbone: x}}\n"
                   f"data: {{train: {local_data / 'train'}}}\n")
    assert main(["train", "--config", str(cfg), "--set", "optim.lr=-1", "--local"]) == 2
    assert "optim.lr" in capsys.readouterr().err
