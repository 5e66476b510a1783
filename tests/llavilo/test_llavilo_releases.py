"""QVHighlights and Charades-STA as their releases lay them out: ``data import`` -> ``train
--local`` (tiny preset) -> ``evaluate`` (-> the QVHighlights submission), and the import errors.

The tiny copies follow these sources (facts only; the rows, numbers and features are made up,
and the feature widths are shrunk from 2304 / 512 to 8 / 4 / 6):

* QVHighlights, jayleicn/moment_detr @ b7e553a: ``data/highlight_{train,val,test}_release.jsonl``
  (keys ``qid, query, duration, vid, relevant_clip_ids, relevant_windows, saliency_scores``;
  ``vid`` = ``{youtube_id}_{start}_{end}``; the test release has only ``qid, query, duration,
  vid``), the ``features/`` folder of ``moment_detr_features.tar.gz`` as
  ``moment_detr/scripts/train.sh`` and ``moment_detr/start_end_dataset.py`` read it
  (``slowfast_features/{vid}.npz`` and ``clip_features/{vid}.npz`` with key ``features``,
  ``clip_text_features/qid{qid}.npz`` with ``last_hidden_state``), 2-s clips, at most 75; the
  submission format of ``standalone_eval/README.md`` (``hl_{val,test}_submission.jsonl``).
* Charades-STA, microsoft/2D-TAN @ 2f7410f ``data/Charades-STA/``: ``charades_sta_{train,test}.txt``
  (``VID start end##sentence``, jiyanggao/TALL), ``Charades_v1_{train,test}.csv`` (its header,
  durations in ``length``), ``lib/datasets/charades.py`` (end cut to the duration, lines with
  start >= end dropped); line/lighthouse @ d095eaa: ``features/charades/{clip,slowfast}/{vid}.npz``
  (``features``), ``clip_text/qid{qid}.npz`` (``last_hidden_state``), 1-s clips, and
  ``data/charades/charades_{train,test}_release.jsonl`` numbering the kept queries 0, 1, ... over
  train then test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from polymodal.cli import main
from polymodal.shards import open_dataset

ROOT = Path(__file__).resolve().parents[2]
CONFORMANCE = ROOT.parent / "shared" / "conformance" / "qvhighlights"
SF, CLIP, TXT = 8, 4, 6  # shrunk SlowFast / CLIP / CLIP-text widths


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> str:
    from polymodal.models.llavilo.task import write_tiny_llm

    return write_tiny_llm(str(tmp_path_factory.mktemp("llm")), seed=0)


# --------------------------------------------------------------------------- QVHighlights copy

QVH_VIDEOS = {"NUsG9BgSes0_210.0_360.0": 150, "RoripwjYFp8_360.0_510.0": 150, "_6hnl_BrFvs_60.0_210.0": 126}


def _qvh_row(qid: int, vid: str, query: str, windows: list[list[int]], labelled: bool = True) -> dict:
    row = {"qid": qid, "query": query, "duration": QVH_VIDEOS[vid], "vid": vid}
    if labelled:
        clips = [c for s, e in windows for c in range(s // 2, e // 2)]
        row.update(relevant_clip_ids=clips, saliency_scores=[[(c + k) % 5 for k in range(3)] for c in clips],
                   relevant_windows=windows)
    return row


QVH_SPLITS = {
    "train": [_qvh_row(7803, "RoripwjYFp8_360.0_510.0", "Man in gray top walks from outside to inside.", [[26, 36]]),
              _qvh_row(2579, "NUsG9BgSes0_210.0_360.0", "A girl and her mother cooked.", [[82, 150]]),
              _qvh_row(101, "_6hnl_BrFvs_60.0_210.0", "A boat on the water.", [[0, 10], [40, 52]]),
              _qvh_row(102, "RoripwjYFp8_360.0_510.0", "The man sits down.", [[100, 120]])],
    "val": [_qvh_row(5071, "NUsG9BgSes0_210.0_360.0", "A woman sitting in front of a desk.", [[10, 30]]),
            _qvh_row(5072, "_6hnl_BrFvs_60.0_210.0", "Hills seen from a boat.", [[60, 90]])],
    "test": [_qvh_row(3158, "_6hnl_BrFvs_60.0_210.0", "A video covering hill and water from a boat", [], False),
             _qvh_row(7920, "RoripwjYFp8_360.0_510.0", "Woman talks to the camera out the window of a car.", [],
                      False)],
}


def _qvh_release(root: Path) -> tuple[Path, Path]:
    """``root/data`` (the three jsonl) and ``root/features`` (the unpacked tarball)."""
    rng = np.random.default_rng(0)
    data, feats = root / "data", root / "features"
    data.mkdir(parents=True)
    for split, rows in QVH_SPLITS.items():
        (data / f"highlight_{split}_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for sub, dim, extra in (("slowfast_features", SF, 0), ("clip_features", CLIP, 1)):
        (feats / sub).mkdir(parents=True)
        for vid, duration in QVH_VIDEOS.items():
            # the CLIP features of a video may have one clip more; the loader cuts to the shortest
            clips = min(75, duration // 2) + extra
            np.savez(feats / sub / f"{vid}.npz", features=rng.standard_normal((clips, dim)).astype(np.float16))
    (feats / "clip_text_features").mkdir()
    for rows in QVH_SPLITS.values():
        for r in rows:
            np.savez(feats / "clip_text_features" / f"qid{r['qid']}.npz",
                     last_hidden_state=rng.standard_normal((len(r["query"].split()) + 2, TXT)).astype(np.float32),
                     pooler_output=rng.standard_normal(TXT).astype(np.float32))
    return data, feats


def _config(root: Path, llm: str, out: Path, splits: dict[str, str]) -> Path:
    """jobs/configs/llavilo_tiny.yaml pointed at the imported splits: 1 short epoch, local disk."""
    import yaml

    cfg = yaml.safe_load((ROOT / "jobs" / "configs" / "llavilo_tiny.yaml").read_text())
    manifest = open_dataset(splits["train"])
    cfg["model"].update(llm=llm, video_dim=manifest.columns["video"].shape[-1],
                        text_dim=manifest.columns["text"].shape[-1])
    cfg["data"] = splits
    cfg["optim"].update(epochs=1, warmup_steps=0, batch_size=4, precision="fp32")
    cfg["storage_path"] = str(root / "runs")
    cfg["name"] = out.name
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_qvhighlights_release_imports_trains_and_writes_the_submission(tmp_path, llm, capsys):
    data, feats = _qvh_release(tmp_path / "release")
    out = tmp_path / "qvh"
    assert main(["-q", "data", "import", "--format", "qvhighlights", "--source", str(data), "--features", str(feats),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"test: {out / 'test'} (2 rows, 0 skipped; no labels" in printed
    assert f"train: {out / 'train'} (4 rows, 0 skipped; labelled)" in printed
    test_manifest = open_dataset(str(out / "test"))
    assert test_manifest.meta["labelled"] is False and "saliency" not in test_manifest.columns
    # Moment-DETR's loader: 75 clips at most, float32, SlowFast then CLIP, cut to the shorter, + 2 TEF columns
    assert test_manifest.columns["video"].shape == [75, SF + CLIP + 2]
    assert open_dataset(str(out / "val")).meta["saliency"] is True

    cfg = _config(tmp_path, llm, out, {s: str(out / s) for s in ("train", "val", "test")})
    assert main(["-q", "train", "--config", str(cfg), "--local"]) == 0
    capsys.readouterr()

    # the test split has no labels: no metrics, and the benchmark's upload (test + val) instead
    assert main(["-q", "evaluate", "--config", str(cfg), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.rsplit("\nwritten:", 1)[0])
    assert result["metrics"] == {} and "has no labels" in result["metrics_skipped"]
    run = tmp_path / "runs" / "qvh"
    sub_dir = run / "eval" / "submission"
    assert result["submission"] == {n: str(sub_dir / n) for n in ("hl_val_submission.jsonl", "hl_test_submission.jsonl")}
    test_rows = [json.loads(line) for line in (sub_dir / "hl_test_submission.jsonl").read_text().splitlines()]
    val_rows = [json.loads(line) for line in (sub_dir / "hl_val_submission.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in test_rows] == [3158, 7920] and [r["qid"] for r in val_rows] == [5071, 5072]
    for r, src in zip(test_rows, QVH_SPLITS["test"]):
        assert (r["query"], r["vid"]) == (src["query"], src["vid"])
        assert list(r) == ["qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"]
        scores = [w[2] for w in r["pred_relevant_windows"]]
        assert scores == sorted(scores, reverse=True) and len(scores) >= 1
        assert all(0 <= w[0] < w[1] <= src["duration"] for w in r["pred_relevant_windows"])
        assert len(r["pred_saliency_scores"]) == src["duration"] // 2  # one per 2-s clip: 63 and 75
    _check_like_the_official_sample(test_rows + val_rows)

    # the val file beside it scores through the official protocol against the copy's ground truth
    assert main(["eval", "qvhighlights", "--submission", str(sub_dir / "hl_val_submission.jsonl"),
                 "--gt", str(data / "highlight_val_release.jsonl")]) == 0
    brief = json.loads(capsys.readouterr().out)["brief"]
    assert {"MR-full-R1@0.5", "MR-full-mAP", "HL-min-VeryGood-mAP"} <= set(brief)

    # a labelled split gets both: metrics and (for val) its submission file
    assert main(["-q", "evaluate", "--config", str(cfg), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out.rsplit("\nwritten:", 1)[0])
    assert set(result["metrics"]) >= {"r1_05", "map"} and "metrics_skipped" not in result
    assert list(result["submission"]) == ["hl_val_submission.jsonl"]
    # the task's metrics are the official evaluator's on that same file (fractions vs percentages)
    assert result["metrics"]["r1_05"] == pytest.approx(brief["MR-full-R1@0.5"] / 100)


def _check_like_the_official_sample(rows: list[dict]) -> None:
    """Our rows have the fields, order and JSON types of the official sample submission."""
    if not CONFORMANCE.is_dir():
        pytest.skip(f"no conformance data at {CONFORMANCE}")
    with open(CONFORMANCE / "sample_val_preds.jsonl") as f:
        sample = json.loads(f.readline())

    def shape(row: dict) -> dict:
        return {"keys": list(row), **{k: type(v).__name__ for k, v in row.items()},
                "window": [type(x).__name__ for x in row["pred_relevant_windows"][0]],
                "saliency": {type(x).__name__ for x in row["pred_saliency_scores"]}}

    for row in rows:
        assert shape(row) == shape(sample)


def test_qvhighlights_malformed_line_names_file_line_and_field(tmp_path, capsys):
    data, feats = _qvh_release(tmp_path / "release")
    rows = [dict(r) for r in QVH_SPLITS["val"]]
    rows[1]["duration"] = "150s"
    (data / "highlight_val_release.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["-q", "data", "import", "--format", "qvhighlights", "--source", str(data), "--features", str(feats),
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{data / 'highlight_val_release.jsonl'}:line 2: qid 5072: field 'duration'" in err
    (data / "highlight_val_release.jsonl").write_text(json.dumps(QVH_SPLITS["val"][0]) + "\n{\"qid\": 5072,\n")
    assert main(args) == 2
    assert f"{data / 'highlight_val_release.jsonl'}:line 2: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # every line is checked before anything is written


def test_qvhighlights_missing_feature_file_names_vid_and_path(tmp_path, capsys):
    data, feats = _qvh_release(tmp_path / "release")
    missing = feats / "clip_features" / "_6hnl_BrFvs_60.0_210.0.npz"
    missing.unlink()
    assert main(["-q", "data", "import", "--format", "qvhighlights", "--source", str(data), "--features", str(feats),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "vid '_6hnl_BrFvs_60.0_210.0'" in err and str(missing) in err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- Charades-STA copy

STA_DURATIONS = {"train": {"AO8RW": 33.67, "Y6R7T": 29.42, "LEOL6": 21.5}, "test": {"3MSZA": 30.96, "O0R1A": 30.83}}
STA_LINES = {
    "train": ["AO8RW 0.0 6.9##a person is putting a book on a shelf.",
              "Y6R7T 20.8 30.0##person begins to play on a phone.",  # ends after the 29.42-s video: cut
              "LEOL6 8.0 7.0##person is holding medicine.",  # start >= end: dropped, takes no qid
              "Y6R7T 7.3 17.3##person pouring it into a glass.",
              "AO8RW 10.0 16.5##the person closes the book."],
    "test": ["3MSZA 24.3 30.4##person turn a light on.",
             "O0R1A 1.1 8.8##person throws clothes in bucket."],
}
STA_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"


def _sta_release(root: Path) -> tuple[Path, Path]:
    """``root/Charades-STA`` (txt + csv, as 2D-TAN's data folder) and lighthouse's ``root/charades``."""
    rng = np.random.default_rng(1)
    src, feats = root / "Charades-STA", root / "charades"
    src.mkdir(parents=True)
    for split, lines in STA_LINES.items():
        (src / f"charades_sta_{split}.txt").write_text("".join(line + "\n" for line in lines))
        rows = [f'{vid},HR43,Kitchen,6,7,Yes,"A person cooks, then reads.",book;stove,"Cooks, reads.",'
                f'c092 11.90 21.20;c147 0.00 12.60,{d}' for vid, d in STA_DURATIONS[split].items()]
        (src / f"Charades_v1_{split}.csv").write_text("\n".join([STA_HEADER, *rows]) + "\n")
    for sub, dim in (("clip", CLIP), ("slowfast", SF)):
        (feats / sub).mkdir(parents=True)
        for split in STA_DURATIONS.values():
            for vid, d in split.items():
                np.savez(feats / sub / f"{vid}.npz", features=rng.standard_normal((int(d), dim)).astype(np.float32))
    (feats / "clip_text").mkdir()
    for qid in range(6):  # 5 train lines, 1 dropped -> qids 0-3, then test 4-5 (lighthouse's numbering)
        np.savez(feats / "clip_text" / f"qid{qid}.npz",
                 last_hidden_state=rng.standard_normal((5, TXT)).astype(np.float32))
    return src, feats


def test_charades_sta_release_imports_trains_and_evaluates(tmp_path, llm, capsys):
    src, feats = _sta_release(tmp_path / "release")
    out = tmp_path / "sta"
    assert main(["-q", "data", "import", "--format", "charades-sta", "--source", str(src), "--features", str(feats),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"train: {out / 'train'} (4 rows, 0 skipped; labelled)" in printed
    assert "clamped: 1 window end(s)" in printed
    assert f"dropped: 1 line(s) with start >= end after the cut, e.g. {src / 'charades_sta_train.txt'}:line 3" in printed
    manifest = open_dataset(str(out / "train"))
    assert manifest.meta["clip_length"] == 1.0 and manifest.meta["max_clips"] == 34  # ceil(33.67 s / 1 s)
    assert manifest.columns["video"].shape == [34, CLIP + SF + 2]
    from polymodal.models.llavilo.data import read_all

    train, test = read_all(str(out / "train")), read_all(str(out / "test"))
    assert train["qid"].tolist() == [0, 1, 2, 3] and test["qid"].tolist() == [4, 5]
    assert train["query"][2] == "person pouring it into a glass."
    np.testing.assert_allclose(train["windows"][1, 0], [20.8, 29.42], rtol=1e-6)
    # the text features are those of the qid lighthouse gives the line (qid 2: the 4th line, after the drop)
    want = np.load(feats / "clip_text" / "qid2.npz")["last_hidden_state"]
    np.testing.assert_allclose(train["text"][2, :5], want / (np.linalg.norm(want, axis=1, keepdims=True) + 1e-5),
                               rtol=1e-5)

    cfg = _config(tmp_path, llm, out, {"train": str(out / "train"), "val": str(out / "test"),
                                       "test": str(out / "test")})
    assert main(["-q", "train", "--config", str(cfg), "--local"]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", "--config", str(cfg), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.rsplit("\nwritten:", 1)[0])
    assert 0.0 <= result["metrics"]["r1_05"] <= 1.0 and "submission" not in result  # labelled; no upload format


def test_charades_line_without_separator_names_file_and_line(tmp_path, capsys):
    src, feats = _sta_release(tmp_path / "release")
    lines = STA_LINES["test"] + ["O0R1A 1.1 8.8 person throws clothes in bucket."]
    (src / "charades_sta_test.txt").write_text("\n".join(lines) + "\n")
    assert main(["-q", "data", "import", "--format", "charades-sta", "--source", str(src), "--features", str(feats),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{src / 'charades_sta_test.txt'}:line 3: expected 'VIDEOID start end##sentence'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt, own, other", [("qvhighlights", "--splits", "Charades_v1"),
                                             ("charades-sta", "Charades_v1", "--splits")])
def test_each_format_has_its_own_help(fmt, own, other, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "--format", fmt, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert own in text and other not in text and "--features" in text
