"""Weights from anywhere: hub ids download (from a stand-in hub on 127.0.0.1) into the standard
Hugging Face cache, ``HF_HUB_OFFLINE=1`` keeps them local, and ``polymodal models stage`` copies a
model to object storage, from where loaders read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub

from polymodal import storage
from polymodal.cache import load_causal_lm
from polymodal.cli import main
from polymodal.errors import PolymodalError
from polymodal.staging import MARKER, stage
from polymodal.testing.tiny import write_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "we cook rice and beans"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return write_tiny_llama(tmp_path_factory.mktemp("llama") / "model", TEXTS, hidden=32, layers=1)


def test_stage_a_local_folder_to_s3_and_load_it_from_there(tiny_llama, s3_bucket_uri, capsys):
    out = f"{s3_bucket_uri}/models/tiny-llama"
    assert main(["-q", "models", "stage", tiny_llama, "--out", out]) == 0
    assert "staged" in capsys.readouterr().out
    record = json.loads(storage.read_text(f"{out}/{MARKER}"))
    local = {p.name: p.stat().st_size for p in Path(tiny_llama).iterdir()}
    assert record["files"] == local and record["source"] == tiny_llama
    lm, tok = load_causal_lm(out, dtype=torch.bfloat16)  # straight into bf16, from the bucket
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    ref, _ = load_causal_lm(tiny_llama)
    ids = tok("the cat sat", return_tensors="pt").input_ids
    assert torch.allclose(lm(ids).logits.float(), ref(ids).logits, atol=0.05)
    # staging again replaces the copy and its record
    assert stage(tiny_llama, out)["files"] == local


def test_stage_refuses_what_it_cannot_copy(tmp_path):
    with pytest.raises(PolymodalError, match="HF_HUB_OFFLINE is set and the model is not in the local"):
        stage("no-such-org/no-such-model", str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolymodalError, match="holds no files"):
        stage(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(PolymodalError, match="hub ids only"):
        stage(str(tmp_path / "empty"), str(tmp_path / "out"), revision="v1")
    assert not (tmp_path / "out").exists()


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_hub_ids_download_into_the_hf_cache_unless_offline(tiny_llama, tmp_path):
    """A hub id loads as on a machine with internet: downloaded once into ``HF_HOME``'s hub cache.
    Then, with ``HF_HUB_OFFLINE=1``, it loads from that cache alone (an uncached id then fails:
    :func:`test_stage_refuses_what_it_cannot_copy`). Subprocesses: the hub reads its mode once."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")])}
    load = ("import torch; from polymodal.cache import load_causal_lm; "
            "lm, tok = load_causal_lm('org/tiny-llama', dtype=torch.bfloat16); "
            "print(next(lm.parameters()).dtype, len(tok))")
    with FakeHub({"org/tiny-llama": tiny_llama}) as hub:
        online = {**env, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        done = _python(load + "; from polymodal.staging import stage; "
                       f"print(stage('org/tiny-llama', {str(tmp_path / 'staged')!r})['revision'])", online)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "torch.bfloat16" in done.stdout and hub.commit in done.stdout
        assert any(r.endswith("/resolve/main/config.json") for r in hub.requests)
        snapshot = tmp_path / "hf" / "hub" / "models--org--tiny-llama" / "snapshots" / hub.commit
        assert (snapshot / "config.json").is_file() and (tmp_path / "staged" / MARKER).is_file()
        assert (tmp_path / "staged" / "model.safetensors").stat().st_size == \
            (Path(tiny_llama) / "model.safetensors").stat().st_size
        seen = len(hub.requests)
        offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.url}
        again = _python(load, offline)
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(hub.requests) == seen  # the cache alone
