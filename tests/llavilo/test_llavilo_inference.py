"""LLaViLo inference: clip snapping, temporal NMS, parsing generated windows, greedy generation,
and the submission rows the task writes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from polymodal.config import validate_config
from polymodal.models.llavilo.inference import (greedy_generate, parse_windows, snap_to_clips, submission_row,
                                               temporal_nms)
from polymodal.registry import get_task

TASK = "llavilo.moment_retrieval"


def test_snap_to_clips_clips_rounds_and_keeps_one_clip():
    got = snap_to_clips(np.array([[-3.0, 5.1], [11.2, 11.4], [140.9, 160.0], [149.5, 150.0]]), 150.0, 2.0)
    np.testing.assert_allclose(got, [[0, 6], [12, 14], [140, 150], [148, 150]])
    # a video whose length is not a whole number of clips: windows end at the last whole clip
    np.testing.assert_allclose(snap_to_clips(np.array([[0.2, 9.9]]), 9.0, 2.0), [[0, 8]])


def _nms_reference(windows, scores, thr):
    """Brute force: a window survives iff no better-scored *surviving* window overlaps it > thr."""
    def iou(a, b):
        inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
        return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)

    kept = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if all(iou(windows[i], windows[k]) <= thr for k in kept):
            kept.append(i)
    return kept


def test_temporal_nms_hand_case_and_reference():
    w = np.array([[0, 10], [1, 11], [20, 30], [0, 4]], dtype=float)
    s = np.array([0.9, 0.8, 0.7, 0.6])
    # [1, 11] overlaps [0, 10] with IoU 9/11 > 0.5; [0, 4] has IoU 0.4 with it
    assert temporal_nms(w, s, 0.5).tolist() == [0, 2, 3]
    assert temporal_nms(w, s, 0.3).tolist() == [0, 2]
    rng = np.random.default_rng(0)
    for _ in range(50):
        st = rng.uniform(0, 50, 8)
        w = np.stack([st, st + rng.uniform(1, 20, 8)], 1)
        s = rng.random(8)
        thr = float(rng.uniform(0.1, 0.9))
        assert temporal_nms(w, s, thr).tolist() == _nms_reference(w.tolist(), s.tolist(), thr)


@pytest.mark.parametrize("text, expected", [
    ("[[12, 50]]", [[12.0, 50.0]]),
    ("[ [ 2, 8 ] , [ 10 , 14.5 ] ]", [[2.0, 8.0], [10.0, 14.5]]),  # WordPiece spacing, decimals
    ("[[30, 200]]", [[30.0, 64.0]]),  # end clipped to the video
    ("[[20, 10]]", None),  # reversed
    ("[[70, 80]]", None),  # starts after the video
    ("[[5, ", None),  # truncated
    ("", None),
    ("no window here 12 14", None),
    ("[[3, 9]] and [[-2, 4]] [[x, 5]]", [[3.0, 9.0]]),  # the valid one kept, the rest skipped
])
def test_parse_windows(text, expected):
    assert parse_windows(text, 64.0) == expected


def test_submission_row_orders_and_drops_suppressed():
    row = submission_row(7, np.array([[0, 2], [4, 8], [2, 6]]), np.array([0.1, 0.9, 0.5]),
                         keep=[True, True, False], extra={"x": 1})
    assert row == {"qid": 7, "pred_relevant_windows": [[4.0, 8.0, 0.9], [0.0, 2.0, 0.1]], "x": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from polymodal.models.llavilo.data import read_all

    task = get_task(TASK)
    data = task.synth(str(tmp_path_factory.mktemp("llavilo-inf")), seed=0, scale=0.05, progress=False)
    rows = read_all(data["val"])
    return task, data, task.collate({k: v[:5] for k, v in rows.items()})


def _net(task, data, **model):
    cfg = validate_config({"task": TASK, "model": {"preset": "tiny", "llm": data["llm"], **model},
                           "data": {"train": data["train"]}})
    torch.manual_seed(0)
    return task.build_model(cfg.model).eval()


def test_greedy_generation_at_init_is_the_frozen_llms_greedy_decoding(tiny):
    """Zero gates: the injected model is the frozen LLM, so its greedy text must be what
    transformers' own ``generate`` (KV cache, stock attention) writes for the same prompt."""
    from polymodal.models.llavilo.model import build_text_inputs, decode_queries

    task, data, batch = tiny
    net = _net(task, data)
    texts = greedy_generate(net, batch, max_new_tokens=6)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
    prompts = net.prompts(decode_queries(batch["query_bytes"]))
    for i in (0, 3):
        ids = build_text_inputs(net.tokenizer, [prompts[i]], None, max_text_tokens=net.cfg.max_text_tokens,
                                max_target_tokens=net.cfg.max_target_tokens)["input_ids"]
        ref = net.injected.llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, pad_token_id=net.tokenizer.pad_token_id)
        eos = net.tokenizer.sep_token_id
        new = ref[0, ids.shape[1]:].tolist()
        new = new[:new.index(eos)] if eos in new else new
        assert texts[i] == net.tokenizer.decode(new, skip_special_tokens=True)


def test_predict_snaps_applies_nms_and_reports_generations(tiny):
    from polymodal.models.llavilo.task import submission_rows

    task, data, batch = tiny
    net = _net(task, data, nms_iou=0.5, parse_generation=True, max_target_tokens=24)
    with torch.no_grad():
        out = task.predict(net, batch)
    clip = (batch["duration"] / batch["n_clips"]).numpy()[:, None, None]
    assert np.allclose(out["spans"] / clip, np.round(out["spans"] / clip))  # whole clips
    assert (out["spans"][..., 1] > out["spans"][..., 0]).all()
    assert (np.diff(out["scores"], axis=1) <= 0).all()  # best first
    for b in range(5):  # kept windows overlap each other by IoU <= 0.5
        kept = out["spans"][b][out["keep"][b]]
        for x, y in itertools.combinations(kept, 2):
            inter = max(0.0, min(x[1], y[1]) - max(x[0], y[0]))
            assert inter / ((x[1] - x[0]) + (y[1] - y[0]) - inter) <= 0.5 + 1e-6
    metrics = task.metrics(out)
    assert {"r1_05", "map", "gen_valid", "gen_r1_05"} <= set(metrics)
    assert 0.0 <= metrics["gen_valid"] <= 1.0
    rows = submission_rows(out)
    assert [r["qid"] for r in rows] == batch["qid"].tolist()
    assert all("generated_text" in r and len(r["pred_relevant_windows"]) == int(out["keep"][i].sum())
               for i, r in enumerate(rows))
