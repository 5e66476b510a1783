"""Importers that turn public multimodal benchmarks into polymodal shards, reading each as released.

* :func:`import_mmsa` - CMU-MOSI / CMU-MOSEI feature pickles in the MMSA layout
  (regression, modalities ``text``, ``audio``, ``vision``).
* :func:`import_iemocap` - IEMOCAP as Multimodal-Transformer's pickles (multilabel: four
  binary emotion targets, modalities ``text``, ``audio``, ``vision``).
* :func:`import_food101` - UPMC-Food101 in UPMC's own layout (title CSVs + image folders) or
  MMBT's JSON(L) records (classification, modalities ``image``, ``text``).
* :func:`import_msrvtt_mmt` - MSR-VTT with MMT's seven expert features, one HDF5 file per
  video (retrieval, modalities ``text`` and the experts, with per-expert masks).

Sources are local paths or ``s3://`` URIs. Each checks what it can before writing (the pickles
whole; the record files, lists and the presence of every image or feature file), so a
malformed source fails in seconds with an :class:`~polymodal.errors.ImportDataError` naming
the file, split, row or line and field rather than after hours of writing; images and HDF5
files are read in chunks while writing, and a split's manifest is written only once all its
rows are, so a failed or interrupted import leaves no split that looks complete (run the same
command again to redo it). With ``skip_bad=True`` bad rows are dropped instead, each one
logged as a warning.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError, StorageError
from polymodal.imports import ImportProgress, import_key

from .data import LABEL, LABEL_DTYPES, TASKS, columns, feature_spec

__all__ = ["import_mmsa", "import_food101", "import_iemocap", "import_msrvtt_mmt", "SafeUnpickler"]

logger = logging.getLogger(__name__)

#: rows per ``ShardWriter.write`` call: bounds memory for large feature arrays and images
_CHUNK = 256
#: at most this many per-row warnings per split; the rest are summarised in one line
_MAX_ROW_WARNINGS = 20
#: records per resumable step of the image and video importers: their rows are flushed as a shard
#: and ``import-progress.json`` records how far the split got
_RESUME_EVERY = 16 * _CHUNK


def _trackers(out: dict[str, str], key: str, opts: StorageOptions | None,
              resume: bool) -> dict[str, ImportProgress]:
    """One :class:`~polymodal.imports.ImportProgress` per output split (key ``<key>:<split>``)."""
    return {split: ImportProgress(uri, f"{key}:{split}", opts, resume=resume) for split, uri in out.items()}


def _steps(items: Sequence[Any], start: int, size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """``(items done after it, chunk)`` over ``items[start:]``, ``size`` at a time, never across a
    multiple of :data:`_RESUME_EVERY` (``start`` is one, or 0)."""
    while start < len(items):
        n = min(size, _RESUME_EVERY - start % _RESUME_EVERY)
        yield start + n, items[start:start + n]
        start += n


def _checkpoint(done: int, total: int) -> bool:
    """Whether a resumable step of ``total`` items ends after ``done``."""
    return done % _RESUME_EVERY == 0 or done == total


class _SkipLog:
    """Collects rows dropped under ``skip_bad`` and logs them without flooding the log."""

    def __init__(self, source: str, split: str) -> None:
        self.source = source
        self.split = split
        self.count = 0

    def skip(self, row: int, reason: str) -> None:
        self.count += 1
        if self.count <= _MAX_ROW_WARNINGS:
            logger.warning("%s: split %r row %d skipped: %s", self.source, self.split, row, reason)

    def summary(self) -> None:
        if self.count > _MAX_ROW_WARNINGS:
            logger.warning(
                "%s: split %r: %d more row(s) skipped (%d in total)",
                self.source, self.split, self.count - _MAX_ROW_WARNINGS, self.count,
            )


# =========================================================================== MMSA pickles

MMSA_SPLITS = {"train": "train", "valid": "val", "test": "test"}
MMSA_MODALITIES = ("text", "audio", "vision")
MMSA_LABEL = "regression_labels"

_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
     "bytes", "bytearray", "bool", "slice", "range"}
)
# The globals numpy's own pickles reference (protocols 0-5, numpy 1.x and 2.x module names).
_SAFE_NUMPY = frozenset(
    {("numpy", "ndarray"), ("numpy", "dtype"),
     ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
     ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
     ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
     # protocol <= 2 stores bytes as _codecs.encode(latin-1 text): a pure function
     ("_codecs", "encode"),
     ("collections", "OrderedDict")}
)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays, numpy scalars and builtin containers.

    Ordinary :func:`pickle.load` calls any importable callable named in the file, which lets
    a crafted file run arbitrary code. This subclass refuses every global except the handful
    numpy's array pickles need, which blocks the usual payloads (``os.system``,
    ``builtins.eval``, ...). It lowers the risk; it does not make untrusted pickles safe, so
    only import files you trust.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return getattr(importlib.import_module("builtins"), name)
        if (module, name) in _SAFE_NUMPY:
            if module.startswith("numpy.core."):
                # numpy 2 renamed numpy.core to numpy._core and warns on the old name;
                # pickles written by numpy 1.x still reference it.
                try:
                    return getattr(importlib.import_module("numpy._core." + module[11:]), name)
                except ImportError:
                    pass
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: only numpy arrays and builtin "
            "containers are allowed in a feature pickle"
        )


def _load_pickle(path: str, what: str = "MMSA", opts: StorageOptions | None = None) -> Any:
    """Read a pickle (local or ``s3://``) with :class:`SafeUnpickler`, turning every failure into
    ImportDataError; ``what`` names the expected file in messages.

    ``encoding="latin1"`` lets Python 2 pickles of numpy arrays load (their array bytes were
    written as ``str``); it changes nothing for Python 3 pickles.
    """
    try:
        with storage.open_uri(path, "rb", opts) as fh:
            return SafeUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found; pass the path of the {what} .pkl file") from None
    except pickle.UnpicklingError as exc:
        raise ImportDataError(
            f"{path}: not a loadable {what} pickle ({exc}); re-save it as a dict of numpy arrays"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as exc:
        raise ImportDataError(
            f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
            "download or re-create the file"
        ) from None


@dataclass
class _MmsaSplit:
    """One validated MMSA split: features (N, L, D) per modality and labels (N,)."""

    name: str
    features: dict[str, np.ndarray]
    labels: np.ndarray
    keep: np.ndarray  # bool (N,): rows that will be written


def _split_features(path: str, split: str, raw: Any, modalities: Sequence[str], label_key: str,
                    release: str) -> dict[str, np.ndarray]:
    """The (N, seq_len, dim) feature arrays of one pickled split (a dict holding ``modalities``
    and ``label_key``); anything else is an error naming the file, split and field. ``release``
    says which file to use instead."""
    keys = [*modalities, label_key]
    if not isinstance(raw, dict):
        raise ImportDataError(f"{path}: split {split!r} is a {type(raw).__name__}, expected a dict with keys {keys}")
    missing = [k for k in keys if k not in raw]
    if missing:
        raise ImportDataError(f"{path}: split {split!r} is missing key(s) {missing}; found {sorted(map(str, raw))}. "
                              f"Use {release}")
    features: dict[str, np.ndarray] = {}
    for mod in modalities:
        arr = np.asarray(raw[mod])
        if arr.ndim != 3 or arr.dtype.kind not in "biuf":
            raise ImportDataError(f"{path}: split {split!r} field {mod!r} must be a numeric (N, seq_len, dim) array, "
                                  f"got shape {arr.shape} dtype {arr.dtype}")
        features[mod] = arr
    return features


def _zero_neg_inf_audio(features: dict[str, np.ndarray]) -> None:
    """Audio -inf (COVAREP's log of 0) set to 0, as MMSA's and Multimodal-Transformer's loaders do."""
    audio = features["audio"]
    if audio.dtype.kind == "f" and np.isneginf(audio).any():
        features["audio"] = np.where(np.isneginf(audio), 0.0, audio).astype(audio.dtype)


def _usable_rows(path: str, split: str, features: dict[str, np.ndarray], label_key: str, labels: np.ndarray,
                 skip_bad: bool, hint: Callable[[int, list[str]], str] = lambda row, fields: "") -> np.ndarray:
    """bool (N,): the rows without NaN or inf in any field. Row counts must agree. A bad row is an
    error naming the file, split, row and fields (plus ``hint(row, fields)``), or with
    ``skip_bad`` is logged and left out; a split with no usable row is an error."""
    sizes = {k: v.shape[0] for k, v in features.items()} | {label_key: labels.shape[0]}
    if len(set(sizes.values())) != 1:
        raise ImportDataError(f"{path}: split {split!r} has inconsistent row counts {sizes}; every field must "
                              "have the same N")
    n = labels.shape[0]
    keep = np.ones(n, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for key, arr in (*features.items(), (label_key, labels)):
        if arr.dtype.kind == "f":
            for row in np.nonzero(~np.isfinite(arr).reshape(n, -1).all(axis=1))[0].tolist():
                reasons.setdefault(row, []).append(key)
                keep[row] = False
    if reasons:
        first = min(reasons)
        if not skip_bad:
            raise ImportDataError(
                f"{path}: split {split!r} row {first}: NaN or inf in {', '.join(reasons[first])} "
                f"({len(reasons)} bad row(s) in this split){hint(first, reasons[first])}; fix the data or pass "
                "skip_bad=True to drop such rows")
        log = _SkipLog(path, split)
        for row in sorted(reasons):
            log.skip(row, f"NaN or inf in {', '.join(reasons[row])}")
        log.summary()
    if not keep.any():
        raise ImportDataError(f"{path}: split {split!r} has no usable rows ({n} in the file)")
    return keep


def _check_mmsa_split(
    path: str, split: str, raw: Any, fix_neg_inf: bool, skip_bad: bool
) -> _MmsaSplit:
    """Validate keys, shapes and finiteness of one split; mark bad rows (or raise)."""
    features = _split_features(path, split, raw, MMSA_MODALITIES, MMSA_LABEL,
                               "an MMSA feature pickle (e.g. aligned_50.pkl / unaligned_50.pkl)")
    labels = np.asarray(raw[MMSA_LABEL])
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "biuf":
        raise ImportDataError(
            f"{path}: split {split!r} key {MMSA_LABEL!r} must be a numeric (N,) array, "
            f"got shape {labels.shape} dtype {labels.dtype}"
        )
    if fix_neg_inf:
        _zero_neg_inf_audio(features)

    def hint(row: int, fields: list[str]) -> str:
        if "audio" in fields and np.isneginf(features["audio"][row]).any():
            return (" (CMU-MOSI/MOSEI audio features contain -inf; pass fix_neg_inf=True to set them "
                    "to 0 as MMSA's loader does)")
        return ""

    keep = _usable_rows(path, split, features, MMSA_LABEL, labels, skip_bad, hint)
    return _MmsaSplit(split, features, labels, keep)


def import_mmsa(
    pickle_path: str,
    out_uri: str,
    *,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    fix_neg_inf: bool = False,
    resume: bool = True,
) -> dict[str, str]:
    """Import a CMU-MOSI / CMU-MOSEI feature pickle in the MMSA layout.

    The pickle holds a dict with keys ``train``, ``valid`` and ``test``; each is a dict with
    at least ``text`` (N, L_t, D_t), ``audio`` (N, L_a, D_a), ``vision`` (N, L_v, D_v) float
    arrays and ``regression_labels`` (N,) sentiment scores in [-3, 3]. Other keys (``id``,
    ``raw_text``, ``text_bert``, ...) are ignored.

    .. warning::
       Pickle is a code-executing format. The file is read with :class:`SafeUnpickler`,
       which only rebuilds numpy arrays and builtin containers, but only import files from a
       source you trust.

    Parameters
    ----------
    pickle_path : str
        Local path of the ``.pkl`` file.
    out_uri : str
        Folder or ``s3://`` prefix; receives ``train/``, ``val/`` (from ``valid``), ``test/``.
    opts : StorageOptions, optional
        S3 settings for ``s3://`` destinations.
    skip_bad : bool
        Drop rows with NaN/inf features or labels (each logged as a warning naming split and
        row) instead of raising.
    progress : bool or str
        Passed to :class:`~polymodal.shards.ShardWriter`.
    fix_neg_inf : bool
        Replace ``-inf`` in ``audio`` by 0 before checking, as MMSA's own loader does for the
        COVAREP features of CMU-MOSI/MOSEI.
    resume : bool
        Keep the splits a run with the same pickle (as it is now) and arguments finished
        (manifest meta ``import_key``); with all three finished the pickle is not even loaded
        (default). False rewrites every split.

    Returns
    -------
    dict[str, str]
        ``{"train": uri, "val": uri, "test": uri}``. Each split has columns ``text``,
        ``audio``, ``vision`` (float32, fixed shapes ``[L, D]``) and ``label`` (float32 scalar);
        task ``wander.regression``.

    Raises
    ------
    ImportDataError
        Unreadable pickle, missing keys, inconsistent row counts or shapes, or (without
        ``skip_bad``) a NaN/inf row; the message names the file, split and row.
    """
    from polymodal.shards import ShardWriter

    path = os.fspath(pickle_path)
    out = {split: storage.join(out_uri, split) for split in MMSA_SPLITS.values()}
    key = import_key([path], {"format": "mmsa", "skip_bad": skip_bad, "fix_neg_inf": fix_neg_inf}, opts)
    trackers = _trackers(out, key, opts, resume)
    finished = {split for split, t in trackers.items() if t.finished() is not None}
    if len(finished) == len(out):
        return out
    data = _load_pickle(path)
    if not isinstance(data, dict):
        raise ImportDataError(
            f"{path}: top level is a {type(data).__name__}, expected a dict with keys "
            f"{list(MMSA_SPLITS)}"
        )
    missing = [k for k in MMSA_SPLITS if k not in data]
    if missing:
        raise ImportDataError(
            f"{path}: missing split key(s) {missing}; found {sorted(map(str, data))}. An MMSA "
            f"pickle has keys {list(MMSA_SPLITS)}"
        )
    # Check every split before writing any, so a bad test split cannot leave a half import.
    splits = [_check_mmsa_split(path, s, data[s], fix_neg_inf, skip_bad) for s in MMSA_SPLITS]
    shapes = {mod: splits[0].features[mod].shape[1:] for mod in MMSA_MODALITIES}
    for sp in splits[1:]:
        for mod in MMSA_MODALITIES:
            if sp.features[mod].shape[1:] != shapes[mod]:
                raise ImportDataError(
                    f"{path}: split {sp.name!r} key {mod!r} has per-row shape "
                    f"{sp.features[mod].shape[1:]} but split 'train' has {shapes[mod]}; all "
                    "splits must share (seq_len, dim)"
                )

    specs = columns("regression", {mod: feature_spec(shapes[mod]) for mod in MMSA_MODALITIES})
    meta = {"head": "regression", "modalities": list(MMSA_MODALITIES), "source": "mmsa"}
    for sp in splits:
        split_out = MMSA_SPLITS[sp.name]
        if split_out in finished:
            continue
        rows = np.nonzero(sp.keep)[0]
        with ShardWriter(
            out[split_out], task=TASKS["regression"], split=split_out, columns=specs,
            meta={**meta, "import_key": trackers[split_out].key}, opts=opts, progress=progress,
        ) as writer:
            for start in range(0, rows.size, _CHUNK):
                idx = rows[start : start + _CHUNK]
                batch = {mod: sp.features[mod][idx].astype(np.float32) for mod in MMSA_MODALITIES}
                batch[LABEL] = sp.labels[idx].astype(LABEL_DTYPES["regression"])
                writer.write(batch)
    return out


# =========================================================================== UPMC-Food101

FOOD101_SPLITS = {"train": "train", "dev": "val", "test": "test"}
#: record keys that may hold the image path (relative to root), in order of preference
IMAGE_KEYS = ("img", "image", "id")
#: the layouts :func:`import_food101` reads; ``auto`` picks by the files present
FOOD101_LAYOUTS = ("auto", "mmbt", "upmc")
#: UPMC Food-101's own title files, one per released split, relative to the root
UPMC_TITLES = {"train": "texts/train_titles.csv", "test": "texts/test_titles.csv"}


@dataclass
class _Record:
    """One checked Food101 record."""

    index: int  # position in the source file (0-based record number)
    where: str  # "record 3", "record 3 (line 5)" or "line 5" for messages
    image: str  # image path or URI
    text: str
    label: str


class _Listing:
    """Answers "does this file exist?" with one listing per folder (local or ``s3://``), so
    checking 100k images costs ~100 listings rather than 100k S3 requests."""

    def __init__(self, opts: StorageOptions | None) -> None:
        self.opts = opts
        self._folders: dict[str, frozenset[str]] = {}

    def exists(self, uri: str) -> bool:
        folder, _, name = uri.rstrip("/").rpartition("/")
        if folder not in self._folders:
            try:
                self._folders[folder] = frozenset(storage.listdir(folder, self.opts))
            except FileNotFoundError:
                self._folders[folder] = frozenset()
        return name in self._folders[folder]


def _read_records(path: str, opts: StorageOptions | None = None) -> list[tuple[int, str, Any]]:
    """Parse a JSON list or JSON-lines file into ``(index, where, record)`` triples."""
    try:
        content = storage.read_text(path, opts)
    except StorageError as exc:
        raise ImportDataError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8 JSON") from None
    if content.lstrip().startswith("["):
        try:
            records = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ImportDataError(
                f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return [(i, f"record {i}", r) for i, r in enumerate(records)]
    out = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportDataError(
                f"{path}: line {lineno} is not valid JSON ({exc.msg}); the file must be a JSON "
                "list or one JSON object per line"
            ) from None
        out.append((len(out), f"record {len(out)} (line {lineno})", record))
    return out


def _find_split_file(root: str, split: str, opts: StorageOptions | None = None) -> str:
    for ext in (".json", ".jsonl"):
        candidate = storage.join(root, split + ext)
        if storage.exists(candidate, opts):
            return candidate
    raise ImportDataError(
        f"{storage.join(root, split + '.json')}: file not found (nor {split}.jsonl); a Food101 "
        "root holds train.json, dev.json and test.json"
    )


def _check_record(root: str, raw: Any, files: _Listing) -> tuple[str, str, str] | str:
    """Return ``(image_uri, text, label)`` or a reason string saying what is wrong."""
    if not isinstance(raw, dict):
        return f"is a {type(raw).__name__}, expected a JSON object"
    rel = next((raw[k] for k in IMAGE_KEYS if isinstance(raw.get(k), str) and raw[k]), None)
    if rel is None:
        return f"has no image path; give one of the keys {list(IMAGE_KEYS)}"
    text, label = raw.get("text"), raw.get("label")
    if not isinstance(text, str):
        return f"'text' must be a string, got {type(text).__name__}"
    if not isinstance(label, str) or not label:
        return f"'label' must be a non-empty class-name string, got {label!r}"
    parts = rel.replace("\\", "/").split("/")
    if os.path.isabs(rel) or ".." in parts or "" in parts or "." in parts:
        return f"image path {rel!r} must be relative to the dataset root and must not contain '..'"
    image = storage.join(root, "/".join(parts))
    if not files.exists(image):
        return f"image file {image} does not exist"
    return image, text, label


def _collect_records(
    root: str, split: str, classes: Sequence[str] | None, skip_bad: bool, files: _Listing,
    opts: StorageOptions | None = None,
) -> tuple[str, list[_Record], _SkipLog]:
    """Read and check one MMBT split file; unknown labels are bad when ``classes`` is given."""
    path = _find_split_file(root, split, opts)
    log = _SkipLog(path, split)
    known = set(classes) if classes is not None else None
    records = []
    for index, where, raw in _read_records(path, opts):
        checked = _check_record(root, raw, files)
        if isinstance(checked, tuple) and known is not None and checked[2] not in known:
            checked = f"label {checked[2]!r} does not occur in train.json; fix the label or add it to train"
        if isinstance(checked, str):
            if not skip_bad:
                raise ImportDataError(
                    f"{path}: {where}: {checked} (or pass skip_bad=True to drop bad records)"
                )
            log.skip(index, checked)
            continue
        records.append(_Record(index, where, *checked))
    return path, records, log


def _read_titles(
    root: str, split: str, classes: Sequence[str] | None, skip_bad: bool, files: _Listing,
    opts: StorageOptions | None = None,
) -> tuple[str, list[_Record], _SkipLog]:
    """Read and check UPMC's ``texts/<split>_titles.csv``: no header row, three fields per row
    (image file name, page title, class name); the image is ``images/<split>/<class>/<file>``.
    Unknown class names are bad when ``classes`` (those of train) is given."""
    path = storage.join(root, UPMC_TITLES[split])
    if not storage.exists(path, opts):
        raise ImportDataError(f"{path}: file not found; a UPMC Food-101 root holds {', '.join(UPMC_TITLES.values())} "
                              "and images/{train,test}/<class>/")
    log = _SkipLog(path, split)
    known = set(classes) if classes is not None else None
    records: list[_Record] = []
    with storage.open_uri(path, "r", opts) as fh:
        reader = csv.reader(fh)
        index = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except UnicodeDecodeError as exc:
                raise ImportDataError(f"{path}: line {reader.line_num + 1}: not UTF-8 text ({exc})") from None
            except csv.Error as exc:
                raise ImportDataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from None
            where = f"line {reader.line_num}"
            if not row:
                continue
            checked = _check_title_row(root, split, row, known, files)
            if isinstance(checked, str):
                if not skip_bad:
                    raise ImportDataError(f"{path}: {where}: {checked} (or pass skip_bad=True to drop bad rows)")
                log.skip(index, f"{where}: {checked}")
            else:
                records.append(_Record(index, where, *checked))
            index += 1
    return path, records, log


def _check_title_row(
    root: str, split: str, row: list[str], known: set[str] | None, files: _Listing
) -> tuple[str, str, str] | str:
    """``(image_uri, title, class)`` of one titles.csv row, or the reason it is bad."""
    if len(row) != 3:
        return (f"expected 3 fields (image file name, page title, class name), got {len(row)}; "
                "quote titles that contain commas")
    name, title, label = (field.strip() for field in row)
    for field, value in (("image file name", name), ("class name", label)):
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            return f"field {field!r} must be a plain non-empty name, got {value!r}"
    if known is not None and label not in known:
        return f"field 'class name': {label!r} does not occur in train_titles.csv"
    image = storage.join(root, "images", split, label, name)
    if not files.exists(image):
        return f"field 'image file name': image file {image} does not exist"
    return image, title, label


def _load_image(uri: str, size: int, opts: StorageOptions | None = None) -> np.ndarray | str:
    """Image file -> uint8 (3, size, size) RGB array, or a reason string if unreadable."""
    from PIL import Image

    try:
        data = storage.read_bytes(uri, opts)
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"image file {uri} cannot be decoded ({type(exc).__name__}: {exc})"
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _food101_layout(root: str, layout: str, opts: StorageOptions | None) -> str:
    if layout not in FOOD101_LAYOUTS:
        raise ValueError(f"layout must be one of {list(FOOD101_LAYOUTS)}, got {layout!r}")
    if layout != "auto":
        return layout
    if storage.exists(storage.join(root, UPMC_TITLES["train"]), opts):
        return "upmc"
    return "mmbt"


def _plan_upmc(
    root: str, val_size: int, seed: int, skip_bad: bool, files: _Listing, opts: StorageOptions | None
) -> tuple[list[str], dict[str, tuple[str, list[_Record], _SkipLog]]]:
    """Classes and checked records of UPMC's train/val/test; val is ``val_size`` train rows
    drawn with ``seed`` (UPMC ships no validation split; MMBT drew 5,000 from train)."""
    train_path, train_records, train_log = _read_titles(root, "train", None, skip_bad, files, opts)
    classes = sorted({r.label for r in train_records})
    if not classes:
        raise ImportDataError(f"{train_path}: no usable rows; the class list comes from train")
    if not 0 <= val_size < len(train_records):
        raise ValueError(f"val_size must be in [0, {len(train_records)}) (the usable rows of {train_path}), "
                         f"got {val_size}")
    is_val = np.zeros(len(train_records), dtype=bool)
    is_val[np.random.default_rng(seed).permutation(len(train_records))[:val_size]] = True
    plan = {"train": (train_path, [r for r, v in zip(train_records, is_val) if not v], train_log)}
    if val_size:
        plan["dev"] = (train_path, [r for r, v in zip(train_records, is_val) if v], _SkipLog(train_path, "val"))
    plan["test"] = _read_titles(root, "test", classes, skip_bad, files, opts)
    return classes, plan


def _plan_mmbt(
    root: str, skip_bad: bool, files: _Listing, opts: StorageOptions | None
) -> tuple[list[str], dict[str, tuple[str, list[_Record], _SkipLog]]]:
    """Classes and checked records of MMBT's train/dev/test JSON(L) files."""
    train_path, train_records, train_log = _collect_records(root, "train", None, skip_bad, files, opts)
    classes = sorted({r.label for r in train_records})
    if not classes:
        raise ImportDataError(f"{train_path}: no usable records; the class list comes from train")
    plan = {"train": (train_path, train_records, train_log)}
    for split in ("dev", "test"):
        plan[split] = _collect_records(root, split, classes, skip_bad, files, opts)
    return classes, plan


def import_food101(
    root: str,
    out_uri: str,
    *,
    tokenizer: str,
    layout: str = "auto",
    image_size: int = 224,
    max_text_len: int = 40,
    val_size: int = 5000,
    seed: int = 0,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    resume: bool = True,
) -> dict[str, str]:
    """Import UPMC-Food101 (image + recipe-page text, 101 classes) into shards.

    Two layouts (``layout``; ``auto`` picks ``upmc`` when ``texts/train_titles.csv`` exists):

    * ``upmc``, the dataset as UPMC (and its Kaggle copy) ships it: ``texts/train_titles.csv``
      and ``texts/test_titles.csv``, CSV without a header row, three fields per row: image file
      name, the raw page title (HTML entities and escapes kept as released), class name; images
      at ``images/{train,test}/<class>/<file>``. The validation split is ``val_size`` train
      rows drawn with ``seed``; the rest stay in train.
    * ``mmbt``, MMBT's JSON form: ``train.json``, ``dev.json``, ``test.json`` (``.jsonl`` also
      accepted), a JSON list or one JSON object per line, each with ``text``, ``label`` (class
      name) and an image path relative to ``root`` under ``img``, ``image`` or ``id`` (first
      present wins).

    The class vocabulary is the sorted set of ``train`` labels; class ids index it. Images
    are converted to RGB and resized to ``image_size`` x ``image_size`` (bicubic, aspect
    ratio not kept). Text is tokenised with ``AutoTokenizer.from_pretrained(tokenizer)``,
    truncated and padded to ``max_text_len`` with the tokenizer's pad id.

    Parameters
    ----------
    root : str
        Folder or ``s3://`` prefix holding the text files and the images.
    out_uri : str
        Folder or ``s3://`` prefix; receives ``train/``, ``val/`` (MMBT: from ``dev``), ``test/``.
    tokenizer : str
        Local folder or hub id of a Hugging Face tokenizer.
    layout : {"auto", "upmc", "mmbt"}
    image_size : int
        Side of the stored square images.
    max_text_len : int
        Token ids per row.
    val_size, seed : int
        ``upmc`` only: train rows moved to ``val`` (0: no ``val`` split), and the seed that draws them.
    opts : StorageOptions, optional
        S3 settings for ``s3://`` sources and destinations.
    skip_bad : bool
        Drop bad records (missing or undecodable image, missing fields, label unknown to
        ``train``), each logged as a warning naming file and record, instead of raising.
    progress : bool or str
        Passed to :class:`~polymodal.shards.ShardWriter`.
    resume : bool
        Continue an interrupted run with the same files under ``root`` (as they are now) and
        arguments after its last finished step of 4096 records (one shard each), and keep the
        splits it finished (default); False starts over.

    Returns
    -------
    dict[str, str]
        ``{"train": uri, "val": uri, "test": uri}``. Columns: ``image`` uint8
        ``[3, image_size, image_size]``, ``text`` int64 ``[max_text_len]``, ``label`` int64;
        task ``wander.classification``.

    Raises
    ------
    ImportDataError
        A missing split file, invalid JSON or CSV, or (without ``skip_bad``) a bad record; the
        message names the file and the record or line (and the field, for CSV rows).
    """
    from polymodal.shards import ColumnSpec, ShardWriter

    if image_size < 1 or max_text_len < 1:
        raise ValueError(
            f"image_size and max_text_len must be >= 1, got {image_size} and {max_text_len}"
        )
    root = os.fspath(root)
    layout = _food101_layout(root, layout, opts)
    tok = _load_tokenizer(tokenizer)

    # Check every split (fields, image files, labels) before the slow image pass.
    files = _Listing(opts)
    classes, checked = (_plan_upmc(root, val_size, seed, skip_bad, files, opts) if layout == "upmc"
                        else _plan_mmbt(root, skip_bad, files, opts))
    class_id = {name: i for i, name in enumerate(classes)}

    specs = columns("classification", {
        "image": ColumnSpec(dtype="uint8", shape=[3, image_size, image_size]),
        "text": ColumnSpec(dtype="int64", shape=[max_text_len]),
    })
    meta = {
        "head": "classification",
        "num_classes": len(classes),
        "classes": classes,
        "modalities": ["image", "text"],
        "inputs": {"image": "pixel_values", "text": "input_ids"},
        "source": "food101",
        "layout": layout,
        "pad_token_id": int(tok.pad_token_id),
    }
    out = {FOOD101_SPLITS[split]: storage.join(out_uri, FOOD101_SPLITS[split]) for split in checked}
    key = import_key([root], {"format": "food101", "tokenizer": tokenizer, "layout": layout, "image_size": image_size,
                              "max_text_len": max_text_len, "val_size": val_size, "seed": seed,
                              "skip_bad": skip_bad}, opts)
    trackers = _trackers(out, key, opts, resume)
    # Decoding dominates; Pillow releases the GIL and S3 reads wait on the network, so threads overlap.
    workers = 16 if storage.is_s3(root) else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, (path, records, log) in checked.items():
            split_out = FOOD101_SPLITS[split]
            tracker = trackers[split_out]
            if tracker.finished() is not None:
                continue
            state = tracker.resumed()
            planned = log.count  # the checks' skips, made again by every run
            log.count += int(state.counters.get("skipped", 0))
            with ShardWriter(
                out[split_out], task=TASKS["classification"], split=split_out, columns=specs,
                meta={**meta, "import_key": tracker.key}, opts=opts, progress=progress, shards=state.shards,
            ) as writer:
                for done, chunk in _steps(records, state.records, _CHUNK):
                    images = list(pool.map(lambda r: _load_image(r.image, image_size, opts), chunk))
                    good: list[tuple[_Record, np.ndarray]] = []
                    for rec, img in zip(chunk, images):
                        if isinstance(img, str):
                            if not skip_bad:
                                raise ImportDataError(
                                    f"{path}: {rec.where}: {img} (or pass skip_bad=True to "
                                    "drop bad records)"
                                )
                            log.skip(rec.index, img)
                        else:
                            good.append((rec, img))
                    if good:
                        ids = tok(
                            [rec.text for rec, _ in good], padding="max_length", truncation=True,
                            max_length=max_text_len, return_tensors="np",
                        )["input_ids"]
                        writer.write({
                            "image": np.stack([img for _, img in good]),
                            "text": ids.astype(np.int64),
                            LABEL: np.array([class_id[rec.label] for rec, _ in good],
                                            dtype=LABEL_DTYPES["classification"]),
                        })
                    if _checkpoint(done, len(records)):
                        writer.flush()
                        tracker.save(done, writer.shards, skipped=log.count - planned)
                if writer.rows_written == 0:
                    raise ImportDataError(f"{path}: no usable records left in split {split!r}")
            tracker.clear()
            log.summary()
    return out


# =========================================================================== IEMOCAP pickles

IEMOCAP_SPLITS = {"train": "train", "valid": "val", "test": "test"}
IEMOCAP_MODALITIES = ("text", "audio", "vision")
#: the order of the label axis (yaohungt/Multimodal-Transformer ``src/eval_metrics.py``)
IEMOCAP_EMOTIONS = ("neutral", "happy", "sad", "angry")


def _check_iemocap_split(path: str, split: str, raw: Any, skip_bad: bool) -> _MmsaSplit:
    """Validate one IEMOCAP split; labels (N, 4, 2) become (N, 4) 0/1 targets (arg-max of the
    last axis, as Multimodal-Transformer's dataset does). Bad rows are marked (or raise)."""
    features = _split_features(path, split, raw, IEMOCAP_MODALITIES, "labels",
                               "Multimodal-Transformer's iemocap_data.pkl or iemocap_data_noalign.pkl")
    labels = np.asarray(raw["labels"])
    if labels.ndim != 3 or labels.shape[1:] != (len(IEMOCAP_EMOTIONS), 2) or labels.dtype.kind not in "biuf":
        raise ImportDataError(
            f"{path}: split {split!r} field 'labels' must be a numeric (N, 4, 2) array (4 emotions "
            f"{list(IEMOCAP_EMOTIONS)} x (absent, present)), got shape {labels.shape} dtype {labels.dtype}"
        )
    _zero_neg_inf_audio(features)  # as Multimodal-Transformer's loader does before training
    keep = _usable_rows(path, split, features, "labels", labels, skip_bad)
    targets = np.argmax(np.where(np.isfinite(labels), labels, 0), axis=-1)  # (N, 4): 1 = emotion present
    return _MmsaSplit(split, features, targets, keep)


def import_iemocap(
    pickle_path: str,
    out_uri: str,
    *,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    resume: bool = True,
) -> dict[str, str]:
    """Import IEMOCAP as Multimodal-Transformer distributes it (``iemocap_data.pkl``, word-aligned,
    or ``iemocap_data_noalign.pkl``).

    The pickle holds a dict with keys ``train``, ``valid``, ``test``; each is a dict with
    ``text`` (N, L_t, 300), ``audio`` (N, L_a, 74), ``vision`` (N, L_v, 35) float arrays and
    ``labels`` (N, 4, 2): per emotion (Neutral, Happy, Sad, Angry, in that order) a pair whose
    arg-max says absent (0) or present (1). Other keys (``id``) are ignored. As in
    Multimodal-Transformer's loader, features are stored as float32 and ``-inf`` audio values
    become 0.

    .. warning::
       The file is read with :class:`SafeUnpickler` (numpy arrays and builtin containers only;
       any other class is refused, naming it), but only import files from a source you trust.

    Parameters
    ----------
    pickle_path : str
        Path or ``s3://`` URI of the ``.pkl`` file.
    out_uri : str
        Folder or ``s3://`` prefix; receives ``train/``, ``val/`` (from ``valid``), ``test/``.
    opts : StorageOptions, optional
    skip_bad : bool
        Drop rows with NaN/inf features or labels (each logged, naming split and row) instead of raising.
    progress : bool or str
        Passed to :class:`~polymodal.shards.ShardWriter`.
    resume : bool
        As :func:`import_mmsa`: keep the splits a run with the same pickle and arguments finished.

    Returns
    -------
    dict[str, str]
        ``{"train": uri, "val": uri, "test": uri}``. Columns ``text``, ``audio``, ``vision``
        (float32 ``[L, D]``) and ``label`` (int64 ``[4]``, 0/1 per emotion); task
        ``wander.multilabel`` (set ``model.num_classes: 4``).

    Raises
    ------
    ImportDataError
        Unreadable pickle or a refused class in it, missing keys, wrong shapes, inconsistent
        row counts or (without ``skip_bad``) a NaN/inf row; the message names file, split, row, field.
    """
    from polymodal.shards import ShardWriter

    path = os.fspath(pickle_path)
    out = {split: storage.join(out_uri, split) for split in IEMOCAP_SPLITS.values()}
    trackers = _trackers(out, import_key([path], {"format": "iemocap", "skip_bad": skip_bad}, opts), opts, resume)
    finished = {split for split, t in trackers.items() if t.finished() is not None}
    if len(finished) == len(out):
        return out
    data = _load_pickle(path, "IEMOCAP", opts)
    if not isinstance(data, dict):
        raise ImportDataError(f"{path}: top level is a {type(data).__name__}, expected a dict with keys "
                              f"{list(IEMOCAP_SPLITS)}")
    missing = [k for k in IEMOCAP_SPLITS if k not in data]
    if missing:
        raise ImportDataError(f"{path}: missing split key(s) {missing}; found {sorted(map(str, data))}. "
                              f"Multimodal-Transformer's IEMOCAP pickle has keys {list(IEMOCAP_SPLITS)}")
    splits = [_check_iemocap_split(path, s, data[s], skip_bad) for s in IEMOCAP_SPLITS]
    shapes = {mod: splits[0].features[mod].shape[1:] for mod in IEMOCAP_MODALITIES}
    for sp in splits[1:]:
        for mod in IEMOCAP_MODALITIES:
            if sp.features[mod].shape[1:] != shapes[mod]:
                raise ImportDataError(
                    f"{path}: split {sp.name!r} field {mod!r} has per-row shape {sp.features[mod].shape[1:]} "
                    f"but split 'train' has {shapes[mod]}; all splits must share (seq_len, dim)"
                )
    k = len(IEMOCAP_EMOTIONS)
    specs = columns("multilabel", {mod: feature_spec(shapes[mod]) for mod in IEMOCAP_MODALITIES}, num_labels=k)
    meta = {"head": "multilabel", "num_classes": k, "labels": list(IEMOCAP_EMOTIONS),
            "modalities": list(IEMOCAP_MODALITIES), "source": "iemocap"}
    for sp in splits:
        split_out = IEMOCAP_SPLITS[sp.name]
        if split_out in finished:
            continue
        rows = np.nonzero(sp.keep)[0]
        with ShardWriter(out[split_out], task=TASKS["multilabel"], split=split_out, columns=specs,
                         meta={**meta, "import_key": trackers[split_out].key}, opts=opts,
                         progress=progress) as writer:
            for start in range(0, rows.size, _CHUNK):
                idx = rows[start : start + _CHUNK]
                batch = {mod: sp.features[mod][idx].astype(np.float32) for mod in IEMOCAP_MODALITIES}
                batch[LABEL] = sp.labels[idx].astype(LABEL_DTYPES["multilabel"])
                writer.write(batch)
    return out


# =========================================================================== MSR-VTT (MMT experts)

#: MMT's seven experts and their feature widths (gabeur/mmt ``utils/util.py`` ``compute_dims``;
#: face_dim 512 in ``configs_pub/eccv20/MSRVTT_jsfusion_trainval.json``)
MMT_EXPERTS = {"face": 512, "ocr": 300, "rgb": 2048, "s3d": 1024, "scene": 2208, "speech": 300, "vggish": 128}
#: where the MSRVTT.tar.gz of MMT's README puts the split lists and the per-video HDF5 files
MSRVTT_LISTS = "symlinked-feats"
MSRVTT_H5 = "vid_feat_files/mult_h5"
MSRVTT_TRAIN_LIST = "train_list_jsfusion.txt"
MSRVTT_TEST_LIST = "val_list_jsfusion.txt"  # JSFusion's 1k-A test videos
MSRVTT_TEST_CAPTIONS = "jsfusion_val_caption_idx.pkl"  # video id -> the one test caption
#: suffix of the per-expert token mask column: True = a real feature, all False = expert absent
MASK_SUFFIX = "_mask"
#: a listed video id: its first three characters name the HDF5 file's folders, so they must be plain
_VIDEO_ID = re.compile(r"[A-Za-z0-9]{3}[A-Za-z0-9_.-]*")
#: videos read concurrently and written in one call
_VIDEO_CHUNK = 32


@dataclass
class _Video:
    """One video of a split: where it is listed and which of its captions become rows."""

    vid: str
    where: str  # "train_list_jsfusion.txt line 3"
    h5: str
    captions: tuple[int, ...] | None  # None: the first ``train_captions`` captions


def _read_video_list(path: str, opts: StorageOptions | None) -> list[tuple[str, str]]:
    """``(video id, "file line N")`` for each non-blank line of an MMT split list."""
    try:
        text = storage.read_text(path, opts)
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found; pass the MSRVTT folder of MMT's MSRVTT.tar.gz "
                              f"(it holds {MSRVTT_LISTS}/ and {MSRVTT_H5}/)") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        vid = line.strip()
        if not vid:
            continue
        if not _VIDEO_ID.fullmatch(vid):
            raise ImportDataError(f"{path}: line {lineno}: {vid!r} is not a video id (expected e.g. 'video7')")
        out.append((vid, f"{path}: line {lineno}"))
    if not out:
        raise ImportDataError(f"{path}: lists no videos")
    return out


def _h5_uri(root: str, vid: str) -> str:
    # MMT's get_sample_data: <cache_dir>/<vid[0]>/<vid[1]>/<vid[2]>/<vid>.h5
    return storage.join(root, MSRVTT_H5, vid[0], vid[1], vid[2], f"{vid}.h5")


def _caption_words(value: Any) -> list[str]:
    """An HDF5 ``raw_captions.{i}`` value (array of words, bytes or str) -> the words."""
    arr = np.asarray(value)
    items = [arr.item()] if arr.ndim == 0 else arr.reshape(-1).tolist()
    words = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in items]
    if arr.ndim == 0:
        words = words[0].split()
    return [w for w in words if w.strip()]


def _caption_text(words: list[str], max_words: int) -> str:
    """MMT's ``tokenize_caption``: join the first words, end with a period, capitalise."""
    text = " ".join(words[:max_words]).strip()
    if text and text[-1] not in ".?!":
        text += "."
    return text.capitalize()


def _pick_tokens(n: int, length: int) -> np.ndarray:
    """Which of n features to keep, in order: all if they fit, else MMT's deterministic
    evaluation choice (``choose_or_pad_to_len``: RandomState(0).choice without replacement, sorted)."""
    if n <= length:
        return np.arange(n)
    return np.sort(np.random.RandomState(0).choice(n, size=length, replace=False))


def _read_video(
    video: _Video, experts: dict[str, int], expert_tokens: int, train_captions: int, max_words: int,
    opts: StorageOptions | None,
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]] | str:
    """(caption texts, features (L, D) per expert, masks (L,) per expert) of one video's HDF5
    file, or the reason it is bad. An expert is absent, its mask all False and its features 0,
    when its key is missing, it has no rows, or its first value is NaN (MMT's marker)."""
    import h5py

    where = f"{video.where}: {video.h5}"
    try:
        data = storage.read_bytes(video.h5, opts)
    except FileNotFoundError:
        return f"{where}: file not found"
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            keys = set(f.keys())
            n_caps = len([k for k in keys if k.startswith("raw_captions.")])
            captions = []
            for i in range(n_caps):
                if f"raw_captions.{i}" not in keys:
                    return f"{where}: field 'raw_captions.{i}' missing (captions must be numbered 0..{n_caps - 1})"
                captions.append(_caption_words(f[f"raw_captions.{i}"][()]))
            wanted = video.captions if video.captions is not None else tuple(range(min(train_captions, n_caps)))
            if not n_caps or any(i >= n_caps for i in wanted):
                return f"{where}: has {n_caps} 'raw_captions.<i>' field(s), needs caption(s) {list(wanted) or [0]}"
            texts = []
            for i in wanted:
                if not captions[i]:
                    return f"{where}: field 'raw_captions.{i}' holds no words"
                texts.append(_caption_text(captions[i], max_words))
            feats, masks = {}, {}
            for name, dim in experts.items():
                x = np.zeros((expert_tokens, dim), dtype=np.float32)
                mask = np.zeros(expert_tokens, dtype=bool)
                key = f"features.{name}"
                if key in keys:
                    raw = np.asarray(f[key][()])
                    present = raw.size > 0 and not (raw.ndim == 2 and raw.dtype.kind == "f" and np.isnan(raw[0, 0]))
                    if present:
                        if raw.ndim != 2 or raw.shape[1] != dim or raw.dtype.kind not in "biuf":
                            return (f"{where}: field {key!r} must be a numeric (n, {dim}) array, got shape "
                                    f"{raw.shape} dtype {raw.dtype}")
                        if not np.isfinite(raw).all():
                            return f"{where}: field {key!r} holds NaN or inf past its first value"
                        keep = _pick_tokens(raw.shape[0], expert_tokens)
                        x[: keep.size] = raw[keep]
                        mask[: keep.size] = True
                feats[name], masks[name] = x, mask
    except OSError as exc:
        return f"{where}: not a readable HDF5 file ({exc})"
    return texts, feats, masks


def import_msrvtt_mmt(
    root: str,
    out_uri: str,
    *,
    tokenizer: str,
    experts: Sequence[str] = tuple(MMT_EXPERTS),
    expert_tokens: int = 30,
    max_text_words: int = 30,
    train_captions: int = 1,
    val_size: int | None = None,
    opts: StorageOptions | None = None,
    skip_bad: bool = False,
    progress: bool | str = True,
    resume: bool = True,
) -> dict[str, str]:
    """Import MSR-VTT with MMT's seven expert features (gabeur/mmt, ``MSRVTT.tar.gz``) for
    text-to-video retrieval (``wander.retrieval``).

    Layout under ``root`` (the extracted ``MSRVTT`` folder):

    * ``symlinked-feats/train_list_jsfusion.txt`` and ``val_list_jsfusion.txt``: one video id per
      line (9,000 training videos; JSFusion's 1k-A test videos);
      ``symlinked-feats/jsfusion_val_caption_idx.pkl``: video id -> index of its one test caption;
    * ``vid_feat_files/mult_h5/<v>/<i>/<d>/<video id>.h5`` (the first three characters of the id):
      ``raw_captions.<i>`` (an array of words per caption) and ``features.<expert>`` (n, dim).

    Splits: ``test`` is the 1k-A list with its listed caption per video; ``val`` and ``train``
    come from the training list as MMT cuts them (shuffled with ``RandomState(0)``, the first
    ``val_size`` videos, by default as many as the test list, are ``val``; 0 writes no ``val``).
    Train rows take each video's first ``train_captions`` captions (each one repeats the video's
    features); ``val`` rows its first caption.

    Each expert is stored as ``expert_tokens`` feature rows (all of them if they fit, else MMT's
    deterministic evaluation choice) zero-padded, with a ``<expert>_mask`` column marking the real
    rows: an expert missing for a video (no key, no rows, or a NaN first value) has an all-False
    mask, never silent zeros alone. Captions are cut to ``max_text_words`` words, end with a
    period and are capitalised (MMT's ``tokenize_caption``), then tokenised to ``max_text_words``
    ids (``[CLS] ... [SEP]``, padded).

    Parameters
    ----------
    root : str
        Folder or ``s3://`` prefix of the extracted ``MSRVTT`` folder.
    out_uri : str
        Folder or ``s3://`` prefix; receives ``train/``, ``val/``, ``test/``.
    tokenizer : str
        Local folder or hub id of the text backbone's tokenizer.
    experts : sequence of str
        Which of :data:`MMT_EXPERTS` to keep (default all seven).
    expert_tokens, max_text_words, train_captions : int
    val_size : int, optional
    opts : StorageOptions, optional
    skip_bad : bool
        Drop videos whose HDF5 file is missing or malformed (each logged) instead of raising.
    progress : bool or str
    resume : bool
        Continue an interrupted run with the same lists and HDF5 files (as they are now) and
        arguments after its last finished step of 4096 videos, and keep the splits it finished
        (default); False starts over.

    Returns
    -------
    dict[str, str]
        ``{"train": uri, "val": uri, "test": uri}``. Columns ``text`` int64 ``[max_text_words]``,
        per expert ``<expert>`` float32 ``[expert_tokens, dim]`` and ``<expert>_mask`` bool
        ``[expert_tokens]``; row i's text describes row i's video. Task ``wander.retrieval``
        with ``model.query_modality: text``.

    Raises
    ------
    ImportDataError
        A missing list, caption-index pickle or HDF5 file, a malformed line or field; the message
        names the file, the line and the field.
    """
    from polymodal.shards import ColumnSpec, ShardWriter

    unknown = [e for e in experts if e not in MMT_EXPERTS]
    if unknown or not experts or len(set(experts)) != len(experts):
        raise ValueError(f"experts must be distinct names from {list(MMT_EXPERTS)}, got {list(experts)}")
    for name, value in (("expert_tokens", expert_tokens), ("max_text_words", max_text_words),
                        ("train_captions", train_captions)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    root = os.fspath(root)
    expert_dims = {e: MMT_EXPERTS[e] for e in experts}
    tok = _load_tokenizer(tokenizer)

    lists = storage.join(root, MSRVTT_LISTS)
    train_list = _read_video_list(storage.join(lists, MSRVTT_TRAIN_LIST), opts)
    test_list = _read_video_list(storage.join(lists, MSRVTT_TEST_LIST), opts)
    idx_path = storage.join(lists, MSRVTT_TEST_CAPTIONS)
    test_idx = _load_pickle(idx_path, "jsfusion_val_caption_idx", opts)
    if not isinstance(test_idx, dict):
        raise ImportDataError(f"{idx_path}: top level is a {type(test_idx).__name__}, expected a dict video id -> "
                              "caption index")
    # MMT's cut of the training list: RandomState(cross_seed=0).shuffle, the first len(test) are val
    order = list(train_list)
    np.random.RandomState(0).shuffle(order)
    n_val = len(test_list) if val_size is None else val_size
    if not 0 <= n_val < len(order):
        raise ValueError(f"val_size must be in [0, {len(order)}) (the training list's videos), got {n_val}")
    plan: dict[str, list[_Video]] = {"train": [], "val": [], "test": []}
    for i, (vid, where) in enumerate(order):
        plan["val" if i < n_val else "train"].append(_Video(vid, where, _h5_uri(root, vid), None if i >= n_val else (0,)))
    for vid, where in test_list:
        cap = test_idx.get(vid)
        if isinstance(cap, np.integer):
            cap = int(cap)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ImportDataError(f"{idx_path}: no caption index for test video {vid!r} ({where}); got {cap!r}")
        plan["test"].append(_Video(vid, where, _h5_uri(root, vid), (cap,)))
    if not n_val:
        del plan["val"]
    files = _Listing(opts)
    for split, videos in plan.items():
        for v in videos:
            if not files.exists(v.h5) and not skip_bad:
                raise ImportDataError(f"{v.where}: {v.vid}: feature file {v.h5} not found (or pass skip_bad=True)")

    modalities: dict[str, ColumnSpec] = {"text": ColumnSpec(dtype="int64", shape=[max_text_words])}
    for e, dim in expert_dims.items():
        modalities[e] = feature_spec([expert_tokens, dim])
    for e in expert_dims:
        modalities[e + MASK_SUFFIX] = ColumnSpec(dtype="bool", shape=[expert_tokens])
    specs = columns("retrieval", modalities)
    base_meta = {"head": "retrieval", "query_modality": "text", "modalities": ["text", *expert_dims],
                 "inputs": {"text": "input_ids", **{e: "embeds" for e in expert_dims}},
                 "experts": expert_dims, "masks": {e: e + MASK_SUFFIX for e in expert_dims},
                 "source": "msrvtt-mmt", "pad_token_id": int(tok.pad_token_id)}
    out = {split: storage.join(out_uri, split) for split in plan}
    h5_root = storage.join(root, MSRVTT_H5)
    key = import_key([lists, *([h5_root] if storage.exists(h5_root, opts) else [])], {
        "format": "msrvtt-mmt", "tokenizer": tokenizer, "experts": list(experts), "expert_tokens": expert_tokens,
        "max_text_words": max_text_words, "train_captions": train_captions, "val_size": val_size,
        "skip_bad": skip_bad}, opts)
    trackers = _trackers(out, key, opts, resume)
    workers = 16 if storage.is_s3(root) else min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split, videos in plan.items():
            tracker = trackers[split]
            if tracker.finished() is not None:
                continue
            state = tracker.resumed()
            log = _SkipLog(storage.join(lists, MSRVTT_TEST_LIST if split == "test" else MSRVTT_TRAIN_LIST), split)
            log.count = int(state.counters.get("skipped", 0))
            absent = dict(state.counters.get("absent", dict.fromkeys(expert_dims, 0)))
            meta = {**base_meta, "import_key": tracker.key}
            with ShardWriter(out[split], task=TASKS["retrieval"], split=split, columns=specs, meta=meta, opts=opts,
                             progress=progress, shards=state.shards) as writer:
                # chunks of videos bound memory: one train row of all experts at 30 tokens is ~0.8 MB
                for done, chunk in _steps(videos, state.records, _VIDEO_CHUNK):
                    read = pool.map(lambda v: _read_video(v, expert_dims, expert_tokens, train_captions,
                                                          max_text_words, opts), chunk)
                    texts: list[str] = []
                    rows: dict[str, list[np.ndarray]] = {c: [] for c in modalities if c != "text"}
                    for j, (video, got) in enumerate(zip(chunk, read)):
                        if isinstance(got, str):
                            if not skip_bad:
                                raise ImportDataError(f"{got} (or pass skip_bad=True to drop such videos)")
                            log.skip(done - len(chunk) + j, got)
                            continue
                        caps, feats, masks = got
                        for e in expert_dims:
                            absent[e] += int(not masks[e].any())
                        for text in caps:
                            texts.append(text)
                            for e in expert_dims:
                                rows[e].append(feats[e])
                                rows[e + MASK_SUFFIX].append(masks[e])
                    if texts:
                        batch = {c: np.stack(v) for c, v in rows.items()}
                        batch["text"] = tok(texts, padding="max_length", truncation=True, max_length=max_text_words,
                                            return_tensors="np")["input_ids"].astype(np.int64)
                        writer.write(batch)
                    if _checkpoint(done, len(videos)):
                        writer.flush()
                        tracker.save(done, writer.shards, skipped=log.count, absent=absent)
                if writer.rows_written == 0:
                    raise ImportDataError(f"{log.source}: no usable videos left in split {split!r}")
                meta["absent_experts"] = absent  # videos without each expert; the manifest is written on close
                writer.meta = meta
            tracker.clear()
            log.summary()
    return out


def _load_tokenizer(name: str) -> Any:
    """``AutoTokenizer.from_pretrained(name)`` with a padding token, or a clear error."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot load tokenizer {name!r} ({exc}); pass a folder written by "
            "save_pretrained or a hub id available offline"
        ) from None
    if tok.pad_token_id is None:
        raise ValueError(
            f"tokenizer {name!r} has no padding token; set one (tok.pad_token = ...), "
            "save it with save_pretrained and pass that folder"
        )
    return tok
