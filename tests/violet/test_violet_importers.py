"""VIOLET's importers on tiny copies of each dataset as its release lays it out, through the CLI:
``data import --format X`` -> ``train --local`` on a shipped tiny config -> ``evaluate``.

The layouts (facts from /work/shared/reference/real-layouts.md, section VIOLET):

* WebVid: m-bain/webvid ``download.py`` (``<videos>/<page_dir>/<videoid>.mp4``) and its
  ``results_2M_val.csv`` header ``videoid,name,page_idx,page_dir,duration,contentUrl``;
* CC3M: google-research-datasets/conceptual-captions (``caption<TAB>url``, no header) and
  rom1504/img2dataset ``img2dataset/writer.py`` ``FilesSampleWriter`` + ``downloader.py``
  ``compute_key`` (``<out>/00000/<9-digit key>.jpg`` + ``.txt`` + ``.json``, successful downloads only);
* MSR-VTT: ``MSRVTT_data.json`` (``videos[*].split``, ``sentences[*]``), ``MSRVTT_train.9k.csv`` and
  ``MSRVTT_JSFUSION_test.csv`` as ArrowLuo/CLIP4Clip ``dataloaders/dataloader_msrvtt_retrieval.py``
  reads them; videos ``video<N>.mp4``;
* MSRVTT-QA / MSVD-QA: xudejing/video-question-answering ``{split}_qa.json`` (integer ``video_id``),
  MSVD's ``youtube_mapping.txt`` and ``YouTubeClips/<clip>.avi``;
* TGIF-QA: YunseokJANG/tgif-qa ``dataset/{Train,Test}_{task}_question.csv``, tab-separated, CRLF.

Videos are tiny real files (:func:`~polymodal.models.violet.video.encode_video`; GIFs by Pillow).
Hermetic: a tiny BERT over the fixtures' words and a random tiny VQ-GAN, no Ray.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from polymodal.cli import main
from polymodal.errors import ImportDataError
from polymodal.models.violet import importers as imp
from polymodal.models.violet.ingest import PROGRESS_NAME, ingest
from polymodal.models.violet.video import encode_video
from polymodal.shards import open_dataset
from polymodal.testing.tiny import write_tiny_bert, write_tiny_vqgan

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64  # the tiny preset's frames
WORDS = ["red", "green", "blue", "cat", "dog", "car", "runs", "jumps", "drives", "a", "the"]


def write_clip(path: Path, seed: int, n: int = 6, container: str = "mp4") -> None:
    """A 32 px clip: a coloured square crossing a grey field, one step per frame."""
    rng = np.random.default_rng(seed)
    frames = np.full((n, 32, 32, 3), 96, np.uint8)
    colour = rng.integers(0, 256, 3)
    for t in range(n):
        frames[t, 8:20, 2 + 4 * t:14 + 4 * t] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, container=container))


def write_gif(path: Path, seed: int, n: int = 4) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(np.full((32, 32, 3), rng.integers(0, 256, 3), np.uint8)) for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sentence(i: int) -> str:
    """Distinct for i < 27."""
    return f"a {WORDS[i % 3]} {WORDS[3 + i // 3 % 3]} {WORDS[6 + i // 9 % 3]}"


# --------------------------------------------------------------------------- tiny released layouts


def webvid(root: Path) -> dict[str, str]:
    """results CSV over three page folders; videoid 1003's download failed (no file)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [["videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"]]
    for i in range(7):
        vid, page = str(1000 + i), f"{i // 3 * 35 + 1}_{i // 3 * 35 + 35}"
        rows.append([vid, sentence(i), str(i // 3), page, "PT00H00M17S",
                     f"https://ak.picdn.net/shutterstock/videos/{vid}/preview/stock-footage-{vid}.mp4"])
        if i != 3:
            write_clip(root / "videos" / page / f"{vid}.mp4", i)
    with open(root / "results_2M_val.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return {"source": str(root / "results_2M_val.csv"), "videos": str(root / "videos")}


def cc3m(root: Path) -> dict[str, str]:
    """caption<TAB>url TSV (no header) and img2dataset's files output; line 3's download failed."""
    root.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    lines = []
    for i in range(5):
        url = f"https://example.com/img/{i}.jpg"
        lines.append(f"{sentence(i)}\t{url}\n")
        if i == 2:
            continue
        key = f"{i:09d}"  # compute_key: shard 0, 4 sample digits + 5 shard digits
        folder = root / "images" / "00000"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 40, 3), 40 * i, np.uint8)).save(folder / f"{key}.jpg")
        (folder / f"{key}.txt").write_text(sentence(i))
        (folder / f"{key}.json").write_text(json.dumps({
            "url": url, "caption": sentence(i), "key": key, "status": "success", "error_message": None,
            "width": 40, "height": 48, "original_width": 40, "original_height": 48, "exif": "{}",
            "sha256": "0" * 64}, indent=4))
    (root / "images" / "00000.parquet").write_bytes(b"")  # img2dataset's per-shard meta files are ignored
    (root / "images" / "00000_stats.json").write_text("{}")
    (root / "Validation_GCC-1.1.0-Validation.tsv").write_text("".join(lines))
    return {"source": str(root / "Validation_GCC-1.1.0-Validation.tsv"), "images": str(root / "images")}


def msrvtt(root: Path) -> dict[str, str]:
    """Six videos (official split: 0-3 train, 4 validate, 5 test), two sentences each; the 9k
    list holds videos 0-3, the 1k-A list videos 4 and 5 with one sentence each."""
    root.mkdir(parents=True, exist_ok=True)
    splits = ["train"] * 4 + ["validate", "test"]
    data = {"info": {}, "videos": [], "sentences": []}
    for i, split in enumerate(splits):
        data["videos"].append({"category": i % 3, "url": f"https://www.youtube.com/watch?v=x{i}", "video_id":
                               f"video{i}", "start time": 1.0, "end time": 3.0, "split": split, "id": i})
        for k in range(2):
            data["sentences"].append({"caption": sentence(i + k), "video_id": f"video{i}", "sen_id": 2 * i + k})
        write_clip(root / "videos" / f"video{i}.mp4", 10 + i)
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(4)))
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},video{i},{sentence(i + 7)}\n" for i in (4, 5)))
    return {"source": str(root / "MSRVTT_data.json"), "videos": str(root / "videos")}


def msrvtt_qa(root: Path) -> dict[str, str]:
    """train_qa.json / test_qa.json with integer video_ids naming video<id>.mp4."""
    root.mkdir(parents=True, exist_ok=True)
    out = {"videos": str(root / "video")}
    for split, ids in (("train", range(4)), ("test", (4, 5))):
        entries = [{"answer": WORDS[3 + i % 3], "id": 100 + i, "question": f"what is {WORDS[6 + i % 3]}",
                    "video_id": 7010 + i, "category_id": i % 5} for i in ids]
        (root / f"{split}_qa.json").write_text(json.dumps(entries))
        for i in ids:
            write_clip(root / "video" / f"video{7010 + i}.mp4", 20 + i)
        out[split] = str(root / f"{split}_qa.json")
    return out


def msvd_qa(root: Path) -> dict[str, str]:
    """MSVD-QA: video_id N is vid<N> of youtube_mapping.txt, the clip YouTubeClips/<name>.avi."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["-4wsuPCjDBc_5_15", "00jrXRMlZOY_0_10", "0lh_UWF9ZP4_27_31", "1dfR0A_BXjw_590_600"]
    (root / "youtube_mapping.txt").write_text("".join(f"{n} vid{i + 1}\n" for i, n in enumerate(names)))
    for i, name in enumerate(names):
        write_clip(root / "YouTubeClips" / f"{name}.avi", 30 + i, container="avi")
    out = {"videos": str(root / "YouTubeClips"), "mapping": str(root / "youtube_mapping.txt")}
    for split, ids in (("train", (1, 2, 3)), ("test", (4,))):
        (root / f"{split}_qa.json").write_text(json.dumps(
            [{"answer": WORDS[3 + i % 3], "id": i, "question": f"what is {WORDS[i % 3]}", "video_id": i}
             for i in ids]))
        out[split] = str(root / f"{split}_qa.json")
    return out


def tgif_qa(root: Path) -> dict[str, str]:
    """Train/Test files of the action (multiple-choice) and frameqa (open-ended) tasks, CRLF."""
    root.mkdir(parents=True, exist_ok=True)
    out = {"gifs": str(root / "gifs")}
    for i in range(6):
        write_gif(root / "gifs" / f"tumblr_x{i}.gif", 40 + i)
    heads = {"action": "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey",
             "frameqa": "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription"}
    for split, ids in (("Train", range(4)), ("Test", (4, 5))):
        for task, head in heads.items():
            rows = [head]
            for i in ids:
                if task == "action":
                    rows.append(f"tumblr_x{i}\twhat does the {WORDS[3 + i % 3]} do\t" + "\t".join(WORDS[5:10])
                                + f"\t{i % 5}\tvid{i}\t{i}")
                else:
                    rows.append(f"tumblr_x{i}\twhat is the colour of the {WORDS[3 + i % 3]}\t{WORDS[i % 3]}\t2\t"
                                f"vid{i}\t{i}\ta {WORDS[i % 3]} {WORDS[3 + i % 3]}")
            path = root / f"{split}_{task}_question.csv"
            path.write_bytes(("\r\n".join(rows) + "\r\n").encode())
            out[f"{split}_{task}"] = str(path)
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    """A tiny BERT whose WordPiece vocabulary covers the fixtures' words."""
    texts = [sentence(i) for i in range(12)] + [" ".join(WORDS)] + ["what is the colour of the do"]
    return write_tiny_bert(tmp_path_factory.mktemp("violet-real-bert"), texts, vocab_size=120)


@pytest.fixture(scope="module")
def models(bert, tmp_path_factory) -> dict[str, str]:
    return {"bert": bert, "vq": write_tiny_vqgan(tmp_path_factory.mktemp("violet-real-vq"))}


def do_import(fmt: str, out: Path, split: str, *args: str) -> str:
    assert main(["-q", "data", "import", "--format", fmt, "--out", str(out), "--split", split, "--size", str(SIZE),
                 "--local", *args]) == 0
    return str(out)


def chain(tmp_path: Path, yaml: str, bert: str, train: str, test: str, *overrides: str) -> dict:
    """``train --local`` (1 epoch, batches of 2, no ZeRO sharding: one CPU process) then ``evaluate --split test`` of a shipped tiny
    config on imported datasets; returns ``eval/test.json`` after checking that the evaluation
    covered every test row."""
    sets = [f"name=chain", f"storage_path={tmp_path / 'runs'}", f"model.bert={bert}", f"data.train={train}",
            f"data.val={test}", f"data.test={test}", "optim.epochs=1", "optim.batch_size=2", "optim.warmup_steps=0",
            "deepspeed.zero_stage=0", *overrides]
    config = ["--config", str(ROOT / "jobs" / "configs" / yaml), *[a for s in sets for a in ("--set", s)]]
    assert main(["-q", "train", "--local", *config]) == 0
    assert main(["-q", "evaluate", *config, "--split", "test"]) == 0
    result = json.loads((tmp_path / "runs" / "chain" / "eval" / "test.json").read_text())
    assert result["data"] == test and result["split"] == "test"
    if "predictions" in result:
        predictions = Path(result["predictions"]).read_text().splitlines()
        assert len(predictions) == open_dataset(test).num_rows
    return result


# --------------------------------------------------------------------------- one chain per dataset


@pytest.mark.slow
def test_webvid_pretrains_and_counts_missing_downloads(tmp_path, models, capsys):
    src = webvid(tmp_path / "webvid")
    vq = ["--source", src["source"], "--videos", src["videos"], "--vq-tokenizer", models["vq"]]
    train = do_import("webvid", tmp_path / "train", "train", *vq)
    printed = capsys.readouterr().out
    assert "6 rows" in printed and "1 rows whose video was never downloaded" in printed
    manifest = open_dataset(train)
    assert manifest.meta["import_missing"] == 1 and manifest.columns["vt_codes"].shape == [4, 2, 2]
    result = chain(tmp_path, "violet_tiny_pretrain.yaml", models["bert"], train, train)
    assert 0.0 <= result["metrics"]["vtm_acc"] <= 1.0 and 0.0 <= result["metrics"]["mlm_acc"] <= 1.0


@pytest.mark.slow
def test_cc3m_images_pretrain_as_single_frames(tmp_path, models, capsys):
    src = cc3m(tmp_path / "cc3m")
    train = do_import("cc3m", tmp_path / "train", "train", "--source", src["source"], "--images", src["images"],
                      "--vq-tokenizer", models["vq"])
    assert "4 rows" in capsys.readouterr().out
    manifest = open_dataset(train)
    assert manifest.meta["import_missing"] == 1 and manifest.columns["frame_bytes"].shape == [1]
    result = chain(tmp_path, "violet_tiny_pretrain.yaml", models["bert"], train, train, "model.frames=1")
    assert 0.0 <= result["metrics"]["vtm_acc"] <= 1.0


def test_msrvtt_9k_and_1k_a_retrieval(tmp_path, bert):
    src = msrvtt(tmp_path / "msrvtt")
    common = ["--source", src["source"], "--videos", src["videos"], "--frames", "5"]
    train = do_import("msrvtt", tmp_path / "train", "9k", *common)
    test = do_import("msrvtt", tmp_path / "test", "1k-A", *common)
    assert (open_dataset(train).split, open_dataset(train).num_rows) == ("train", 8)  # 4 videos x 2 sentences
    test_rows = open_dataset(test)
    assert (test_rows.split, test_rows.num_rows) == ("test", 2)  # one JSFUSION sentence per video
    result = chain(tmp_path, "violet_tiny_retrieval.yaml", bert, train, test, "optim.max_steps_per_epoch=2")
    metrics = result["metrics"]
    # 2 texts against 2 videos: every text's video is within the top 10, at rank 1 or 2
    assert metrics["r10"] == 1.0 and 1 <= metrics["medr"] <= 2 and metrics["r1"] in (0.0, 0.5, 1.0)


def test_msrvtt_official_splits_come_from_the_json(tmp_path):
    src = msrvtt(tmp_path / "msrvtt")
    sizes = {s: imp.read_msrvtt(src["source"], src["videos"], s).records for s in ("train", "val", "test")}
    assert {s: sorted({r.video for r in rs}) for s, rs in sizes.items()} == {
        "train": ["video0", "video1", "video2", "video3"], "val": ["video4"], "test": ["video5"]}
    assert [r.id for r in sizes["val"]] == ["video4#0", "video4#1"]  # every caption of the video
    with pytest.raises(ImportDataError, match="split field"):
        imp.read_msrvtt(src["source"], src["videos"], "train", split_csv=str(tmp_path / "x.csv"))


@pytest.mark.slow
def test_msrvtt_qa_integer_video_ids_open_ended(tmp_path, models):
    src = msrvtt_qa(tmp_path / "msrvtt-qa")
    train = do_import("msrvtt-qa", tmp_path / "train", "train", "--source", src["train"], "--videos", src["videos"])
    test = do_import("msrvtt-qa", tmp_path / "test", "test", "--source", src["test"], "--videos", src["videos"],
                     "--answers-from", train)
    vocab = open_dataset(train).meta["answer_vocab"]
    assert sorted(vocab) == ["car", "cat", "dog"] and open_dataset(test).num_rows == 2
    result = chain(tmp_path, "violet_tiny_qa.yaml", models["bert"], train, test, f"model.num_answers={len(vocab)}")
    assert 0.0 <= result["metrics"]["acc"] <= 1.0


@pytest.mark.slow
def test_msvd_qa_maps_video_ids_to_youtube_clips(tmp_path, models):
    src = msvd_qa(tmp_path / "msvd-qa")
    common = ["--videos", src["videos"], "--mapping", src["mapping"]]
    train = do_import("msvd-qa", tmp_path / "train", "train", "--source", src["train"], *common)
    test = do_import("msvd-qa", tmp_path / "test", "test", "--source", src["test"], *common, "--answers-from", train)
    parsed = imp.read_msrvtt_qa(src["train"], src["videos"], mapping=src["mapping"])
    assert [os.path.basename(r.source) for r in parsed.records] == [
        "-4wsuPCjDBc_5_15.avi", "00jrXRMlZOY_0_10.avi", "0lh_UWF9ZP4_27_31.avi"]
    vocab = open_dataset(train).meta["answer_vocab"]
    result = chain(tmp_path, "violet_tiny_qa.yaml", models["bert"], train, test, f"model.num_answers={len(vocab)}",
                   "optim.max_steps_per_epoch=1")
    assert 0.0 <= result["metrics"]["acc"] <= 1.0


@pytest.mark.slow
def test_tgif_qa_action_is_multiple_choice_and_frameqa_open_ended(tmp_path, models):
    src = tgif_qa(tmp_path / "tgif")
    gifs = ["--gifs", src["gifs"]]
    train = do_import("tgif-qa", tmp_path / "train", "train", "--source", src["Train_action"], *gifs)
    test = do_import("tgif-qa", tmp_path / "test", "test", "--source", src["Test_action"], *gifs)
    assert open_dataset(train).task == "violet.mcqa" and open_dataset(test).num_rows == 2
    result = chain(tmp_path, "violet_tiny_qa.yaml", models["bert"], train, test, "task=violet.mcqa",
                   "model.num_options=5")
    assert 0.0 <= result["metrics"]["acc"] <= 1.0
    # frameqa: open-ended, the answers of the CRLF file without their line ends
    oe = do_import("tgif-qa", tmp_path / "oe", "train", "--source", src["Train_frameqa"], *gifs)
    assert open_dataset(oe).task == "violet.oeqa" and sorted(open_dataset(oe).meta["answer_vocab"]) == [
        "blue", "green", "red"]


# --------------------------------------------------------------------------- readers alone (fast)


def test_webvid_and_cc3m_readers_skip_and_count_failed_downloads(tmp_path):
    src = webvid(tmp_path / "webvid")
    parsed = imp.read_webvid(src["source"], src["videos"])
    assert (parsed.rows, parsed.missing, parsed.skipped) == (6, 1, 0)
    assert [os.path.relpath(r.source, src["videos"]) for r in parsed.records[2:4]] == [
        "1_35/1002.mp4", "36_70/1004.mp4"]  # 1003 was never downloaded
    assert parsed.records[3].where == f"{src['source']}: line 6" and parsed.records[3].text == sentence(4)
    src = cc3m(tmp_path / "cc3m")
    parsed = imp.read_cc3m(src["source"], src["images"])
    assert (parsed.rows, parsed.missing) == (4, 1)
    assert [(r.video, r.text, r.where.rsplit(": ", 1)[1]) for r in parsed.records][1:3] == [
        ("000000001", sentence(1), "line 2"), ("000000003", sentence(3), "line 4")]  # line 3 failed


def test_webvid_from_s3_to_s3(tmp_path, s3_bucket_uri):
    from polymodal import storage

    src = webvid(tmp_path / "webvid")
    storage.upload_dir(str(tmp_path / "webvid"), f"{s3_bucket_uri}/webvid")
    parsed = imp.read_webvid(f"{s3_bucket_uri}/webvid/results_2M_val.csv", f"{s3_bucket_uri}/webvid/videos")
    assert (parsed.rows, parsed.missing) == (6, 1)
    assert parsed.records[0].source == f"{s3_bucket_uri}/webvid/videos/1_35/1000.mp4"
    manifest = ingest(parsed, f"{s3_bucket_uri}/out", kind="retrieval", split="train", n_frames=2, size=SIZE,
                      use_ray=False, rows_per_shard=2, progress=False)
    assert manifest.num_rows == 6 and len(manifest.shards) == 3 and manifest.meta["import_missing"] == 1
    assert not storage.exists(f"{s3_bucket_uri}/out/{PROGRESS_NAME}")
    assert open_dataset(f"{s3_bucket_uri}/out", verify="checksum").num_rows == 6
    assert src["source"].endswith("results_2M_val.csv")


def test_tgif_qa_count_and_transition_files(tmp_path):
    gifs = tmp_path / "gifs"
    for i in range(2):
        write_gif(gifs / f"tumblr_c{i}.gif", i)
    count = tmp_path / "Test_count_question.csv"
    count.write_bytes(b"gif_name\tquestion\tanswer\tvid_id\tkey\r\n"
                      b"tumblr_c0\thow many times does the cat jump\t3\tvid0\t0\r\n"
                      b"tumblr_c1\thow many times does the dog run\t 10\tvid1\t1\r\n")
    assert [r.answer_text for r in imp.read_tgif_qa(str(count), str(gifs)).records] == ["3", "10"]
    transition = tmp_path / "Train_transition_question.csv"
    transition.write_bytes(b"gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\r\n"
                           b"tumblr_c1\twhat does the dog do after run\tsit\tjump\tspin\tnod\twalk\t4\tvid1\t1\r\n")
    (record,) = imp.read_tgif_qa(str(transition), str(gifs)).records
    assert record.options == ("sit", "jump", "spin", "nod", "walk") and record.answer == 4
    assert record.source == f"{gifs}/tumblr_c1.gif"


# --------------------------------------------------------------------------- bad rows and resuming


def _bad(root: Path, fmt: str) -> tuple[str, list[str], str, str]:
    """(source, reader args, where, message) of a copy of ``fmt``'s layout with one bad row."""
    if fmt == "webvid":
        src = webvid(root)
        text = Path(src["source"]).read_text().replace(f"1001,{sentence(1)}", "1001,")
        Path(src["source"]).write_text(text)
        return src["source"], [src["videos"]], "line 3", "field 'name' is empty"
    if fmt == "cc3m":
        src = cc3m(root)
        Path(src["source"]).write_text(Path(src["source"]).read_text().replace(f"{sentence(1)}\t", "no tab "))
        return src["source"], [src["images"]], "line 2", "expected 'caption<TAB>url'"
    if fmt == "msrvtt":
        src = msrvtt(root)
        data = json.loads(Path(src["source"]).read_text())
        del data["sentences"][3]["caption"]
        Path(src["source"]).write_text(json.dumps(data))
        return src["source"], [src["videos"], "train"], "sentences[3]", "field 'caption' is empty"
    if fmt == "msrvtt-qa":
        src = msrvtt_qa(root)
        entries = json.loads(Path(src["train"]).read_text())
        entries[2]["video_id"] = "video7012"  # a name, not the integer
        Path(src["train"]).write_text(json.dumps(entries))
        return src["train"], [src["videos"]], "entry 2", "field 'video_id' must be an integer"
    src = tgif_qa(root)
    path = Path(src["Train_action"])
    path.write_bytes(path.read_bytes().replace(b"\t1\tvid1\t", b"\t7\tvid1\t"))
    return str(path), [src["gifs"]], "line 3", "field 'answer' must be the 0-based index 0-4"


BAD_READERS = {"webvid": imp.read_webvid, "cc3m": imp.read_cc3m, "msrvtt": imp.read_msrvtt,
               "msrvtt-qa": imp.read_msrvtt_qa, "tgif-qa": imp.read_tgif_qa}


@pytest.mark.parametrize("fmt", list(BAD_READERS))
def test_a_bad_row_names_file_row_and_field(tmp_path, fmt):
    source, args, where, message = _bad(tmp_path, fmt)
    with pytest.raises(ImportDataError, match=message) as err:
        BAD_READERS[fmt](source, *args)
    assert f"{source}: {where}: " in str(err.value)
    parsed = BAD_READERS[fmt](source, *args, skip_bad=True)
    assert parsed.skipped == 1 and len(parsed.records) == parsed.rows > 0


def test_cli_names_the_bad_row_and_writes_nothing(tmp_path, capsys):
    source, (videos,), _, _ = _bad(tmp_path / "src", "msrvtt-qa")
    out = tmp_path / "out"
    assert main(["-q", "data", "import", "--format", "msrvtt-qa", "--source", source, "--videos", videos, "--out",
                 str(out), "--split", "train", "--local"]) == 2
    assert f"{source}: entry 2: field 'video_id' must be an integer" in capsys.readouterr().err
    assert not out.exists()


def test_layout_errors_name_the_fix(tmp_path):
    src = cc3m(tmp_path / "cc3m")
    with pytest.raises(ImportDataError, match="no img2dataset shard folders"):
        imp.read_cc3m(src["source"], str(tmp_path))  # the dataset root, not img2dataset's output
    other = tmp_path / "other.tsv"
    other.write_text("a caption\thttps://elsewhere/0.jpg\n")
    with pytest.raises(ImportDataError, match=r"000000000\.json: field 'url' .* is not on any later line"):
        imp.read_cc3m(str(other), src["images"])
    src = msvd_qa(tmp_path / "msvd")
    Path(src["mapping"]).write_text("-4wsuPCjDBc_5_15 vid1\nbroken line here\n")
    with pytest.raises(ImportDataError, match=r"youtube_mapping\.txt: line 2: expected '<clip_name> vid<N>'"):
        imp.read_msrvtt_qa(src["train"], src["videos"], mapping=src["mapping"])
    with pytest.raises(ImportDataError, match="not a TGIF-QA question file name"):
        imp.read_tgif_qa(src["train"], src["videos"])


def test_an_interrupted_import_resumes_after_its_last_shard(tmp_path, monkeypatch):
    src = msrvtt_qa(tmp_path / "src")
    parsed = imp.read_msrvtt_qa(src["train"], src["videos"])
    broken = Path(src["videos"]) / "video7012.mp4"  # the third record: the second shard of two rows
    good = broken.read_bytes()
    broken.write_bytes(b"cut short")
    out = tmp_path / "out"
    kw = {"kind": "oeqa", "split": "train", "n_frames": 2, "size": SIZE, "use_ray": False, "rows_per_shard": 2,
          "progress": False}
    with pytest.raises(ImportDataError, match="video7012.mp4: cannot decode video"):
        ingest(parsed, str(out), **kw)
    assert sorted(os.listdir(out)) == [PROGRESS_NAME, "part-00000.parquet"]  # no manifest
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    broken.write_bytes(good)  # the download is fixed; the rest is decoded, the first shard kept
    decoded = []
    from polymodal.models.violet import ingest as ingest_module

    real = ingest_module.decode_frames
    monkeypatch.setattr(ingest_module, "decode_frames", lambda data, *a, **k: decoded.append(data) or real(data, *a, **k))
    manifest = ingest(parsed, str(out), **kw)
    assert [os.path.basename(d) for d in decoded] == ["video7012.mp4", "video7013.mp4"]
    assert manifest.num_rows == 4 and [s.rows for s in manifest.shards] == [2, 2]
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first and not (out / PROGRESS_NAME).exists()
    decoded.clear()
    assert ingest(parsed, str(out), **kw) == manifest and decoded == []  # finished: nothing to do
    ingest(parsed, str(out), **kw, resume=False)
    assert len(decoded) == 4  # starting over decodes everything
