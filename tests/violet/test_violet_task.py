"""VIOLET's tasks on the spine: collate, BM+AM masks inside the pre-training loss, a short local fit of
pre-training and of open-ended QA, and a QA model initialised from the pre-trained export.

Hermetic: synthetic moving shapes, a tiny BERT and a random tiny VQ-GAN written into tmp folders;
no Ray, DeepSpeed runs in this process (``fit_local``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import polymodal.models.violet.task as violet_task  # registers the violet.* tasks
from polymodal import shards
from polymodal.config import load_config
from polymodal.models.violet import masking
from polymodal.registry import get_task

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("violet-synth")
    return {kind: get_task(f"violet.{kind}").synth(str(root / kind), seed=0, scale=1 / 64, progress=False)
            for kind in ("pretrain", "oeqa", "mcqa")}


def first_batch(uri: str, task, n: int = 6):
    batch = next(shards.iter_local_batches(uri, n, shuffle=False, shuffle_buffer=0))
    return task.collate(batch)


def config(kind: str, uris: dict[str, str], run_root: Path, *overrides: str):
    yaml = "violet_tiny_pretrain.yaml" if kind == "pretrain" else "violet_tiny_qa.yaml"
    return load_config(str(ROOT / "jobs" / "configs" / yaml), [
        f"name=fit-{kind}", f"storage_path={run_root}", f"model.bert={uris['bert']}", f"data.train={uris['train']}",
        f"data.val={uris['val']}", f"data.test={uris['test']}", "optim.epochs=1", "optim.max_steps_per_epoch=2",
        "optim.batch_size=4", *overrides])


def test_collate_shapes_and_dtypes(data):
    pre = first_batch(data["pretrain"]["train"], get_task("violet.pretrain"))
    assert pre["frames"].dtype == torch.uint8 and tuple(pre["frames"].shape) == (6, 4, 64, 64, 3)
    assert pre["vt_codes"].dtype == torch.int64 and tuple(pre["vt_codes"].shape) == (6, 4, 2, 2)
    assert pre["text_bytes"].dtype == torch.uint8 and pre["text_bytes"].shape[0] == 6
    assert violet_task._texts(pre)[0].startswith("a ")  # a caption, "a <colour> <shape> moves ..."

    qa = first_batch(data["oeqa"]["train"], get_task("violet.oeqa"))
    assert tuple(qa["frames"].shape) == (6, 5, 64, 64, 3) and qa["answer"].dtype == torch.int64
    assert set(qa["answer"].tolist()) <= {0, 1, 2, 3}
    mc = first_batch(data["mcqa"]["train"], get_task("violet.mcqa"))
    assert len(violet_task.options_of(violet_task._texts(mc, "options_bytes")[0])) == 4


def test_pretrain_loss_builds_bm_and_am_masks_at_their_ratios(data):
    task = get_task("violet.pretrain")
    cfg = config("pretrain", data["pretrain"], Path("unused")).model
    torch.manual_seed(0)
    net = task.build_model(cfg)
    batch = first_batch(data["pretrain"]["train"], task, n=16)
    frames, ids, attn = task._inputs(net, batch)
    m = violet_task.build_masks(net, frames, ids, attn, batch["vt_codes"], torch.Generator().manual_seed(3))
    block, am = m["use_block"], ~m["use_block"]
    assert block.any() and am.any(), "a batch of 16 mixes both strategies"
    Nv = 4 * 2 * 2
    per_video = m["video_mask"].flatten(1).sum(1)
    eligible = masking.mlm_eligible(ids, attn, net.tokenizer.all_special_ids)
    # AM: exactly round(0.15 * n) patches and tokens; BM: just above 15 % of the patches
    assert (per_video[am] == math.floor(0.15 * Nv + 0.5)).all()
    assert (per_video[block] > 0.15 * Nv).all() and (per_video[block] <= 0.15 * Nv + 4 * 2).all()
    expected_text = torch.floor(0.15 * eligible.sum(1).double() + 0.5).long()
    assert torch.equal(m["text_mask"].sum(1)[am], expected_text[am])
    assert not (m["text_mask"] & ~eligible).any()
    # targets where masked, and masked patches are black pixels
    assert torch.equal(m["mvm_labels"] != masking.IGNORE, m["video_mask"])
    assert torch.equal(m["mlm_labels"] != masking.IGNORE, m["text_mask"])
    pixels = m["video_mask"].repeat_interleave(32, 2).repeat_interleave(32, 3)  # (B, T, S, S)
    assert (m["masked_frames"].permute(0, 1, 3, 4, 2)[pixels] == 0).all()

    loss, extra = task.loss(net, batch)
    loss.backward()
    assert torch.isfinite(loss) and {"vtm", "mlm", "mvm", "block_share"} <= set(extra)
    assert math.isclose(float(loss), extra["vtm"] + extra["mlm"] + extra["mvm"], rel_tol=1e-5)
    assert all(p.grad is not None for p in net.video_encoder.parameters())  # MVM and VTM reach the Swin


def test_pretrain_loss_takes_image_batches(data):
    """An image-caption batch is a T = 1 clip (CC3M in the paper's pre-training, fed beside T = 4
    WebVid batches by a mixed ``data.train``): the same model trains on both, VTM, MLM and MVM
    included, with gradients reaching the Video Swin."""
    task = get_task("violet.pretrain")
    torch.manual_seed(0)
    net = task.build_model(config("pretrain", data["pretrain"], Path("unused")).model)
    videos = first_batch(data["pretrain"]["train"], task, n=6)
    images = {**videos, "frames": videos["frames"][:, :1].contiguous(), "vt_codes": videos["vt_codes"][:, :1]}
    for batch in (images, videos):
        net.zero_grad()
        loss, extra = task.loss(net, batch)
        loss.backward()
        assert torch.isfinite(loss) and extra["mvm"] > 0 and extra["mlm"] > 0
        assert all(p.grad is not None for p in net.video_encoder.parameters())


def test_fit_pretrain_then_qa_from_its_export(data, tmp_path):
    from polymodal.train.loop import fit_local

    pre_cfg = config("pretrain", data["pretrain"], tmp_path / "runs")
    summary = fit_local(pre_cfg, progress=False)
    metrics = summary["metrics"]
    for name in ("val_vtm_acc", "val_mlm_acc", "val_mvm_acc", "train_loss"):
        assert np.isfinite(metrics[name]), name
    export = Path(summary["best_checkpoint"]) / "model"
    assert (export / "trainable.safetensors").is_file()

    qa_cfg = config("oeqa", data["oeqa"], tmp_path / "runs")
    qa = fit_local(qa_cfg, progress=False)
    assert 0.0 <= qa["metrics"]["val_acc"] <= 1.0 and np.isfinite(qa["metrics"]["train_loss"])
    assert (Path(qa["best_checkpoint"]) / "model" / "trainable.safetensors").is_file()

    # A QA model built with `init` starts from the pre-trained trunk; its new answer head stays fresh.
    qa_task = get_task("violet.oeqa")
    model = qa_task.build_model(qa_cfg.model.model_copy(update={"init": str(export)}))
    from safetensors.torch import load_file

    weights = load_file(str(export / "trainable.safetensors"))
    name = "video_proj.weight"
    assert torch.equal(dict(model.named_parameters())[name].detach(), weights[name])
    assert torch.equal(model.embeddings.word_embeddings.weight.detach(), weights["embeddings.word_embeddings.weight"])
    fresh = qa_task.build_model(qa_cfg.model)
    assert not torch.equal(fresh.video_proj.weight.detach(), weights[name])


def test_mcqa_loss_and_metrics(data):
    task = get_task("violet.mcqa")
    cfg = config("mcqa", data["mcqa"], Path("unused"), "task=violet.mcqa", "model.num_answers=null").model
    torch.manual_seed(0)
    net = task.build_model(cfg)
    batch = first_batch(data["mcqa"]["train"], task, n=4)
    loss, extra = task.loss(net, batch)
    assert torch.isfinite(loss) and 0.0 <= extra["batch_acc"] <= 1.0
    out = task.predict(net.eval(), batch)
    assert out["pred"].shape == (4,) and set(out["pred"].tolist()) <= {0, 1, 2, 3}
    assert task.metrics({"pred": np.array([0, 1, 2]), "answer": np.array([0, 1, 3])})["acc"] == pytest.approx(2 / 3)


def test_oeqa_ignores_unknown_answers_in_loss_but_counts_them_wrong(data):
    task = get_task("violet.oeqa")
    net = task.build_model(config("oeqa", data["oeqa"], Path("unused")).model)
    batch = first_batch(data["oeqa"]["train"], task, n=4)
    batch["answer"] = torch.full_like(batch["answer"], -1)
    loss, _ = task.loss(net, batch)
    assert float(loss) == 0.0
    assert task.metrics({"pred": np.array([0, 1]), "answer": np.array([0, -1])})["acc"] == 0.5


def test_model_head_must_match_the_task(data):
    cfg = config("pretrain", data["pretrain"], Path("unused")).model
    with pytest.raises(ValueError, match="model.head"):
        get_task("violet.oeqa").build_model(cfg)
