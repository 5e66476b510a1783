"""Recipe1M importer: a tiny Recipe1M copy -> raw shards; image layouts; the 5-image cap; det_ingrs;
bad inputs; skip_bad; S3.

The copy follows the release as its authors' loaders read it: layer1/layer2/det_ingrs fields from
torralba-lab/im2recipe-Pytorch ``scripts/utils.py`` and ``scripts/mk_dataset.py`` (merge by id,
at most 5 images) and facebookresearch/inversecooking ``src/build_vocab.py`` (det_ingrs ``valid``);
the image tree ``<partition>/a/b/c/d/<id>`` from inversecooking ``src/data_loader.py``; Recipe1M+'s
tree without the partition folder (``0/f/a/8/0fa8309c13.jpg``) from shared/reference/real-layouts.md."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from polymodal import storage
from polymodal.errors import ImportDataError
from polymodal.models.cheffusion.data import RAW_COLUMNS, TASK, format_recipe
from polymodal.models.cheffusion.importers import import_recipe1m
from polymodal.shards import Manifest, iter_local_batches, open_dataset

LOGGER = "polymodal.models.cheffusion.importers"

# ---------------------------------------------------------------- a fake Recipe1M tree


def _png(seed: int) -> bytes:
    """An 8x8 RGB PNG whose pixels depend on ``seed``."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _tree(split: str, image_id: str) -> str:
    """Where the Recipe1M tars put an image: keyed by the first four characters of its id."""
    return "/".join([split, *image_id[:4], image_id])


def _recipe(rid: str, split: str, n: int) -> dict[str, Any]:
    return {
        "id": rid,
        "title": f"Dish  {n}",
        "partition": split,
        # extra spaces, a blank item and a newline: stored cleaned, one item per line
        "ingredients": [{"text": f"{n} cups  flour"}, {"text": "  "}, {"text": "salt\n"}],
        "instructions": [{"text": "Mix it"}, {"text": f"Bake for {n} minutes."}],
        "url": f"http://example.invalid/{rid}",
    }


def _fake() -> dict[str, Any]:
    """layer1 recipes, layer2 entries, image files (relative to ``images/``) and the rows expected
    per split as ``{recipe id: image bytes}``."""
    recipes = [
        _recipe("0000aa01", "train", 1),  # tree layout
        _recipe("0000aa02", "val", 2),
        _recipe("0000aa03", "train", 3),  # first image missing, second found
        _recipe("0000aa04", "train", 4),  # not in layer2: no image
        _recipe("0000aa05", "test", 5),  # two images on disk: the first is taken
        _recipe("0000aa06", "train", 6),  # layer2 lists it with no image
        _recipe("0000aa09", "train", 9),  # Recipe1M+ tree: no partition folder
        _recipe("0000aa07", "train", 7),  # flat layout
        _recipe("0000aa08", "val", 8),
    ]
    images = {"a1b2c3d4.jpg": _png(1), "b2c3d4e5.png": _png(2), "c3d4e5f6.jpg": _png(3),
              "d4e5f6a7.jpg": _png(4), "e5f6a7b8.jpg": _png(5), "f6a7b8c9.jpg": _png(6),
              "0fa8309c13.jpg": _png(7)}
    layer2 = [
        {"id": "0000aa01", "images": [{"id": "a1b2c3d4.jpg", "url": "u"}]},
        {"id": "0000aa02", "images": [{"id": "b2c3d4e5.png"}]},
        {"id": "0000aa03", "images": [{"id": "9999dead.jpg"}, {"id": "c3d4e5f6.jpg"}]},
        {"id": "0000aa05", "images": [{"id": "d4e5f6a7.jpg"}, {"id": "e5f6a7b8.jpg"}]},
        {"id": "0000aa06", "images": []},
        {"id": "0000aa09", "images": [{"id": "0fa8309c13.jpg"}]},
        {"id": "0000aa07", "images": [{"id": "f6a7b8c9.jpg"}]},
        {"id": "0000aa08", "images": [{"id": "a1b2c3d4.jpg"}]},  # photos may be shared
    ]
    files = {_tree("train", "a1b2c3d4.jpg"): images["a1b2c3d4.jpg"],
             _tree("val", "b2c3d4e5.png"): images["b2c3d4e5.png"],
             _tree("val", "a1b2c3d4.jpg"): images["a1b2c3d4.jpg"],
             _tree("train", "c3d4e5f6.jpg"): images["c3d4e5f6.jpg"],
             _tree("test", "d4e5f6a7.jpg"): images["d4e5f6a7.jpg"],
             _tree("test", "e5f6a7b8.jpg"): images["e5f6a7b8.jpg"],
             "f6a7b8c9.jpg": images["f6a7b8c9.jpg"],
             "0/f/a/8/0fa8309c13.jpg": images["0fa8309c13.jpg"]}
    expected = {
        "train": {"0000aa01": images["a1b2c3d4.jpg"], "0000aa03": images["c3d4e5f6.jpg"],
                  "0000aa07": images["f6a7b8c9.jpg"], "0000aa09": images["0fa8309c13.jpg"]},
        "val": {"0000aa02": images["b2c3d4e5.png"], "0000aa08": images["a1b2c3d4.jpg"]},
        "test": {"0000aa05": images["d4e5f6a7.jpg"]},
    }
    return {"recipes": recipes, "layer2": layer2, "files": files, "expected": expected}


def _write(root: Path, fake: dict[str, Any]) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "layer1.json").write_text(json.dumps(fake["recipes"]))
    (root / "layer2.json").write_text(json.dumps(fake["layer2"]))
    for rel, data in fake["files"].items():
        path = root / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(root)


def _rows(uri: str) -> dict[str, dict[str, Any]]:
    """Every row of a dataset, keyed by recipe id."""
    n = Manifest.load(uri).num_rows
    if n == 0:
        return {}
    batch = next(iter_local_batches(uri, n, shuffle=False))
    return {rid: {col: batch[col][i] for col in RAW_COLUMNS} for i, rid in enumerate(batch["id"])}


@pytest.fixture
def fake() -> dict[str, Any]:
    return _fake()


# ---------------------------------------------------------------- round trip


def test_import_writes_one_row_per_recipe_with_an_image(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    out = import_recipe1m(source, str(tmp_path / "ds"), rows_per_shard=2, progress=False)
    assert out == {s: str(tmp_path / "ds" / "raw" / s) for s in ("train", "val", "test")}
    raw = {r["id"]: r for r in fake["recipes"]}
    no_image = {"train": 2, "val": 0, "test": 0}
    for split, want in fake["expected"].items():
        man = open_dataset(out[split], verify="checksum")
        assert (man.task, man.split, man.num_rows) == (TASK, split, len(want))
        assert set(man.columns) == set(RAW_COLUMNS)
        assert man.meta.pop("import_key")  # what a rerun compares (test_an_interrupted_import_resumes...)
        assert man.meta == {"stage": "raw", "source": "recipe1m", "skipped": 0, "no_image": no_image[split]}
        assert len(man.shards) == -(-len(want) // 2)  # ceil: rows_per_shard=2
        rows = _rows(out[split])
        assert set(rows) == set(want)
        for rid, row in rows.items():
            src = raw[rid]
            ings = [i["text"] for i in src["ingredients"]]
            steps = [i["text"] for i in src["instructions"]]
            assert row["title"] == " ".join(src["title"].split())
            assert row["ingredients"].split("\n") == [" ".join(t.split()) for t in ings if t.strip()]
            assert row["instructions"].split("\n") == [" ".join(t.split()) for t in steps]
            assert row["recipe"] == format_recipe(src["title"], ings, steps)
            assert row["image"] == want[rid]
            with Image.open(io.BytesIO(row["image"])) as img:
                assert img.size == (8, 8)


def _ordered(uri: str) -> list[tuple[str, bytes]]:
    """(id, image) of every row, in the dataset's order."""
    batch = next(iter_local_batches(uri, 100, shuffle=False))
    return list(zip(batch["id"], batch["image"]))


def test_an_interrupted_import_resumes_after_its_last_shard(tmp_path: Path, fake: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while reading the train split's second shard of recipes: the rerun reads only
    the recipes after the first shard and writes the dataset an uninterrupted import writes; a
    rerun of the finished import reads nothing; a changed layer1.json starts over."""
    from polymodal.models.cheffusion import importers

    source = _write(tmp_path / "recipe1m", fake)
    whole = import_recipe1m(source, str(tmp_path / "whole"), rows_per_shard=2, progress=False)
    real, read, fail = importers._find_image, [], {"0000aa09"}

    def flaky(recipe: Any, *args: Any) -> Any:
        read.append(recipe.id)
        if recipe.id in fail:
            raise OSError("connection reset")
        return real(recipe, *args)

    monkeypatch.setattr(importers, "_find_image", flaky)
    train = ["0000aa01", "0000aa03", "0000aa09", "0000aa07"]  # layer1 order, those with an image
    with pytest.raises(OSError, match="connection reset"):
        import_recipe1m(source, str(tmp_path / "ds"), rows_per_shard=2, progress=False)
    assert not (tmp_path / "ds" / "raw" / "train" / "manifest.json").exists()
    fail.clear()
    read.clear()
    out = import_recipe1m(source, str(tmp_path / "ds"), rows_per_shard=2, progress=False)
    assert [r for r in read if r in train] == train[2:]  # the first shard was not read again
    for split in ("train", "val", "test"):
        done, want = Manifest.load(out[split]), Manifest.load(whole[split])
        assert (done.num_rows, [s.rows for s in done.shards], done.meta) == \
            (want.num_rows, [s.rows for s in want.shards], want.meta)
        assert _ordered(out[split]) == _ordered(whole[split])
        assert not storage.exists(f"{out[split]}/import-progress.json")
    read.clear()
    assert import_recipe1m(source, str(tmp_path / "ds"), rows_per_shard=2, progress=False) == out
    assert read == []  # finished with the same sources and settings: nothing to do
    layer1 = tmp_path / "recipe1m" / "layer1.json"
    stat = layer1.stat()
    os.utime(layer1, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten: another version
    import_recipe1m(source, str(tmp_path / "ds"), rows_per_shard=2, progress=False)
    assert [r for r in read if r in train] == train


def test_first_existing_image_is_taken_and_missing_ones_counted(tmp_path: Path, fake: dict[str, Any],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = import_recipe1m(source, str(tmp_path / "ds"), progress=False)
    train, test = _rows(out["train"]), _rows(out["test"])
    assert "0000aa04" not in train and "0000aa06" not in train  # no layer2 entry / no image listed
    assert train["0000aa03"]["image"] == fake["expected"]["train"]["0000aa03"]  # fell back to the 2nd
    assert test["0000aa05"]["image"] == _png(4)  # both exist: the first listed
    assert Manifest.load(out["train"]).meta["no_image"] == 2
    assert not caplog.records  # recipes without an image are not an error


def test_max_per_split_and_a_subset_of_splits(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    out = import_recipe1m(source, str(tmp_path / "ds"), splits=("train",), max_per_split=2, progress=False)
    assert list(out) == ["train"]
    assert list(_rows(out["train"])) == ["0000aa01", "0000aa03"]  # layer1 order
    assert not (tmp_path / "ds" / "raw" / "val").exists()


def test_images_root_can_be_given(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    (tmp_path / "recipe1m" / "images").rename(tmp_path / "photos")
    out = import_recipe1m(source, str(tmp_path / "ds"), images=str(tmp_path / "photos"), progress=False)
    assert set(_rows(out["val"])) == set(fake["expected"]["val"])


def test_a_split_without_recipes_is_written_empty(tmp_path: Path, fake: dict[str, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake["recipes"] = [r for r in fake["recipes"] if r["partition"] != "test"]
    source = _write(tmp_path / "recipe1m", fake)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = import_recipe1m(source, str(tmp_path / "ds"), progress=False)
    assert open_dataset(out["test"]).num_rows == 0
    assert "no recipe of partition 'test'" in caplog.text


# ---------------------------------------------------------------- bad inputs

BAD_ID = "0000bad1"
BAD_ROW = 3  # where the bad recipe is inserted into layer1


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    def edit(fake: dict[str, Any]) -> None:
        del fake["recipes"][BAD_ROW][field]
    return edit


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(fake: dict[str, Any]) -> None:
        fake["recipes"][BAD_ROW][field] = value
    return edit


def _undecodable(fake: dict[str, Any]) -> None:
    fake["files"][_tree("train", "badbad01.jpg")] = b"\xff\xd8 this is not a jpeg"


def _bad_layer2(fake: dict[str, Any]) -> None:
    fake["layer2"][-1]["images"] = [{"url": "no id here"}]


def _malformed_image_id(fake: dict[str, Any]) -> None:
    fake["layer2"][-1]["images"] = [{"id": "../../etc/passwd"}]


def _missing_image(fake: dict[str, Any]) -> None:
    del fake["files"][_tree("train", "badbad01.jpg")]


# case -> (edit, the split the bad recipe is counted in, text the error must also hold)
BAD_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str | None, str]] = {
    "missing_id": (_drop("id"), "train", "missing field(s) ['id']"),
    "missing_title": (_drop("title"), "train", "missing field(s) ['title']"),
    "missing_partition": (_drop("partition"), None, "missing field(s) ['partition']"),
    "missing_ingredients": (_drop("ingredients"), "train", "missing field(s) ['ingredients']"),
    "missing_instructions": (_drop("instructions"), "train", "missing field(s) ['instructions']"),
    "empty_ingredients": (_set("ingredients", []), "train", "'ingredients' is empty"),
    "blank_ingredients": (_set("ingredients", [{"text": " "}]), "train", "'ingredients' is empty"),
    "ingredient_not_text": (_set("ingredients", ["flour"]), "train", "ingredients[0]"),
    "unknown_partition": (_set("partition", "dev"), None, "unknown partition 'dev'"),
    "undecodable_image": (_undecodable, "train", "not a decodable image"),
    "bad_layer2_entry": (_bad_layer2, "train", "layer2.json: entry"),
    "malformed_image_id": (_malformed_image_id, "train", "images[0] needs an 'id' like '3e233001e2.jpg'"),
    "missing_image_file": (_missing_image, "train", "image file missing"),
}


def _with_bad_recipe(edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    fake = _fake()
    fake["recipes"].insert(BAD_ROW, _recipe(BAD_ID, "train", 9))
    fake["layer2"].append({"id": BAD_ID, "images": [{"id": "badbad01.jpg"}]})
    fake["files"][_tree("train", "badbad01.jpg")] = _png(9)
    edit(fake)
    return fake


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_recipe_names_file_row_and_id(tmp_path: Path, case: str) -> None:
    edit, _, detail = BAD_CASES[case]
    source = _write(tmp_path / "recipe1m", _with_bad_recipe(edit))
    with pytest.raises(ImportDataError) as info:
        import_recipe1m(source, str(tmp_path / "ds"), progress=False)
    msg = str(info.value)
    assert f"layer1.json: row {BAD_ROW}" in msg or "layer2.json: entry" in msg
    assert detail in msg and "skip_bad=True" in msg
    if case != "missing_id":
        assert repr(BAD_ID) in msg
    if case == "undecodable_image":
        assert _tree("train", "badbad01.jpg") in msg  # the image file, too
    if case == "malformed_image_id":
        assert "layer2.json: entry 8 (recipe '0000bad1')" in msg and "../../etc/passwd" in msg
    if case == "missing_image_file":  # the record (layer2 entry), the field and the file looked for
        assert "layer2.json entry 8 lists images[0].id='badbad01.jpg'" in msg
        assert _tree("train", "badbad01.jpg") in msg


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_skip_bad_drops_only_the_bad_recipe(tmp_path: Path, case: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    edit, counted_in, _ = BAD_CASES[case]
    fake = _with_bad_recipe(edit)
    source = _write(tmp_path / "recipe1m", fake)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = import_recipe1m(source, str(tmp_path / "ds"), skip_bad=True, progress=False)
    for split, want in fake["expected"].items():
        assert set(_rows(out[split])) == set(want)
        assert Manifest.load(out[split]).meta["skipped"] == (1 if split == counted_in else 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped" in warnings[0]
    assert f"row {BAD_ROW}" in warnings[0] or "layer2.json: entry" in warnings[0]


def test_only_the_first_five_listed_images_are_looked_at(tmp_path: Path, fake: dict[str, Any]) -> None:
    """im2recipe keeps at most 5 images per recipe (mk_dataset.py ``imgs[:maxNumImgs]``): a 6th on
    disk is not used, and a recipe whose first five are all missing is an error naming them."""
    listed = [f"{i:04d}beef.jpg" for i in range(6)]
    fake["layer2"][0]["images"] = [{"id": iid} for iid in listed]  # recipe 0000aa01
    fake["files"].pop(_tree("train", "a1b2c3d4.jpg"))
    fake["files"][_tree("train", listed[5])] = _png(60)
    source = _write(tmp_path / "recipe1m", fake)
    with pytest.raises(ImportDataError, match="recipe '0000aa01'.*: image file missing") as info:
        import_recipe1m(source, str(tmp_path / "ds"), splits=("train",), progress=False)
    assert "images[4].id='0004beef.jpg'" in str(info.value) and "0005beef" not in str(info.value)
    fake["files"][_tree("train", listed[4])] = _png(40)
    source = _write(tmp_path / "recipe1m", fake)
    out = import_recipe1m(source, str(tmp_path / "ds"), splits=("train",), progress=False)
    assert _rows(out["train"])["0000aa01"]["image"] == _png(40)


# ---------------------------------------------------------------- det_ingrs (im2recipe's merge)


def _det(rid: str, names: list[str], valid: list[bool]) -> dict[str, Any]:
    return {"id": rid, "ingredients": [{"text": n} for n in names], "valid": valid}


def test_det_ingrs_ingredients_replace_layer1s_by_id(tmp_path: Path, fake: dict[str, Any]) -> None:
    """im2recipe ``Layer.merge``: det_ingrs' ``ingredients`` win by id, a recipe it does not list
    keeps layer1's; inversecooking keeps the ``valid`` ones only. The default keeps layer1's lines."""
    source = _write(tmp_path / "recipe1m", fake)
    dets = [_det("0000aa01", ["flour", "bogus", "salt"], [True, False, True]),
            _det("0000aa02", ["butter"], [True]), _det("0000zz99", ["unused"], [True])]
    (tmp_path / "recipe1m" / "det_ingrs.json").write_text(json.dumps(dets))
    out = import_recipe1m(source, str(tmp_path / "det"), ingredients="det_ingrs", progress=False)
    train, val = _rows(out["train"]), _rows(out["val"])
    assert train["0000aa01"]["ingredients"] == "flour\nsalt"
    assert "ingredients: flour, salt." in train["0000aa01"]["recipe"]
    assert val["0000aa02"]["ingredients"] == "butter"
    assert train["0000aa03"]["ingredients"] == "3 cups flour\nsalt"  # not in det_ingrs: layer1's
    plain = import_recipe1m(source, str(tmp_path / "plain"), progress=False)
    assert _rows(plain["train"])["0000aa01"]["ingredients"] == "1 cups flour\nsalt"


@pytest.mark.parametrize("entry, detail", [
    (_det("0000aa01", ["flour", "salt"], [True]), "'ingredients' and 'valid' must be lists of equal length"),
    ({"id": "0000aa01", "ingredients": [{"text": "flour"}]}, "'ingredients' and 'valid' must be lists"),
    (_det("0000aa01", ["flour"], [False]), "no ingredient is marked 'valid'"),
    ({"id": "0000aa01", "ingredients": ["flour"], "valid": [True]}, "ingredients[0] must be an object"),
])
def test_bad_det_ingrs_entry_names_file_entry_and_field(tmp_path: Path, fake: dict[str, Any],
                                                         entry: dict[str, Any], detail: str) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    (tmp_path / "recipe1m" / "det_ingrs.json").write_text(json.dumps([_det("0000aa02", ["a"], [True]), entry]))
    with pytest.raises(ImportDataError) as info:
        import_recipe1m(source, str(tmp_path / "ds"), ingredients="det_ingrs", progress=False)
    msg = str(info.value)
    assert "det_ingrs.json: entry 1 (recipe '0000aa01')" in msg and detail in msg and "layer1.json: row 0" in msg
    out = import_recipe1m(source, str(tmp_path / "ds"), ingredients="det_ingrs", skip_bad=True, progress=False)
    assert "0000aa01" not in _rows(out["train"]) and Manifest.load(out["train"]).meta["skipped"] == 1


def test_det_ingrs_file_is_needed_only_when_asked_for(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    with pytest.raises(ImportDataError, match=r"det_ingrs\.json: file not found.*ingredients='layer1'"):
        import_recipe1m(source, str(tmp_path / "ds"), ingredients="det_ingrs", progress=False)
    with pytest.raises(ValueError, match="ingredients must be one of"):
        import_recipe1m(source, str(tmp_path / "ds"), ingredients="layer3", progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["layer1.json", "layer2.json"])
@pytest.mark.parametrize("content", ['[{"id": "0000aa01",', '{"id": "0000aa01"}'])
def test_malformed_json_fails_even_with_skip_bad(tmp_path: Path, fake: dict[str, Any], name: str,
                                                 content: str) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    (tmp_path / "recipe1m" / name).write_text(content)
    with pytest.raises(ImportDataError, match=rf"{name}: (invalid JSON at line 1|top level is a JSON dict)"):
        import_recipe1m(source, str(tmp_path / "ds"), skip_bad=True, progress=False)
    assert not (tmp_path / "ds").exists()  # checked before anything is written


def test_missing_layer_file(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    (tmp_path / "recipe1m" / "layer2.json").unlink()
    with pytest.raises(ImportDataError, match=r"layer2\.json: file not found"):
        import_recipe1m(source, str(tmp_path / "ds"), progress=False)


def test_wrong_images_root_is_an_error_not_an_empty_dataset(tmp_path: Path, fake: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    with pytest.raises(ImportDataError, match="images folder not found"):
        import_recipe1m(source, str(tmp_path / "ds"), images=str(tmp_path / "nowhere"), progress=False)
    (tmp_path / "empty").mkdir()
    tried = r"\(first path tried: .*/empty/train/a/1/b/2/a1b2c3d4\.jpg\)"
    with pytest.raises(ImportDataError, match=rf"split 'train': none of the images .* {tried}"):
        import_recipe1m(source, str(tmp_path / "ds"), images=str(tmp_path / "empty"), progress=False)
    assert not (tmp_path / "ds" / "raw" / "train" / "manifest.json").exists()


@pytest.mark.parametrize("kwargs", [{"splits": ("train", "dev")}, {"splits": ()}, {"splits": ("val", "val")},
                                    {"image_choice": "random"}, {"max_per_split": 0}])
def test_bad_arguments(tmp_path: Path, fake: dict[str, Any], kwargs: dict[str, Any]) -> None:
    source = _write(tmp_path / "recipe1m", fake)
    with pytest.raises(ValueError):
        import_recipe1m(source, str(tmp_path / "ds"), progress=False, **kwargs)


# ---------------------------------------------------------------- S3


def test_s3_source_and_destination(tmp_path: Path, fake: dict[str, Any], s3_bucket_uri: str) -> None:
    local = _write(tmp_path / "recipe1m", fake)
    storage.upload_dir(local, f"{s3_bucket_uri}/recipe1m")
    out = import_recipe1m(f"{s3_bucket_uri}/recipe1m", f"{s3_bucket_uri}/ds", progress=False)
    assert out["val"] == f"{s3_bucket_uri}/ds/raw/val"
    for split, want in fake["expected"].items():
        open_dataset(out[split], verify="checksum")
        assert {rid: row["image"] for rid, row in _rows(out[split]).items()} == want


def test_cli_imports_recipe1m_then_extracts_features(tmp_path: Path, fake: dict[str, Any], capsys) -> None:
    """`polymodal data import --format recipe1m` then `polymodal data features --local`: the
    feature split holds every imported row with its CLIP and SD-target columns, and the task's
    collate turns it into a training batch."""
    from polymodal.cli import main
    from polymodal.models.cheffusion.backbones import write_tiny_backbones
    from polymodal.registry import get_task
    from polymodal.shards import iter_local_batches

    source = _write(tmp_path / "recipe1m", fake)
    assert main(["data", "import", "--format", "recipe1m", "--source", source, "--out", str(tmp_path / "chef"),
                 "--quiet"]) == 0
    raw = str(tmp_path / "chef" / "raw" / "train")
    assert f"train: {raw}" in capsys.readouterr().out
    bb = write_tiny_backbones(str(tmp_path / "bb"), ["a tiny recipe text"], pretrain_steps=0)
    out = str(tmp_path / "chef" / "train")
    assert main(["data", "features", "--source", raw, "--out", out, "--clip", bb["clip"], "--sd", bb["sd"],
                 "--local", "--quiet"]) == 0
    assert f"({len(fake['expected']['train'])} rows)" in capsys.readouterr().out
    manifest = Manifest.load(out)
    assert manifest.meta["stage"] == "features" and manifest.meta["source"] == "recipe1m"
    batch = get_task("cheffusion.recipes").collate(next(iter_local_batches(out, 8, shuffle=False)))
    assert batch["clip_image"].shape[1] == 32 and tuple(batch["sd_target"].shape[1:]) == (16, 32)
    with pytest.raises(SystemExit):
        main(["data", "features", "--source", raw, "--out", out, "--help"])
