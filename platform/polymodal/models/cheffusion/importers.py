"""Recipe1M -> ChefFusion raw datasets (columns :data:`.data.RAW_COLUMNS`).

Layout (a local folder or an ``s3://`` prefix), as released (torralba-lab/im2recipe-Pytorch
``scripts/utils.py`` ``Layer``, ``scripts/mk_dataset.py``; facebookresearch/inversecooking
``src/build_vocab.py``, ``src/data_loader.py``)
-----------------------------------------------------------------------------------------------
* ``<source>/layer1.json``: a JSON list of recipes ``{"id", "title", "partition"
  ("train" | "val" | "test"), "ingredients": [{"text"}, ...], "instructions": [{"text"}, ...], ...}``;
* ``<source>/layer2.json``: a JSON list ``{"id": <recipe id>, "images": [{"id": "3e233001e2.jpg",
  "url": ...}, ...]}``; recipes without images are absent (or list none);
* ``<source>/det_ingrs.json`` (read with ``ingredients="det_ingrs"`` only): a JSON list
  ``{"id": <recipe id>, "ingredients": [{"text": "flour"}, ...], "valid": [true, ...]}``, the
  ingredient names detected in each layer1 line;
* the images, as the Recipe1M tars extract them, under a tree keyed by the first four characters of
  the image id: ``<images>/<partition>/3/e/2/3/3e233001e2.jpg``; Recipe1M+'s tree has no partition
  folder (``<images>/3/e/2/3/3e233001e2.jpg``), and a flat ``<images>/3e233001e2.jpg`` is also
  accepted.

Which recipes, which split, which image
---------------------------------------
The split is layer1's own ``partition``, and only recipes that layer2 lists with an image are
kept: ChefFusion's data preparation (Peiyu-Georgia-Li/ChefFusion-Multimodal-Foundation-Model-
Integrating-Recipe-and-Food-Image-Generation @ 92086ed, ``recipe1m_processing.py``) joins layer1
and layer2 on ``id`` and writes one file per ``partition`` value (training reads ``train``,
validation ``val``), as im2recipe's ``mk_dataset.py`` does (it drops recipes without images, too).
A row gets one image: the first one layer2 lists (ChefFusion keeps ``images[0]``), or, when that
file is missing, the next one on disk among the first :data:`MAX_IMAGES` (im2recipe keeps at most
five per recipe). The ingredients are layer1's lines, as ChefFusion trains on them
(``ingredients="layer1"``), or im2recipe's merge (``ingredients="det_ingrs"``): layers are merged
by ``id`` and det_ingrs' ``ingredients`` replace layer1's; only the ones marked ``valid`` are kept
(inversecooking ``build_vocab.py``); a recipe det_ingrs does not list keeps layer1's.

Errors
------
Every recipe of the requested splits is checked (fields, partition, its layer2 and det_ingrs
entries) before anything is written, so a broken file fails in seconds with an
:class:`~polymodal.errors.ImportDataError` naming the file, row and recipe id. Images are read and
decoded while writing; an undecodable one is an error, and so is a recipe none of whose listed
images is on disk (the message names the layer2 entry, the ``images[i].id`` field and the paths
tried). With ``skip_bad=True`` a bad recipe is dropped instead: logged, and counted in the
manifest's ``meta["skipped"]``. A recipe that layer2 does not list (or lists without an image) is
not an error (about 60% of Recipe1M's recipes have no image); it is left out and counted in
``meta["no_image"]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError
from polymodal.imports import ImportProgress, import_key
from polymodal.shards import ShardWriter

from .data import RAW_COLUMNS, SPLITS, TASK, format_recipe

__all__ = ["import_recipe1m", "LAYER1", "LAYER2", "DET_INGRS", "MAX_IMAGES", "INGREDIENT_SOURCES"]

logger = logging.getLogger(__name__)

LAYER1 = "layer1.json"
LAYER2 = "layer2.json"
DET_INGRS = "det_ingrs.json"
#: where a row's ingredient lines come from: layer1's own lines (ChefFusion) or det_ingrs (im2recipe)
INGREDIENT_SOURCES = ("layer1", "det_ingrs")
#: images of a recipe that are looked at, in layer2 order: im2recipe's ``maxNumImgs = 5``
#: (``scripts/mk_dataset.py``; its loader also draws from the first five only)
MAX_IMAGES = 5
#: the layer1 fields every recipe needs
RECIPE_FIELDS = ("id", "title", "partition", "ingredients", "instructions")
#: a Recipe1M image id: its first four characters name the folders of the image tree
_IMAGE_ID = re.compile(r"[A-Za-z0-9]{4}[A-Za-z0-9_.-]*")
#: recipes whose images are read concurrently and written in one call; Recipe1M images are
#: 30-200 kB, so a chunk keeps ~10 MB of image bytes in flight
_CHUNK = 64
#: per-split warnings for skipped recipes; the rest are summarised in one line
_MAX_LOGGED = 20


@dataclass(slots=True)
class _Recipe:
    """One checked layer1 recipe; item texts are whitespace-normalised, blank ones dropped."""

    row: int  # index in layer1.json
    id: str
    split: str
    title: str
    ingredients: tuple[str, ...]
    instructions: tuple[str, ...]
    images: tuple[str, ...] = ()  # image ids from layer2, in listed order, at most MAX_IMAGES
    layer2_entry: int = -1  # index of the recipe's (first) entry in layer2.json

    def where(self, layer1: str) -> str:
        return f"{layer1}: row {self.row} (recipe {self.id!r})"


@dataclass(slots=True)
class _Listing:
    """A recipe's images as layer2 lists them."""

    entry: int  # index of its first entry in layer2.json
    images: tuple[str, ...]  # image ids of every entry, in order


@dataclass
class _SplitPlan:
    """The recipes of one split to read, plus what the checks already dropped."""

    recipes: list[_Recipe] = field(default_factory=list)  # those with at least one listed image
    no_image: int = 0  # recipes absent from layer2 (or listed with no images)
    layer2: str = ""  # the layer2.json read, for messages


@dataclass(slots=True)
class _Found:
    """Result of looking for a recipe's image on disk."""

    data: bytes | None = None  # the encoded image; None when no listed image exists or it is bad
    uri: str | None = None  # the file read, or (nothing found) the first path tried
    error: str | None = None  # why the file found cannot be used
    tried: tuple[str, ...] = ()  # (nothing found) every path tried


class _Skips:
    """Raise on a bad recipe, or (``skip_bad``) log and count it per split."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.count: dict[str | None, int] = {}  # None: entries that name no usable split

    def bad(self, split: str | None, message: str) -> None:
        if not self.skip_bad:
            raise ImportDataError(f"{message} (pass skip_bad=True, on the command line --skip-bad, to drop such "
                                  "recipes; they are counted)")
        n = self.count[split] = self.count.get(split, 0) + 1
        if n <= _MAX_LOGGED:
            logger.warning("skipped %s", message)

    def summary(self) -> None:
        for split, n in self.count.items():
            if n > _MAX_LOGGED:
                name = "entries without a split" if split is None else f"split {split!r}"
                logger.warning("%s: %d more skipped (%d in total)", name, n - _MAX_LOGGED, n)


# --------------------------------------------------------------------------- the JSON layers


def _read_json_list(uri: str, what: str, opts: StorageOptions | None) -> list[Any]:
    """A whole JSON file that must hold a list; every failure names the file."""
    try:
        data = storage.read_bytes(uri, opts)
    except storage.NotFoundError:
        if uri.endswith(DET_INGRS):
            raise ImportDataError(f"{uri}: file not found; ingredients='det_ingrs' reads the detected ingredients "
                                  f"from {DET_INGRS} beside {LAYER1} (or import layer1's with "
                                  "ingredients='layer1')") from None
        raise ImportDataError(f"{uri}: file not found; `source` must be the Recipe1M folder holding {LAYER1} "
                              f"and {LAYER2}") from None
    try:
        entries = json.loads(data)
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"{uri}: not UTF-8 text ({exc}); re-download or re-extract it") from None
    except json.JSONDecodeError as exc:
        raise ImportDataError(f"{uri}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                              "re-download or re-extract it") from None
    if not isinstance(entries, list):
        raise ImportDataError(f"{uri}: top level is a JSON {type(entries).__name__}, expected a list of {what}")
    return entries


def _image_ids(raw: Any) -> tuple[str, ...]:
    """``layer2["images"]`` -> image ids in listed order; a malformed list -> ValueError."""
    if not isinstance(raw, list):
        raise ValueError(f"'images' must be a list of {{\"id\": ...}} objects, got {type(raw).__name__}")
    out = []
    for j, item in enumerate(raw):
        iid = item.get("id") if isinstance(item, dict) else None
        if not isinstance(iid, str) or not _IMAGE_ID.fullmatch(iid):
            raise ValueError(f"images[{j}] needs an 'id' like '3e233001e2.jpg' (4+ letters or digits, then "
                             f"letters, digits, '_', '.', '-'), got {str(item)[:80]}")
        out.append(iid)
    return tuple(out)


def _read_layer2(uri: str, skips: _Skips, opts: StorageOptions | None) -> dict[str, _Listing | str]:
    """Recipe id -> its listed images, or the message of a bad entry (reported once the recipe's split
    is known, so an entry of a split that is not imported cannot fail the import)."""
    out: dict[str, _Listing | str] = {}
    for i, entry in enumerate(_read_json_list(uri, "{\"id\", \"images\"} objects", opts)):
        rid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(rid, str) or not rid:
            skips.bad(None, f"{uri}: entry {i}: no recipe 'id' string (got {str(entry)[:80]}); every entry is "
                            "{\"id\": <recipe id>, \"images\": [{\"id\": <image file>}, ...]}")
            continue
        try:
            ids = _image_ids(entry.get("images"))
        except ValueError as exc:
            out[rid] = f"{uri}: entry {i} (recipe {rid!r}): {exc}"
            continue
        prev = out.get(rid)
        # A recipe listed twice keeps every image, in order; a bad listing stays bad.
        if prev is None:
            out[rid] = _Listing(i, ids)
        elif isinstance(prev, _Listing):
            prev.images += ids
    return out


def _read_det_ingrs(uri: str, skips: _Skips, opts: StorageOptions | None) -> dict[str, tuple[str, ...] | str]:
    """Recipe id -> its valid detected ingredient names (cleaned, blank ones dropped), or the message
    of a bad entry (reported once the recipe's split is known, as for layer2)."""
    out: dict[str, tuple[str, ...] | str] = {}
    shape = '{"id": <recipe id>, "ingredients": [{"text": ...}, ...], "valid": [true | false, ...]}'
    for i, entry in enumerate(_read_json_list(uri, "{\"id\", \"ingredients\", \"valid\"} objects", opts)):
        rid = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(rid, str) or not rid:
            skips.bad(None, f"{uri}: entry {i}: no recipe 'id' string (got {str(entry)[:80]}); every entry is {shape}")
            continue
        where = f"{uri}: entry {i} (recipe {rid!r})"
        raw, valid = entry.get("ingredients"), entry.get("valid")
        if not isinstance(raw, list) or not isinstance(valid, list) or len(valid) != len(raw) \
                or not all(isinstance(v, bool) for v in valid):
            out[rid] = (f"{where}: 'ingredients' and 'valid' must be lists of equal length, 'valid' of "
                        f"booleans (got {str(raw)[:60]} and {str(valid)[:60]}); every entry is {shape}")
            continue
        names = []
        for j, (item, ok) in enumerate(zip(raw, valid)):
            text = item.get("text") if isinstance(item, dict) else None
            if not isinstance(text, str):
                names = f"{where}: ingredients[{j}] must be an object with a 'text' string, got {str(item)[:80]}"
                break
            if ok and (cleaned := _clean(text)):
                names.append(cleaned)
        if isinstance(names, list) and not names:
            names = f"{where}: no ingredient is marked 'valid' (of {len(raw)}); im2recipe drops such recipes"
        out[rid] = names if isinstance(names, str) else tuple(names)
    return out


def _clean(text: str) -> str:
    # One item per line in the stored columns, so no item may hold a newline.
    return " ".join(text.split())


def _texts(raw: Any, name: str) -> tuple[str, ...]:
    """``[{"text": ...}, ...]`` -> cleaned non-blank texts; malformed or empty -> ValueError."""
    if not isinstance(raw, list):
        raise ValueError(f"{name!r} must be a list of {{\"text\": ...}} objects, got {type(raw).__name__}")
    out = []
    for j, item in enumerate(raw):
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{name}[{j}] must be an object with a 'text' string, got {str(item)[:80]}")
        if cleaned := _clean(text):
            out.append(cleaned)
    if not out:
        raise ValueError(f"{name!r} is empty; a recipe needs at least one non-blank item")
    return tuple(out)


def _parse_recipe(row: int, raw: Any) -> _Recipe:
    """One layer1 entry -> :class:`_Recipe`; a bad entry -> ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"is a JSON {type(raw).__name__}, expected an object with {list(RECIPE_FIELDS)}")
    missing = [name for name in RECIPE_FIELDS if name not in raw]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a layer1 recipe has {list(RECIPE_FIELDS)}")
    rid, title, split = raw["id"], raw["title"], raw["partition"]
    if not isinstance(rid, str) or not rid.strip():
        raise ValueError(f"'id' must be a non-empty string, got {rid!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown partition {split!r}; use one of {list(SPLITS)}")
    if not isinstance(title, str) or not _clean(title):
        raise ValueError(f"'title' must be a non-blank string, got {title!r}")
    return _Recipe(row, rid, split, _clean(title), _texts(raw["ingredients"], "ingredients"),
                   _texts(raw["instructions"], "instructions"))


def _plan(layer1: str, layer2: str, det_ingrs: str | None, splits: Sequence[str], skips: _Skips,
          opts: StorageOptions | None) -> dict[str, _SplitPlan]:
    """Check every recipe of ``splits`` and attach its layer2 images (and, with ``det_ingrs``, its
    detected ingredients); nothing is read from the image tree."""
    images = _read_layer2(layer2, skips, opts)
    detected = _read_det_ingrs(det_ingrs, skips, opts) if det_ingrs is not None else {}
    plans = {split: _SplitPlan(layer2=layer2) for split in splits}
    first_row: dict[str, int] = {}
    for row, raw in enumerate(_read_json_list(layer1, "recipe objects", opts)):
        rid = raw.get("id") if isinstance(raw, dict) else None
        split = raw.get("partition") if isinstance(raw, dict) else None
        split = split if isinstance(split, str) else None
        if split in SPLITS and split not in plans:
            continue  # a split that is not imported is not checked either
        where = f"{layer1}: row {row}" + (f" (recipe {rid!r})" if isinstance(rid, str) else "")
        try:
            recipe = _parse_recipe(row, raw)
        except ValueError as exc:
            skips.bad(split if split in plans else None, f"{where}: {exc}")
            continue
        if recipe.id in first_row:
            skips.bad(split, f"{where}: duplicate id, first used by row {first_row[recipe.id]}")
            continue
        first_row[recipe.id] = row
        listed = images.get(recipe.id)
        if isinstance(listed, str):
            skips.bad(split, f"{listed} (images of {recipe.where(layer1)})")
            continue
        if listed is None or not listed.images:
            plans[split].no_image += 1
            continue
        # im2recipe's merge: det_ingrs' ingredients replace layer1's where det_ingrs lists the recipe.
        names = detected.get(recipe.id)
        if isinstance(names, str):
            skips.bad(split, f"{names} (ingredients of {recipe.where(layer1)})")
            continue
        if names is not None:
            recipe.ingredients = names
        recipe.images, recipe.layer2_entry = listed.images[:MAX_IMAGES], listed.entry
        plans[split].recipes.append(recipe)
    return plans


# --------------------------------------------------------------------------- images


def _image_paths(root: str, split: str, iid: str) -> tuple[str, ...]:
    """Where an image may be, in order: Recipe1M's tree (``<root>/<partition>/a/b/c/d/<id>``),
    Recipe1M+'s (``<root>/a/b/c/d/<id>``, no partition folder) and a flat folder."""
    return (storage.join(root, split, *iid[:4], iid), storage.join(root, *iid[:4], iid), storage.join(root, iid))


def _find_image(recipe: _Recipe, root: str, decode: Callable[..., Any], opts: StorageOptions | None) -> _Found:
    """The first listed image of ``recipe`` that exists, checked to decode."""
    from PIL import Image

    tried: list[str] = []
    for iid in recipe.images:
        for uri in _image_paths(root, recipe.split, iid):
            tried.append(uri)
            try:
                data = storage.read_bytes(uri, opts)
            except storage.NotFoundError:
                continue
            try:
                decode(data, where=uri)
            except ValueError as exc:
                return _Found(uri=uri, error=str(exc))
            except Image.DecompressionBombError as exc:
                return _Found(uri=uri, error=f"{uri}: {exc}")
            return _Found(data=data, uri=uri)
    return _Found(uri=tried[0] if tried else None, tried=tuple(tried))


def _missing(recipe: _Recipe, found: _Found, layer1: str, layer2: str, images: str) -> str:
    """The message for a recipe none of whose listed images is on disk."""
    fields = ", ".join(f"images[{j}].id={iid!r}" for j, iid in enumerate(recipe.images))
    tried = ", ".join(found.tried[:3]) + (f" and {len(found.tried) - 3} more" if len(found.tried) > 3 else "")
    return (f"{recipe.where(layer1)}: image file missing: {layer2} entry {recipe.layer2_entry} lists {fields}, "
            f"none of which is under {images} (tried {tried}); extract the image tars of partition "
            f"{recipe.split!r} there")


def _write_split(plan: _SplitPlan, uri: str, split: str, *, layer1: str, images: str, pool: ThreadPoolExecutor,
                 skips: _Skips, max_rows: int | None, rows_per_shard: int, opts: StorageOptions | None,
                 progress: bool | str, key: str, resume: bool) -> None:
    """Stream one split's recipes into ``uri``, ``_CHUNK`` images in memory at a time, one shard per
    ``rows_per_shard`` recipes; after each shard ``import-progress.json`` records how far it got, so a
    rerun with the same ``key`` continues there (and one of a finished split does nothing)."""
    from polymodal.models.cheffusion.backbones import decode_image

    tracker = ImportProgress(uri, key, opts, resume=resume)
    if tracker.finished() is not None:
        return
    state = tracker.resumed()
    planned = skips.count.get(split, 0)  # the field checks' skips, counted again by every run
    if state.records:
        skips.count[split] = planned + int(state.counters["image_skipped"])
    found_any, first_missing = int(state.counters.get("found_any", 0)), None
    # Recipes whose images are all missing, held until a first image of the split is found: if none
    # ever is, the images root is wrong (one error for the split), not each recipe.
    pending: list[tuple[_Recipe, _Found]] = []
    desc = f"{progress} {split}" if isinstance(progress, str) else progress
    meta = {"stage": "raw", "source": "recipe1m", "import_key": key}
    with ShardWriter(uri, task=TASK, split=split, columns=RAW_COLUMNS, rows_per_shard=rows_per_shard,
                     meta=meta, opts=opts, progress=desc, shards=state.shards) as writer:
        start = state.records
        while start < len(plan.recipes) and (max_rows is None or writer.rows_written < max_rows):
            # With a cap, read no more recipes than could still be written; stop at a shard's end.
            size = _CHUNK if max_rows is None else min(_CHUNK, max_rows - writer.rows_written)
            size = min(size, rows_per_shard - start % rows_per_shard)
            chunk = plan.recipes[start:start + size]
            start += size
            found = list(pool.map(lambda r: _find_image(r, images, decode_image, opts), chunk))
            good = []
            for recipe, image in zip(chunk, found):
                if image.data is None and image.error is None:
                    first_missing = first_missing or image.uri
                    pending.append((recipe, image))
                    continue
                found_any += 1
                if image.error is not None:
                    skips.bad(split, f"{recipe.where(layer1)}: {image.error}")
                    continue
                good.append((recipe, image.data))
            if found_any:
                for recipe, image in pending:
                    skips.bad(split, _missing(recipe, image, layer1, plan.layer2, images))
                pending = []
            if good:
                writer.write({
                    "id": [r.id for r, _ in good],
                    "title": [r.title for r, _ in good],
                    "ingredients": ["\n".join(r.ingredients) for r, _ in good],
                    "instructions": ["\n".join(r.instructions) for r, _ in good],
                    "recipe": [format_recipe(r.title, r.ingredients, r.instructions) for r, _ in good],
                    "image": [data for _, data in good],
                })
            if found_any and (start % rows_per_shard == 0 or start >= len(plan.recipes)):
                writer.flush()  # nothing is pending once an image was found
                tracker.save(start, writer.shards, image_skipped=skips.count.get(split, 0) - planned,
                             found_any=found_any)
        if pending:
            # Every listed file missing is a wrong `images` root, not a dataset without photos.
            raise ImportDataError(
                f"split {split!r}: none of the images {LAYER2} lists for its {len(pending)} recipe(s) read "
                f"exists under {images} (first path tried: {first_missing}); pass images=<the folder holding "
                f"train/ val/ test/ image trees (Recipe1M+: the a/b/c/d tree), or the image files>, or leave "
                f"{split!r} out of `splits`")
        writer.meta.update(skipped=skips.count.get(split, 0), no_image=plan.no_image)
        logger.info("%s: %d recipes written, %d without an image, %d skipped", uri, writer.rows_written,
                    plan.no_image, skips.count.get(split, 0))
    tracker.clear()


# --------------------------------------------------------------------------- entry point


def import_recipe1m(
    source: str,
    out_uri: str,
    *,
    images: str | None = None,
    splits: Sequence[str] = SPLITS,
    max_per_split: int | None = None,
    image_choice: Literal["first"] = "first",
    ingredients: Literal["layer1", "det_ingrs"] = "layer1",
    rows_per_shard: int = 2048,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    resume: bool = True,
) -> dict[str, str]:
    """Import Recipe1M into one raw ChefFusion dataset per split (one recipe and one image per row),
    split by layer1's ``partition`` as ChefFusion's data preparation does (see the module docstring).

    Parameters
    ----------
    source : str
        Folder or ``s3://`` prefix holding ``layer1.json`` and ``layer2.json`` (and, for
        ``ingredients="det_ingrs"``, ``det_ingrs.json``).
    out_uri : str
        Folder or ``s3://`` prefix; split ``s`` is written to ``<out_uri>/raw/<s>``.
    images : str, optional
        Root of the images (``<images>/<partition>/a/b/c/d/<image id>``, Recipe1M+'s
        ``<images>/a/b/c/d/<image id>`` or ``<images>/<image id>``); default ``<source>/images``.
    splits : sequence of str
        Partitions to import, from ``("train", "val", "test")``. Recipes of other partitions are
        neither checked nor read.
    max_per_split : int, optional
        Write at most this many recipes per split (the first ones with an image, in layer1 order).
    image_choice : "first"
        Which image a row gets: the first one listed in layer2 that exists on disk, among the first
        :data:`MAX_IMAGES` listed.
    ingredients : "layer1" or "det_ingrs"
        A row's ingredient lines: layer1's (ChefFusion's, with quantities: "2 cups flour"), or the
        valid names of ``det_ingrs.json`` merged by id (im2recipe's: "flour"); a recipe det_ingrs
        does not list keeps layer1's.
    rows_per_shard : int
        Rows per Parquet shard. A shard's rows, images included, are buffered in memory until it is
        written (2048 Recipe1M images are ~100-400 MB).
    opts : StorageOptions, optional
        S3 settings, for ``s3://`` sources, images and destinations alike.
    skip_bad : bool
        Drop a bad recipe (missing field, empty ingredient list, unknown partition, malformed layer2
        or det_ingrs entry, no valid detected ingredient, undecodable image, listed images all
        missing on disk), with a warning naming file, row and recipe id, instead of raising.
    progress : bool or str
        Passed to :class:`~polymodal.shards.ShardWriter`; a string is suffixed with the split.
    resume : bool
        Continue an interrupted run of the same import (same source files and images as they are
        now, same arguments) after its last finished shard, and leave a split it finished as it
        is (default); False starts over. Each split is one shard per ``rows_per_shard`` recipes.

    Returns
    -------
    dict[str, str]
        ``{split: dataset uri}``. Columns :data:`~.data.RAW_COLUMNS` (``ingredients`` and
        ``instructions`` one item per line, ``recipe`` = :func:`~.data.format_recipe`, ``image`` the
        file's bytes); task :data:`~.data.TASK`; ``meta`` = ``{"stage": "raw", "source": "recipe1m",
        "skipped": n, "no_image": m, "import_key": k}``. ``skipped`` counts the split's bad recipes (field checks cover
        the whole split, image checks the recipes read); ``no_image`` the recipes layer2 lists
        without an image (or not at all).

    Raises
    ------
    ImportDataError
        A missing or malformed ``layer1.json`` / ``layer2.json`` / ``det_ingrs.json``, a missing
        images folder, a split whose listed images are all missing (a wrong ``images``), or
        (without ``skip_bad``) a bad recipe; the message names the file, the row or entry, the
        recipe id and the field.
    ValueError
        An unknown split, ``image_choice`` or ``ingredients``, or ``max_per_split`` < 1.
    """
    if isinstance(splits, str):
        splits = (splits,)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names from {list(SPLITS)}, got {list(splits)}")
    if image_choice != "first":
        raise ValueError(f"image_choice must be 'first' (the first listed image on disk), got {image_choice!r}")
    if ingredients not in INGREDIENT_SOURCES:
        raise ValueError(f"ingredients must be one of {list(INGREDIENT_SOURCES)}, got {ingredients!r}")
    if max_per_split is not None and (not isinstance(max_per_split, int) or max_per_split < 1):
        raise ValueError(f"max_per_split must be a positive integer or None, got {max_per_split!r}")
    source = os.fspath(source)
    images = os.fspath(images) if images is not None else storage.join(source, "images")
    layer1, layer2 = storage.join(source, LAYER1), storage.join(source, LAYER2)
    det_ingrs = storage.join(source, DET_INGRS) if ingredients == "det_ingrs" else None

    skips = _Skips(skip_bad)
    plans = _plan(layer1, layer2, det_ingrs, splits, skips, opts)
    if any(p.recipes for p in plans.values()) and not storage.exists(images, opts):
        raise ImportDataError(f"{images}: images folder not found; pass images=<the folder holding the "
                              "train/ val/ test/ image trees (Recipe1M+: the a/b/c/d tree), or the image files> "
                              "(default <source>/images)")
    for split, plan in plans.items():
        if not plan.recipes and not plan.no_image:
            logger.warning("%s: no recipe of partition %r; its dataset will be empty", layer1, split)

    out = {split: storage.join(out_uri, "raw", split) for split in splits}
    settings = {"images": images, "max_per_split": max_per_split, "ingredients": ingredients,
                "rows_per_shard": rows_per_shard, "skip_bad": skip_bad}
    inputs = [layer1, layer2, *([det_ingrs] if det_ingrs else [])]
    try:
        key = import_key([*inputs, images], settings, opts)
    except storage.NotFoundError:  # no image files at all: every split fails or is empty
        key = import_key(inputs, settings, opts)
    # Threads overlap S3 round trips and image decoding (Pillow releases the GIL).
    workers = 16 if storage.is_s3(images) else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, plan in plans.items():
            _write_split(plan, out[split], split, layer1=layer1, images=images, pool=pool, skips=skips,
                         max_rows=max_per_split, rows_per_shard=rows_per_shard, opts=opts, progress=progress,
                         key=f"{key}:{split}", resume=resume)
    skips.summary()
    return out
