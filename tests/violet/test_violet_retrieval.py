"""VIOLET text-to-video retrieval: the in-batch negatives, the cross-encoder scored over a whole
split (equal to ``Violet.retrieval_scores``), the spine's ``finish_eval`` hook in both evaluation
paths, and zero-shot retrieval from a pre-trained export. Its metrics are
:func:`polymodal.metrics.ranking_metrics`, tested in tests/spine/test_metrics.py.

Hermetic and in-process: synthetic moving shapes, a tiny BERT; no Ray, no DeepSpeed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import polymodal.models.violet.task as violet_task  # registers the violet.* tasks
from polymodal import shards
from polymodal.config import load_config
from polymodal.models.violet import encode
from polymodal.registry import get_task
from polymodal.task import Task

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- negatives


def test_negatives_never_describe_the_rows_own_video():
    videos = ["a", "a", "b", "c", "c", "d"]
    texts = ["x", "y", "z", "w", "v", "x"]  # row 5 shares row 0's caption on another clip
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        rows, negatives = violet_task.retrieval_negatives(videos, texts, g)
        assert rows.tolist() == list(range(6))  # every row has a fair partner here
        for i, j in zip(rows.tolist(), negatives.tolist()):
            assert videos[i] != videos[j] and texts[i] != texts[j]
            seen.add((i, j))
    # every allowed pair gets drawn
    allowed = {(i, j) for i in range(6) for j in range(6) if videos[i] != videos[j] and texts[i] != texts[j]}
    assert seen == allowed

    rows, negatives = violet_task.retrieval_negatives(["a"] * 3, ["x", "y", "z"], g)
    assert len(rows) == len(negatives) == 0


# ----------------------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("violet-retrieval")
    return get_task("violet.retrieval").synth(str(root / "retrieval"), seed=0, scale=1 / 64, progress=False)


def config(uris: dict[str, str], yaml: str = "violet_tiny_retrieval.yaml", *overrides: str):
    return load_config(str(ROOT / "jobs" / "configs" / yaml), [
        f"model.bert={uris['bert']}", f"data.train={uris['train']}", f"data.val={uris['val']}",
        f"data.test={uris['test']}", *overrides])


@pytest.fixture(scope="module")
def net(data):
    torch.manual_seed(0)
    return get_task("violet.retrieval").build_model(config(data).model).eval()


def batches(uri: str, task, n: int):
    return [task.collate(cols) for cols in shards.iter_local_batches(uri, n, shuffle=False, shuffle_buffer=0)]


def predict_all(task, model, uri: str, n: int = 3) -> dict[str, np.ndarray]:
    outs = [task.predict(model, b) for b in batches(uri, task, n)]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def test_synthetic_retrieval_rows_are_captions_of_five_frame_clips(data):
    task = get_task("violet.retrieval")
    manifest = shards.open_dataset(data["train"])
    assert manifest.task == "violet.retrieval" and manifest.num_rows == 16
    b = batches(data["train"], task, 6)[0]
    assert tuple(b["frames"].shape) == (6, 5, 64, 64, 3) and b["frames"].dtype == torch.uint8
    assert violet_task._texts(b)[0].startswith("a ")  # "a <colour> <shape> moves ..."
    assert all(v.startswith("video") for v in violet_task._texts(b, "video_bytes"))


def test_full_matrix_equals_retrieval_scores(data, net):
    task = get_task("violet.retrieval")
    # batches of 3 over 4 rows: two batches whose texts pad to different lengths before predict's padding
    out = predict_all(task, net, data["test"], n=3)
    L = net.cfg.max_text_tokens
    assert out["input_ids"].shape == (4, L) and out["input_ids"].dtype == np.int64
    assert out["video_tokens"].dtype == np.float32 and out["video"].shape == (4,)
    finished = task.finish_eval(net, out)
    scores, target = finished["scores"], finished["target"]
    assert scores.shape == (4, 4) and scores.dtype == np.float32

    # the reference: the model's own retrieval_scores on the videos in target order and the raw texts
    rows = batches(data["test"], task, 4)[0]
    names = violet_task._texts(rows, "video_bytes")
    order = np.argsort(names)  # finish_eval orders the videos by id
    assert target.tolist() == np.argsort(order).tolist()
    frames = encode.normalise_frames(encode.channels_first(rows["frames"]), torch.float32)
    ids, attn = encode.tokenize(net, violet_task._texts(rows))
    with torch.no_grad():
        ref = net.retrieval_scores(frames[torch.from_numpy(order)], ids, attn, chunk=5).numpy()
    np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)

    metrics = task.metrics(finished)
    assert set(metrics) == {"r1", "r5", "r10", "medr", "meanr"}
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("r1", "r5", "r10")) and 1.0 <= metrics["medr"] <= 4.0
    with pytest.raises(ValueError, match="finish_eval"):
        task.metrics(out)


def test_finish_eval_scores_each_video_once(data, net):
    task = get_task("violet.retrieval")
    out = predict_all(task, net, data["test"])
    once = task.finish_eval(net, out)
    # every row twice: twice the texts, the same four videos
    twice = task.finish_eval(net, {k: np.concatenate([v, v]) for k, v in out.items()})
    assert twice["scores"].shape == (8, 4)
    # other chunk shapes, other float32 summation order: scores of order 1 agree to ~1e-6
    np.testing.assert_allclose(twice["scores"], np.concatenate([once["scores"]] * 2), rtol=1e-5, atol=1e-5)
    assert twice["target"].tolist() == once["target"].tolist() * 2


def test_loss_is_finite_and_reaches_the_video_encoder(data):
    task = get_task("violet.retrieval")
    torch.manual_seed(0)
    model = task.build_model(config(data).model)
    b = batches(data["train"], task, 4)[0]
    # each clip twice: a row's negatives may only come from the other clips
    b = {k: torch.cat([v, v]) for k, v in b.items()}
    loss, extra = task.loss(model, b)
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= extra["batch_acc"] <= 1.0 and extra["negatives"] == 8.0
    assert all(p.grad is not None for p in model.video_encoder.parameters())
    assert model.vtm_head[0].weight.grad.abs().sum() > 0


def write_export(path: Path, cfg, model) -> Path:
    from polymodal.train.checkpoint import trainable_state, write_export

    write_export(path, cfg, trainable_state(model, zero_stage=2), {"epoch": 0, "metrics": {}})
    return path


def test_zero_shot_init_from_a_pretrain_export_carries_the_vtm_head(data, tmp_path):
    pre_cfg = config(data, "violet_tiny_pretrain.yaml")
    torch.manual_seed(1)
    pretrained = get_task("violet.pretrain").build_model(pre_cfg.model)
    export = write_export(tmp_path / "pretrain" / "model", pre_cfg, pretrained)
    task = get_task("violet.retrieval")
    cfg = config(data).model
    model = task.build_model(cfg.model_copy(update={"init": str(export)}))
    for (name, got), want in zip(model.vtm_head.named_parameters(), pretrained.vtm_head.parameters()):
        assert torch.equal(got.detach(), want.detach()), name
    assert torch.equal(model.video_proj.weight.detach(), pretrained.video_proj.weight.detach())
    # without init the head starts fresh
    torch.manual_seed(2)
    fresh = task.build_model(cfg)
    assert not torch.equal(fresh.vtm_head[0].weight.detach(), pretrained.vtm_head[0].weight.detach())


def test_both_evaluation_paths_call_finish_eval(data, net, tmp_path, monkeypatch):
    from polymodal.evaluate import evaluate
    from polymodal.train.loop import WorkerInfo, evaluate_split

    task = get_task("violet.retrieval")
    direct = task.metrics(task.finish_eval(net, predict_all(task, net, data["val"])))

    calls = []
    original = type(task).finish_eval

    def spy(self, model, outputs):
        calls.append((model.training, torch.is_grad_enabled(), len(outputs["video"])))
        return original(self, model, outputs)

    monkeypatch.setattr(type(task), "finish_eval", spy)

    class Source:
        def epoch(self, epoch):
            yield from batches(data["val"], task, 3)

    model = net.train()  # as the train loop leaves it between epochs
    try:
        metrics = evaluate_split(model, task, Source(), WorkerInfo(0, 1, torch.device("cpu")), torch.float32)
        assert model.training, "evaluate_split puts the model back in train mode"
    finally:
        net.eval()
    assert calls == [(False, False, 4)]  # eval mode, no grad, the whole split at once
    assert metrics == pytest.approx(direct)

    cfg = config(data)
    export = write_export(tmp_path / "ckpt" / "model", cfg, net)
    got = evaluate(str(export.parent), data["val"], batch_size=3, device="cpu", progress=False)
    assert len(calls) == 2 and calls[1][:2] == (False, False)
    assert got == pytest.approx(direct)


def test_synthetic_data_names_the_kinds_it_has(tmp_path):
    with pytest.raises(ValueError, match="pretrain, retrieval, oeqa, mcqa"):
        violet_task.write_synthetic(str(tmp_path), "captioning")


def test_other_tasks_keep_their_outputs():
    outputs = {"pred": np.array([1, 2])}
    for name in ("violet.pretrain", "violet.oeqa", "violet.mcqa"):
        task = get_task(name)
        assert type(task).finish_eval is Task.finish_eval
        assert task.finish_eval(None, outputs) is outputs
