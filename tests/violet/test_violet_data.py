"""VIOLET data: importers on real files, ingestion to JPEG-packed shards (in-process and Ray)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest

from polymodal.errors import ImportDataError
from polymodal.models.violet import importers as imp
from polymodal.models.violet.data import FINETUNE_FRAMES, PRETRAIN_FRAMES, TASKS, answer_vocab, frames_of, options_of
from polymodal.models.violet.ingest import ingest
from polymodal.models.violet.tokenizer import VQGANTokenizer
from polymodal.models.violet.video import decode_frames, pack_jpegs, unpack_jpegs
from polymodal.shards import iter_local_batches, open_dataset
from polymodal.testing.tiny import write_tiny_vqgan

SIZE = 64


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return imp.write_synthetic_videos(str(tmp_path_factory.mktemp("violet_src")), n=6, seed=0)


@pytest.fixture(scope="module")
def clips(src):
    with open(src["clips"]) as f:
        return {c["video"]: c for c in json.load(f)}


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    return write_tiny_vqgan(str(tmp_path_factory.mktemp("violet_vq")))


def rows(uri):
    """All rows of a dataset, keyed by id."""
    manifest = open_dataset(uri)
    out = {}
    for batch in iter_local_batches(uri, 64, manifest=manifest, shuffle=False):
        for i, rid in enumerate(batch["id"]):
            out[rid] = {k: v[i] for k, v in batch.items()}
    return manifest, out


# --------------------------------------------------------------------------- importers


def test_each_importer_reads_its_format(src, clips):
    webvid = imp.read_webvid(src["webvid"], src["webvid_root"])
    assert [r.text for r in webvid.records] == [c["caption"] for c in clips.values()] and webvid.skipped == 0
    assert webvid.records[0].id == "video0000#0" and webvid.records[0].source.endswith("videos/video0000.mp4")
    assert webvid.records[1].where == f"{src['webvid']}: line 3"
    cc = imp.read_cc3m(src["cc"], src["images"])  # img2dataset keys: 9 digits, shard folder 00000
    assert [r.text for r in cc.records] == [c["caption"] for c in clips.values()]
    assert all(r.image and r.source.endswith(f"images/00000/{r.video}.jpg") for r in cc.records)
    msrvtt = imp.read_msrvtt(src["msrvtt"], src["videos"], "train")
    assert [r.text for r in msrvtt.records] == [c["caption"] for c in clips.values()]
    for r in imp.read_mcqa(src["mcqa"], src["videos"]).records:
        assert len(r.options) == 4 and r.options[r.answer] == clips[r.video]["direction"]
        assert r.text == f"which way does the {clips[r.video]['colour']} {clips[r.video]['shape']} move?"
    assert [r.answer_text for r in imp.read_oeqa(src["oeqa"], src["videos"]).records] == \
        [c["direction"] for c in clips.values()]


def test_other_video_extensions_are_found(src, tmp_path):
    (tmp_path / "clip9.webm").write_bytes(b"x")
    (tmp_path / "clip9.avi").write_bytes(b"x")
    (tmp_path / "clip8.mkv").write_bytes(b"x")
    (tmp_path / "clip7.gif").write_bytes(b"x")
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"video": v, "question": "q?", "answer": "a"}) + "\n"
                            for v in ("clip9", "clip8", "clip7")))
    sources = [r.source for r in imp.read_oeqa(str(path), str(tmp_path)).records]
    # .avi before .webm (VIDEO_EXTS order)
    assert sources == [f"{tmp_path}/clip9.avi", f"{tmp_path}/clip8.mkv", f"{tmp_path}/clip7.gif"]


GOOD_MC = {"video": "video0000", "question": "q?", "options": ["a", "b"], "answer": 1}

# (reader, file name, content, where the error is, what it says); the released layouts' own bad
# rows are in test_violet_importers.py
MALFORMED = [
    ("mcqa", "q.jsonl", "\n".join(json.dumps(e) for e in [GOOD_MC, {**GOOD_MC, "answer": 2}]), "line 2",
     "field 'answer' must be the index of the right option"),
    ("mcqa", "q.jsonl", "\n".join(json.dumps(e) for e in [GOOD_MC, {**GOOD_MC, "answer": True}]), "line 2",
     "index of the right option"),
    ("mcqa", "q.jsonl", "\n".join(json.dumps(e) for e in [GOOD_MC, {**GOOD_MC, "options": "a|b"}]), "line 2",
     "field 'options' must be a list"),
    ("mcqa", "q.json", json.dumps([GOOD_MC, {**GOOD_MC, "question": ""}]), "entry 1", "field 'question' is empty"),
    ("mcqa", "q.jsonl", "\n".join(json.dumps(e) for e in [GOOD_MC, {**GOOD_MC, "video": "video9999"}]), "line 2",
     "no file"),
    ("oeqa", "q.jsonl", json.dumps({"video": "video0000", "question": "q", "answer": "up"}) + "\n{oops\n", "line 2",
     "invalid JSON"),
    ("oeqa", "q.jsonl", json.dumps({"video": "video0000", "question": "q", "answer": "up"}) + "\n"
     + json.dumps({"video": "video0001", "question": "q", "answer": 3}), "line 2", "field 'answer' must be a non-empty"),
]
READERS = {"mcqa": imp.read_mcqa, "oeqa": imp.read_oeqa}


@pytest.mark.parametrize("fmt, name, content, where, message", MALFORMED)
def test_malformed_rows_name_file_and_line(src, tmp_path, fmt, name, content, where, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ImportDataError, match=message) as err:
        READERS[fmt](str(path), src["videos"])
    assert f"{path}: {where}" in str(err.value)
    parsed = READERS[fmt](str(path), src["videos"], skip_bad=True)
    assert parsed.skipped == 1 and len(parsed.records) == 1


def test_missing_videos_folder_is_named(src, tmp_path):
    with pytest.raises(ImportDataError, match="nowhere: folder not found; pass --videos"):
        imp.read_msrvtt(src["msrvtt"], str(tmp_path / "nowhere"), "train")


# --------------------------------------------------------------------------- ingestion


def test_pretrain_ingest_stores_the_sampled_frames_and_their_visual_tokens(src, clips, vqgan, tmp_path):
    parsed = imp.read_webvid(src["webvid"], src["webvid_root"])
    manifest = ingest(parsed, str(tmp_path / "pre"), kind="pretrain", split="train", n_frames=PRETRAIN_FRAMES,
                      size=SIZE, tokenizer_path=vqgan, use_ray=False, progress=False)
    assert manifest.task == TASKS["pretrain"] and manifest.num_rows == 6
    assert manifest.meta["sampling"] == "middle" and manifest.meta["vt_vocab_size"] == 64
    assert manifest.meta["source"] == src["webvid"] and manifest.meta["skipped"] == 0
    _, got = rows(str(tmp_path / "pre"))
    tokenizer = VQGANTokenizer(vqgan, device="cpu")
    for r in parsed.records:
        row = got[r.id]
        assert row["text"] == clips[r.video]["caption"] and row["video"] == r.video
        frames = frames_of(row)
        assert frames.shape == (4, SIZE, SIZE, 3) and frames.dtype == np.uint8
        # the segment middles of the source, decoded independently: JPEG is lossy (the noisy
        # background costs ~4 levels) but deterministic, so packing them again gives the same pixels
        want = decode_frames(r.source, 4, SIZE)
        assert np.abs(frames.astype(np.float32) - want).mean() < 6
        assert np.array_equal(frames, unpack_jpegs(*pack_jpegs(want)))
        # codes describe the frames before JPEG compression
        assert np.array_equal(row["vt_codes"], tokenizer.encode(want))


def test_qa_answers_and_the_top_k_vocabulary(src, clips, tmp_path):
    mc = imp.read_mcqa(src["mcqa"], src["videos"])
    ingest(mc, str(tmp_path / "mc"), kind="mcqa", split="val", n_frames=FINETUNE_FRAMES, size=SIZE, use_ray=False,
           progress=False)
    _, got = rows(str(tmp_path / "mc"))
    for row in got.values():
        assert options_of(row["options"])[row["answer"]] == clips[row["video"]]["direction"]
        assert frames_of(row).shape == (FINETUNE_FRAMES, SIZE, SIZE, 3)

    oe = imp.read_oeqa(src["oeqa"], src["videos"])
    train = ingest(oe, str(tmp_path / "oe_train"), kind="oeqa", split="train", n_frames=FINETUNE_FRAMES, size=SIZE,
                   top_k=2, use_ray=False, progress=False)
    counts = Counter(c["direction"] for c in clips.values())
    vocab = sorted(counts, key=lambda a: (-counts[a], a))[:2]  # most frequent first, ties alphabetical
    assert train.meta["answer_vocab"] == vocab == answer_vocab(counts.elements(), 2)
    with pytest.raises(ValueError, match="answer_vocab"):  # other splits reuse the train vocabulary
        ingest(oe, str(tmp_path / "oe_val"), kind="oeqa", split="val", n_frames=5, size=SIZE, use_ray=False)
    ingest(oe, str(tmp_path / "oe_val"), kind="oeqa", split="val", n_frames=5, size=SIZE, use_ray=False,
           answers=train.meta["answer_vocab"], progress=False)
    _, got = rows(str(tmp_path / "oe_val"))
    assert len(got) == 6
    for row in got.values():
        direction = clips[row["video"]]["direction"]
        assert row["answer_text"] == direction
        assert row["answer"] == (vocab.index(direction) if direction in vocab else -1)  # -1 kept for evaluation


def test_images_are_single_frame_clips(src, tmp_path):
    cc = imp.read_cc3m(src["cc"], src["images"])
    with pytest.raises(ValueError, match="n_frames=1"):
        ingest(cc, str(tmp_path / "cc"), kind="retrieval", split="train", n_frames=4, size=SIZE, use_ray=False)
    ingest(cc, str(tmp_path / "cc"), kind="retrieval", split="train", n_frames=1, size=SIZE, use_ray=False,
           progress=False)
    _, got = rows(str(tmp_path / "cc"))
    from PIL import Image

    for r in cc.records:
        frames = frames_of(got[r.id])
        assert frames.shape == (1, SIZE, SIZE, 3)
        image = np.asarray(Image.open(r.source).convert("RGB"))[None]  # already SIZE px: no resize
        assert np.array_equal(frames, unpack_jpegs(*pack_jpegs(image)))


def test_an_undecodable_video_is_named_or_skipped(src, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("video0000", "video0002"):
        shutil.copy(f"{src['videos']}/{name}.mp4", videos)
    (videos / "video0001.mp4").write_bytes(b"not a video at all")
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("videoid,name,page_dir\nvideo0000,a,videos\nvideo0001,b,videos\nvideo0002,c,videos\n")
    parsed = imp.read_webvid(str(csv_path), str(tmp_path))
    with pytest.raises(ImportDataError, match="cannot decode video") as err:
        ingest(parsed, str(tmp_path / "out"), kind="retrieval", split="train", n_frames=2, size=SIZE, use_ray=False,
               progress=False)
    assert f"{videos}/video0001.mp4" in str(err.value) and f"{csv_path}: line 3" in str(err.value)
    manifest = ingest(parsed, str(tmp_path / "out"), kind="retrieval", split="train", n_frames=2, size=SIZE,
                      use_ray=False, skip_bad=True, progress=False)
    assert manifest.meta["skipped"] == 1
    assert sorted(rows(str(tmp_path / "out"))[1]) == ["video0000#0", "video0002#0"]


def test_pretrain_needs_a_tokenizer_and_kinds_are_checked(src, tmp_path):
    parsed = imp.read_webvid(src["webvid"], src["webvid_root"])
    with pytest.raises(ValueError, match="tokenizer_path"):
        ingest(parsed, str(tmp_path / "a"), kind="pretrain", split="train", n_frames=4, use_ray=False)
    with pytest.raises(ValueError, match="unknown VIOLET dataset kind"):
        ingest(parsed, str(tmp_path / "a"), kind="caption", split="train", n_frames=4, use_ray=False)
    with pytest.raises(ValueError, match="read_mcqa"):
        ingest(parsed, str(tmp_path / "a"), kind="mcqa", split="train", n_frames=4, use_ray=False)


@pytest.mark.slow
def test_ray_ingest_matches_in_process(src, tmp_path, ray_cluster):
    parsed = imp.read_mcqa(src["mcqa"], src["videos"])
    kw = {"kind": "mcqa", "split": "val", "n_frames": FINETUNE_FRAMES, "size": SIZE, "progress": False}
    local = ingest(parsed, str(tmp_path / "local"), use_ray=False, **kw)
    remote = ingest(parsed, str(tmp_path / "ray"), use_ray=True, concurrency=1, batch_size=4, **kw)
    assert remote.columns == local.columns and remote.num_rows == local.num_rows == 6
    _, want = rows(str(tmp_path / "local"))
    _, got = rows(str(tmp_path / "ray"))
    assert sorted(got) == sorted(want)
    for rid, row in want.items():
        for name in local.columns:
            assert np.array_equal(got[rid][name], row[name]), (rid, name)
