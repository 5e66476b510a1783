"""`polymodal data import` for VIOLET's formats, driven in-process (``--local``: no Ray) on six
synthetic 64 px videos."""

from __future__ import annotations

import json

import pytest

from polymodal.cli import main
from polymodal.models.violet import importers as imp
from polymodal.models.violet.data import TASKS, columns
from polymodal.shards import open_dataset
from polymodal.testing.tiny import write_tiny_vqgan

SIZE = 64


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return imp.write_synthetic_videos(str(tmp_path_factory.mktemp("violet_cli_src")), 6, seed=0, size=SIZE)


@pytest.fixture(scope="module")
def vqgan(tmp_path_factory):
    return write_tiny_vqgan(str(tmp_path_factory.mktemp("violet_cli_vq")))


def run(fmt, source, out, split, *extra):
    return main(["-q", "data", "import", "--format", fmt, "--source", str(source), "--out", str(out),
                 "--split", split, "--size", str(SIZE), "--local", *extra])


def test_help_lists_the_violet_formats(capsys):
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    out = capsys.readouterr().out
    for word in ("webvid", "cc3m", "msrvtt", "msrvtt-qa", "msvd-qa", "tgif-qa", "mcqa", "oeqa"):
        assert word in out


@pytest.mark.parametrize("fmt, own, foreign", [
    ("webvid", ["--videos", "--vq-tokenizer", "--grid", "--frames"], ["--answers-from", "--images", "--top-k"]),
    ("cc3m", ["--images", "--vq-tokenizer"], ["--videos", "--frames", "--answers-from"]),
    ("msvd-qa", ["--videos", "--mapping", "--answers-from"], ["--vq-tokenizer", "--split-csv", "--gifs"]),
    ("tgif-qa", ["--gifs", "--answers-from"], ["--videos", "--vq-tokenizer", "--mapping"]),
    ("oeqa", ["--videos", "--answers-from", "--top-k"], ["--vq-tokenizer", "--grid", "--images"]),
    ("msrvtt", ["--videos", "--frames", "--split-csv", "1k-A"], ["--vq-tokenizer", "--answers-from", "--top-k"]),
])
def test_each_format_help_shows_only_its_options(capsys, fmt, own, foreign):
    with pytest.raises(SystemExit) as info:
        main(["data", "import", "--format", fmt, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"--format {fmt}" in out
    assert all(flag in out for flag in own), out
    assert not any(flag in out for flag in foreign), out
    assert "--tokenizer " not in out and "--voxel-chunk" not in out  # other systems' formats


def test_msrvtt_writes_a_retrieval_dataset_and_counts_skipped_rows(src, tmp_path, capsys):
    with open(src["msrvtt"]) as f:
        data = json.load(f)
    data["videos"].append({"video_id": "video9999", "split": "train"})
    data["sentences"].append({"sen_id": 99, "video_id": "video9999", "caption": "no such file"})
    source = tmp_path / "MSRVTT_data.json"
    source.write_text(json.dumps(data))
    out = tmp_path / "ret"
    assert run("msrvtt", source, out, "train", "--videos", src["videos"]) == 2  # the missing video is a bad row
    assert "video9999" in capsys.readouterr().err
    assert run("msrvtt", source, out, "train", "--videos", src["videos"], "--skip-bad") == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "6 rows" in printed and "skipped 1 bad source rows" in printed
    manifest = open_dataset(str(out), verify="checksum")
    assert (manifest.task, manifest.split, manifest.num_rows) == (TASKS["retrieval"], "train", 6)
    assert manifest.meta["n_frames"] == 5 and manifest.meta["size"] == SIZE  # fine-tuning default T
    assert manifest.meta["import_skipped"] == 1
    assert set(manifest.columns) == set(columns("retrieval", 5))


def test_oeqa_val_reuses_the_train_vocabulary(src, tmp_path, capsys):
    train, val = tmp_path / "oe_train", tmp_path / "oe_val"
    videos = ["--videos", src["videos"], "--frames", "2"]
    assert run("oeqa", src["oeqa"], train, "train", *videos, "--top-k", "2") == 0
    vocab = open_dataset(str(train)).meta["answer_vocab"]
    assert len(vocab) == 2
    # a val split without the train vocabulary would index answers of its own
    assert run("oeqa", src["oeqa"], val, "val", *videos) == 2
    assert "--answers-from" in capsys.readouterr().err and not val.exists()
    assert run("oeqa", src["oeqa"], val, "val", *videos, "--answers-from", str(train)) == 0
    manifest = open_dataset(str(val))
    assert manifest.task == TASKS["oeqa"] and manifest.num_rows == 6 and manifest.meta["answer_vocab"] == vocab
    assert manifest.columns["frame_bytes"].shape == [2]
    assert {"answer", "answer_text"} <= set(manifest.columns)


def test_webvid_pretrain_stores_visual_tokens_on_the_patch_grid(src, vqgan, tmp_path):
    out = tmp_path / "pre"
    assert run("webvid", src["webvid"], out, "train", "--videos", src["webvid_root"], "--vq-tokenizer", vqgan) == 0
    manifest = open_dataset(str(out))
    assert manifest.task == TASKS["pretrain"] and manifest.num_rows == 6
    # default T = 4 for pre-training; 64 px frames over 32 px patches: a 2 x 2 grid
    assert manifest.columns["vt_codes"].shape == [4, 2, 2]
    assert manifest.meta["vt_vocab_size"] == 64 and manifest.meta["tokenizer"] == vqgan


def test_cc_images_are_single_frame_pretrain_clips(src, vqgan, tmp_path, capsys):
    out, images = tmp_path / "cc", ["--images", src["images"]]
    assert run("cc3m", src["cc"], out, "train", *images, "--vq-tokenizer", vqgan, "--frames", "4") == 2
    assert "--format cc3m: error: unrecognized arguments: --frames 4" in capsys.readouterr().err
    assert run("cc3m", src["cc"], out, "train", *images, "--vq-tokenizer", vqgan, "--grid", "1", "1") == 0
    manifest = open_dataset(str(out))
    assert manifest.num_rows == 6 and manifest.columns["vt_codes"].shape == [1, 1, 1]


@pytest.mark.parametrize("fmt, extra, message", [
    ("webvid", [], "--format webvid: error: the following arguments are required: --vq-tokenizer"),
    ("webvid", ["--vq-tokenizer", "/nonexistent/vq"], "polymodal: error: --vq-tokenizer /nonexistent/vq: no config.json"),
    ("msrvtt", ["--vq-tokenizer", "x"], "--format msrvtt: error: unrecognized arguments: --vq-tokenizer x"),
    ("mcqa", ["--answers-from", "x"], "--format mcqa: error: unrecognized arguments: --answers-from x"),
])
def test_wrong_options_are_refused_before_anything_is_written(src, tmp_path, capsys, fmt, extra, message):
    out = tmp_path / "out"
    assert run(fmt, src[fmt], out, "train", "--videos", src["videos"], *extra) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.exists()


def test_a_violet_format_needs_a_split_and_videos(src, tmp_path, capsys):
    assert main(["data", "import", "--format", "mcqa", "--source", src["mcqa"], "--out", str(tmp_path / "o"),
                 "--videos", src["videos"]]) == 2
    assert "--split" in capsys.readouterr().err
    assert run("mcqa", src["mcqa"], tmp_path / "o", "val") == 2
    assert "the following arguments are required: --videos" in capsys.readouterr().err
