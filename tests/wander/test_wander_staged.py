"""`polymodal models stage` of a local model folder into the embedded S3, and training from there:
the path a cluster without internet takes (stage once, then every pretrained-weights field names
the bucket)."""

from __future__ import annotations

import json
from pathlib import Path

from polymodal import storage
from polymodal.cli import main
from polymodal.config import load_config
from polymodal.staging import MARKER

CONFIG = str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "wander_tiny.yaml")


def test_train_from_a_staged_backbone(wander_data, s3_bucket_uri, tmp_path):
    data = wander_data
    local = tmp_path / "backbone"
    storage.download_dir(data["backbone"], str(local))  # a model folder on disk, as after a download
    staged = f"{s3_bucket_uri}/models/wander-backbone"
    assert main(["-q", "models", "stage", str(local), "--out", staged]) == 0
    assert storage.exists(f"{staged}/{MARKER}")
    overrides = [f"storage_path={tmp_path / 'runs'}", "name=staged", f"model.backbone={staged}",
                 *(f"data.{s}={data[s]}" for s in ("train", "val", "test")), "optim.epochs=1",
                 "scaling.num_workers=1", "optim.max_steps_per_epoch=3"]
    assert main(["-q", "train", "--config", CONFIG, "--local", *(a for o in overrides for a in ("--set", o))]) == 0
    run = load_config(CONFIG, overrides).run_uri
    summary = json.loads((Path(run) / "summary.json").read_text())
    assert summary["metrics"]["global_step"] == 3 and (Path(run) / "logs" / "metrics.csv").is_file()
