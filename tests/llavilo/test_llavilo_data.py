"""LLaViLo moment-retrieval data: feature preparation, QVHighlights / Charades-STA importers, synthetic data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from polymodal.errors import ImportDataError
from polymodal.models.llavilo import data, synth
from polymodal.models.llavilo.importers import import_charades_sta, import_qvhighlights, load_durations
from polymodal.shards import Manifest, iter_local_batches, open_dataset

# --------------------------------------------------------------------------- feature preparation


def test_l2_normalize_matches_moment_detr_formula():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    got = data.l2_normalize(x)
    # Moment-DETR: x / (||x|| + 1e-5); an all-zero (padding) row stays zero.
    np.testing.assert_allclose(got, [[3 / (5 + 1e-5), 4 / (5 + 1e-5)], [0, 0], [1 / (1 + 1e-5), 0]], rtol=1e-6)
    assert got.dtype == np.float32


def test_temporal_endpoint_features_hand_checked():
    np.testing.assert_allclose(data.temporal_endpoint_features(4),
                               [[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]])
    np.testing.assert_allclose(data.temporal_endpoint_features(1), [[0, 1]])


def test_prepare_video_normalises_each_source_trims_pads_and_appends_tef():
    rng = np.random.default_rng(0)
    slowfast, clip = 3 * rng.standard_normal((5, 3)), 7 * rng.standard_normal((6, 2))  # 6th clip: longer source
    video, mask, n = data.prepare_video([slowfast, clip], max_clips=8)
    assert n == 5 and video.shape == (8, 3 + 2 + 2) and video.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(video[:5, :3], axis=1), 1, atol=1e-4)  # each source on its own
    np.testing.assert_allclose(np.linalg.norm(video[:5, 3:5], axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(video[:5, :3], slowfast / np.linalg.norm(slowfast, axis=1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(video[:5, 5:], [[0, .2], [.2, .4], [.4, .6], [.6, .8], [.8, 1]], atol=1e-6)
    assert not video[5:].any()
    np.testing.assert_array_equal(mask, [True] * 5 + [False] * 3)

    # Truncation: the tef uses the kept length L = max_clips, as Moment-DETR's ctx_l after max_v_l.
    video, mask, n = data.prepare_video([slowfast, clip], max_clips=3)
    assert n == 3 and mask.all() and video.shape == (3, 7)
    np.testing.assert_allclose(video[:, 5:], [[0, 1 / 3], [1 / 3, 2 / 3], [2 / 3, 1]], atol=1e-6)

    video, _, _ = data.prepare_video([slowfast], max_clips=5, tef=False, normalize=False)
    np.testing.assert_allclose(video, slowfast.astype(np.float32))


def test_prepare_text_pooled_truncated_and_masked():
    text, mask = data.prepare_text(np.full(4, 2.0), max_words=3)  # pooler_output (Dt,) = one token
    np.testing.assert_allclose(text[0], 0.5, atol=1e-5)
    assert not text[1:].any() and mask.tolist() == [True, False, False]
    text, mask = data.prepare_text(np.ones((40, 2)), max_words=32)
    assert text.shape == (32, 2) and mask.all()


def test_windows_padding_and_saliency_vector():
    windows, n = data.pad_windows([[2, 6], [10, 12]], max_windows=3)
    assert n == 2 and windows.tolist() == [[2, 6], [10, 12], [0, 0]]
    with pytest.raises(ValueError, match="max_windows=1"):
        data.pad_windows([[2, 6], [10, 12]], max_windows=1)
    sal = data.saliency_vector([1, 3, 9], [[2, 4, 0], [1, 1, 1], [4, 4, 4]], max_clips=5)  # clip 9: no features
    np.testing.assert_allclose(sal, [0, 2, 0, 1, 0])


# --------------------------------------------------------------------------- QVHighlights


QVH_ROWS = [
    {"qid": 10, "query": "a dog runs", "duration": 10, "vid": "vidA_0.0_10.0", "relevant_windows": [[2, 6]],
     "relevant_clip_ids": [1, 2], "saliency_scores": [[2, 3, 4], [1, 1, 1]]},
    {"qid": 11, "query": "a cat sleeps", "duration": 10, "vid": "vidB_0.0_10.0",
     "relevant_windows": [[0, 2], [6, 10]], "relevant_clip_ids": [0, 3, 4],
     "saliency_scores": [[4, 4, 4], [0, 1, 2], [3, 3, 3]]},
    {"qid": 12, "query": "the dog again", "duration": 10, "vid": "vidA_0.0_10.0", "relevant_windows": [[4, 8]],
     "relevant_clip_ids": [2, 3], "saliency_scores": [[1, 2, 3], [0, 0, 0]]},
]
CLIPS = {"vidA_0.0_10.0": (6, 5), "vidB_0.0_10.0": (3, 3)}  # clips per source (slowfast, clip)


def _qvh_layout(root: Path, rows=QVH_ROWS, lines: list[str] | None = None) -> dict:
    rng = np.random.default_rng(1)
    dirs = [root / "slowfast_features", root / "clip_features"]
    for d, dim in zip(dirs, (6, 4)):
        d.mkdir(parents=True)
        for vid, clips in CLIPS.items():
            np.savez(d / f"{vid}.npz", features=rng.standard_normal((clips[dirs.index(d)], dim)).astype(np.float32))
    (root / "clip_text_features").mkdir()
    for i, row in enumerate(rows):
        np.savez(root / "clip_text_features" / f"qid{row['qid']}.npz",
                 last_hidden_state=rng.standard_normal((3 + i, 5)).astype(np.float32),
                 pooler_output=rng.standard_normal(5).astype(np.float32))
    jsonl = root / "highlight_train_release.jsonl"
    jsonl.write_text("\n".join(lines if lines is not None else [json.dumps(r) for r in rows]) + "\n")
    return {"jsonl_by_split": {"train": str(jsonl)}, "feature_dirs": [str(d) for d in dirs],
            "text_feature_dir": str(root / "clip_text_features")}


def _read(uri: str) -> dict[str, np.ndarray]:
    manifest = open_dataset(uri, verify="checksum")
    (batch,) = list(iter_local_batches(uri, 100, manifest=manifest, shuffle=False))
    return batch


def test_qvhighlights_import_round_trip(tmp_path):
    layout = _qvh_layout(tmp_path / "src")
    report = import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), max_clips=4, progress=False)
    uri = str(tmp_path / "out" / "train")
    assert report == {"splits": {"train": {"uri": uri, "rows": 3, "skipped": 0}}, "skipped": [], "clamped": 0,
                      "dropped": []}
    manifest = Manifest.load(uri)
    assert manifest.task == "llavilo.moment_retrieval" and manifest.split == "train"
    assert {n: s.describe() for n, s in manifest.columns.items()} == {
        "qid": "int64", "vid": "string", "query": "string", "duration": "float32", "n_clips": "int32",
        "video": "float32[4, 12]", "video_mask": "bool[4]", "windows": "float32[2, 2]", "n_windows": "int32",
        "saliency": "float32[4]", "text": "float32[32, 5]", "text_mask": "bool[32]"}
    assert manifest.meta["feature_dims"] == [6, 4] and manifest.meta["clip_length"] == 2.0
    assert manifest.meta["tef"] is True and manifest.meta["saliency"] is True

    b = _read(uri)
    assert b["qid"].tolist() == [10, 11, 12]
    assert b["vid"].tolist() == ["vidA_0.0_10.0", "vidB_0.0_10.0", "vidA_0.0_10.0"]
    assert b["query"].tolist() == ["a dog runs", "a cat sleeps", "the dog again"]
    np.testing.assert_array_equal(b["duration"], 10)
    # vidA: 6 / 5 clips -> cut to max_clips 4; vidB: 3 clips -> padded.
    assert b["n_clips"].tolist() == [4, 3, 4]
    np.testing.assert_array_equal(b["video_mask"][1], [True, True, True, False])
    src = tmp_path / "src"
    want, _, _ = data.prepare_video([np.load(src / "slowfast_features" / "vidB_0.0_10.0.npz")["features"],
                                     np.load(src / "clip_features" / "vidB_0.0_10.0.npz")["features"]], 4)
    np.testing.assert_allclose(b["video"][1], want)
    np.testing.assert_allclose(b["video"][1, :3, 10:], [[0, 1 / 3], [1 / 3, 2 / 3], [2 / 3, 1]], atol=1e-6)
    np.testing.assert_allclose(b["video"][0, :, 10:], [[0, .25], [.25, .5], [.5, .75], [.75, 1]])
    np.testing.assert_array_equal(b["video"][0], b["video"][2])  # same video, same features
    # max_windows defaults to the most windows a query has (2).
    assert b["n_windows"].tolist() == [1, 2, 1]
    np.testing.assert_array_equal(b["windows"][1], [[0, 2], [6, 10]])
    np.testing.assert_array_equal(b["windows"][0], [[2, 6], [0, 0]])
    np.testing.assert_allclose(b["saliency"][0], [0, 3, 1, 0])
    np.testing.assert_allclose(b["saliency"][1], [4, 0, 0, 1])  # clip 4 (8-10 s) has no features at max_clips=4
    text = np.load(src / "clip_text_features" / "qid12.npz")["last_hidden_state"]  # (5, 5)
    assert b["text_mask"][2].sum() == 5
    np.testing.assert_allclose(b["text"][2, :5], text / (np.linalg.norm(text, axis=1, keepdims=True) + 1e-5),
                               rtol=1e-5)


def test_an_interrupted_qvhighlights_import_resumes_after_its_last_shard(tmp_path, monkeypatch):
    """Interrupted while reading qid 12's features (third shard of one query): the rerun reads only
    qid 12 and writes the dataset an uninterrupted import writes; a rerun of the finished import
    reads nothing; a rewritten feature file starts over. (Layout as _qvh_layout's, moment_detr.)"""
    from polymodal.models.llavilo import importers

    layout = _qvh_layout(tmp_path / "src")
    whole = import_qvhighlights(**layout, out_uri=str(tmp_path / "whole"), rows_per_shard=1, progress=False)
    real, read, fail = importers._Features.text, [], {12}

    def flaky(self, qid):
        read.append(qid)
        if qid in fail:
            raise OSError("connection reset")
        return real(self, qid)

    monkeypatch.setattr(importers._Features, "text", flaky)
    out = str(tmp_path / "out")
    with pytest.raises(OSError, match="connection reset"):
        import_qvhighlights(**layout, out_uri=out, rows_per_shard=1, progress=False)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()
    fail.clear()
    read.clear()
    report = import_qvhighlights(**layout, out_uri=out, rows_per_shard=1, progress=False)
    assert read == [12]  # qids 10 and 11 were written by the interrupted run
    assert report["splits"]["train"] == {**whole["splits"]["train"], "uri": f"{out}/train"}
    done, want = Manifest.load(f"{out}/train"), Manifest.load(str(tmp_path / "whole" / "train"))
    assert (done.columns, [s.rows for s in done.shards], done.meta) == (want.columns, [1, 1, 1], want.meta)
    got, ref = _read(f"{out}/train"), _read(str(tmp_path / "whole" / "train"))
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])
    read.clear()
    assert import_qvhighlights(**layout, out_uri=out, rows_per_shard=1, progress=False) == report
    assert read == []  # finished with the same sources and settings: nothing to do
    np.savez(tmp_path / "src" / "clip_text_features" / "qid10.npz", last_hidden_state=np.ones((3, 5), np.float32))
    import_qvhighlights(**layout, out_uri=out, rows_per_shard=1, progress=False)
    assert read == [10, 11, 12]
    assert _read(f"{out}/train")["text"][0, 0, 0] == pytest.approx(1 / (5 ** 0.5 + 1e-5), rel=1e-5)


def test_qvhighlights_without_text_or_labels_to_s3(tmp_path, s3_bucket_uri):
    rows = [{k: v for k, v in r.items() if k in ("qid", "query", "duration", "vid")} for r in QVH_ROWS]  # test release
    layout = _qvh_layout(tmp_path / "src", rows)
    layout["text_feature_dir"] = None
    report = import_qvhighlights(**layout, out_uri=s3_bucket_uri, progress=False)
    uri = report["splits"]["train"]["uri"]
    assert uri.startswith("s3://")
    manifest = open_dataset(uri)
    assert "text" not in manifest.columns and "saliency" not in manifest.columns
    assert manifest.columns["video"].shape == [75, 12] and manifest.meta["labelled"] is False
    b = _read(uri)
    assert b["n_windows"].tolist() == [0, 0, 0] and b["n_clips"].tolist() == [5, 3, 5]


def test_qvhighlights_missing_npz_names_vid_and_path(tmp_path):
    layout = _qvh_layout(tmp_path / "src")
    missing = tmp_path / "src" / "clip_features" / "vidB_0.0_10.0.npz"
    missing.unlink()
    with pytest.raises(ImportDataError) as err:
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)
    msg = str(err.value)
    assert "vidB_0.0_10.0" in msg and str(missing) in msg and "line 2" in msg and "qid 11" in msg
    assert not (tmp_path / "out").exists()  # checked before anything was written


def test_qvhighlights_bad_window_names_qid_and_line(tmp_path):
    rows = json.loads(json.dumps(QVH_ROWS))
    rows[1]["relevant_windows"] = [[6, 4]]
    layout = _qvh_layout(tmp_path / "src", rows)
    with pytest.raises(ImportDataError, match=r"line 2: qid 11: field relevant_windows\[0\] .* ends before it starts"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)
    rows[1]["relevant_windows"] = [[6, 12]]
    layout = _qvh_layout(tmp_path / "src2", rows)
    with pytest.raises(ImportDataError, match=r"line 2: qid 11: .*ends after the video's duration 10 s"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)


def test_qvhighlights_malformed_json_names_line(tmp_path):
    lines = [json.dumps(QVH_ROWS[0]), json.dumps(QVH_ROWS[1]), '{"qid": 12, "query": ']
    layout = _qvh_layout(tmp_path / "src", lines=lines)
    with pytest.raises(ImportDataError, match=r"highlight_train_release.jsonl:line 3: not valid JSON"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)


def test_qvhighlights_feature_width_mismatch_names_both_files_and_writes_no_manifest(tmp_path):
    layout = _qvh_layout(tmp_path / "src")
    np.savez(tmp_path / "src" / "slowfast_features" / "vidB_0.0_10.0.npz", features=np.ones((3, 7), np.float32))
    with pytest.raises(ImportDataError, match=r"vidB_0.0_10.0.npz: features are 7-d but .*vidA_0.0_10.0.npz "
                                              r"fixed this source at 6-d"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out" / "train" / "manifest.json").exists()


def test_qvhighlights_skip_bad_counts_and_reports(tmp_path, caplog):
    bad_window = dict(QVH_ROWS[1], relevant_windows=[[6, 4]])
    lines = [json.dumps(QVH_ROWS[0]), json.dumps(bad_window), "not json", "", json.dumps(QVH_ROWS[2])]
    layout = _qvh_layout(tmp_path / "src", lines=lines)
    with caplog.at_level(logging.WARNING):
        report = import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), skip_bad=True, progress=False)
    assert report["splits"]["train"]["rows"] == 2 and report["splits"]["train"]["skipped"] == 2
    assert len(report["skipped"]) == 2
    assert "line 2: qid 11" in report["skipped"][0] and "line 3: not valid JSON" in report["skipped"][1]
    assert "skipped 2 bad row(s)" in caplog.text
    assert _read(report["splits"]["train"]["uri"])["qid"].tolist() == [10, 12]


# --------------------------------------------------------------------------- Charades-STA


def test_charades_sta_import(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "i3d").mkdir()
    for vid, clips in (("AO8RW", 7), ("3MSZA", 5)):
        np.savez(tmp_path / "i3d" / f"{vid}.npz", features=rng.standard_normal((clips, 4)).astype(np.float32))
    sta = tmp_path / "charades_sta_train.txt"
    sta.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\n"
                   "3MSZA 1.5 4.0##person turn a light on.\n"
                   "AO8RW 2.0 7.5##person opens the door.\n")  # ends after the 7.2-s video -> clamped
    test = tmp_path / "charades_sta_test.txt"
    test.write_text("3MSZA 0.0 2.5##a person sits down.\n")
    csv = tmp_path / "Charades_v1_train.csv"
    csv.write_text("id,subject,length\nAO8RW,X,7.2\n3MSZA,Y,4.96\n")
    assert load_durations(str(csv)) == {"AO8RW": 7.2, "3MSZA": 4.96}
    report = import_charades_sta({"train": str(sta), "test": str(test)}, str(csv), [str(tmp_path / "i3d")],
                                 str(tmp_path / "out"), qid_start=100, progress=False)
    assert report["clamped"] == 1 and report["skipped"] == []
    assert {s: v["rows"] for s, v in report["splits"].items()} == {"train": 3, "test": 1}
    manifest = open_dataset(report["splits"]["train"]["uri"])
    assert manifest.meta["clip_length"] == 1.0 and manifest.meta["max_clips"] == 8  # ceil(7.2 s / 1 s)
    assert manifest.columns["video"].shape == [8, 6] and manifest.columns["windows"].shape == [1, 2]
    b = _read(report["splits"]["train"]["uri"])
    assert b["qid"].tolist() == [100, 101, 102] and b["vid"].tolist() == ["AO8RW", "3MSZA", "AO8RW"]
    assert b["query"][1] == "person turn a light on."
    np.testing.assert_allclose(b["duration"], [7.2, 4.96, 7.2], rtol=1e-6)
    np.testing.assert_allclose(b["windows"][:, 0], [[0, 6.9], [1.5, 4.0], [2.0, 7.2]], rtol=1e-6)
    assert b["n_clips"].tolist() == [7, 5, 7] and b["n_windows"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(b["video"][1, :5, 4:], data.temporal_endpoint_features(5))
    assert _read(report["splits"]["test"]["uri"])["qid"].tolist() == [103]
    # A rerun of the finished import keeps both splits; changed annotations of one split (the qids run
    # over both) import both again.
    args = ({"train": str(sta), "test": str(test)}, str(csv), [str(tmp_path / "i3d")], str(tmp_path / "out"))
    stamp = {s: (tmp_path / "out" / s / "manifest.json").stat().st_mtime_ns for s in ("train", "test")}
    assert import_charades_sta(*args, qid_start=100, progress=False)["splits"] == report["splits"]
    assert {s: (tmp_path / "out" / s / "manifest.json").stat().st_mtime_ns for s in stamp} == stamp
    test.write_text("3MSZA 0.0 2.0##a person sits down.\n")
    import_charades_sta(*args, qid_start=100, progress=False)
    assert _read(report["splits"]["test"]["uri"])["windows"][0, 0].tolist() == [0, 2]
    assert (tmp_path / "out" / "train" / "manifest.json").stat().st_mtime_ns != stamp["train"]


def test_charades_sta_bad_lines_name_file_and_line(tmp_path):
    (tmp_path / "f").mkdir()
    np.savez(tmp_path / "f" / "AO8RW.npz", features=np.ones((7, 4), np.float32))
    sta = tmp_path / "sta.txt"
    durations = {"AO8RW": 7.2}
    sta.write_text("AO8RW 0.0 6.9##ok\nAO8RW 0.0 6.9 no separator\n")
    with pytest.raises(ImportDataError, match=r"sta.txt:line 2: expected 'VIDEOID start end##sentence'"):
        import_charades_sta({"train": str(sta)}, durations, [str(tmp_path / "f")], str(tmp_path / "o"), progress=False)
    sta.write_text("AO8RW 0.0 6.9##ok\nZZZZZ 0.0 1.0##unknown video\nAO8RW 5.0 3.0##backwards\n"
                   "AO8RW 7.5 9.0##starts after the video\nAO8RW -1.0 3.0##negative start\nAO8RW 1.0 2.0##last\n")
    report = import_charades_sta({"train": str(sta)}, durations, [str(tmp_path / "f")], str(tmp_path / "o"),
                                 skip_bad=True, progress=False)
    assert report["splits"]["train"] == {"uri": str(tmp_path / "o" / "train"), "rows": 2, "skipped": 2}
    assert "line 2: no duration for vid 'ZZZZZ'" in report["skipped"][0]
    assert "line 5 (vid 'AO8RW')" in report["skipped"][1] and "starts outside the video" in report["skipped"][1]
    # start >= end after the end is cut to the duration: dropped as 2D-TAN does, not a bad row
    assert len(report["dropped"]) == 2
    assert "line 3 (vid 'AO8RW'): start 5 >= end 3 s" in report["dropped"][0]
    assert "line 4 (vid 'AO8RW'): start 7.5 >= end 7.2 s (end 9 cut to the 7.2-s video)" in report["dropped"][1]
    # a dropped (or skipped) line takes no qid: the kept rows are numbered 0, 1
    b = _read(report["splits"]["train"]["uri"])
    assert b["qid"].tolist() == [0, 1] and b["query"].tolist() == ["ok", "last"]


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_windows_and_planted_signal(tmp_path):
    uris = synth.write_synthetic(str(tmp_path / "syn"), seed=0, scale=0.5, progress=False)
    assert set(uris) == {"train", "val", "test"}
    manifest = open_dataset(uris["val"])
    assert manifest.task == data.TASK and manifest.num_rows == 64
    rows = data.read_all(uris["val"])
    assert rows["video"].shape == (64, 32, 34) and rows["text"].shape == (64, 8, 32)
    assert rows["windows"].shape == (64, 2, 2) and rows["saliency"].shape == (64, 32)
    assert rows["video_mask"].all() and rows["text_mask"].all()
    n = rows["n_windows"]
    assert n.min() >= 1 and n.max() <= 2
    for w, k, dur in zip(rows["windows"], n, rows["duration"]):
        assert (w[:k, 0] >= 0).all() and (w[:k, 1] > w[:k, 0]).all() and (w[:k, 1] <= dur).all()
        assert not w[k:].any()
    np.testing.assert_allclose(rows["video"][:, :, 32:], np.broadcast_to(data.temporal_endpoint_features(32),
                                                                         (64, 32, 2)))
    train_qids = data.read_all(uris["train"], columns=["qid"])["qid"]
    assert not set(train_qids) & set(rows["qid"])  # qids unique across splits
    # Saliency is positive exactly on the clips inside the GT windows.
    for w, k, sal in zip(rows["windows"], n, rows["saliency"]):
        inside = np.zeros(32, bool)
        for s, e in w[:k]:
            inside[int(s) // 2:int(e) // 2] = True
        np.testing.assert_array_equal(sal > 0, inside)

    scores = synth.planted_signal(rows, feature_dim=32)
    # A non-learned cosine localiser finds the planted windows; random windows do not.
    assert scores["localiser"]["MR-full-R1@0.5"] >= 80
    assert scores["random"]["MR-full-R1@0.5"] <= 25
    assert scores["localiser"]["MR-full-R1@0.5"] - scores["random"]["MR-full-R1@0.5"] >= 50
    assert scores["localiser"]["HL-min-Fair-Hit1"] >= 70 > scores["random"]["HL-min-Fair-Hit1"] + 30

    again = synth.write_synthetic(str(tmp_path / "syn2"), seed=0, scale=0.5, progress=False)
    np.testing.assert_array_equal(data.read_all(again["val"])["video"], rows["video"])


def test_qvh_ground_truth_rows_feed_the_evaluator():
    rng = np.random.default_rng(3)
    rows = synth.sample_moments(rng, 4, n_clips=16, clip_length=2.0, dim=8)
    gt = synth.qvh_ground_truth(rows)
    assert set(gt[0]) == {"qid", "query", "duration", "vid", "relevant_windows", "relevant_clip_ids",
                          "saliency_scores"}
    assert gt[0]["duration"] == 32.0 and len(gt[0]["relevant_clip_ids"]) == len(gt[0]["saliency_scores"])
    no_sal = synth.qvh_ground_truth({k: v for k, v in rows.items() if k != "saliency"})
    assert "saliency_scores" not in no_sal[0]
    assert no_sal[0]["relevant_clip_ids"] == gt[0]["relevant_clip_ids"]  # windows are clip-aligned


def test_qvhighlights_too_many_windows(tmp_path):
    layout = _qvh_layout(tmp_path / "src")
    with pytest.raises(ImportDataError, match=r"line 2 \(qid 11, vid 'vidB_0.0_10.0'\): 2 relevant_windows exceed "
                                              r"max_windows=1; raise max_windows"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), max_windows=1, progress=False)
    report = import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), max_windows=1, skip_bad=True,
                                 progress=False)
    assert report["splits"]["train"]["rows"] == 2 and report["splits"]["train"]["skipped"] == 1


def test_qvhighlights_duplicate_qid_across_splits(tmp_path):
    layout = _qvh_layout(tmp_path / "src")
    val = tmp_path / "src" / "highlight_val_release.jsonl"
    val.write_text(json.dumps(QVH_ROWS[0]) + "\n")
    layout["jsonl_by_split"]["val"] = str(val)
    with pytest.raises(ImportDataError, match=r"highlight_val_release.jsonl:line 1 \(qid 10.*already used at "
                                              r".*highlight_train_release.jsonl:line 1"):
        import_qvhighlights(**layout, out_uri=str(tmp_path / "out"), progress=False)
