"""Wander's importers of released datasets, on tiny copies laid out as their sources document them:
UPMC Food-101 (title CSVs + image folders), IEMOCAP (Multimodal-Transformer's pickle) and MSR-VTT
with MMT's expert HDF5 files. Each dataset: `data import` -> `train --local` on the tiny preset
(jobs/configs/wander_tiny.yaml) -> `evaluate`, through the CLI in this process; plus the errors a
malformed file gets."""

from __future__ import annotations

import datetime
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.cli import main
from polymodal.config import load_config
from polymodal.errors import ImportDataError
from polymodal.models.wander.backbone import save_tiny_backbone
from polymodal.models.wander.importers import (MMT_EXPERTS, import_food101, import_iemocap,
                                               import_msrvtt_mmt)
from polymodal.registry import get_task
from polymodal.shards import Manifest, iter_local_batches
from support import ROOT

TINY = str(ROOT / "jobs" / "configs" / "wander_tiny.yaml")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "apple", "pie", "recipe", "ramen", "soup", "a", "man",
         "is", "cooking", "dog", "running", "."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(str(d / "tok"))
    return str(d / "tok")


def _rows(uri: str) -> dict[str, np.ndarray]:
    return next(iter_local_batches(uri, Manifest.load(uri).num_rows, shuffle=False))


def _chain(tmp_path: Path, fmt: list[str], task: str, modalities: list[dict], *sets: str) -> dict[str, float]:
    """`data import` (``fmt``: its arguments) -> `train --local` (tiny preset, 1 epoch) -> `evaluate` on
    test, against a tiny random backbone of ``modalities``; returns the test metrics."""
    data = tmp_path / "data"
    assert main(["-q", "data", "import", *fmt, "--out", str(data)]) == 0
    save_tiny_backbone(tmp_path / "backbone", modalities)
    overrides = [f"task={task}", "name=chain", f"storage_path={tmp_path / 'runs'}",
                 f"model.backbone={tmp_path / 'backbone'}", "optim.epochs=1", "optim.batch_size=4",
                 "optim.warmup_steps=0", "scaling.num_workers=1", "checkpoint.num_to_keep=1",
                 *(f"data.{s}={data / s}" for s in ("train", "val", "test")), *sets]
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["-q", "train", "--config", TINY, "--local", *args]) == 0
    assert main(["-q", "evaluate", "--config", TINY, *args]) == 0
    cfg = load_config(TINY, overrides)
    result = json.loads((Path(cfg.run_uri) / "eval" / "test.json").read_text())
    return result["metrics"]


# ---------------------------------------------------------------- UPMC Food-101

# (file, title as released: HTML entities and escapes kept, commas quoted, class)
UPMC_TRAIN = [
    ("apple_pie_0.jpg", "My Apple Pie Recipe", "apple_pie"),
    ("apple_pie_1.jpg", "Mini Apple Pie Bits &amp; Apple Pie Party Dip | Breakfast", "apple_pie"),
    ("apple_pie_2.jpg", '"[[""Coleen\'s Recipes: BEST APPLE PIE, EVER !!!""]]"', "apple_pie"),
    ("apple_pie_3.jpg", "Candy Apple Pie Recipe - Moms Need To Know \\xe2\\x84\\xa2", "apple_pie"),
    ("ramen_0.jpg", "Ramen soup recipe", "ramen"),
    ("ramen_1.jpg", "Easy ramen &#8211; a recipe", "ramen"),
    ("ramen_2.jpg", "Ramen", "ramen"),
    ("ramen_3.jpg", "Miso ramen soup", "ramen"),
]
UPMC_TEST = [("apple_pie_7.jpg", "Apple pie", "apple_pie"), ("ramen_9.jpg", "Ramen soup", "ramen")]


def _jpg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((12, 10, 3), dtype=np.uint8)
    arr[...] = color
    Image.fromarray(arr).save(path, format="JPEG")


def _upmc(root: Path) -> Path:
    """UPMC Food-101 as its Kaggle copy lays it out (YiLunLee/missing_aware_prompts @ 4da8cc7 ``DATA.md``):
    ``images/{train,test}/<class>/<class>_<n>.jpg`` and ``texts/{train,test}_titles.csv``, CSV with no
    header row and three fields: image file name, raw page title, class name (songrise/MoPE @ 0cc20c3
    ``data/food101/text/test_titles.csv``: entities such as ``&amp;`` and ``\\xe2\\x84\\xa2`` escapes kept,
    titles with commas or quotes double-quoted)."""
    for split, rows in (("train", UPMC_TRAIN), ("test", UPMC_TEST)):
        lines = []
        for i, (name, title, cls) in enumerate(rows):
            _jpg(root / "images" / split / cls / name, (200, 40 * i % 255, 0) if cls == "apple_pie" else (0, 60, 200))
            lines.append(f"{name},{title},{cls}\n")
        (root / "texts").mkdir(parents=True, exist_ok=True)
        (root / "texts" / f"{split}_titles.csv").write_text("".join(lines))
    return root


def test_food101_upmc_layout_is_read_as_released(tmp_path: Path, tokenizer: str) -> None:
    """UPMC's own layout (sources in :func:`_upmc`): classes from train, val drawn from train with the
    seed, titles kept raw (the quoted one, with its comma, is one field), images from images/<split>/."""
    root = _upmc(tmp_path / "upmc")
    out = import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, image_size=8, max_text_len=8,
                         val_size=2, seed=0, progress=False)
    man = Manifest.load(out["train"])
    assert man.meta["layout"] == "upmc" and man.meta["classes"] == ["apple_pie", "ramen"]
    rows = {s: _rows(out[s]) for s in ("train", "val", "test")}
    assert (len(rows["train"]["label"]), len(rows["val"]["label"]), len(rows["test"]["label"])) == (6, 2, 2)
    assert sorted(rows["train"]["label"].tolist() + rows["val"]["label"].tolist()) == [0] * 4 + [1] * 4
    assert rows["test"]["label"].tolist() == [0, 1]
    # the test ramen image is blue, the apple pie one red (JPEG: approximately)
    assert rows["test"]["image"][1, 2].mean() > 150 > rows["test"]["image"][0, 2].mean()
    # "Ramen soup": [CLS] ramen soup [SEP] [PAD]...
    np.testing.assert_array_equal(rows["test"]["text"][1], [2, 8, 9, 3, 0, 0, 0, 0])


def test_food101_upmc_malformed_rows_name_file_line_and_field(tmp_path: Path, tokenizer: str) -> None:
    root = _upmc(tmp_path / "upmc")
    train = root / "texts" / "train_titles.csv"
    good = train.read_text()
    train.write_text(good + "ramen_5.jpg,Ramen with, an unquoted comma,ramen\n")
    with pytest.raises(ImportDataError, match=r"train_titles\.csv: line 9: expected 3 fields .* got 4"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, val_size=2, progress=False)
    train.write_text(good + "ramen_5.jpg,Ramen,ramen\n")  # no such image
    with pytest.raises(ImportDataError, match=r"line 9: field 'image file name': image file .*ramen_5\.jpg does not"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, val_size=2, progress=False)
    train.write_text(good)
    (root / "texts" / "test_titles.csv").write_text("ramen_9.jpg,Ramen soup,sushi\n")
    with pytest.raises(ImportDataError, match=r"test_titles\.csv: line 1: field 'class name': 'sushi' does not occur"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, val_size=2, progress=False)


@pytest.mark.slow
def test_food101_upmc_import_train_evaluate(tmp_path: Path, tokenizer: str) -> None:
    """`data import --format food101` on UPMC's layout (sources in :func:`_upmc`) -> train -> evaluate."""
    root = _upmc(tmp_path / "upmc")
    metrics = _chain(tmp_path, ["--format", "food101", "--source", str(root), "--tokenizer", tokenizer,
                                "--image-size", "8", "--max-text-len", "8", "--val-size", "2"],
                     "wander.classification",
                     [{"name": "image", "input": "pixel_values", "seq_len": 5, "image_size": 8},
                      {"name": "text", "input": "input_ids", "seq_len": 8}],
                     "model.num_classes=2")
    assert set(metrics) >= {"accuracy", "f1_macro"} and 0.0 <= metrics["accuracy"] <= 1.0


# ---------------------------------------------------------------- IEMOCAP

EMOTIONS = ["neutral", "happy", "sad", "angry"]


def _iemocap_split(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    present = rng.integers(0, 2, size=(n, 4))
    labels = np.stack([1 - present, present], axis=-1).astype(np.float32)  # (N, 4, 2): argmax = present
    audio = rng.normal(size=(n, 20, 74)).astype(np.float32)
    audio[0, 3, 5] = -np.inf  # COVAREP log(0), zeroed by the loader
    return {"vision": rng.normal(size=(n, 20, 35)).astype(np.float32),
            "text": rng.normal(size=(n, 20, 300)).astype(np.float32), "audio": audio, "labels": labels,
            "id": np.array([[f"Ses01F_{i}", "0", "1"] for i in range(n)])}


def _iemocap(path: Path) -> tuple[Path, dict]:
    """IEMOCAP as Multimodal-Transformer reads it (yaohungt/Multimodal-Transformer @ 4002b6b
    ``src/dataset.py``): ``iemocap_data.pkl`` = {train, valid, test} each {vision, text, audio, labels,
    id}; word-aligned length 20, widths text 300, audio 74, vision 35; labels (N, 4, 2) whose arg-max
    over the last axis is the 0/1 target of each emotion, ordered Neutral, Happy, Sad, Angry
    (``src/eval_metrics.py`` @ 029afeb, ``eval_iemocap``)."""
    rng = np.random.default_rng(0)
    data = {"train": _iemocap_split(rng, 12), "valid": _iemocap_split(rng, 4), "test": _iemocap_split(rng, 6)}
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path, data


def test_iemocap_pickle_is_read_as_released(tmp_path: Path) -> None:
    """Multimodal-Transformer's IEMOCAP pickle (sources in :func:`_iemocap`): 0/1 targets are the
    arg-max of each emotion's pair, features float32 with -inf audio set to 0, in emotion order."""
    path, data = _iemocap(tmp_path / "iemocap_data.pkl")
    out = import_iemocap(str(path), str(tmp_path / "ds"), progress=False)
    for split, src in (("train", "train"), ("val", "valid"), ("test", "test")):
        man = Manifest.load(out[split])
        assert man.task == "wander.multilabel" and man.meta["labels"] == EMOTIONS
        rows = _rows(out[split])
        np.testing.assert_array_equal(rows["label"], data[src]["labels"].argmax(-1))
        np.testing.assert_array_equal(rows["text"], data[src]["text"])
        assert rows["audio"][0, 3, 5] == 0.0 and np.isfinite(rows["audio"]).all()


def test_iemocap_refuses_unknown_pickle_class_and_names_bad_fields(tmp_path: Path) -> None:
    path, data = _iemocap(tmp_path / "iemocap_data.pkl")
    data["train"]["when"] = datetime.date(2019, 1, 1)  # any class but numpy arrays and builtins
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ImportDataError, match=r"iemocap_data\.pkl: not a loadable IEMOCAP pickle .*refusing to "
                                              r"load global datetime\.date"):
        import_iemocap(str(path), str(tmp_path / "ds"), progress=False)
    del data["train"]["when"]
    data["valid"]["labels"] = data["valid"]["labels"][:, :, 0]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ImportDataError, match=r"split 'valid' field 'labels' must be a numeric \(N, 4, 2\) array"):
        import_iemocap(str(path), str(tmp_path / "ds"), progress=False)
    data["valid"] = _iemocap_split(np.random.default_rng(1), 4)
    data["test"]["vision"][2, 0, 0] = np.nan
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(ImportDataError, match=r"split 'test' row 2: NaN or inf in vision"):
        import_iemocap(str(path), str(tmp_path / "ds"), progress=False)
    assert Manifest.load(import_iemocap(str(path), str(tmp_path / "ds"), skip_bad=True,
                                        progress=False)["test"]).num_rows == 5


@pytest.mark.slow
def test_iemocap_import_train_evaluate(tmp_path: Path) -> None:
    """`data import --format iemocap` (sources in :func:`_iemocap`) -> train -> evaluate: per-emotion
    accuracy and F1 as Multimodal-Transformer reports them."""
    path, _ = _iemocap(tmp_path / "iemocap_data.pkl")
    metrics = _chain(tmp_path, ["--format", "iemocap", "--source", str(path)], "wander.multilabel",
                     [{"name": "text", "input": "embeds", "seq_len": 20, "feature_dim": 300},
                      {"name": "audio", "input": "embeds", "seq_len": 20, "feature_dim": 74},
                      {"name": "vision", "input": "embeds", "seq_len": 20, "feature_dim": 35}],
                     "model.num_classes=4")
    assert {f"{m}_{k}" for m in ("acc", "f1") for k in range(4)} <= set(metrics)
    assert metrics["accuracy"] == pytest.approx(np.mean([metrics[f"acc_{k}"] for k in range(4)]))


def test_multilabel_metrics_match_sklearn_per_target() -> None:
    """Per-target accuracy and weighted F1 equal sklearn's, as eval_iemocap computes them."""
    from sklearn.metrics import accuracy_score, f1_score

    from polymodal.models.wander.metrics import multilabel_metrics

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=(40, 4))
    logits = rng.normal(size=(40, 4)) + (labels - 0.5)
    got = multilabel_metrics(logits, labels)
    for k in range(4):
        pred = (logits[:, k] > 0).astype(int)
        assert got[f"acc_{k}"] == pytest.approx(accuracy_score(labels[:, k], pred))
        assert got[f"f1_{k}"] == pytest.approx(f1_score(labels[:, k], pred, average="weighted"))
    with pytest.raises(ValueError, match="0/1"):
        multilabel_metrics(logits, labels * 2)


# ---------------------------------------------------------------- MSR-VTT with MMT experts

CAPTIONS = [["a", "man", "is", "cooking", "ramen"], ["a", "dog", "is", "running"], ["apple", "pie", "recipe"]]


def _h5(path: Path, rng: np.random.Generator, n_rows: dict[str, int], nan_first: tuple[str, ...] = ()) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for i, words in enumerate(CAPTIONS):
            f.create_dataset(f"raw_captions.{i}", data=np.array([w.encode() for w in words]))
            f.create_dataset(f"raw_captions_t.{i}", data=np.zeros((len(words), 2)))
        for name, n in n_rows.items():
            x = rng.normal(size=(n, MMT_EXPERTS[name])).astype(np.float32)
            if name in nan_first:
                x[:] = np.nan
            f.create_dataset(f"features.{name}", data=x)
            if name in ("s3d", "vggish"):
                f.create_dataset(f"features_t.{name}", data=np.stack([np.arange(n), np.arange(n) + 1], 1))


def _msrvtt(root: Path) -> Path:
    """MSR-VTT as MMT's MSRVTT.tar.gz lays it out (gabeur/mmt @ 0d848cd): split lists
    ``symlinked-feats/{train,val}_list_jsfusion.txt`` and ``jsfusion_val_caption_idx.pkl`` (video id ->
    test caption, ``data_loader/msrvtt_dataset.py``); one HDF5 per video at
    ``vid_feat_files/mult_h5/<v>/<i>/<d>/<id>.h5`` with ``raw_captions.<i>`` (word arrays) and
    ``features.<expert>`` (n, dim) (``base/base_dataset.py`` ``get_sample_data``: an expert is missing
    when its key is absent or its first value is NaN); widths from ``utils/util.py`` ``compute_dims``."""
    rng = np.random.default_rng(0)
    lists = root / "symlinked-feats"
    lists.mkdir(parents=True)
    train, test = [f"video{i}" for i in range(6)], [f"video{i}" for i in range(7000, 7003)]
    (lists / "train_list_jsfusion.txt").write_text("".join(v + "\n" for v in train))
    (lists / "val_list_jsfusion.txt").write_text("".join(v + "\n" for v in test))
    (lists / "jsfusion_val_caption_idx.pkl").write_bytes(pickle.dumps({v: i % 3 for i, v in enumerate(test)},
                                                                     protocol=2))
    for i, vid in enumerate(train + test):
        rows = {"rgb": 40, "scene": 2, "s3d": 5, "vggish": 3, "speech": 4, "ocr": 0}
        if i % 2 == 0:
            rows["face"] = 2  # odd videos have no face key at all
        _h5(root / "vid_feat_files" / "mult_h5" / "v" / "i" / "d" / f"{vid}.h5", rng, rows,
            nan_first=("speech",) if i == 1 else ())
    return root


def test_msrvtt_mmt_is_read_as_released(tmp_path: Path, tokenizer: str) -> None:
    """MMT's MSR-VTT features (sources in :func:`_msrvtt`): splits as MMT cuts them, the listed test
    caption, experts cut to ``expert_tokens`` rows, and absent experts recorded in their masks."""
    import h5py

    root = _msrvtt(tmp_path / "MSRVTT")
    out = import_msrvtt_mmt(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, expert_tokens=4,
                            max_text_words=8, val_size=2, progress=False)
    man = Manifest.load(out["test"])
    assert man.task == "wander.retrieval" and man.meta["experts"] == MMT_EXPERTS
    rows = {s: _rows(out[s]) for s in ("train", "val", "test")}
    assert [len(r["text"]) for r in rows.values()] == [4, 2, 3]
    # test video7001 is listed with caption 1: "A dog is running." -> [CLS] a dog is running . [SEP]
    np.testing.assert_array_equal(rows["test"]["text"][1], [2, 10, 14, 12, 15, 16, 3, 0])
    for name, dim in MMT_EXPERTS.items():
        assert rows["test"][name].shape == (3, 4, dim)
    test = rows["test"]
    assert test["face_mask"].tolist() == [[True, True, False, False], [False] * 4, [True, True, False, False]]
    assert not test["ocr_mask"].any() and not test["ocr"].any()  # zero rows: absent
    assert test["rgb_mask"].all()  # 40 rows, 4 kept
    with h5py.File(root / "vid_feat_files/mult_h5/v/i/d/video7000.h5") as f:
        rgb, s3d = f["features.rgb"][()], f["features.s3d"][()]
    kept = np.sort(np.random.RandomState(0).choice(40, 4, replace=False))
    np.testing.assert_array_equal(test["rgb"][0], rgb[kept])
    np.testing.assert_array_equal(test["s3d"][0], s3d[:4])
    assert Manifest.load(out["train"]).meta["absent_experts"]["ocr"] == 4
    # video1 (NaN speech: MMT's "missing") went to train or val; exactly one speech mask is empty there
    speech = np.concatenate([rows["train"]["speech_mask"], rows["val"]["speech_mask"]])
    assert (~speech.any(axis=1)).sum() == 1


def test_an_interrupted_msrvtt_mmt_import_resumes_after_its_last_step(tmp_path: Path, tokenizer: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumable steps of 2 videos (4096 in real use; the copy of :func:`_msrvtt`): interrupted
    while reading train's third video, the rerun reads train's last two and the other splits'
    videos only, and writes what an uninterrupted import writes; a finished import is kept."""
    from polymodal.models.wander import importers

    monkeypatch.setattr(importers, "_RESUME_EVERY", 2)
    root = _msrvtt(tmp_path / "MSRVTT")
    kw = {"tokenizer": tokenizer, "expert_tokens": 4, "max_text_words": 8, "val_size": 2, "progress": False}
    whole = import_msrvtt_mmt(str(root), str(tmp_path / "whole"), **kw)
    real, read, fail = importers._read_video, [], [True]

    def flaky(video, *args):
        read.append(video.vid)
        if fail[0] and len(read) == 3:
            raise OSError("connection reset")
        return real(video, *args)

    monkeypatch.setattr(importers, "_read_video", flaky)
    out = str(tmp_path / "ds")
    with pytest.raises(OSError, match="connection reset"):
        import_msrvtt_mmt(str(root), out, **kw)
    first_two = read[:2]
    fail[0] = False
    read.clear()
    got = import_msrvtt_mmt(str(root), out, **kw)
    assert len(read) == 2 + 2 + 3 and not set(first_two) & set(read)  # train's first step was kept
    for split in whole:
        mine, ref = Manifest.load(got[split]), Manifest.load(whole[split])
        assert (mine.num_rows, mine.meta) == (ref.num_rows, ref.meta)
        a, b = _rows(got[split]), _rows(whole[split])
        for name in b:
            np.testing.assert_array_equal(a[name], b[name])
    read.clear()
    import_msrvtt_mmt(str(root), out, **kw)
    assert read == []  # finished: nothing to do


def test_msrvtt_mmt_errors_name_file_line_and_field(tmp_path: Path, tokenizer: str) -> None:
    import h5py

    root = _msrvtt(tmp_path / "MSRVTT")
    lists = root / "symlinked-feats"
    (lists / "val_list_jsfusion.txt").write_text("video7000\nvideo7001\nvideo7009\n")
    with pytest.raises(ImportDataError, match=r"caption_idx\.pkl: no caption index for test video 'video7009' \(.*"
                                              r"val_list_jsfusion\.txt: line 3\)"):
        import_msrvtt_mmt(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, progress=False)
    (lists / "val_list_jsfusion.txt").write_text("video7000\n../x\n")
    with pytest.raises(ImportDataError, match=r"val_list_jsfusion\.txt: line 2: '\.\./x' is not a video id"):
        import_msrvtt_mmt(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, progress=False)
    (lists / "val_list_jsfusion.txt").write_text("video7000\nvideo7001\n")
    with h5py.File(root / "vid_feat_files/mult_h5/v/i/d/video7001.h5", "a") as f:
        del f["features.vggish"]
        f.create_dataset("features.vggish", data=np.ones((3, 64), dtype=np.float32))
    with pytest.raises(ImportDataError, match=r"val_list_jsfusion\.txt: line 2: .*video7001\.h5: field "
                                              r"'features\.vggish' must be a numeric \(n, 128\) array"):
        import_msrvtt_mmt(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, val_size=2, progress=False)
    (root / "vid_feat_files/mult_h5/v/i/d/video3.h5").unlink()
    with pytest.raises(ImportDataError, match=r"train_list_jsfusion\.txt: line 4: video3: feature file .* not found"):
        import_msrvtt_mmt(str(root), str(tmp_path / "ds"), tokenizer=tokenizer, val_size=2, progress=False)


@pytest.mark.slow
def test_msrvtt_mmt_import_train_evaluate(tmp_path: Path, tokenizer: str) -> None:
    """`data import --format msrvtt-mmt` (sources in :func:`_msrvtt`) -> wander.retrieval, text against
    three experts -> evaluate: t2v/v2t recall."""
    root = _msrvtt(tmp_path / "MSRVTT")
    experts = [{"name": e, "input": "embeds", "seq_len": 4, "feature_dim": MMT_EXPERTS[e]}
               for e in ("face", "s3d", "vggish")]
    metrics = _chain(tmp_path, ["--format", "msrvtt-mmt", "--source", str(root), "--tokenizer", tokenizer,
                                "--experts", "face,s3d,vggish", "--expert-tokens", "4", "--max-text-words", "8",
                                "--val-size", "2", "--train-captions", "2"],
                     "wander.retrieval", [{"name": "text", "input": "input_ids", "seq_len": 8}, *experts],
                     "model.query_modality=text")
    assert {"t2v_r1", "v2t_r1", "t2v_r5"} <= set(metrics) and 0.0 <= metrics["t2v_r1"] <= 1.0


def test_every_new_format_has_its_own_help(capsys: pytest.CaptureFixture) -> None:
    for fmt, option in (("iemocap", "iemocap_data_noalign.pkl"), ("msrvtt-mmt", "--expert-tokens"),
                        ("food101", "--layout")):
        with pytest.raises(SystemExit):
            main(["data", "import", "--format", fmt, "--help"])
        text = capsys.readouterr().out
        assert option in text and f"--format {fmt}" in text
    assert get_task("wander.multilabel").primary_metric == "accuracy"


def test_sources_on_s3_import_like_local_ones(tmp_path: Path, tokenizer: str, s3_bucket_uri: str) -> None:
    """The same tiny copies (sources in :func:`_upmc`, :func:`_iemocap`, :func:`_msrvtt`) uploaded to
    S3 import to the same rows as from disk: title CSVs, images, pickles and HDF5 files are read
    through the storage layer."""
    from polymodal import storage

    upmc, msrvtt = _upmc(tmp_path / "upmc"), _msrvtt(tmp_path / "MSRVTT")
    pkl, _ = _iemocap(tmp_path / "iemocap_data.pkl")
    storage.upload_dir(str(upmc), f"{s3_bucket_uri}/upmc")
    storage.upload_dir(str(msrvtt), f"{s3_bucket_uri}/MSRVTT")
    storage.write_bytes(f"{s3_bucket_uri}/iemocap_data.pkl", pkl.read_bytes())
    runs = {
        "food101": lambda src, out: import_food101(src, out, tokenizer=tokenizer, image_size=8, max_text_len=8,
                                                   val_size=2, progress=False),
        "iemocap": lambda src, out: import_iemocap(src, out, progress=False),
        "msrvtt": lambda src, out: import_msrvtt_mmt(src, out, tokenizer=tokenizer, experts=["face", "ocr"],
                                                     expert_tokens=2, max_text_words=8, val_size=2, progress=False),
    }
    sources = {"food101": (str(upmc), f"{s3_bucket_uri}/upmc"), "iemocap": (str(pkl), f"{s3_bucket_uri}/iemocap_data.pkl"),
               "msrvtt": (str(msrvtt), f"{s3_bucket_uri}/MSRVTT")}
    for name, run in runs.items():
        local, remote = sources[name]
        a, b = run(local, str(tmp_path / "local" / name)), run(remote, str(tmp_path / "s3" / name))
        for split in a:
            got, want = _rows(b[split]), _rows(a[split])
            assert got.keys() == want.keys()
            for column in want:
                np.testing.assert_array_equal(got[column], want[column])
