"""QVHighlights and Charades-STA -> LLaViLo moment-retrieval datasets (see :mod:`.data`).

Inputs (local paths or ``s3://`` URIs)
--------------------------------------
* **QVHighlights** (``jayleicn/moment_detr: data/``): ``highlight_{train,val,test}_release.jsonl``,
  one JSON object per line with ``qid, query, duration, vid`` and, except in the test release,
  ``relevant_windows`` ([[st, ed], ...] s), ``relevant_clip_ids`` (2-s clips) and
  ``saliency_scores`` ([[a1, a2, a3], ...], 0-4). Video features ``<feature_dir>/{vid}.npz``
  (key ``features``, (clips, D)), one folder per source (e.g. slowfast_features, clip_features);
  text features ``<text_feature_dir>/qid{qid}.npz`` (``last_hidden_state`` (L, Dt) or
  ``pooler_output`` (Dt,)).
* **Charades-STA** (``jiyanggao/TALL``): ``charades_sta_{train,test}.txt``, lines
  ``VIDEOID start end##sentence``; durations from ``Charades_v1_{train,test}.csv`` (columns
  ``id``, ``length``) or a JSON ``{vid: seconds}`` / ``{vid: {"duration": seconds}}``; features as
  above at 1-s clips. Queries get qids 0, 1, ... in split order (``qid_start`` shifts them);
  text features, when given, are looked up by those qids.

Both importers parse and check every annotation line of every split, and that every feature
file exists, before writing anything, so a broken layout fails in seconds with an
:class:`~polymodal.errors.ImportDataError` naming the file and line (and the qid/vid). Feature
widths are checked while writing (reading every file twice would double the import time).
With ``skip_bad=True`` a bad row is dropped instead; each drop is logged, counted, and listed
in the returned report -- never silent.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import OrderedDict
from contextlib import ExitStack
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError
from polymodal.imports import ImportProgress, import_key
from polymodal.shards import ShardWriter

from .data import (CHARADES_CLIP_LENGTH, MAX_WORDS, QVH_CLIP_LENGTH, QVH_MAX_CLIPS, TASK, moment_columns,
                   pad_windows, prepare_text, prepare_video, saliency_vector)

__all__ = ["import_qvhighlights", "import_charades_sta", "load_durations", "ImportReport"]

logger = logging.getLogger(__name__)

TEXT_KEYS = ("last_hidden_state", "pooler_output")  # Moment-DETR Q_FEAT_TYPES
_CHUNK = 256  # rows per ShardWriter.write; bounds memory (a QVH row is ~0.85 MB)
_MAX_LOGGED = 20  # per-row skip warnings per split; the rest are summarised
_VIDEO_CACHE = 64  # videos whose features stay loaded (QVH has ~1.5 queries per video)
# Annotation times are given to 0.01-0.1 s; allow this slack against the duration.
_TIME_TOL = 1e-3


# --------------------------------------------------------------------------- records & report


@dataclass
class _Row:
    """One parsed annotation line."""

    where: str  # "file:line N", for messages
    qid: int
    vid: str
    query: str
    duration: float
    windows: np.ndarray | None  # (n, 2) seconds; None in an unlabelled split
    clip_ids: list[int] | None = None
    scores: np.ndarray | None = None  # (len(clip_ids), n_annotators)

    def tag(self) -> str:
        return f"{self.where} (qid {self.qid}, vid {self.vid!r})"


@dataclass
class ImportReport:
    """What an import wrote: per split ``{"uri", "rows", "skipped"}`` plus the skipped rows."""

    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "where: reason", every bad row skipped (skip_bad)
    clamped: int = 0  # windows whose end was clamped to the duration (Charades-STA)
    dropped: list[str] = field(default_factory=list)  # Charades-STA lines with start >= end after the clamp

    def to_dict(self) -> dict[str, Any]:
        return {"splits": self.splits, "skipped": list(self.skipped), "clamped": self.clamped,
                "dropped": list(self.dropped)}


class _Skips:
    """Raise on a bad row, or (skip_bad) log and remember it."""

    def __init__(self, skip_bad: bool, report: ImportReport) -> None:
        self.skip_bad = skip_bad
        self.report = report
        self.count: dict[str, int] = {}

    def bad(self, split: str, message: str) -> None:
        if not self.skip_bad:
            raise ImportDataError(message + " (pass skip_bad=True to drop such rows, they are counted)")
        n = self.count[split] = self.count.get(split, 0) + 1
        self.report.skipped.append(message)
        if n <= _MAX_LOGGED:
            logger.warning("split %r: skipped %s", split, message)

    def summary(self) -> None:
        for split, n in self.count.items():
            if n > _MAX_LOGGED:
                logger.warning("split %r: %d more row(s) skipped (%d in total)", split, n - _MAX_LOGGED, n)


# --------------------------------------------------------------------------- parsing


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _lines(uri: str, opts: StorageOptions | None) -> list[str]:
    try:
        return storage.read_text(uri, opts).splitlines()
    except FileNotFoundError:
        raise ImportDataError(f"{uri}: annotation file not found") from None
    except storage.StorageError as exc:
        raise ImportDataError(f"{uri}: cannot read annotation file: {exc}") from None


def _check_windows(raw: Any, duration: float, *, clamp: bool) -> tuple[np.ndarray, int]:
    """Validated (n, 2) windows; ``clamp`` cuts ends past the duration (returns how many were cut)."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"relevant_windows must be a non-empty list of [start, end], got {str(raw)[:80]}")
    out, clamped = [], 0
    for i, w in enumerate(raw):
        if not isinstance(w, (list, tuple)) or len(w) != 2 or not all(_is_number(v) for v in w):
            raise ValueError(f"relevant_windows[{i}] = {w!r} is not [start, end] in seconds")
        st, ed = float(w[0]), float(w[1])
        if ed < st:
            raise ValueError(f"relevant_windows[{i}] = {w!r} ends before it starts (need end >= start)")
        if st < 0 or st > duration + _TIME_TOL:
            raise ValueError(f"relevant_windows[{i}] = {w!r} starts outside the video [0, {duration:g}] s")
        if ed > duration + _TIME_TOL:
            if not clamp:
                raise ValueError(f"relevant_windows[{i}] = {w!r} ends after the video's duration {duration:g} s")
            ed, clamped = duration, clamped + 1
        out.append((st, min(ed, duration)))
    return np.asarray(out, dtype=np.float64), clamped


def _parse_qvh_line(obj: Any, where: str, clip_length: float) -> _Row:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    qid = obj.get("qid")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ValueError(f"field 'qid' must be an integer, got {qid!r}")
    for key in ("vid", "query"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"qid {qid}: field {key!r} must be a non-empty string, got {obj.get(key)!r}")
    duration = obj.get("duration")
    if not _is_number(duration) or duration <= 0:
        raise ValueError(f"qid {qid}: field 'duration' must be a positive number of seconds, got {duration!r}")
    row = _Row(where, qid, obj["vid"], obj["query"].strip(), float(duration), None)
    if "relevant_windows" in obj:
        try:
            row.windows, _ = _check_windows(obj["relevant_windows"], row.duration, clamp=False)
        except ValueError as exc:
            raise ValueError(f"qid {qid}: field {exc}") from None
    if "saliency_scores" in obj or "relevant_clip_ids" in obj:
        ids, scores = obj.get("relevant_clip_ids"), obj.get("saliency_scores")
        n_clips = math.ceil(row.duration / clip_length - _TIME_TOL)
        if not isinstance(ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in ids):
            raise ValueError(f"qid {qid}: field 'relevant_clip_ids' must be a list of ints, got {str(ids)[:80]}")
        bad = [c for c in ids if not 0 <= c < n_clips]
        if bad:
            raise ValueError(f"qid {qid}: field 'relevant_clip_ids' has {bad[:5]} outside [0, {n_clips}) "
                             f"({clip_length:g}-s clips of a {row.duration:g}-s video)")
        if "saliency_scores" in obj:
            if (not isinstance(scores, list) or len(scores) != len(ids) or not all(
                    isinstance(s, list) and s and len(s) == len(scores[0]) and all(_is_number(v) for v in s)
                    for s in scores)):
                raise ValueError(f"qid {qid}: field 'saliency_scores' must hold one equal-length list of "
                                 f"annotator scores per relevant clip id ({len(ids)} ids), got {str(scores)[:80]}")
            row.clip_ids = list(ids)
            row.scores = np.asarray(scores, dtype=np.float64).reshape(len(ids), -1)
    return row


def _read_qvh_split(uri: str, split: str, clip_length: float, skips: _Skips,
                    opts: StorageOptions | None) -> list[_Row]:
    rows: list[_Row] = []
    for n, line in enumerate(_lines(uri, opts), start=1):
        if not line.strip():
            continue
        where = f"{uri}:line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            skips.bad(split, f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        try:
            rows.append(_parse_qvh_line(obj, where, clip_length))
        except ValueError as exc:
            skips.bad(split, f"{where}: {exc}")
    return rows


def _consistent(rows: list[_Row], split: str, skips: _Skips) -> list[_Row]:
    """Labels (windows) and saliency must be on every row of a split or on none."""
    kept = rows
    for what, has in (("relevant_windows", lambda r: r.windows is not None),
                      ("saliency_scores", lambda r: r.scores is not None)):
        n_with = sum(map(has, kept))
        if 0 < n_with < len(kept):
            out = []
            for r in kept:
                if has(r):
                    out.append(r)
                else:
                    skips.bad(split, f"{r.tag()}: has no {what!r}, but {n_with} other row(s) of split {split!r} "
                                     "do; a split is either labelled throughout or not at all")
            kept = out
    return kept


def _unique_qids(rows_by_split: Mapping[str, list[_Row]], skips: _Skips) -> None:
    seen: dict[int, str] = {}
    for split, rows in rows_by_split.items():
        kept = []
        for r in rows:
            if r.qid in seen:
                skips.bad(split, f"{r.tag()}: qid {r.qid} already used at {seen[r.qid]}; qids must be unique")
                continue
            seen[r.qid] = r.where
            kept.append(r)
        rows[:] = kept


# --------------------------------------------------------------------------- features


def _npz_array(uri: str, key: str | Sequence[str], opts: StorageOptions | None) -> np.ndarray:
    keys = (key,) if isinstance(key, str) else tuple(key)
    try:
        data = storage.read_bytes(uri, opts)
    except FileNotFoundError:
        raise ValueError(f"{uri} not found") from None
    except storage.StorageError as exc:
        raise ValueError(f"cannot read {uri}: {exc}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            found = next((k for k in keys if k in npz.files), None)
            if found is not None:
                return np.asarray(npz[found])
            files = npz.files
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{uri} is not a readable .npz file ({exc})") from None
    raise ValueError(f"{uri} has no key {' or '.join(map(repr, keys))} (keys: {files})")


class _Features:
    """Loads and prepares clip / text features, checking widths across files."""

    def __init__(self, feature_dirs: Sequence[str], text_feature_dir: str | None, text_key: str | None,
                 feature_dims: Sequence[int] | None, max_clips: int, max_words: int, tef: bool,
                 opts: StorageOptions | None) -> None:
        self.dirs = [d.rstrip("/") or d for d in feature_dirs]
        self.text_dir = text_feature_dir
        self.text_keys = (text_key,) if text_key else TEXT_KEYS
        self.dims: list[int | None] = list(feature_dims) if feature_dims else [None] * len(self.dirs)
        self.first: list[str] = ["feature_dims"] * len(self.dirs)  # who fixed each width
        self.text_dim: int | None = None
        self.text_first = ""
        self.max_clips, self.max_words, self.tef, self.opts = max_clips, max_words, tef, opts
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, int]] = OrderedDict()

    def video_path(self, source: int, vid: str) -> str:
        return storage.join(self.dirs[source], f"{vid}.npz")

    def text_path(self, qid: int) -> str:
        assert self.text_dir is not None
        return storage.join(self.text_dir, f"qid{qid}.npz")

    def missing(self, row: _Row) -> str | None:
        """Why this row's feature files cannot be found, or None."""
        for s in range(len(self.dirs)):
            path = self.video_path(s, row.vid)
            if not storage.exists(path, self.opts):
                return f"no features for vid {row.vid!r}: {path} not found"
        if self.text_dir is not None and not storage.exists(self.text_path(row.qid), self.opts):
            return f"no text features for qid {row.qid}: {self.text_path(row.qid)} not found"
        return None

    def video(self, vid: str) -> tuple[np.ndarray, np.ndarray, int]:
        if vid in self._cache:
            self._cache.move_to_end(vid)
            return self._cache[vid]
        sources = []
        for s in range(len(self.dirs)):
            path = self.video_path(s, vid)
            arr = _npz_array(path, "features", self.opts)
            if arr.ndim != 2 or arr.shape[0] < 1:
                raise ValueError(f"{path}: 'features' must be (clips >= 1, dim), got shape {list(arr.shape)}")
            if self.dims[s] is None:
                self.dims[s], self.first[s] = arr.shape[1], path
            elif arr.shape[1] != self.dims[s]:
                raise ValueError(f"{path}: features are {arr.shape[1]}-d but {self.first[s]} fixed this source "
                                 f"at {self.dims[s]}-d; every video of a source needs the same width")
            sources.append(arr)
        out = prepare_video(sources, self.max_clips, tef=self.tef)
        self._cache[vid] = out
        if len(self._cache) > _VIDEO_CACHE:
            self._cache.popitem(last=False)
        return out

    def text(self, qid: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.text_path(qid)
        arr = _npz_array(path, self.text_keys, self.opts)
        if arr.ndim not in (1, 2) or arr.size == 0:
            raise ValueError(f"{path}: text features must be (tokens, dim) or (dim,), got {list(arr.shape)}")
        if self.text_dim is None:
            self.text_dim, self.text_first = arr.shape[-1], path
        elif arr.shape[-1] != self.text_dim:
            raise ValueError(f"{path}: text features are {arr.shape[-1]}-d but {self.text_first} is "
                             f"{self.text_dim}-d; every query needs the same width")
        return prepare_text(arr, self.max_words)

    def video_dim(self) -> int:
        return sum(d for d in self.dims if d is not None) + (2 if self.tef else 0)

    def fix(self, dims: Sequence[int | None], text_dim: int | None, where: str) -> None:
        """Take the widths an earlier run's rows of ``where`` were written with."""
        for s, d in enumerate(dims):
            if self.dims[s] is None and d is not None:
                self.dims[s], self.first[s] = int(d), where
        if self.text_dim is None and text_dim is not None:
            self.text_dim, self.text_first = int(text_dim), where


# --------------------------------------------------------------------------- writing


def _chunks(rows: list[_Row], start: int, size: int, shard: int) -> Iterator[tuple[int, list[_Row]]]:
    """``(rows done after it, chunk)`` from ``rows[start:]``, ``size`` rows at a time and never
    across a multiple of ``shard`` (where a shard ends and the import's progress is saved)."""
    while start < len(rows):
        n = min(size, shard - start % shard)
        yield start + n, rows[start:start + n]
        start += n


def _encode(rows: list[_Row], feats: _Features, max_windows: int, saliency: bool, text: bool, split: str,
            skips: _Skips) -> dict[str, Any] | None:
    """A ShardWriter batch of the rows whose features load; bad ones go to ``skips``."""
    cols: dict[str, list] = {k: [] for k in ("qid", "vid", "query", "duration", "n_clips", "video",
                                             "video_mask", "windows", "n_windows", "saliency", "text",
                                             "text_mask")}
    for r in rows:
        try:
            video, mask, n = feats.video(r.vid)
            tokens, tmask = feats.text(r.qid) if text else (None, None)
        except ValueError as exc:
            skips.bad(split, f"{r.tag()}: {exc}")
            continue
        win, nw = pad_windows(r.windows if r.windows is not None else np.zeros((0, 2)), max_windows)
        cols["qid"].append(r.qid)
        cols["vid"].append(r.vid)
        cols["query"].append(r.query)
        cols["duration"].append(r.duration)
        cols["n_clips"].append(n)
        cols["video"].append(video)
        cols["video_mask"].append(mask)
        cols["windows"].append(win)
        cols["n_windows"].append(nw)
        if saliency:
            cols["saliency"].append(saliency_vector(r.clip_ids or [], r.scores, feats.max_clips))
        if text:
            cols["text"].append(tokens)
            cols["text_mask"].append(tmask)
    if not cols["qid"]:
        return None
    batch: dict[str, Any] = {
        "qid": np.asarray(cols["qid"], dtype=np.int64),
        "vid": np.asarray(cols["vid"], dtype=object),
        "query": np.asarray(cols["query"], dtype=object),
        "duration": np.asarray(cols["duration"], dtype=np.float32),
        "n_clips": np.asarray(cols["n_clips"], dtype=np.int32),
        "video": np.stack(cols["video"]),
        "video_mask": np.stack(cols["video_mask"]),
        "windows": np.stack(cols["windows"]),
        "n_windows": np.asarray(cols["n_windows"], dtype=np.int32),
    }
    if saliency:
        batch["saliency"] = np.stack(cols["saliency"])
    if text:
        batch["text"] = np.stack(cols["text"])
        batch["text_mask"] = np.stack(cols["text_mask"])
    return batch


def _write_splits(rows_by_split: dict[str, list[_Row]], *, out_uri: str, feats: _Features,
                  max_windows: int | None, skips: _Skips, report: ImportReport, meta: dict[str, Any],
                  rows_per_shard: int, opts: StorageOptions | None, progress: bool, inputs: list[str],
                  settings: dict[str, Any], resume: bool) -> ImportReport:
    """Write each split at ``out_uri/<split>``, one shard per ``rows_per_shard`` queries, saving the
    import's progress after each (:class:`~polymodal.imports.ImportProgress`): a rerun with the same
    ``inputs`` (as they are now) and ``settings`` continues an interrupted split after its last
    shard and leaves a finished one as it is. A resumed split's report lists only the rows it
    skipped itself (its count includes the earlier run's)."""
    # Missing files fail (or drop their rows) before anything is written.
    for split, rows in rows_by_split.items():
        kept = []
        for r in rows:
            why = feats.missing(r)
            if why is None:
                kept.append(r)
            else:
                skips.bad(split, f"{r.tag()}: {why}")
        rows[:] = kept
    if max_windows is None:
        max_windows = max([len(r.windows) for rows in rows_by_split.values() for r in rows
                           if r.windows is not None] + [1])
    text = feats.text_dir is not None
    key = import_key([*inputs, *feats.dirs, *([feats.text_dir] if text else [])],
                     {**settings, "max_windows": max_windows, "rows_per_shard": rows_per_shard}, opts)
    for split, rows in rows_by_split.items():
        kept = []
        for r in rows:
            if r.windows is not None and len(r.windows) > max_windows:
                skips.bad(split, f"{r.tag()}: {len(r.windows)} relevant_windows exceed max_windows={max_windows}; "
                                 "raise max_windows")
            else:
                kept.append(r)
        rows[:] = kept
    for split, rows in rows_by_split.items():
        uri = storage.join(out_uri, split)
        saliency = bool(rows) and all(r.scores is not None for r in rows)
        tracker = ImportProgress(uri, f"{key}:{split}", opts, resume=resume)
        if (done := tracker.finished()) is not None:
            report.splits[split] = {"uri": uri, "rows": done.num_rows, "skipped": done.meta["skipped"]}
            feats.fix(done.meta["feature_dims"], done.columns["text"].shape[-1] if text else None, uri)
            continue
        state = tracker.resumed()
        planned = skips.count.get(split, 0)  # the checks above, made again by every run
        if state.records:
            skips.count[split] = planned + int(state.counters["skipped"])
            feats.fix(state.counters["feature_dims"], state.counters["text_dim"], uri)
        written = sum(s.rows for s in state.shards)
        # The writer opens once the first batch fixes the feature widths (a resumed split's first
        # shards fixed them); leaving the stack on an exception writes no manifest, so a
        # half-written split never looks complete.
        with ExitStack() as stack:
            writer: ShardWriter | None = None
            text_shape = state.counters.get("text_shape")
            for done_rows, chunk in _chunks(rows, state.records, _CHUNK, rows_per_shard):
                batch = _encode(chunk, feats, max_windows, saliency, text, split, skips)
                if batch is not None and writer is None and not state.shards:
                    text_shape = list(batch["text"].shape[1:]) if text else None
                if writer is None and (batch is not None or state.shards):
                    columns = moment_columns(max_clips=feats.max_clips, video_dim=feats.video_dim(),
                                             max_windows=max_windows, saliency=saliency, text_shape=text_shape)
                    split_meta = {**meta, "feature_dims": list(feats.dims), "saliency": saliency,
                                  "labelled": any(r.windows is not None for r in rows), "import_key": tracker.key}
                    writer = stack.enter_context(ShardWriter(
                        uri, task=TASK, split=split, columns=columns, meta=split_meta,
                        rows_per_shard=rows_per_shard, opts=opts, progress=f"{split} -> {uri}" if progress else False,
                        shards=state.shards))
                if batch is not None:
                    writer.write(batch)
                    written += len(batch["qid"])
                if writer is not None and (done_rows % rows_per_shard == 0 or done_rows == len(rows)):
                    writer.flush()
                    tracker.save(done_rows, writer.shards, skipped=skips.count.get(split, 0) - planned,
                                 text_shape=text_shape, feature_dims=list(feats.dims), text_dim=feats.text_dim)
            if writer is None:
                raise ImportDataError(f"split {split!r}: no usable rows (skipped {skips.count.get(split, 0)}); "
                                      "nothing to write")
            writer.meta["skipped"] = skips.count.get(split, 0)
        tracker.clear()
        report.splits[split] = {"uri": uri, "rows": written, "skipped": skips.count.get(split, 0)}
    skips.summary()
    if report.skipped:
        logger.warning("import skipped %d bad row(s) in total: %s", len(report.skipped),
                       {s: v["skipped"] for s, v in report.splits.items()})
    return report


# --------------------------------------------------------------------------- QVHighlights


def import_qvhighlights(jsonl_by_split: Mapping[str, str], feature_dirs: Sequence[str], text_feature_dir: str | None,
                        out_uri: str, *, max_clips: int = QVH_MAX_CLIPS, clip_length: float = QVH_CLIP_LENGTH,
                        max_windows: int | None = None, max_words: int = MAX_WORDS, text_key: str | None = None,
                        feature_dims: Sequence[int] | None = None, tef: bool = True, skip_bad: bool = False,
                        rows_per_shard: int = 1024, opts: StorageOptions | None = None,
                        progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """QVHighlights jsonl + npz features -> one dataset per split at ``out_uri/<split>``.

    Parameters
    ----------
    jsonl_by_split : ``{"train": ".../highlight_train_release.jsonl", "val": ..., ...}``
    feature_dirs : one folder per video feature source, each with ``{vid}.npz`` (key ``features``);
        concatenated in this order (Moment-DETR: slowfast, then clip)
    text_feature_dir : folder of ``qid{qid}.npz`` or None (keep only the raw ``query``)
    max_clips, clip_length : 75 clips of 2 s cover QVHighlights' 150-s videos
    max_windows : width of the ``windows`` column; None = the most windows any query has
    text_key : ``last_hidden_state`` or ``pooler_output``; None takes the first present
    feature_dims : expected width per source (else the first video fixes it)
    tef : append Moment-DETR's temporal endpoint features (2 columns)
    skip_bad : drop bad rows (logged and listed in the report) instead of raising
    resume : continue an interrupted run of the same import (same files as they are now, same
        arguments) after its last finished shard (one per ``rows_per_shard`` queries), and leave a
        split it finished as it is (default); False starts over

    Returns
    -------
    ``{"splits": {split: {"uri", "rows", "skipped"}}, "skipped": ["<file>:line N ...: reason"],
    "clamped": 0, "dropped": []}``
    """
    if not jsonl_by_split:
        raise ValueError("jsonl_by_split is empty; pass e.g. {'train': '.../highlight_train_release.jsonl'}")
    if not feature_dirs:
        raise ValueError("feature_dirs is empty; pass the video feature folders (e.g. slowfast_features, "
                         "clip_features)")
    if text_key is not None and text_key not in TEXT_KEYS:
        raise ValueError(f"text_key must be one of {TEXT_KEYS} or None, got {text_key!r}")
    report = ImportReport()
    skips = _Skips(skip_bad, report)
    rows_by_split = {}
    for split, uri in jsonl_by_split.items():
        storage.check_name(split, "split name")
        rows_by_split[split] = _consistent(_read_qvh_split(uri, split, clip_length, skips, opts), split, skips)
    _unique_qids(rows_by_split, skips)
    feats = _Features(feature_dirs, text_feature_dir, text_key, feature_dims, max_clips, max_words, tef, opts)
    meta = {"dataset": "qvhighlights", "clip_length": clip_length, "max_clips": max_clips, "tef": tef,
            "feature_sources": list(feature_dirs), "text_feature_dir": text_feature_dir,
            "sources": dict(jsonl_by_split)}
    settings = {**meta, "max_words": max_words, "text_key": text_key, "feature_dims": feature_dims,
                "skip_bad": skip_bad}
    return _write_splits(rows_by_split, out_uri=out_uri, feats=feats, max_windows=max_windows, skips=skips,
                         report=report, meta=meta, rows_per_shard=rows_per_shard, opts=opts,
                         progress=progress, inputs=list(jsonl_by_split.values()), settings=settings,
                         resume=resume).to_dict()


# --------------------------------------------------------------------------- Charades-STA


def load_durations(sources: str | Sequence[str] | Mapping[str, float],
                   opts: StorageOptions | None = None) -> dict[str, float]:
    """Video durations in seconds from Charades CSVs (``id``, ``length``), JSON files, or a dict."""
    if isinstance(sources, Mapping):
        return {str(k): float(v) for k, v in sources.items()}
    out: dict[str, float] = {}
    for uri in ([sources] if isinstance(sources, str) else list(sources)):
        text = "\n".join(_lines(uri, opts))
        if uri.lower().endswith(".json"):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ImportDataError(f"{uri}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if not isinstance(raw, dict):
                raise ImportDataError(f"{uri}: expected an object {{vid: seconds}} or {{vid: {{'duration': s}}}}")
            for vid, v in raw.items():
                value = v.get("duration") if isinstance(v, dict) else v
                if not _is_number(value) or value <= 0:
                    raise ImportDataError(f"{uri}: vid {vid!r}: duration must be a positive number, got {value!r}")
                out[str(vid)] = float(value)
            continue
        reader = csv.DictReader(io.StringIO(text))
        missing = {"id", "length"} - set(reader.fieldnames or [])
        if missing:
            raise ImportDataError(f"{uri}: CSV needs columns 'id' and 'length' (missing {sorted(missing)}; "
                                  f"has {reader.fieldnames})")
        for n, rec in enumerate(reader, start=2):
            try:
                value = float(rec["length"])
            except (TypeError, ValueError):
                raise ImportDataError(f"{uri}:line {n}: id {rec['id']!r}: length {rec['length']!r} "
                                      "is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise ImportDataError(f"{uri}:line {n}: id {rec['id']!r}: length must be positive, got {value}")
            out[rec["id"]] = value
    return out


def _read_sta_split(uri: str, split: str, durations: Mapping[str, float], next_qid: int, clamp_end: bool,
                    skips: _Skips, report: ImportReport, opts: StorageOptions | None) -> list[_Row]:
    rows = []
    for n, line in enumerate(_lines(uri, opts), start=1):
        if not line.strip():
            continue
        where = f"{uri}:line {n}"
        head, sep, sentence = line.partition("##")
        parts = head.split()
        if not sep or len(parts) != 3 or not sentence.strip():
            skips.bad(split, f"{where}: expected 'VIDEOID start end##sentence', got {line[:80]!r}")
            continue
        vid = parts[0]
        try:
            st, ed = float(parts[1]), float(parts[2])
        except ValueError:
            skips.bad(split, f"{where}: start/end {parts[1]!r} {parts[2]!r} are not numbers")
            continue
        if vid not in durations:
            skips.bad(split, f"{where}: no duration for vid {vid!r} in the durations file(s)")
            continue
        if clamp_end and min(ed, durations[vid]) <= st:
            # 2D-TAN (lib/datasets/charades.py) cuts the end to the duration, then keeps a line only
            # if start < end; lighthouse's charades_*_release.jsonl has the same rows (12,404 of
            # 12,408 train lines) and numbers them 0, 1, ... in this order, so a drop takes no qid.
            report.dropped.append(f"{where} (vid {vid!r}): start {st:g} >= end {min(ed, durations[vid]):g} s "
                                  f"(end {ed:g} cut to the {durations[vid]:g}-s video)")
            continue
        try:
            windows, clamped = _check_windows([[st, ed]], durations[vid], clamp=clamp_end)
        except ValueError as exc:
            skips.bad(split, f"{where} (vid {vid!r}): {exc}")
            continue
        report.clamped += clamped
        rows.append(_Row(where, next_qid + len(rows), vid, sentence.strip(), durations[vid], windows))
    return rows


def import_charades_sta(sta_txt_by_split: Mapping[str, str], durations: str | Sequence[str] | Mapping[str, float],
                        feature_dirs: Sequence[str], out_uri: str, *, text_feature_dir: str | None = None,
                        max_clips: int | None = None, clip_length: float = CHARADES_CLIP_LENGTH,
                        max_windows: int = 1, max_words: int = MAX_WORDS, text_key: str | None = None,
                        feature_dims: Sequence[int] | None = None, tef: bool = True, qid_start: int = 0,
                        clamp_end: bool = True, skip_bad: bool = False, rows_per_shard: int = 1024,
                        opts: StorageOptions | None = None, progress: bool = True,
                        resume: bool = True) -> dict[str, Any]:
    """Charades-STA txt + durations + npz features -> one dataset per split at ``out_uri/<split>``.

    Parameters
    ----------
    sta_txt_by_split : ``{"train": ".../charades_sta_train.txt", "test": ...}``; qids are assigned
        ``qid_start, qid_start + 1, ...`` over the splits in this order
    durations : Charades_v1_*.csv path(s), JSON path(s), or ``{vid: seconds}``
    feature_dirs, text_feature_dir, text_key, feature_dims, tef : as :func:`import_qvhighlights`
        (text features are ``qid{qid}.npz`` with the assigned qids)
    max_clips : None = enough 1-s clips for the longest video in the annotations
    clamp_end : as 2D-TAN: cut an end past the video to its duration (counted in the report's
        ``clamped``; 1,805 train / 562 test lines), then drop a line whose start is not before its
        end (listed in the report's ``dropped``; 4 train lines) -- it takes no qid, so the qids
        match lighthouse's ``charades_{train,test}_release.jsonl`` and its ``qid{qid}.npz`` text
        features. False: such lines are bad rows.
    skip_bad : drop bad rows (logged and listed in the report) instead of raising; a skipped row
        takes no qid either (so qids after it no longer match lighthouse's)
    resume : as :func:`import_qvhighlights`

    Returns
    -------
    as :func:`import_qvhighlights`, plus ``"dropped"``: ``["<file>:line N (vid ...): reason"]``
    """
    if not sta_txt_by_split:
        raise ValueError("sta_txt_by_split is empty; pass e.g. {'train': '.../charades_sta_train.txt'}")
    if not feature_dirs:
        raise ValueError("feature_dirs is empty; pass the video feature folders")
    if text_key is not None and text_key not in TEXT_KEYS:
        raise ValueError(f"text_key must be one of {TEXT_KEYS} or None, got {text_key!r}")
    dur = load_durations(durations, opts)
    report = ImportReport()
    skips = _Skips(skip_bad, report)
    rows_by_split: dict[str, list[_Row]] = {}
    next_qid = qid_start
    for split, uri in sta_txt_by_split.items():
        storage.check_name(split, "split name")
        rows_by_split[split] = _read_sta_split(uri, split, dur, next_qid, clamp_end, skips, report, opts)
        next_qid += len(rows_by_split[split])
    if report.dropped:
        logger.warning("dropped %d line(s) with start >= end after clamping (as 2D-TAN), e.g. %s",
                       len(report.dropped), report.dropped[0])
    if max_clips is None:
        max_clips = max([math.ceil(r.duration / clip_length - _TIME_TOL) for rows in rows_by_split.values()
                         for r in rows] + [1])
    feats = _Features(feature_dirs, text_feature_dir, text_key, feature_dims, max_clips, max_words, tef, opts)
    meta = {"dataset": "charades_sta", "clip_length": clip_length, "max_clips": max_clips, "tef": tef,
            "feature_sources": list(feature_dirs), "text_feature_dir": text_feature_dir,
            "sources": dict(sta_txt_by_split), "qid_start": qid_start, "clamped": report.clamped,
            "dropped": len(report.dropped)}
    settings = {**meta, "max_windows": max_windows, "max_words": max_words, "text_key": text_key,
                "feature_dims": feature_dims, "clamp_end": clamp_end, "skip_bad": skip_bad,
                "durations": dict(durations) if isinstance(durations, Mapping) else None}
    inputs = [*sta_txt_by_split.values(), *([] if isinstance(durations, Mapping) else
                                            [durations] if isinstance(durations, str) else durations)]
    return _write_splits(rows_by_split, out_uri=out_uri, feats=feats, max_windows=max_windows, skips=skips,
                         report=report, meta=meta, rows_per_shard=rows_per_shard, opts=opts,
                         progress=progress, inputs=inputs, settings=settings,
                         resume=resume).to_dict()
