"""A tiny Recipe1M copy laid out as released -> `data import` -> `data features` -> `train --local`
(tiny preset) -> `evaluate`, all through the command line in this process.

The copy's layout and fields follow the authors' loaders: ``layer1.json`` (id, title, url,
partition, ingredients/instructions as ``[{"text"}]``), ``layer2.json`` (id, images ``[{"id",
"url"}]``) and ``det_ingrs.json`` (id, ingredients, valid) from torralba-lab/im2recipe-Pytorch
``scripts/utils.py`` / ``scripts/mk_dataset.py`` and facebookresearch/inversecooking
``src/build_vocab.py``; the image tree ``images/<partition>/<id[0]>/<id[1]>/<id[2]>/<id[3]>/<id>``
from inversecooking ``src/data_loader.py``; ids are 10 hex digits, image files ``<10 hex>.jpg``,
as in ChefFusion's own examples (Peiyu-Georgia-Li/ChefFusion-...-Generation ``README.md``:
``6bdca6e490.jpg``). The splits are layer1's ``partition`` restricted to recipes layer2 lists
with an image, as ChefFusion's ``recipe1m_processing.py`` prepares them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from polymodal.cli import main
from polymodal.shards import Manifest, iter_local_batches

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[2]
DISHES = [("tomato soup", "tomato"), ("beet pie", "beet"), ("pea stew", "pea"), ("corn bread", "corn")]
COLOURS = {"tomato": (200, 30, 30), "beet": (120, 20, 90), "pea": (40, 160, 40), "corn": (230, 200, 40)}


def _jpeg(colour: tuple[int, int, int], seed: int) -> bytes:
    """A real 32x32 baseline JPEG: the dish's colour with a little noise."""
    noise = np.random.default_rng(seed).integers(-20, 21, size=(32, 32, 3))
    pixels = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _hex(i: int, salt: int) -> str:
    return f"{(i * 2654435761 + salt) % 16**10:010x}"


def write_release_copy(root: Path) -> dict[str, Any]:
    """Write the copy under ``root``; return ``{split: [recipe ids expected, layer1 order]}`` and
    the ids layer2 leaves without an image."""
    layer1, layer2, dets, files = [], [], [], {}
    expected: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    partitions = ["train"] * 8 + ["val"] * 3 + ["test"] * 3 + ["train", "val"]
    for i, part in enumerate(partitions):
        rid = _hex(i, 17)
        title, main_ingr = DISHES[i % len(DISHES)]
        layer1.append({
            "id": rid, "title": title.title(), "partition": part,
            "url": f"http://www.food.com/recipe/{title.replace(' ', '-')}-{i}",
            "ingredients": [{"text": f"{i % 3 + 1} cups {main_ingr}, chopped"}, {"text": "1 tsp salt"},
                            {"text": "2 cups water"}],
            "instructions": [{"text": f"Wash the {main_ingr}."}, {"text": f"Cook the {title} for {10 + i} minutes."}],
        })
        dets.append({"id": rid, "ingredients": [{"text": main_ingr}, {"text": "salt"}, {"text": "water"}],
                     "valid": [True, True, i % 2 == 0]})
        if i >= 14:
            if i == 15:
                layer2.append({"id": rid, "images": []})  # listed, but no photo (the release has such entries)
            continue  # 14: absent from layer2: no image
        images = [f"{_hex(i, 1000 + j)}.jpg" for j in range(1 + i % 3)]
        layer2.append({"id": rid, "images": [{"id": iid, "url": f"http://img.sndimg.com/{iid}"} for iid in images]})
        for j, iid in enumerate(images):
            files[f"images/{part}/{iid[0]}/{iid[1]}/{iid[2]}/{iid[3]}/{iid}"] = _jpeg(COLOURS[main_ingr], 10 * i + j)
        expected[part].append(rid)
    root.mkdir(parents=True)
    (root / "layer1.json").write_text(json.dumps(layer1))
    (root / "layer2.json").write_text(json.dumps(layer2))
    (root / "det_ingrs.json").write_text(json.dumps(dets))
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {"expected": expected, "no_image": [_hex(14, 17), _hex(15, 17)]}


def _ids(uri: str) -> list[str]:
    n = Manifest.load(uri).num_rows
    return [] if n == 0 else list(next(iter_local_batches(uri, n, shuffle=False))["id"])


@pytest.mark.slow
def test_recipe1m_release_copy_imports_trains_and_evaluates(tmp_path: Path, capsys) -> None:
    """The whole chain on the copy, with im2recipe's det_ingrs ingredients: each split holds exactly
    its partition's recipes with an image (layer1 order), training logs one epoch and `evaluate`
    writes one prediction per test recipe, with the test recipes' ids."""
    from polymodal.models.cheffusion.backbones import write_tiny_backbones

    copy = write_release_copy(tmp_path / "recipe1m")
    chef = tmp_path / "chef"
    assert main(["data", "import", "--format", "recipe1m", "--source", str(tmp_path / "recipe1m"),
                 "--out", str(chef), "--ingredients", "det_ingrs", "-q"]) == 0
    for split, want in copy["expected"].items():
        raw = str(chef / "raw" / split)
        assert _ids(raw) == want, split
        assert Manifest.load(raw).meta["no_image"] == (1 if split in ("train", "val") else 0)
    first = next(iter_local_batches(str(chef / "raw" / "train"), 1, shuffle=False))
    assert first["ingredients"][0] == "tomato\nsalt\nwater"  # det_ingrs' valid names won over layer1's lines
    capsys.readouterr()

    texts = [r for split in ("train", "val") for r in
             next(iter_local_batches(str(chef / "raw" / split), 64, shuffle=False))["recipe"]]
    bb = write_tiny_backbones(str(tmp_path / "bb"), texts, pretrain_steps=0)
    for split in ("train", "val", "test"):
        assert main(["data", "features", "--source", str(chef / "raw" / split), "--out", str(chef / split),
                     "--clip", bb["clip"], "--sd", bb["sd"], "--local", "-q"]) == 0

    sets = ["name=recipe1m-chain", f"storage_path={tmp_path / 'runs'}", f"model.lm={bb['lm']}",
            f"model.clip={bb['clip']}", f"model.sd={bb['sd']}", f"data.train={chef / 'train'}",
            f"data.val={chef / 'val'}", f"data.test={chef / 'test'}", "optim.epochs=1", "optim.batch_size=4",
            "optim.warmup_steps=1", "model.max_new_tokens=8", "model.eval_max_new_tokens=8",
            "model.eval_image_share=0.25"]
    config = ["--config", str(ROOT / "jobs" / "configs" / "cheffusion_tiny.yaml"),
              *[a for s in sets for a in ("--set", s)]]
    assert main(["train", *config, "--local", "-q"]) == 0
    run = tmp_path / "runs" / "recipe1m-chain"
    assert json.loads((run / "summary.json").read_text())["metrics"]["train_loss"] > 0
    assert main(["evaluate", *config, "--split", "test", "-q"]) == 0
    result = json.loads((run / "eval" / "test.json").read_text())
    assert np.isfinite(result["metrics"]["l_r"]) and 0 <= result["metrics"]["bleu"] <= 1
    rows = [json.loads(line) for line in (run / "eval" / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == copy["expected"]["test"]
    assert all(r["reference"].startswith(("Tomato Soup.", "Beet Pie.", "Pea Stew.", "Corn Bread.")) for r in rows)


@pytest.mark.parametrize("case, edit, needles", [
    ("recipe without an id", lambda c: c["layer1"][2].pop("id"),
     ["layer1.json: row 2", "missing field(s) ['id']"]),
    ("malformed image id", lambda c: c["layer2"][3]["images"].__setitem__(0, {"id": "6b/../x.jpg"}),
     ["layer2.json: entry 3 (recipe '{rid3}')", "images[0] needs an 'id'", "6b/../x.jpg"]),
    ("missing image file", lambda c: c["unlink"].append(4),
     ["layer1.json: row 4 (recipe '{rid4}')", "image file missing", "layer2.json entry 4 lists images[0].id=",
      "images/train/"]),
])
def test_bad_release_input_names_file_record_and_field(tmp_path: Path, capsys, case, edit, needles) -> None:
    """`data import` on the copy with one defect exits 2 and its message names the file, the
    record (row or entry, recipe id) and the field; nothing is written."""
    root = tmp_path / "recipe1m"
    write_release_copy(root)
    parts = {"layer1": json.loads((root / "layer1.json").read_text()),
             "layer2": json.loads((root / "layer2.json").read_text()), "unlink": []}
    edit(parts)
    (root / "layer1.json").write_text(json.dumps(parts["layer1"]))
    (root / "layer2.json").write_text(json.dumps(parts["layer2"]))
    for entry in parts["unlink"]:  # every image of that layer2 entry
        for image in parts["layer2"][entry]["images"]:
            iid = image["id"]
            (root / "images" / "train" / iid[0] / iid[1] / iid[2] / iid[3] / iid).unlink()
    capsys.readouterr()
    assert main(["data", "import", "--format", "recipe1m", "--source", str(root), "--out", str(tmp_path / "out"),
                 "-q"]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle.format(rid3=_hex(3, 17), rid4=_hex(4, 17)) in err, (case, err)
    assert "--skip-bad" in err
    assert not list((tmp_path / "out").glob("raw/*/manifest.json"))


def test_cli_splits_and_max_per_split(tmp_path: Path, capsys) -> None:
    """`--splits train,val --max-per-split 2`: only those partitions, their first two recipes with
    an image; layer1's ingredient lines by default; bad values are usage errors (exit 2)."""
    copy = write_release_copy(tmp_path / "recipe1m")
    args = ["data", "import", "--format", "recipe1m", "--source", str(tmp_path / "recipe1m"), "--out",
            str(tmp_path / "chef"), "-q"]
    assert main([*args, "--splits", "train,val", "--max-per-split", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "chef" / "raw").iterdir()) == ["train", "val"]
    for split in ("train", "val"):
        assert _ids(str(tmp_path / "chef" / "raw" / split)) == copy["expected"][split][:2]
    first = next(iter_local_batches(str(tmp_path / "chef" / "raw" / "train"), 1, shuffle=False))
    assert first["ingredients"][0] == "1 cups tomato, chopped\n1 tsp salt\n2 cups water"
    capsys.readouterr()
    assert main([*args, "--splits", "train,dev"]) == 2
    assert "--splits: expected distinct names from train,val,test" in capsys.readouterr().err
    assert main([*args, "--max-per-split", "0"]) == 2
    assert "--max-per-split: expected a positive integer" in capsys.readouterr().err
