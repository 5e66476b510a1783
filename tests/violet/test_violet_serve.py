"""VIOLET behind Ray Serve: a text ranks the index's videos by the model's own cross-encoder scores,
a question about a video (by `vid`, as a video file or as frames) is answered from the answer
vocabulary or the given options, and bad input is a ServeInputError naming the field; then real
HTTP (JSON, a multipart video upload, 422, 413).

Untrained tiny models exported as checkpoints (serving needs no training for these checks) on
synthetic moving shapes at scale 0.125, all in tmp folders.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from support import served
from pydantic import ValidationError

from polymodal import shards
from polymodal.config import load_config
from polymodal.models.violet import serving
from polymodal.models.violet.data import frames_of
from polymodal.models.violet.encode import channels_first, normalise_frames, tokenize
from polymodal.models.violet.video import encode_video
from polymodal.errors import ServeInputError
from polymodal.registry import get_task
from polymodal.serving.app import ModelStore, build_deployment, parse_args
from polymodal.serving.config_check import check_serve_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]
QUESTION = "which way does the red disc move?"


def _export(root: Path, yaml: str, uris: dict[str, str], *overrides: str, seed: int = 0) -> str:
    """An untrained model of the shipped tiny config, written as a checkpoint folder (``model/`` export)."""
    from polymodal.train.checkpoint import trainable_state, write_export

    cfg = load_config(str(ROOT / "jobs" / "configs" / yaml), [
        f"model.bert={uris['bert']}", f"data.train={uris['train']}", f"data.val={uris['val']}",
        f"data.test={uris['test']}", *overrides])
    torch.manual_seed(seed)
    model = get_task(cfg.task).build_model(cfg.model)
    write_export(root / "model", cfg, trainable_state(model, zero_stage=2), {"epoch": 0, "metrics": {}})
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("violet-serve")
    ret = get_task("violet.retrieval").synth(str(root / "retrieval"), seed=0, scale=1 / 64, progress=False)
    qa = get_task("violet.oeqa").synth(str(root / "oeqa"), seed=1, scale=1 / 64, progress=False)
    return {"retrieval_index": ret["train"], "qa_index": qa["test"],
            "retrieval": _export(root / "ckpt-retrieval", "violet_tiny_retrieval.yaml", ret),
            "pretrain": _export(root / "ckpt-pretrain", "violet_tiny_pretrain.yaml", ret, seed=1),
            "oeqa": _export(root / "ckpt-oeqa", "violet_tiny_qa.yaml", qa, seed=2),
            # synthetic BERTs share one vocabulary, so any index serves any model
            "mcqa": _export(root / "ckpt-mcqa", "violet_tiny_qa.yaml", qa, "task=violet.mcqa",
                            "model.num_answers=null", seed=3)}


@pytest.fixture(scope="module")
def stores(setup) -> dict[str, ModelStore]:
    index = {"retrieval": "retrieval_index", "pretrain": "retrieval_index", "oeqa": "qa_index", "mcqa": "qa_index"}
    return {name: ModelStore(parse_args({"checkpoint": setup[name], "index": setup[key]}))
            for name, key in index.items()}


def ask(store: ModelStore, **body):
    return store.task.serve_predict(store.base.model, [store.request_model(**body)])[0]


def first_rows(uri: str) -> dict[str, dict]:
    """video id -> the dataset's first row of it (numpy columns), read independently of the index."""
    out: dict[str, dict] = {}
    for batch in shards.iter_local_batches(uri, 64, shuffle=False, shuffle_buffer=0):
        for i, vid in enumerate(batch["video"]):
            out.setdefault(str(vid), {k: v[i:i + 1] for k, v in batch.items()})
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def lossless_video(frames: np.ndarray) -> bytes:
    """(T, H, W, 3) uint8 -> a QuickTime file of PNG frames, which decodes to exactly these pixels."""
    from polymodal.models.violet.video import encode_video

    return encode_video(frames, codec="png", pix_fmt="rgb24", container="mov")


def pngs(frames: np.ndarray) -> list[str]:
    from PIL import Image

    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        out.append(b64(buf.getvalue()))
    return out


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_ranks_the_index_by_the_models_own_cross_encoder_scores(stores, setup):
    store = stores["retrieval"]
    net, index = store.base.model, store.base.model.serve_index
    assert not net.training and len(index) == 16
    texts = ["a red disc moves left", "a blue square moves up", "a green triangle moves down"]
    reqs = [store.request_model(text=t, top_k=k) for t, k in zip(texts, (5, 16, 100))]
    out = store.task.serve_predict(net, reqs)
    assert index.tokens(net) is index.tokens(net)  # encoded once, kept

    # the reference: Violet.retrieval_scores on the dataset's own frames of every video
    rows = first_rows(setup["retrieval_index"])
    frames = torch.cat([torch.from_numpy(frames_of(r)) for r in rows.values()])  # (V, T, S, S, 3)
    ids, attn = tokenize(net, texts)
    with torch.no_grad():
        ref = net.retrieval_scores(normalise_frames(channels_first(frames), torch.float32), ids, attn).numpy()
    column = {vid: v for v, vid in enumerate(rows)}
    for resp, k, want in zip(out, (5, 16, 16), ref):
        videos = [hit.video for hit in resp.results]
        scores = [hit.score for hit in resp.results]
        assert len(videos) == k == len(set(videos)) and set(videos) <= set(rows)
        assert scores == sorted(scores, reverse=True)
        np.testing.assert_allclose(scores, want[[column[v] for v in videos]], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores, np.sort(want)[::-1][:k], rtol=1e-4, atol=1e-5)  # the best k
    alone = store.task.serve_predict(net, reqs[1:2])[0]  # batching (text padding) changes nothing
    np.testing.assert_allclose([h.score for h in alone.results], [h.score for h in out[1].results], atol=1e-5)


def test_a_pretrain_checkpoint_retrieves_zero_shot(stores):
    store = stores["pretrain"]
    assert store.request_model is serving.RetrievalRequest
    resp = ask(store, text="a red disc moves left", top_k=3)
    assert len(resp.results) == 3 and all(np.isfinite(h.score) for h in resp.results)


# ----------------------------------------------------------------------------- QA


def test_oeqa_by_vid_video_file_and_frames_agree_and_match_the_task(stores, setup):
    store = stores["oeqa"]
    net, index = store.base.model, store.base.model.serve_index
    assert index.answer_vocab == shards.open_dataset(setup["qa_index"]).meta["answer_vocab"]
    vid = index.ids[0]
    frames = index.frames[vid]  # (5, 64, 64, 3) as stored
    by_vid = ask(store, question=QUESTION, vid=vid, top_k=4)
    by_file = ask(store, question=QUESTION, video_b64=b64(lossless_video(frames)), top_k=4)
    by_frames = ask(store, question=QUESTION, frames_b64=pngs(frames), top_k=4)
    for resp in (by_file, by_frames):
        assert resp.answer_index == by_vid.answer_index
        np.testing.assert_allclose([c.prob for c in resp.candidates], [c.prob for c in by_vid.candidates], atol=1e-5)
    assert by_vid.answer == index.answer_vocab[by_vid.answer_index] and by_vid.prob == by_vid.candidates[0].prob
    assert sorted(c.index for c in by_vid.candidates) == [0, 1, 2, 3]
    assert sum(c.prob for c in by_vid.candidates) == pytest.approx(1.0, abs=1e-5)

    # the task's own evaluation path on the dataset row gives the same distribution
    task, row = store.task, first_rows(setup["qa_index"])[vid]
    batch = task.collate({**row, "text": np.array([QUESTION], dtype=object)})
    with torch.no_grad():
        want = task._logits(net, batch).softmax(-1)[0].numpy()
    np.testing.assert_allclose([want[c.index] for c in by_vid.candidates], [c.prob for c in by_vid.candidates],
                               atol=1e-5)

    # ten frames are sampled to the model's five as ingestion samples a video: the same five either way
    ten = np.concatenate([frames, frames[::-1]])
    a = ask(store, question=QUESTION, video_b64=b64(lossless_video(ten)))
    b = ask(store, question=QUESTION, frames_b64=pngs(ten))
    assert a.answer_index == b.answer_index and a.prob == pytest.approx(b.prob, abs=1e-5)
    image = ask(store, question=QUESTION, frames_b64=pngs(frames[:1]))  # an image: a one-frame video
    assert image.answer in index.answer_vocab and 0.0 < image.prob <= 1.0


def test_mcqa_picks_one_of_the_options_with_the_task_scores(stores, setup):
    store = stores["mcqa"]
    net, index = store.base.model, store.base.model.serve_index
    vid, options = index.ids[1], ["left", "right", "up"]
    by_vid = ask(store, question=QUESTION, vid=vid, options=options, top_k=3)
    by_file = ask(store, question=QUESTION, video_b64=b64(lossless_video(index.frames[vid])), options=options)
    assert by_vid.answer == options[by_vid.answer_index] == by_file.answer
    np.testing.assert_allclose(by_file.scores, by_vid.scores, atol=1e-5)
    probs = torch.tensor(by_vid.scores).softmax(-1).numpy()
    assert by_vid.prob == pytest.approx(float(probs.max()), abs=1e-6)
    assert [c.answer for c in by_vid.candidates] == [options[j] for j in np.argsort(-probs, kind="stable")]

    import json

    task, row = store.task, first_rows(setup["qa_index"])[vid]
    batch = task.collate({**row, "text": np.array([QUESTION], dtype=object),
                          "options": np.array([json.dumps(options)], dtype=object), "answer": np.array([0])})
    with torch.no_grad():
        want = task._scores(net, batch)[0, :3].numpy()
    np.testing.assert_allclose(by_vid.scores, want, rtol=1e-4, atol=1e-5)


def test_multipart_strings_parse_into_lists():
    req = serving.QARequest.model_validate({"question": "q", "options": '["a", "b"]', "frames_b64": "aGk=",
                                            "top_k": "2"})
    assert req.options == ["a", "b"] and req.frames_b64 == ["aGk="] and req.top_k == 2
    with pytest.raises(ValidationError, match="JSON list"):
        serving.QARequest.model_validate({"question": "q", "options": "a, b"})


@pytest.mark.parametrize("name, body, field, words", [
    ("retrieval", {"text": "   "}, "text", "empty"),
    ("oeqa", {"question": " ", "vid": "VID"}, "question", "empty"),
    ("oeqa", {"question": QUESTION, "vid": "no-such-video"}, "vid", "unknown video"),
    ("oeqa", {"question": QUESTION, "video_b64": "%%% not base64"}, "video_b64", "not valid base64"),
    ("oeqa", {"question": QUESTION, "video_b64": b64(b"plain text, not a video")}, "video_b64", "not a decodable"),
    ("oeqa", {"question": QUESTION, "vid": "VID", "video_b64": "VIDEO"}, "video_b64", "exactly one"),
    ("oeqa", {"question": QUESTION}, "vid", "exactly one"),
    ("oeqa", {"question": QUESTION, "frames_b64": ["PNG", b64(b"junk")]}, "frames_b64.1", "not a decodable image"),
    ("oeqa", {"question": QUESTION, "vid": "VID", "options": ["left", "right"]}, "options", "open-ended"),
    ("mcqa", {"question": QUESTION, "vid": "VID"}, "options", "got none"),
    ("mcqa", {"question": QUESTION, "vid": "VID", "options": ["a", "b", "c", "d", "e"]}, "options", "2 to 4"),
    ("mcqa", {"question": QUESTION, "vid": "VID", "options": ["left", "  "]}, "options.1", "empty"),
])
def test_bad_requests_raise_naming_the_field(stores, name, body, field, words):
    store = stores[name]
    index = store.base.model.serve_index
    fill = {"VID": index.ids[0], "VIDEO": b64(lossless_video(index.frames[index.ids[0]])),
            "PNG": pngs(index.frames[index.ids[0]][:1])[0]}
    body = {k: [fill.get(x, x) for x in v] if isinstance(v, list) else fill.get(v, v) for k, v in body.items()}
    with pytest.raises(ServeInputError) as info:
        ask(store, **body)
    assert info.value.field == field and words in info.value.message, info.value


def test_retrieval_without_an_index_names_it(stores, monkeypatch):
    store = stores["retrieval"]
    monkeypatch.setattr(store.base.model, "serve_index", None)
    with pytest.raises(ServeInputError) as info:
        ask(store, text="a red disc moves left")
    assert info.value.field == "index" and "serve args `index" in info.value.message


def test_shipped_serve_config_checks():
    assert check_serve_config(ROOT / "serve" / "violet.yaml") == []


# ----------------------------------------------------------------------------- HTTP


@pytest.mark.slow
def test_retrieval_and_a_qa_upload_over_http(ray_cluster, setup, stores):
    from ray import serve

    ret_args = parse_args({"checkpoint": setup["retrieval"], "index": setup["retrieval_index"]})
    qa_args = parse_args({"checkpoint": setup["oeqa"], "index": setup["qa_index"], "max_body_bytes": 200_000})
    index = stores["oeqa"].base.model.serve_index
    clip = encode_video(index.frames[index.ids[2]])  # a real (lossy) MP4
    with served(ret_args, "violet-retrieval") as url:
        serve.run(build_deployment(qa_args, ray_actor_options={"num_cpus": 0.5}).bind(qa_args.model_dump()),
                  name="violet-qa", route_prefix="/violet-qa")
        qa_url = url.rsplit("/", 1)[0] + "/violet-qa"
        with httpx.Client(timeout=120) as client:
            r = client.post(f"{url}/v1/predict", json={"text": "a red disc moves left", "top_k": 3})
            assert r.status_code == 200, r.text
            want = ask(stores["retrieval"], text="a red disc moves left", top_k=3)
            assert [h["video"] for h in r.json()["results"]] == [h.video for h in want.results]
            np.testing.assert_allclose([h["score"] for h in r.json()["results"]], [h.score for h in want.results],
                                       atol=1e-5)

            r = client.post(f"{qa_url}/v1/predict/upload", data={"question": QUESTION, "top_k": "2"},
                            files={"video_b64": ("clip.mp4", clip, "video/mp4")})
            assert r.status_code == 200, r.text
            want = ask(stores["oeqa"], question=QUESTION, video_b64=b64(clip), top_k=2)
            assert r.json()["answer"] == want.answer in index.answer_vocab
            assert r.json()["prob"] == pytest.approx(want.prob, abs=1e-5) and len(r.json()["candidates"]) == 2

            bad = [(client.post(f"{qa_url}/v1/predict", json={"question": "  ", "vid": index.ids[0]}), 422, "question"),
                   (client.post(f"{qa_url}/v1/predict/upload", data={"question": QUESTION},
                                files={"video_b64": ("x.mp4", b"not a video", "video/mp4")}), 422, "video_b64"),
                   (client.post(f"{url}/v1/predict", json={"text": ""}), 422, "text"),
                   (client.post(f"{qa_url}/v1/predict/upload", data={"question": QUESTION},
                                files={"video_b64": ("big.mp4", b"\0" * 300_000, "video/mp4")}), 413, "limit")]
            for resp, status, word in bad:
                assert resp.status_code == status, (status, resp.text)
                assert word in resp.json()["detail"], resp.json()
