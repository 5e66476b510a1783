"""LLaViLo behind Ray Serve: features or an indexed `vid` plus a query give ranked windows over
real HTTP; a width mismatch or an empty query is a 422 naming the field."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from support import served

from polymodal.config import load_config
from polymodal.errors import ServeInputError
from polymodal.registry import get_task
from polymodal.serving.app import ModelStore, parse_args
from polymodal.serving.config_check import check_serve_config

TASK = "llavilo.moment_retrieval"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(s3_server):
    """Synthetic data + tiny LLM on the S3 server, and a briefly trained run (no Ray)."""
    from polymodal.models.llavilo.data import read_all
    from polymodal.train.loop import fit_local

    prefix = f"s3://polymodal/test-llavilo-serve-{uuid.uuid4().hex}"
    data = get_task(TASK).synth(f"{prefix}/data", seed=0, scale=0.05, progress=False)
    cfg = load_config(str(ROOT / "jobs" / "configs" / "llavilo_tiny.yaml"), [
        "name=serve", f"storage_path={prefix}/runs", f"model.llm={data['llm']}", f"data.train={data['train']}",
        f"data.val={data['val']}", f"data.test={data['test']}", "optim.epochs=1", "optim.max_steps_per_epoch=3",
        "deepspeed.zero_stage=0"])
    fit_local(cfg, progress=False)
    rows = read_all(data["test"], cfg.storage)
    return {"run": cfg.run_uri, "index": data["test"], "rows": rows, "cfg": cfg}


def _request(rows, i: int, **change) -> dict:
    n = int(rows["n_clips"][i])
    body = {"query": str(rows["query"][i]), "text": rows["text"][i][rows["text_mask"][i]].round(5).tolist(),
            "video": rows["video"][i, :n].round(5).tolist(), "duration": float(rows["duration"][i]), "top_k": 3}
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture(scope="module")
def store(trained):
    return ModelStore(parse_args({"checkpoint": trained["run"], "index": trained["index"]}))


def test_in_process_requests_by_features_and_by_vid_agree(store, trained):
    rows = trained["rows"]
    req_cls = store.request_model
    by_features = store.task.serve_predict(store.base.model, [req_cls(**_request(rows, i)) for i in range(3)])
    by_vid = store.task.serve_predict(store.base.model, [
        req_cls(**_request(rows, i, video=None, duration=None, vid=str(rows["vid"][i]))) for i in range(3)])
    alone = store.task.serve_predict(store.base.model, [req_cls(**_request(rows, 1))])
    for a, b in zip(by_features, by_vid):
        assert len(a.pred_relevant_windows) == 3
        np.testing.assert_allclose(a.pred_relevant_windows, b.pred_relevant_windows, atol=1e-4)
    # batching (padding to the longest video/query) changes nothing
    np.testing.assert_allclose(alone[0].pred_relevant_windows, by_features[1].pred_relevant_windows, atol=1e-4)
    for resp in by_features:
        scores = [w[2] for w in resp.pred_relevant_windows]
        assert scores == sorted(scores, reverse=True)
        assert all(0 <= s < e <= resp.duration for s, e, _ in resp.pred_relevant_windows)


@pytest.mark.parametrize("change, field, words", [
    ({"video": [[0.0] * 30] * 4}, "video", "width 34"),
    ({"text": [[0.1] * 7]}, "text", "width 32"),
    ({"video": [[float("nan")] * 34] * 4}, "video", "finite"),
    ({"video": []}, "video", "at least one row"),
    ({"duration": None}, "duration", "required"),
    ({"vid": "synth_test_000000"}, "video", "exactly one"),
    ({"video": None, "duration": None, "vid": "no-such-video"}, "vid", "unknown video"),
])
def test_bad_requests_raise_naming_the_field(store, trained, change, field, words):
    req = store.request_model(**_request(trained["rows"], 0, **change))
    with pytest.raises(ServeInputError) as info:
        store.task.serve_predict(store.base.model, [req])
    assert info.value.field == field and words in info.value.message


def test_evaluate_writes_a_submission_the_official_protocol_scores_alike(trained, tmp_path, capsys):
    """``polymodal evaluate`` writes eval/test_predictions.jsonl in the QVHighlights submission
    format; ``polymodal eval qvhighlights`` on it reproduces the metrics evaluate reported."""
    import json

    from polymodal import cli, storage
    from polymodal.evaluate import evaluate_run
    from polymodal.models.llavilo.synth import qvh_ground_truth

    cfg = trained["cfg"]
    out, _ = evaluate_run(cfg, "test", progress=False)
    rows = [json.loads(line) for line in storage.read_text(out["predictions"], cfg.storage).splitlines()]
    assert [r["qid"] for r in rows] == trained["rows"]["qid"].tolist()
    assert all(len(r["pred_relevant_windows"]) == cfg.model.num_anchors for r in rows)
    sub, gt = tmp_path / "sub.jsonl", tmp_path / "gt.jsonl"
    sub.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gt.write_text("".join(json.dumps(r) + "\n" for r in qvh_ground_truth(trained["rows"])))
    assert cli.main(["eval", "qvhighlights", "--submission", str(sub), "--gt", str(gt),
                     "--out", str(tmp_path / "m.json")]) == 0
    brief = json.loads((tmp_path / "m.json").read_text())["brief"]
    # the task's metrics are the official percentages as fractions
    assert out["metrics"]["r1_05"] == brief["MR-full-R1@0.5"] / 100
    assert out["metrics"]["map"] == brief["MR-full-mAP"] / 100


def test_shipped_serve_config_checks():
    assert check_serve_config(ROOT / "serve" / "llavilo.yaml") == []


@pytest.fixture(scope="module")
def server(ray_cluster, trained):
    args = parse_args({"checkpoint": trained["run"], "index": trained["index"], "max_batch_size": 4,
                       "batch_wait_timeout_s": 0.05})
    with served(args, "llavilo") as url:
        yield url


def test_http_batched_requests_match_in_process(server, store, trained):
    rows = trained["rows"]
    bodies = [_request(rows, i) for i in range(4)] + [_request(rows, 0, video=None, duration=None,
                                                               vid=str(rows["vid"][0]))]

    async def post_all():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(f"{server}/v1/predict", json=b) for b in bodies))

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    expected = store.task.serve_predict(store.base.model, [store.request_model(**b) for b in bodies])
    for r, e in zip(responses, expected):
        np.testing.assert_allclose(r.json()["pred_relevant_windows"], e.pred_relevant_windows, atol=1e-4)


@pytest.mark.parametrize("change, field", [
    ({"video": [[0.0] * 30] * 4}, "video"),   # feature width mismatch
    ({"query": "   "}, "query"),               # empty query
    ({"query": None}, "query"),                # missing query
    ({"top_k": 0}, "top_k"),
])
def test_http_bad_requests_are_422_naming_the_field(server, trained, change, field):
    body = _request(trained["rows"], 0, **change)
    r = httpx.post(f"{server}/v1/predict", json=body, timeout=60)
    assert r.status_code == 422, r.text
    assert field in {e["field"].split(".")[0] for e in r.json()["errors"]}, r.json()
