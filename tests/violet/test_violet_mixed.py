"""VIOLET pre-training on videos and images together, as the paper does (WebVid + CC3M).

How the authors feed the two (tsujuifu/pytorch_violet @ 4f64751): ``main_pretrain.py`` trains on
``DATASET = ['webvid2.5m', 'cc3m']`` with one DataLoader per dataset, so a batch never mixes them;
a CC3M row of ``_data/img_cc3m_val.tsv`` is an id and ONE base64 JPEG (a T = 1 clip, not repeated to
T frames), a WebVid row an id and its sampled frames. Here ``data.train`` lists both datasets with
weights; every batch comes from one of them (``polymodal.train.loop.MixedBatches``), so VIOLET sees
(B, 4, S, S, 3) video batches and (B, 1, S, S, 3) image batches, and its Video Swin, temporal
embeddings and blockwise masking take either T.

Hermetic: synthetic moving-shape clips (``violet.pretrain`` synth) and their first frames as JPEG
images ingested with ``n_frames=1``; a tiny BERT and VQ-GAN; ``train --local``, no Ray.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import polymodal.models.violet.task as violet_task  # registers the violet.* tasks
from polymodal.cli import main
from polymodal.models.violet import synth
from polymodal.models.violet.importers import Record
from polymodal.models.violet.ingest import ingest
from polymodal.registry import get_task

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    from PIL import Image

    root = tmp_path_factory.mktemp("violet-mixed")
    uris = get_task("violet.pretrain").synth(str(root / "webvid"), seed=0, scale=1 / 64, progress=False)
    rng = np.random.default_rng(1)
    (root / "images").mkdir()
    records = []
    for i in range(12):  # image-caption pairs: one still frame of a clip, captioned as the clip
        clip = synth.sample_clip(rng, n_frames=2, size=64)
        path = root / "images" / f"{i:09d}.jpg"
        Image.fromarray(clip["frames"][0]).save(path, quality=95)
        records.append(Record(id=f"{i:09d}#0", video=f"{i:09d}", text=clip["caption"], source=str(path),
                              where=f"images.tsv: line {i + 1}", image=True))
    manifest = ingest(records, str(root / "cc"), kind="pretrain", split="train", n_frames=1, size=64,
                      tokenizer_path=uris["vqgan"], grid=(2, 2), use_ray=False, progress=False)
    assert manifest.meta["n_frames"] == 1 and manifest.columns["vt_codes"].shape == [1, 2, 2]
    return {**uris, "images": str(root / "cc"), "runs": str(root / "runs")}


def test_pretrain_local_over_videos_and_images(data, monkeypatch):
    """``train --local`` over ``data.train: [{webvid, weight 1}, {images, weight 2}]``: one epoch of
    4 + 3 batches of 4, each batch all videos (T = 4) or all images (T = 1), both kinds trained on,
    finite losses and validation metrics, and a checkpoint whose config keeps the list."""
    seen: list[int] = []
    collate = violet_task.PretrainTask.collate

    def spy(self, columns):
        batch = collate(self, columns)
        seen.append(int(batch["frames"].shape[1]))
        return batch

    monkeypatch.setattr(violet_task.PretrainTask, "collate", spy)
    train = f"[{{uri: {data['train']}, weight: 1}}, {{uri: {data['images']}, weight: 2}}]"
    rc = main(["-q", "train", "--local", "--config", str(ROOT / "jobs" / "configs" / "violet_tiny_pretrain.yaml"),
               "--set", "name=mixed", "--set", f"storage_path={data['runs']}", "--set", f"model.bert={data['bert']}",
               "--set", f"data.train={train}", "--set", f"data.val={data['val']}", "--set", "data.test=null",
               "--set", "optim.epochs=1", "--set", "optim.batch_size=4"])
    assert rc == 0
    train_ts = seen[:7]  # then the validation batches (videos)
    assert len(seen) == 7 + 1 and set(train_ts) == {1, 4}, seen
    summary = json.loads((Path(data["runs"]) / "mixed" / "summary.json").read_text())
    for name in ("train_loss", "val_vtm_acc", "val_mlm_acc", "val_mvm_acc"):
        assert np.isfinite(summary["metrics"][name]), name
    saved = (Path(summary["latest_checkpoint"]) / "model" / "config.yaml").read_text()
    assert data["images"] in saved and "weight: 2.0" in saved


@pytest.mark.slow  # Ray Train start-up dominates: 47 s on 2 quiet cores, 240 s on busy ones
def test_pretrain_on_ray_train_over_videos_and_images(data, ray_cluster):
    """The same mix through Ray Train with 2 workers: each training source is its own Ray dataset
    (``train``, ``train_1``), split across the workers; the images, weighted 4 : 1, run out and restart
    mid-epoch on both workers at the same step (2 epochs), and the run finishes with finite metrics."""
    from polymodal.config import load_config
    from polymodal.train import loop

    train = f"[{{uri: {data['train']}, weight: 1}}, {{uri: {data['images']}, weight: 4}}]"
    cfg = load_config(str(ROOT / "jobs" / "configs" / "violet_tiny_pretrain.yaml"), [
        "name=mixed-ray", f"storage_path={data['runs']}", f"model.bert={data['bert']}", f"data.train={train}",
        f"data.val={data['val']}", "data.test=null", "optim.epochs=2", "optim.batch_size=4", "scaling.num_workers=2"])
    manifests = loop.open_splits(cfg)
    steps = loop._train_steps(cfg, manifests, 2)
    draws = loop.MixedBatches([None, None], [1.0, 4.0], steps, cfg.seed).draws(0)
    assert steps == 2 + 2 and (draws == 1).sum() > 2  # each worker's image share holds 2 batches: a restart
    summary = loop.fit(cfg, progress=False)
    assert summary["latest_checkpoint"] and np.isfinite(summary["metrics"]["train_loss"])
    assert np.isfinite(summary["metrics"]["val_vtm_acc"])
