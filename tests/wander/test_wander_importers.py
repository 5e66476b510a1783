"""MMSA and Food101 importers: round trips, malformed inputs, skip_bad."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.errors import ImportDataError
from polymodal.models.wander.importers import import_food101, import_mmsa
from polymodal.shards import Manifest, iter_local_batches

# ---------------------------------------------------------------- MMSA


def _mmsa_split(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {
        "text": rng.normal(size=(n, 5, 6)),  # float64 on purpose: stored as float32
        "audio": rng.normal(size=(n, 4, 3)).astype(np.float32),
        "vision": rng.normal(size=(n, 3, 2)).astype(np.float32),
        "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
        "id": np.array([f"clip_{i}" for i in range(n)], dtype=object),  # ignored
    }


def _write_mmsa(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "mosi.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    return str(path)


def _read_all(uri: str) -> dict[str, np.ndarray]:
    n = Manifest.load(uri).num_rows
    return next(iter_local_batches(uri, n, shuffle=False))


@pytest.fixture
def mmsa() -> dict:
    rng = np.random.default_rng(0)
    return {"train": _mmsa_split(rng, 10), "valid": _mmsa_split(rng, 4), "test": _mmsa_split(rng, 5)}


def test_mmsa_roundtrip(tmp_path: Path, mmsa: dict) -> None:
    out = import_mmsa(_write_mmsa(tmp_path, mmsa), str(tmp_path / "ds"), progress=False)
    assert set(out) == {"train", "val", "test"}
    for split, src in (("train", "train"), ("val", "valid"), ("test", "test")):
        man = Manifest.load(out[split])
        assert man.task == "wander.regression" and man.split == split
        assert man.meta.pop("import_key")  # what a rerun compares (test_mmsa_rerun_...)
        assert man.meta == {"head": "regression", "modalities": ["text", "audio", "vision"],
                            "source": "mmsa"}
        got = _read_all(out[split])
        for mod in ("text", "audio", "vision"):
            assert got[mod].dtype == np.float32
            np.testing.assert_array_equal(got[mod], mmsa[src][mod].astype(np.float32))
        np.testing.assert_array_equal(got["label"], mmsa[src]["regression_labels"])


def _same_datasets(a: dict[str, str], b: dict[str, str]) -> None:
    """Equal rows in the same order, row counts and meta, split by split."""
    assert a.keys() == b.keys()
    for split in a:
        ma, mb = Manifest.load(a[split]), Manifest.load(b[split])
        assert (ma.num_rows, ma.meta) == (mb.num_rows, mb.meta)
        ra, rb = _read_all(a[split]), _read_all(b[split])
        assert ra.keys() == rb.keys()
        for name in ra:
            np.testing.assert_array_equal(ra[name], rb[name])


def test_mmsa_rerun_keeps_the_splits_it_finished(tmp_path: Path, mmsa: dict,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while writing val: the rerun writes val and test only, and the datasets equal an
    uninterrupted import's; a rerun of the finished import does not even load the pickle; a
    rewritten pickle is imported again."""
    from polymodal import shards
    from polymodal.models.wander import importers

    path = _write_mmsa(tmp_path, mmsa)
    whole = import_mmsa(path, str(tmp_path / "whole"), progress=False)
    real_writer, real_load, written, loads, fail = shards.ShardWriter, importers._load_pickle, [], [], [True]

    def writer(uri: str, **kw):
        written.append(os.path.basename(uri))
        if fail[0] and len(written) == 2:
            raise OSError("connection reset")
        return real_writer(uri, **kw)

    def load(*args):
        loads.append(args[0])
        return real_load(*args)

    monkeypatch.setattr(shards, "ShardWriter", writer)
    monkeypatch.setattr(importers, "_load_pickle", load)
    out = str(tmp_path / "ds")
    with pytest.raises(OSError, match="connection reset"):
        import_mmsa(path, out, progress=False)
    fail[0] = False
    written.clear()
    _same_datasets(import_mmsa(path, out, progress=False), whole)
    assert written == ["val", "test"]
    written.clear()
    loads.clear()
    assert import_mmsa(path, out, progress=False) == {s: f"{out}/{s}" for s in whole}
    assert written == [] and loads == []  # finished: nothing to do
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten: another version
    import_mmsa(path, out, progress=False)
    assert written == ["train", "val", "test"]


def test_mmsa_labels_as_column_vector(tmp_path: Path, mmsa: dict) -> None:
    mmsa["test"]["regression_labels"] = mmsa["test"]["regression_labels"][:, None]
    out = import_mmsa(_write_mmsa(tmp_path, mmsa), str(tmp_path / "ds"), progress=False)
    assert _read_all(out["test"])["label"].shape == (5,)


def test_mmsa_missing_keys(tmp_path: Path, mmsa: dict) -> None:
    del mmsa["valid"]
    path = _write_mmsa(tmp_path, mmsa)
    with pytest.raises(ImportDataError, match=r"mosi\.pkl: missing split key\(s\) \['valid'\]"):
        import_mmsa(path, str(tmp_path / "ds"), progress=False)

    mmsa["valid"] = _mmsa_split(np.random.default_rng(1), 3)
    del mmsa["valid"]["audio"]
    path = _write_mmsa(tmp_path, mmsa)
    with pytest.raises(ImportDataError, match=r"mosi\.pkl: split 'valid' is missing key\(s\) \['audio'\]"):
        import_mmsa(path, str(tmp_path / "ds"), progress=False)


def test_mmsa_inconsistent_rows_and_shapes(tmp_path: Path, mmsa: dict) -> None:
    mmsa["train"]["vision"] = mmsa["train"]["vision"][:7]
    with pytest.raises(ImportDataError, match=r"split 'train' has inconsistent row counts.*'vision': 7"):
        import_mmsa(_write_mmsa(tmp_path, mmsa), str(tmp_path / "ds"), progress=False)
    mmsa["train"]["vision"] = np.zeros((10, 3, 2))
    mmsa["test"]["audio"] = np.zeros((5, 9, 3))
    with pytest.raises(ImportDataError, match=r"split 'test' key 'audio' has per-row shape \(9, 3\)"):
        import_mmsa(_write_mmsa(tmp_path, mmsa), str(tmp_path / "ds"), progress=False)


def test_mmsa_nan_row_raises_then_skip_bad_drops_exactly_it(
    tmp_path: Path, mmsa: dict, caplog: pytest.LogCaptureFixture
) -> None:
    mmsa["valid"]["text"][2, 1, 0] = np.nan
    mmsa["train"]["regression_labels"][7] = np.inf
    path = _write_mmsa(tmp_path, mmsa)
    with pytest.raises(ImportDataError, match=r"mosi\.pkl: split 'train' row 7: NaN or inf in regression_labels"):
        import_mmsa(path, str(tmp_path / "ds"), progress=False)
    assert not os.path.exists(tmp_path / "ds" / "train" / "manifest.json")  # nothing written

    with caplog.at_level(logging.WARNING):
        out = import_mmsa(path, str(tmp_path / "ds"), skip_bad=True, progress=False)
    assert "split 'valid' row 2 skipped: NaN or inf in text" in caplog.text
    assert "split 'train' row 7 skipped" in caplog.text
    train, val = _read_all(out["train"]), _read_all(out["val"])
    np.testing.assert_array_equal(train["label"], np.delete(mmsa["train"]["regression_labels"], 7))
    np.testing.assert_array_equal(val["text"], np.delete(mmsa["valid"]["text"], 2, axis=0).astype(np.float32))
    assert Manifest.load(out["test"]).num_rows == 5


def test_mmsa_neg_inf_audio_fix(tmp_path: Path, mmsa: dict) -> None:
    mmsa["test"]["audio"][1, 0, 0] = -np.inf
    path = _write_mmsa(tmp_path, mmsa)
    with pytest.raises(ImportDataError, match="fix_neg_inf=True"):
        import_mmsa(path, str(tmp_path / "ds"), progress=False)
    out = import_mmsa(path, str(tmp_path / "ds"), fix_neg_inf=True, progress=False)
    assert _read_all(out["test"])["audio"][1, 0, 0] == 0.0


def test_mmsa_refuses_code_in_pickle(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Evil()}))
    with pytest.raises(ImportDataError, match=r"evil\.pkl: not a loadable MMSA pickle.*refusing to load global"):
        import_mmsa(str(path), str(tmp_path / "ds"), progress=False)
    (tmp_path / "broken.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ImportDataError, match=r"broken\.pkl"):
        import_mmsa(str(tmp_path / "broken.pkl"), str(tmp_path / "ds"), progress=False)


@pytest.mark.parametrize("protocol", [2, 5])
def test_mmsa_old_and_new_pickle_protocols(tmp_path: Path, mmsa: dict, protocol: int) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(mmsa, protocol=protocol))
    out = import_mmsa(str(path), str(tmp_path / "ds"), progress=False)
    np.testing.assert_array_equal(_read_all(out["val"])["audio"], mmsa["valid"]["audio"])


# ---------------------------------------------------------------- Food101

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "apple", "pie", "pasta", "with", "cheese", "soup"]
SIZE = 8


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # transformers 5 takes the vocab path as ``vocab`` (``vocab_file`` is silently ignored).
    BertTokenizerFast(vocab=str(d / "vocab.txt")).save_pretrained(str(d / "tok"))
    return str(d / "tok")


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[..., :] = color
    arr[0, 0] = (255, 255, 255)  # not a flat image, so resizing matters
    Image.fromarray(arr).save(path)


def _food_tree(root: Path, jsonl: bool = False) -> dict[str, list[dict]]:
    splits = {
        "train": [("pasta", "pasta with cheese"), ("apple_pie", "apple pie"), ("soup", "soup"),
                  ("apple_pie", "apple pie with cheese and more words than fit")],
        "dev": [("soup", "cheese soup"), ("pasta", "pasta")],
        "test": [("apple_pie", "pie"), ("soup", "soup soup")],
    }
    records = {}
    for split, rows in splits.items():
        recs = []
        for i, (label, text) in enumerate(rows):
            rel = f"images/{split}/{label}/{i}.png"
            _png(root / rel, (10 * i, 100, 200 if split == "test" else 50))
            recs.append({"id": f"{i}.png", "img": rel, "text": text, "label": label})
        records[split] = recs
        if jsonl:
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        else:
            (root / f"{split}.json").write_text(json.dumps(recs, indent=1))
    return records


def _expected_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb).transpose(2, 0, 1)


@pytest.mark.parametrize("jsonl", [False, True])
def test_food101_roundtrip(tmp_path: Path, tokenizer_dir: str, jsonl: bool) -> None:
    from transformers import AutoTokenizer

    root = tmp_path / "food"
    records = _food_tree(root, jsonl=jsonl)
    out = import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir,
                         image_size=SIZE, max_text_len=6, progress=False)
    classes = ["apple_pie", "pasta", "soup"]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for split, src in (("train", "train"), ("val", "dev"), ("test", "test")):
        man = Manifest.load(out[split])
        assert man.task == "wander.classification" and man.num_rows == len(records[src])
        assert man.meta["classes"] == classes and man.meta["num_classes"] == 3
        assert man.meta["inputs"] == {"image": "pixel_values", "text": "input_ids"}
        got = _read_all(out[split])
        assert got["image"].shape == (len(records[src]), 3, SIZE, SIZE)
        assert got["image"].dtype == np.uint8 and got["text"].dtype == np.int64
        for i, rec in enumerate(records[src]):
            np.testing.assert_array_equal(got["image"][i], _expected_image(root / rec["img"]))
            assert got["label"][i] == classes.index(rec["label"])
            ids = tok(rec["text"])["input_ids"][:6]
            ids = ids[:5] + [3] if len(ids) == 6 and ids[-1] != 3 else ids  # truncation keeps [SEP]
            np.testing.assert_array_equal(got["text"][i], ids + [0] * (6 - len(ids)))
    # hand-checked ids: [CLS] pasta with cheese [SEP] [PAD]
    np.testing.assert_array_equal(_read_all(out["train"])["text"][0], [2, 7, 8, 9, 3, 0])


def test_an_interrupted_food101_import_resumes_after_its_last_step(
        tmp_path: Path, tokenizer_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumable steps of 2 records (4096 in real use): interrupted while decoding train's third
    image, the rerun decodes only train's last two and the other splits, and the datasets equal an
    uninterrupted import's; a rerun of the finished import decodes nothing; a changed image
    starts over."""
    from polymodal.models.wander import importers

    monkeypatch.setattr(importers, "_RESUME_EVERY", 2)
    root = tmp_path / "food"
    _food_tree(root)
    kw = {"tokenizer": tokenizer_dir, "image_size": SIZE, "max_text_len": 6, "progress": False}
    whole = import_food101(str(root), str(tmp_path / "whole"), **kw)
    real, decoded, fail = importers._load_image, [], [True]

    def load(uri: str, *args):
        decoded.append(uri.split("images/")[1])
        if fail[0] and uri.endswith("train/soup/2.png"):
            raise OSError("connection reset")
        return real(uri, *args)

    monkeypatch.setattr(importers, "_load_image", load)
    out = str(tmp_path / "ds")
    with pytest.raises(OSError, match="connection reset"):
        import_food101(str(root), out, **kw)
    fail[0] = False
    decoded.clear()
    _same_datasets(import_food101(str(root), out, **kw), whole)
    assert [u for u in decoded if u.startswith("train/")] == ["train/soup/2.png", "train/apple_pie/3.png"]
    assert len(decoded) == 2 + 2 + 2  # and dev's and test's two each
    assert [s.rows for s in Manifest.load(f"{out}/train").shards] == [2, 2]
    decoded.clear()
    import_food101(str(root), out, **kw)
    assert decoded == []  # finished: nothing to do
    _png(root / "images/test/soup/1.png", (1, 2, 3))
    import_food101(str(root), out, **kw)
    assert len(decoded) == 8


def test_food101_missing_image(tmp_path: Path, tokenizer_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "food"
    records = _food_tree(root)
    os.remove(root / records["train"][1]["img"])
    with pytest.raises(ImportDataError, match=r"train\.json: record 1: image file .*1\.png does not exist"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, image_size=SIZE,
                       progress=False)
    with caplog.at_level(logging.WARNING):
        out = import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir,
                             image_size=SIZE, skip_bad=True, progress=False)
    assert "split 'train' row 1 skipped" in caplog.text
    got = _read_all(out["train"])
    classes = ["apple_pie", "pasta", "soup"]
    kept = [r for i, r in enumerate(records["train"]) if i != 1]
    np.testing.assert_array_equal(got["label"], [classes.index(r["label"]) for r in kept])
    assert Manifest.load(out["val"]).num_rows == 2


def test_food101_unknown_label_and_corrupt_image(tmp_path: Path, tokenizer_dir: str) -> None:
    root = tmp_path / "food"
    records = _food_tree(root)
    records["test"][1]["label"] = "sushi"
    (root / "test.json").write_text(json.dumps(records["test"]))
    with pytest.raises(ImportDataError, match=r"test\.json: record 1: label 'sushi' does not occur in train"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, image_size=SIZE,
                       progress=False)
    out = import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, image_size=SIZE,
                         skip_bad=True, progress=False)
    assert Manifest.load(out["test"]).num_rows == 1

    records["test"][1]["label"] = "soup"
    (root / "test.json").write_text(json.dumps(records["test"]))
    (root / records["dev"][0]["img"]).write_bytes(b"not a png")
    with pytest.raises(ImportDataError, match=r"dev\.json: record 0: image file .* cannot be decoded"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, image_size=SIZE,
                       skip_bad=False, progress=False)
    out = import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, image_size=SIZE,
                         skip_bad=True, progress=False)
    assert Manifest.load(out["val"]).num_rows == 1
    assert _read_all(out["val"])["label"].tolist() == [1]  # the "pasta" record survives


def test_food101_malformed_files(tmp_path: Path, tokenizer_dir: str) -> None:
    root = tmp_path / "food"
    _food_tree(root)
    (root / "dev.json").write_text('[{"img": "x.png", "text": "a", "label": "soup"},\n  {oops}]')
    with pytest.raises(ImportDataError, match=r"dev\.json: invalid JSON at line 2"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, progress=False)
    os.remove(root / "dev.json")
    (root / "dev.jsonl").write_text('{"img": "images/dev/soup/0.png", "label": "soup"}\n')
    with pytest.raises(ImportDataError, match=r"dev\.jsonl: record 0 \(line 1\): 'text' must be a string"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, progress=False)
    os.remove(root / "dev.jsonl")
    with pytest.raises(ImportDataError, match=r"dev\.json: file not found"):
        import_food101(str(root), str(tmp_path / "ds"), tokenizer=tokenizer_dir, progress=False)
