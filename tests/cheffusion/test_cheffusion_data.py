"""ChefFusion data: the recipe text format, the synthetic dishes, and feature extraction (in
process and on Ray) checked against the backbones run directly, the SD pipeline's own
``encode_prompt`` included."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal import shards
from polymodal.errors import PolymodalError
from polymodal.models.cheffusion.backbones import (clip_image_features, decode_image, image_to_png, load_clip,
                                                   load_sd, write_tiny_backbones)
from polymodal.models.cheffusion.data import RAW_COLUMNS, TASK, format_recipe
from polymodal.models.cheffusion.features import FeatureExtractor, extract_features
from polymodal.models.cheffusion.synth import COLOURS, DISHES, dish_of, sample_rows

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                                        "ignore::DeprecationWarning")

N_ROWS = 12
CLIP_WIDTH, SD_TOKENS, SD_WIDTH = 32, 16, 32  # write_tiny_backbones' defaults
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _decode(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8, straight through PIL."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _read_all(uri: str) -> dict[str, np.ndarray]:
    """Every row of a dataset, in shard order."""
    manifest = shards.open_dataset(uri)
    return next(shards.iter_local_batches(uri, manifest.num_rows, manifest=manifest, shuffle=False))


def _write_raw(uri: str, rows: dict[str, list], *, task: str = TASK, columns=None) -> str:
    with shards.ShardWriter(uri, task=task, split="train", columns=columns or RAW_COLUMNS, rows_per_shard=5,
                            progress=False) as writer:
        writer.write(rows)
    return uri


# ---------------------------------------------------------------- format_recipe


def test_format_recipe_hand_worked() -> None:
    text = format_recipe("  Tomato \t soup.. ", [" tomato ", "", "sea\n salt", "   "],
                         ["chop  the tomato", "  boil it!", "", "serve.\n", "is it hot?"])
    assert text == "Tomato soup. ingredients: tomato, sea salt. instructions: chop the tomato. boil it! serve. is it hot?"
    assert format_recipe("pie", ["flour"], []) == "pie. ingredients: flour. instructions:"


# ---------------------------------------------------------------- synthetic dishes


def _dish_mask(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels far from the light grey plate. The plate is N(232, 10) per channel
    (its distance from grey 232 stays under ~60); every dish colour, jittered by +-20 per
    channel, is over 150 away, and PIL draws without anti-aliasing."""
    return np.linalg.norm(image.astype(np.float64) - 232.0, axis=-1) > 90.0


def test_sample_rows_are_32px_rgb_pngs_of_their_dish() -> None:
    rows = sample_rows(np.random.default_rng(3), 60)
    assert set(rows) == set(RAW_COLUMNS) and all(len(v) == 60 for v in rows.values())
    assert len(set(rows["id"])) == 60
    main_colour = {main: rgb for rgb, main in COLOURS.values()}
    by_dish: dict[str, list[np.ndarray]] = defaultdict(list)
    for title, data in zip(rows["title"], rows["image"]):
        assert data.startswith(PNG_MAGIC)
        with Image.open(io.BytesIO(data)) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (32, 32))
        image = _decode(data)
        mask = _dish_mask(image)
        assert 100 < mask.sum() < 720, title  # from ~160 px (smallest triangle) to ~700 (largest square)
        mean = image[mask].mean(axis=0)
        nearest = min(main_colour, key=lambda m: np.linalg.norm(mean - np.array(main_colour[m])))
        main = title.split()[0]
        assert nearest == main, (title, mean)
        by_dish[title].append(image)
    repeated = [images for images in by_dish.values() if len(images) > 1]
    assert len(repeated) >= 5
    for images in repeated:  # same dish, different pictures: colour, size and position are jittered
        means = {tuple(np.round(im[_dish_mask(im)].mean(axis=0), 3)) for im in images}
        assert len(means) == len(images)
        assert len({_dish_mask(im).tobytes() for im in images}) > 1


def test_dish_of_reads_back_the_dish_each_row_was_drawn_with() -> None:
    rows = sample_rows(np.random.default_rng(4), 40)
    kinds = {kind for kind, _, _ in DISHES.values()}
    mains = {main for _, main in COLOURS.values()}
    for title, recipe, ingredients in zip(rows["title"], rows["recipe"], rows["ingredients"]):
        main, kind = title.split()
        assert main in mains and kind in kinds
        assert recipe.startswith(f"{title}. ingredients: {main}, ")
        assert ingredients.split("\n")[0] == main
        assert dish_of(recipe) == (main, kind)
    assert dish_of("Beet pie, then a tomato soup.") == ("beet", "pie")
    assert dish_of("a plate of nothing") == (None, None)


def test_sample_rows_are_reproducible_for_a_seed() -> None:
    a, b = (sample_rows(np.random.default_rng(7), 8, id_prefix="x") for _ in range(2))
    assert a == b
    assert a["id"][0] == "x-000000"
    c = sample_rows(np.random.default_rng(8), 8, id_prefix="x")
    assert c["image"] != a["image"]


# ---------------------------------------------------------------- feature extraction


@pytest.fixture(scope="module")
def raw_rows() -> dict[str, list]:
    return sample_rows(np.random.default_rng(11), N_ROWS)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, raw_rows) -> dict[str, str]:
    return write_tiny_backbones(str(tmp_path_factory.mktemp("cf-data-backbones")), raw_rows["recipe"],
                                pretrain_steps=0)


@pytest.fixture(scope="module")
def raw_uri(tmp_path_factory, raw_rows) -> str:
    return _write_raw(str(tmp_path_factory.mktemp("cf-raw") / "train"), raw_rows)


@pytest.fixture(scope="module")
def local_features(tmp_path_factory, raw_uri, backbones) -> str:
    out = str(tmp_path_factory.mktemp("cf-features") / "train")
    extract_features(raw_uri, out, clip=backbones["clip"], sd=backbones["sd"], use_ray=False, batch_size=5,
                     progress=False)
    return out


def test_features_manifest_columns_and_raw_columns_unchanged(raw_uri, raw_rows, local_features) -> None:
    manifest = shards.open_dataset(local_features, verify="checksum")
    assert manifest.task == TASK and manifest.split == "train" and manifest.num_rows == N_ROWS
    assert manifest.meta["stage"] == "features" and manifest.meta["raw"] == raw_uri
    clip, target = manifest.columns["clip_image"], manifest.columns["sd_target"]
    assert (clip.dtype, list(clip.shape)) == ("float32", [CLIP_WIDTH])
    assert (target.dtype, list(target.shape)) == ("float16", [SD_TOKENS, SD_WIDTH])
    rows = _read_all(local_features)
    assert rows["clip_image"].shape == (N_ROWS, CLIP_WIDTH) and rows["clip_image"].dtype == np.float32
    assert rows["sd_target"].shape == (N_ROWS, SD_TOKENS, SD_WIDTH) and rows["sd_target"].dtype == np.float16
    for name in RAW_COLUMNS:
        assert list(rows[name]) == raw_rows[name], name


def test_clip_image_is_the_clip_pooled_output_of_the_decoded_image(raw_rows, backbones, local_features) -> None:
    model, processor = load_clip(backbones["clip"])
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in raw_rows["image"]]
    expected = clip_image_features(model, processor, images).numpy()
    got = _read_all(local_features)["clip_image"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.std(got, axis=0).mean() > 0.1 * np.abs(got).mean()  # image-specific, not a constant


def test_sd_target_is_what_the_sd_pipeline_conditions_on(raw_rows, backbones, local_features) -> None:
    """The independent check: diffusers' StableDiffusionPipeline.encode_prompt on the recipes."""
    pipe = load_sd(backbones["sd"])
    embeds = pipe.encode_prompt(prompt=list(raw_rows["recipe"]), device="cpu", num_images_per_prompt=1,
                                do_classifier_free_guidance=False)[0].numpy()
    assert embeds.shape == (N_ROWS, SD_TOKENS, SD_WIDTH)
    got = _read_all(local_features)["sd_target"]
    # float16 keeps 11 significant bits: rounding moves a value by at most 2**-11 of it; allow one
    # float16 step, since float32 sums in other batch shapes may round the other way.
    np.testing.assert_allclose(got.astype(np.float32), embeds, rtol=2.0**-10, atol=1e-6)
    assert np.mean(got == embeds.astype(np.float16)) > 0.99  # the same numbers, rounded once


def test_ray_extraction_gives_the_same_rows(ray_cluster, tmp_path, raw_uri, backbones, local_features) -> None:
    out = str(tmp_path / "ray-train")
    manifest = extract_features(raw_uri, out, clip=backbones["clip"], sd=backbones["sd"], use_ray=True,
                                concurrency=1, batch_size=5, progress=False)
    assert manifest.num_rows == N_ROWS
    assert manifest.columns == shards.open_dataset(local_features).columns
    ray_rows, local_rows = _read_all(out), _read_all(local_features)
    assert sorted(ray_rows["id"]) == sorted(local_rows["id"])
    where = {i: k for k, i in enumerate(ray_rows["id"])}
    order = [where[i] for i in local_rows["id"]]
    for name in RAW_COLUMNS:
        assert list(ray_rows[name][order]) == list(local_rows[name]), name
    np.testing.assert_allclose(ray_rows["clip_image"][order], local_rows["clip_image"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ray_rows["sd_target"][order].astype(np.float32),
                               local_rows["sd_target"].astype(np.float32), rtol=2.0**-9, atol=1e-6)


def test_a_dataset_that_is_not_cheffusion_raw_names_its_uri(tmp_path, raw_rows, backbones) -> None:
    no_image = {k: v for k, v in RAW_COLUMNS.items() if k != "image"}
    cases = {
        "no-image": _write_raw(str(tmp_path / "no-image"), {k: raw_rows[k] for k in no_image}, columns=no_image),
        "other-task": _write_raw(str(tmp_path / "other-task"), raw_rows, task="wander.classification"),
    }
    for name, uri in cases.items():
        with pytest.raises(PolymodalError, match="not a raw cheffusion.recipes dataset") as err:
            extract_features(uri, str(tmp_path / f"{name}-out"), clip=backbones["clip"], sd=backbones["sd"],
                             use_ray=False, progress=False)
        assert uri in str(err.value)
        assert ("['image']" in str(err.value)) == (name == "no-image")


def test_a_corrupt_image_names_its_recipe_and_writes_no_manifest(tmp_path, raw_rows, backbones) -> None:
    rows = {k: list(v[:6]) for k, v in raw_rows.items()}
    rows["id"][4] = "recipe-with-bad-image"
    rows["image"][4] = rows["image"][4][: len(rows["image"][4]) // 2]  # a PNG cut off mid-data
    raw = _write_raw(str(tmp_path / "raw"), rows)
    out = tmp_path / "features"
    with pytest.raises(ValueError, match="recipe recipe-with-bad-image: image: not a decodable image"):
        extract_features(raw, str(out), clip=backbones["clip"], sd=backbones["sd"], use_ray=False, progress=False)
    assert not (out / "manifest.json").exists()

    extractor = FeatureExtractor(backbones["clip"], backbones["sd"], device="cpu")
    batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
    batch["image"][4] = b"not an image at all"
    with pytest.raises(ValueError, match="recipe recipe-with-bad-image: image"):
        extractor(batch)


def test_decode_image_round_trip_and_bad_bytes() -> None:
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    decoded = decode_image(image_to_png(image))
    assert decoded.mode == "RGB" and np.array_equal(np.asarray(decoded), image)
    grey = io.BytesIO()
    Image.fromarray(image[..., 0]).save(grey, format="PNG")
    assert decode_image(grey.getvalue()).mode == "RGB"
    for bad in (b"", b"GIF89a-nope", image_to_png(image)[:30]):
        with pytest.raises(ValueError, match="^somewhere: not a decodable image"):
            decode_image(bad, where="somewhere")


def test_tiny_backbones_are_folders_with_the_expected_widths(backbones) -> None:
    for name in ("lm", "clip", "sd"):
        assert Path(backbones[name]).is_dir(), name
    assert FeatureExtractor(backbones["clip"], backbones["sd"], device="cpu").dims == (CLIP_WIDTH, SD_TOKENS, SD_WIDTH)
