"""Source files, as each dataset's release lays them out -> :class:`Record` streams for :func:`~.ingest.ingest`.

Nothing is decoded here: a reader checks every row (fields, and that its video or image file
exists) and yields records naming the file to decode.

Formats (the layout facts and their sources are in each reader's docstring)
---------------------------------------------------------------------------
* :func:`read_webvid` (pre-training): WebVid's ``results_*.csv`` (``videoid,name,page_idx,page_dir,
  duration,contentUrl``) over ``<videos>/<page_dir>/<videoid>.mp4``; rows whose video was never
  downloaded are skipped and counted (:attr:`Parsed.missing`).
* :func:`read_cc3m` (pre-training on images): CC3M's ``caption<TAB>url`` TSV (no header) over an
  img2dataset ``files`` output (``<images>/00000/<key>.jpg`` + ``.json``); each image is a T=1 clip;
  lines whose image was not downloaded are skipped and counted.
* :func:`read_msrvtt` (retrieval): ``MSRVTT_data.json`` with the official split (its ``split``
  field), or the 9k train list / 1k-A test list (``MSRVTT_train.9k.csv``, ``MSRVTT_JSFUSION_test.csv``).
* :func:`read_msrvtt_qa` (open-ended QA): MSRVTT-QA's ``{split}_qa.json``, or MSVD-QA's with its
  ``youtube_mapping.txt``.
* :func:`read_tgif_qa` (QA): TGIF-QA's ``{Train,Test}_{action,transition,frameqa,count}_question.csv``;
  action and transition are multiple-choice, frameqa and count open-ended.
* :func:`read_mcqa` / :func:`read_oeqa`: a plain JSON Lines (or JSON list) of
  ``{"video", "question", "options", "answer"}`` for QA data in no released layout above
  (the synthetic clips use it).

Streaming
---------
A reader returns a :class:`Parsed`: it has read the source once to check it (counting rows,
skipped and missing ones, and open-ended answers), and reads it again, row by row, each time it
is iterated, so :func:`~.ingest.ingest` never holds the records of a whole dataset. Video folders
are listed once per folder (the last :data:`_LISTINGS` folders are kept). The JSON releases
(MSR-VTT, MSRVTT-QA) are single JSON documents and are parsed whole; their text is small next to
their videos.

Errors
------
A bad row raises :class:`~polymodal.errors.ImportDataError` naming the file, the row (``line N``
of a CSV/TSV/JSON Lines file, ``entry N`` of a JSON list) and the field; with ``skip_bad=True`` it
is logged and counted in :attr:`Parsed.skipped` instead. A file that cannot be read at all
(missing, not UTF-8, a header without the needed columns) always raises.

:func:`write_synthetic_videos` writes a small dataset in these layouts from :mod:`.synth` clips,
so the whole pipeline runs on real files in tests and demos.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError, StorageError

from .data import normalise_answer

__all__ = ["Record", "Parsed", "VIDEO_EXTS", "MSRVTT_SPLITS", "TGIF_TASKS", "read_webvid", "read_cc3m",
           "read_msrvtt", "read_msrvtt_qa", "read_tgif_qa", "tgif_task", "read_mcqa", "read_oeqa",
           "write_synthetic_videos"]

logger = logging.getLogger(__name__)

#: video file extensions tried for an id, in this order (TGIF-QA's clips are GIFs; PyAV decodes them)
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".gif")
#: warnings per file for skipped rows; the rest are summarised in one line
_MAX_LOGGED = 20
#: folder listings kept by :class:`_Videos` (WebVid has one folder per result page)
_LISTINGS = 64


@dataclass(frozen=True, slots=True)
class Record:
    """One row to ingest: a clip source and its text."""

    id: str  # unique row id, "<video>#<k>"
    video: str  # the video (or image) id
    text: str  # caption or question
    source: str  # path or s3:// URI of the video or image file
    where: str  # "<file>: line N" of the source row, for error messages
    image: bool = False  # an image: ingested as a T=1 clip
    options: tuple[str, ...] = ()  # MC-QA candidates
    answer: int = -1  # MC-QA: index into options
    answer_text: str = ""  # OE-QA: normalised answer

    def item(self) -> dict[str, Any]:
        """Flat dict of Arrow-friendly values (Ray Data ``from_items``)."""
        return {"id": self.id, "video": self.video, "text": self.text, "source": self.source, "where": self.where,
                "image": self.image, "options": json.dumps(list(self.options)), "answer": self.answer,
                "answer_text": self.answer_text}


class _Rows:
    """One pass over a source file: numbers the texts of each video, and raises on a bad row or
    (``skip_bad``) logs and counts it; rows whose media was never downloaded are counted apart."""

    def __init__(self, path: str, skip_bad: bool, log: bool = True) -> None:
        self.path, self.skip_bad, self.log = path, skip_bad, log
        self.skipped = self.missing = 0
        self._texts_per_video: dict[str, int] = {}

    def bad(self, where: str, message: str) -> None:
        if not self.skip_bad:
            raise ImportDataError(f"{where}: {message} (pass skip_bad=True / --skip-bad to drop such rows; they "
                                  "are counted)")
        self.skipped += 1
        if self.log and self.skipped <= _MAX_LOGGED:
            logger.warning("skipped %s: %s", where, message)

    def absent(self, where: str, message: str) -> None:
        """A row whose video or image was never downloaded: normal for web-scraped sets, counted."""
        self.missing += 1
        if self.log and self.missing <= _MAX_LOGGED:
            logger.info("not downloaded, skipped: %s: %s", where, message)

    def add(self, video: str, **fields: Any) -> Record:
        k = self._texts_per_video.get(video, 0)
        self._texts_per_video[video] = k + 1
        return Record(id=f"{video}#{k}", video=video, **fields)

    def done(self) -> None:
        if self.log and self.skipped > _MAX_LOGGED:
            logger.warning("%s: %d more rows skipped (%d in total)", self.path, self.skipped - _MAX_LOGGED,
                           self.skipped)


class Parsed:
    """A checked source: iterating it reads the file(s) again and yields its records, streaming.

    Attributes
    ----------
    path : str
        The source file.
    inputs : list of str
        Every file the records depend on (the source, split lists, a mapping), for resume keys.
    rows : int
        Records the check pass yielded.
    skipped : int
        Bad rows dropped (``skip_bad``).
    missing : int
        Rows whose video or image was never downloaded (WebVid, CC3M), dropped and counted.
    answers : Counter
        Open-ended answers (normalised) and their counts, for the train split's vocabulary.
    """

    def __init__(self, path: str, read: Callable[[_Rows], Iterator[Record]], skip_bad: bool,
                 inputs: list[str] | None = None) -> None:
        self.path, self.inputs, self.skip_bad, self._read = path, inputs or [path], skip_bad, read
        check = _Rows(path, skip_bad)
        self.answers: Counter[str] = Counter()
        self.rows = 0
        for record in read(check):
            self.rows += 1
            if record.answer_text:
                self.answers[record.answer_text] += 1
        check.done()
        self.skipped, self.missing = check.skipped, check.missing

    def __iter__(self) -> Iterator[Record]:
        # the same rows as the check pass, whose bad ones were logged then
        return self._read(_Rows(self.path, self.skip_bad, log=False))

    def __len__(self) -> int:
        return self.rows

    @property
    def records(self) -> list[Record]:
        """All records in one list (small sources: tests, synthetic data)."""
        return list(self)


# --------------------------------------------------------------------------- file access


class _Videos:
    """``(folder, stem) -> file`` under one root; each folder is listed once (LRU of :data:`_LISTINGS`)."""

    def __init__(self, root: str, opts: StorageOptions | None, flag: str = "--videos",
                 exts: tuple[str, ...] = VIDEO_EXTS) -> None:
        self.root, self.opts, self.exts = os.fspath(root).rstrip("/") or os.fspath(root), opts, exts
        self._listings: OrderedDict[str, dict[str, str]] = OrderedDict()
        if not storage.exists(self.root, opts):
            raise ImportDataError(f"{self.root}: folder not found; pass {flag} <the folder of the dataset's files>")

    def _listing(self, folder: str) -> dict[str, str]:
        files = self._listings.get(folder)
        if files is not None:
            self._listings.move_to_end(folder)
            return files
        try:
            names = storage.listdir(folder, self.opts)
        except FileNotFoundError:
            names = []
        files = {}
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in self.exts:
                continue
            held = files.get(stem)
            # several files for one id: the first extension of exts wins, whatever the listing order
            if held is None or self.exts.index(ext.lower()) < self.exts.index(os.path.splitext(held)[1].lower()):
                files[stem] = name
        self._listings[folder] = files
        if len(self._listings) > _LISTINGS:
            self._listings.popitem(last=False)
        return files

    def folder(self, sub: str | None) -> str:
        """``root/sub``; StorageError for a ``sub`` that would leave the root."""
        return storage.join(self.root, sub) if sub else self.root

    def find(self, stem: str, sub: str | None = None) -> str | None:
        """The file of ``stem`` in ``root[/sub]``, or None; StorageError for names leaving the root."""
        folder = self.folder(sub)
        storage.join(folder, stem)  # refuses '..', '/', backslashes in a name from a data file
        name = self._listing(folder).get(stem)
        return storage.join(folder, name) if name else None

    def missing(self, stem: str, sub: str | None = None) -> str:
        return f"no file {self.folder(sub)}/{stem}{{{','.join(self.exts)}}}"


def _open_text(path: str, opts: StorageOptions | None) -> io.TextIOWrapper:
    """``path`` as a text stream (UTF-8, a BOM dropped, newlines kept for the csv module)."""
    try:
        handle = storage.open_uri(path, "rb", opts)
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found") from None
    return io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")


def _read_text(path: str, opts: StorageOptions | None) -> str:
    try:
        data = storage.read_bytes(path, opts)
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"{path}: not UTF-8 text ({exc})") from None


def _csv_rows(path: str, opts: StorageOptions | None, need: tuple[str, ...], what: str,
              delimiter: str = ",") -> Iterator[tuple[str, dict[str, str | None]]]:
    """``(where, row)`` of a CSV/TSV file with a header holding at least ``need``, streaming."""
    with _open_text(path, opts) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        try:
            header = reader.fieldnames or []
            lacking = [c for c in need if c not in header]
            if lacking:
                raise ImportDataError(f"{path}: line 1: header {header} lacks column(s) {lacking}; {what}")
            for raw in reader:
                yield f"{path}: line {reader.line_num}", raw
        except UnicodeDecodeError as exc:
            raise ImportDataError(f"{path}: line {reader.line_num + 1}: not UTF-8 text ({exc})") from None
        except csv.Error as exc:
            raise ImportDataError(f"{path}: line {reader.line_num}: {exc}") from None


def _text(value: Any) -> str | None:
    """A non-blank string field, whitespace-normalised; None otherwise."""
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None


def _need_text(row: dict[str, Any], *names: str) -> tuple[list[str | None], str | None]:
    """The named fields as non-blank texts, and a message naming the first empty field (or None)."""
    values = [_text(row.get(n)) for n in names]
    for name, value in zip(names, values):
        if value is None:
            return values, f"field {name!r} is empty or missing (got {row.get(name)!r})"
    return values, None


def _json(path: str, opts: StorageOptions | None) -> Any:
    try:
        return json.loads(_read_text(path, opts))
    except json.JSONDecodeError as exc:
        raise ImportDataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _entries(path: str, opts: StorageOptions | None) -> Iterator[tuple[str, Any]]:
    """``(where, entry)`` of a JSON Lines file (``line N``, streaming) or a JSON list (``entry N``)."""
    if path.endswith(".jsonl"):
        with _open_text(path, opts) as f:
            n = 0
            try:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield f"{path}: line {n}", json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield f"{path}: line {n}", ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
            except UnicodeDecodeError as exc:
                raise ImportDataError(f"{path}: line {n + 1}: not UTF-8 text ({exc})") from None
        return
    data = _json(path, opts)
    if not isinstance(data, list):
        raise ImportDataError(f"{path}: top level is a JSON {type(data).__name__}, expected a list of objects")
    for i, entry in enumerate(data):
        yield f"{path}: entry {i}", entry


def _clip(rows: _Rows, videos: _Videos, stem: str, where: str, sub: str | None = None,
          absent_ok: bool = False, **fields: Any) -> Record | None:
    """A record of video ``stem`` (in ``sub``), or None after reporting its missing file."""
    try:
        source = videos.find(stem, sub)
    except StorageError as exc:
        rows.bad(where, str(exc))
        return None
    if source is None:
        (rows.absent if absent_ok else rows.bad)(where, videos.missing(stem, sub))
        return None
    return rows.add(stem, source=source, where=where, **fields)


# --------------------------------------------------------------------------- WebVid


def read_webvid(path: str, videos_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """WebVid ``results_*.csv`` -> pre-training records.

    Layout (m-bain/webvid ``download.py`` and Frozen-in-Time's WebVid loader): a CSV with the header
    ``videoid,name,page_idx,page_dir,duration,contentUrl`` (``name`` is the caption); the
    downloader writes ``<videos>/<page_dir>/<videoid>.mp4``. Only ``videoid``, ``name`` and
    ``page_dir`` are read. A row whose video is not on disk (the download failed, as some always
    do) is skipped and counted in :attr:`Parsed.missing`.
    """
    videos = _Videos(videos_root, opts)

    def rows_of(rows: _Rows) -> Iterator[Record]:
        for where, raw in _csv_rows(path, opts, ("videoid", "name", "page_dir"),
                                    "a WebVid results CSV has videoid,name,page_idx,page_dir,duration,contentUrl"):
            (vid, caption, page_dir), problem = _need_text(raw, "videoid", "name", "page_dir")
            if problem:
                rows.bad(where, problem)
                continue
            record = _clip(rows, videos, vid, where, sub=page_dir, absent_ok=True, text=caption)
            if record is not None:
                yield record
        rows.done()

    return Parsed(path, rows_of, skip_bad)


# --------------------------------------------------------------------------- CC3M


def _img2dataset_samples(root: str, opts: StorageOptions | None) -> Iterator[tuple[str, str, str]]:
    """``(key, image path, json path)`` of an img2dataset ``files`` output, in key order: shard
    folders ``00000/`` ... holding ``<key>.jpg`` + ``<key>.json`` for each downloaded image."""
    try:
        shards = [n for n in storage.listdir(root, opts) if n.isdigit()]
    except FileNotFoundError:
        raise ImportDataError(f"{root}: folder not found; pass --images <img2dataset's output folder>") from None
    if not shards:
        raise ImportDataError(f"{root}: no img2dataset shard folders (00000/, 00001/, ...) in it; pass --images "
                              "<the --output_folder of img2dataset --output_format files>")
    for shard in sorted(shards):
        folder = storage.join(root, shard)
        names = set(storage.listdir(folder, opts))
        for name in sorted(names):
            key, ext = os.path.splitext(name)
            if ext.lower() in (".jpg", ".jpeg", ".png", ".webp"):
                meta = f"{key}.json"
                yield key, storage.join(folder, name), storage.join(folder, meta) if meta in names else ""


def read_cc3m(path: str, images_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """Conceptual Captions TSV + its img2dataset download -> image records (T=1 clips).

    Layout (google-research-datasets/conceptual-captions; rom1504/img2dataset ``writer.py``
    ``FilesSampleWriter`` and ``downloader.py`` ``compute_key``): ``Train_GCC-training.tsv`` /
    ``Validation_GCC-1.1.0-Validation.tsv`` hold ``caption<TAB>url`` per line, no header (a
    ``caption<TAB>url`` header line, added for img2dataset's ``--input_format tsv``, is skipped).
    img2dataset writes ``<images>/<shard>/<key>.jpg`` (+ ``.txt``, ``.json`` with ``url``, ``key``,
    ``caption``, ``status`` ...) for the successful downloads only, keys growing with the input
    row. Images are matched to TSV lines by their ``.json``'s ``url``, walking both in order, so
    the TSV is streamed; lines without an image are skipped and counted in :attr:`Parsed.missing`.
    """
    if not storage.exists(images_root, opts):
        raise ImportDataError(f"{images_root}: folder not found; pass --images <img2dataset's output folder>")

    def lines(rows: _Rows) -> Iterator[tuple[str, str | None, str | None]]:
        """``(where, caption, url)`` per TSV line; a bad line (reported here) has no caption and
        the url its last word may still give, so that its downloaded image is passed over too."""
        with _open_text(path, opts) as f:
            n = 0
            try:
                for n, line in enumerate(f, start=1):
                    line = line.rstrip("\r\n")
                    if not line.strip() or (n == 1 and line.strip().lower() == "caption\turl"):
                        continue
                    where = f"{path}: line {n}"
                    parts = line.split("\t")
                    words = line.split()
                    if len(parts) != 2:
                        rows.bad(where, f"expected 'caption<TAB>url' (2 fields), got {len(parts)} field(s)")
                        yield where, None, words[-1] if words else None
                        continue
                    (caption, url), problem = _need_text({"caption": parts[0], "url": parts[1]}, "caption", "url")
                    if problem:
                        rows.bad(where, problem)
                    yield where, None if problem else caption, url
            except UnicodeDecodeError as exc:
                raise ImportDataError(f"{path}: line {n + 1}: not UTF-8 text ({exc})") from None

    def rows_of(rows: _Rows) -> Iterator[Record]:
        tsv = lines(rows)
        for key, image, meta_path in _img2dataset_samples(images_root, opts):
            if not meta_path:
                rows.bad(image, f"has no {key}.json beside it; img2dataset writes the url there (--save_metadata)")
                continue
            try:
                meta = json.loads(_read_text(meta_path, opts))
                url = meta["url"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                rows.bad(meta_path, f"not an img2dataset sample record with a 'url' field ({type(exc).__name__})")
                continue
            for where, caption, line_url in tsv:
                if line_url == url:
                    if caption is not None:  # else a bad line, already reported
                        yield rows.add(key, text=caption, source=image, where=where, image=True)
                    break
                if caption is not None:
                    rows.absent(where, f"{line_url} has no image in {images_root}")
            else:
                raise ImportDataError(f"{meta_path}: field 'url' {url!r} is not on any later line of {path}; "
                                      "pass the TSV that img2dataset downloaded, and its own --output_folder")
        for where, caption, line_url in tsv:
            if caption is not None:
                rows.absent(where, f"{line_url} has no image in {images_root}")
        rows.done()

    return Parsed(path, rows_of, skip_bad)


# --------------------------------------------------------------------------- MSR-VTT retrieval

#: ``--split`` of :func:`read_msrvtt` -> (the dataset split it gives, where its videos are listed)
MSRVTT_SPLITS = {"train": ("train", "the json's split field"), "val": ("val", "the json's split field"),
                 "test": ("test", "the json's split field"), "9k": ("train", "MSRVTT_train.9k.csv"),
                 "1k-A": ("test", "MSRVTT_JSFUSION_test.csv")}
#: values of MSRVTT_data.json's ``split`` field per official split
_OFFICIAL = {"train": {"train"}, "val": {"validate", "val"}, "test": {"test"}}


def read_msrvtt(path: str, videos_root: str, split: str, *, split_csv: str | None = None, skip_bad: bool = False,
                opts: StorageOptions | None = None) -> Parsed:
    """MSR-VTT ``MSRVTT_data.json`` (+ a split list) -> retrieval records, ``video<N>.mp4`` videos.

    Layout (MSR-VTT; ArrowLuo/CLIP4Clip ``dataloaders/dataloader_msrvtt_retrieval.py`` and its
    ``msrvtt_data.zip``): the JSON holds ``videos`` (``video_id`` "video<N>", ``split`` train /
    validate / test, ...) and ``sentences`` (``sen_id``, ``video_id``, ``caption``), 20 per video.

    ``split``:

    * ``train`` / ``val`` / ``test``: the official split (videos 0-6512 / 6513-7009 / 7010-9999),
      from the ``split`` field; every caption of each video.
    * ``9k``: the videos of ``MSRVTT_train.9k.csv`` (column ``video_id``), every caption of each,
      as CLIP4Clip trains (``unfold_sentences``).
    * ``1k-A``: ``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,sentence``): one row per
      video, its ``sentence``, as CLIP4Clip tests; the JSON is not read.

    ``split_csv`` defaults to the list's release name beside ``path``.
    """
    if split not in MSRVTT_SPLITS:
        raise ImportDataError(f"MSR-VTT split {split!r}: use one of {', '.join(MSRVTT_SPLITS)}")
    listed = MSRVTT_SPLITS[split][1]
    if split_csv is not None and not listed.endswith(".csv"):
        raise ImportDataError(f"MSR-VTT split {split!r} is the json's own split field; a split list ({split_csv}) "
                              "goes with the 9k or 1k-A split")
    videos = _Videos(videos_root, opts)
    if listed.endswith(".csv") and split_csv is None:
        split_csv = storage.join(path.rsplit("/", 1)[0], listed) if "/" in path else listed
    inputs = [path] + ([split_csv] if split_csv else [])

    if split == "1k-A":
        def rows_of(rows: _Rows) -> Iterator[Record]:
            for where, raw in _csv_rows(split_csv, opts, ("video_id", "sentence"),
                                        "MSRVTT_JSFUSION_test.csv has key,vid_key,video_id,sentence"):
                (vid, sentence), problem = _need_text(raw, "video_id", "sentence")
                if problem:
                    rows.bad(where, problem)
                    continue
                record = _clip(rows, videos, vid, where, text=sentence)
                if record is not None:
                    yield record
            rows.done()

        return Parsed(split_csv, rows_of, skip_bad, inputs=inputs)

    def chosen(rows: _Rows, data: dict[str, Any]) -> set[str]:
        if split_csv is not None:
            out = set()
            for where, raw in _csv_rows(split_csv, opts, ("video_id",), "MSRVTT_train.9k.csv has a video_id column"):
                (vid,), problem = _need_text(raw, "video_id")
                if problem:
                    rows.bad(where, problem)
                else:
                    out.add(vid)
            return out
        out = set()
        for i, video in enumerate(data["videos"]):
            if not isinstance(video, dict) or _text(video.get("video_id")) is None:
                rows.bad(f"{path}: videos[{i}]", f"needs a 'video_id' string, got {str(video)[:80]}")
            elif video.get("split") in _OFFICIAL[split]:
                out.add(_text(video["video_id"]))
        return out

    def rows_of(rows: _Rows) -> Iterator[Record]:
        data = _json(path, opts)
        lacking = [k for k in ("videos", "sentences") if not isinstance(data, dict) or
                   not isinstance(data.get(k), list)]
        if lacking:
            raise ImportDataError(f"{path}: needs the lists {lacking} at the top level, as MSRVTT_data.json has them")
        keep = chosen(rows, data)
        for i, entry in enumerate(data["sentences"]):
            where = f"{path}: sentences[{i}]"
            if not isinstance(entry, dict):
                rows.bad(where, f"is a JSON {type(entry).__name__}, expected an object with video_id and caption")
                continue
            (vid, caption), problem = _need_text(entry, "video_id", "caption")
            if problem:
                rows.bad(where, problem)
                continue
            if vid in keep:
                record = _clip(rows, videos, vid, where, text=caption)
                if record is not None:
                    yield record
        rows.done()

    return Parsed(path, rows_of, skip_bad, inputs=inputs)


# --------------------------------------------------------------------------- MSRVTT-QA / MSVD-QA


def _youtube_mapping(path: str, opts: StorageOptions | None) -> dict[int, str]:
    """MSVD's ``youtube_mapping.txt``: ``<clip_name> vid<N>`` per line -> ``{N: clip_name}``."""
    out: dict[int, str] = {}
    for n, line in enumerate(_read_text(path, opts).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        match = re.fullmatch(r"vid(\d+)", parts[-1]) if len(parts) == 2 else None
        if match is None:
            raise ImportDataError(f"{path}: line {n}: expected '<clip_name> vid<N>', got {line[:80]!r}")
        out[int(match.group(1))] = parts[0]
    return out


def read_msrvtt_qa(path: str, videos_root: str, *, mapping: str | None = None, skip_bad: bool = False,
                   opts: StorageOptions | None = None) -> Parsed:
    """MSRVTT-QA / MSVD-QA ``{train,val,test}_qa.json`` -> open-ended QA records.

    Layout (xudejing/video-question-answering): a JSON list of ``{"question", "answer",
    "video_id": int, "id": int}`` (MSRVTT-QA adds ``category_id``). MSRVTT-QA's ``video_id`` N is
    ``video<N>.mp4`` in ``videos_root``; MSVD-QA's is ``vid<N>`` of ``youtube_mapping`` (lines
    ``<clip_name> vid<N>``), the video ``<videos_root>/<clip_name>.avi`` (MSVD's ``YouTubeClips/``).
    """
    videos = _Videos(videos_root, opts)
    names = _youtube_mapping(mapping, opts) if mapping else None

    def rows_of(rows: _Rows) -> Iterator[Record]:
        for where, entry in _entries(path, opts):
            if not isinstance(entry, dict):
                rows.bad(where, f"is a JSON {type(entry).__name__}, expected an object with question, answer, "
                                "video_id")
                continue
            vid = entry.get("video_id")
            if isinstance(vid, bool) or not isinstance(vid, int):
                rows.bad(where, f"field 'video_id' must be an integer (the N of "
                                f"{'vid<N> in the mapping' if names is not None else 'video<N>.mp4'}), got {vid!r}")
                continue
            (question, answer), problem = _need_text(entry, "question", "answer")
            if problem:
                rows.bad(where, problem)
                continue
            if names is None:
                stem = f"video{vid}"
            elif vid in names:
                stem = names[vid]
            else:
                rows.bad(where, f"field 'video_id' {vid}: no 'vid{vid}' line in {mapping}")
                continue
            record = _clip(rows, videos, stem, where, text=question, answer_text=normalise_answer(answer))
            if record is not None:
                yield record
        rows.done()

    return Parsed(path, rows_of, skip_bad, inputs=[path] + ([mapping] if mapping else []))


# --------------------------------------------------------------------------- TGIF-QA

#: TGIF-QA task -> (multiple choice?, the columns its CSV needs)
TGIF_TASKS = {"action": (True, ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer")),
              "transition": (True, ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer")),
              "frameqa": (False, ("gif_name", "question", "answer")),
              "count": (False, ("gif_name", "question", "answer"))}
_TGIF_FILE = re.compile(r"(?:Train|Test)_(action|transition|frameqa|count)_question\.csv$")


def tgif_task(path: str) -> str:
    """The TGIF-QA task of a release file name (``Train_action_question.csv`` -> ``action``)."""
    match = _TGIF_FILE.search(path)
    if match is None:
        raise ImportDataError(f"{path}: not a TGIF-QA question file name ({{Train,Test}}_{{"
                              f"{','.join(TGIF_TASKS)}}}_question.csv); pass its task")
    return match.group(1)


def read_tgif_qa(path: str, gifs_root: str, *, task: str | None = None, skip_bad: bool = False,
                 opts: StorageOptions | None = None) -> Parsed:
    """TGIF-QA ``{Train,Test}_{task}_question.csv`` -> QA records over ``<gifs_root>/<gif_name>.gif``.

    Layout (YunseokJANG/tgif-qa ``dataset/``): tab-separated, a header, CRLF line ends. action and
    transition: ``gif_name, question, a1..a5, answer`` (the 0-based index of the right option),
    ``vid_id, key``: multiple-choice records. frameqa (``gif_name, question, answer, type, vid_id,
    key, description``) and count (``gif_name, question, answer, vid_id, key``): open-ended
    records, the answer normalised (count's answers are the numbers as words of the vocabulary).
    ``task`` defaults to the file name's.
    """
    task = task or tgif_task(path)
    if task not in TGIF_TASKS:
        raise ImportDataError(f"TGIF-QA task {task!r}: use one of {', '.join(TGIF_TASKS)}")
    multiple_choice, need = TGIF_TASKS[task]
    gifs = _Videos(gifs_root, opts, flag="--gifs")

    def rows_of(rows: _Rows) -> Iterator[Record]:
        for where, raw in _csv_rows(path, opts, need, f"TGIF-QA's {task} file has {', '.join(need)}",
                                    delimiter="\t"):
            (gif, question), problem = _need_text(raw, "gif_name", "question")
            if problem:
                rows.bad(where, problem)
                continue
            fields: dict[str, Any]
            if multiple_choice:
                options, problem = _need_text(raw, "a1", "a2", "a3", "a4", "a5")
                answer = (raw.get("answer") or "").strip()
                if problem is None and not (answer.isdigit() and int(answer) < 5):
                    problem = f"field 'answer' must be the 0-based index 0-4 of the right one of a1..a5, got {answer!r}"
                if problem:
                    rows.bad(where, problem)
                    continue
                fields = {"options": tuple(options), "answer": int(answer)}
            else:
                (answer,), problem = _need_text(raw, "answer")
                if problem:
                    rows.bad(where, problem)
                    continue
                fields = {"answer_text": normalise_answer(answer)}
            record = _clip(rows, gifs, gif, where, text=question, **fields)
            if record is not None:
                yield record
        rows.done()

    return Parsed(path, rows_of, skip_bad)


# --------------------------------------------------------------------------- plain QA (JSON Lines)


def _qa(path: str, videos_root: str, skip_bad: bool, opts: StorageOptions | None, multiple_choice: bool) -> Parsed:
    videos = _Videos(videos_root, opts)

    def rows_of(rows: _Rows) -> Iterator[Record]:
        for where, entry in _entries(path, opts):
            if isinstance(entry, Exception) or not isinstance(entry, dict):
                rows.bad(where, str(entry) if isinstance(entry, Exception) else
                         f"is a JSON {type(entry).__name__}, expected an object with 'video', 'question', 'answer'")
                continue
            (vid, question), problem = _need_text(entry, "video", "question")
            if problem:
                rows.bad(where, problem)
                continue
            answer = entry.get("answer")
            extra: dict[str, Any]
            if multiple_choice:
                options = entry.get("options")
                if not isinstance(options, list) or len(options) < 2 or any(_text(o) is None for o in options):
                    rows.bad(where, f"field 'options' must be a list of 2 or more non-empty strings, got {options!r}")
                    continue
                if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
                    rows.bad(where, f"field 'answer' must be the index of the right option, an integer in "
                                    f"0..{len(options) - 1}, got {answer!r}")
                    continue
                extra = {"options": tuple(_text(o) for o in options), "answer": answer}
            else:
                if _text(answer) is None:
                    rows.bad(where, f"field 'answer' must be a non-empty string, got {answer!r}")
                    continue
                extra = {"answer_text": normalise_answer(answer)}
            record = _clip(rows, videos, vid, where, text=question, **extra)
            if record is not None:
                yield record
        rows.done()

    return Parsed(path, rows_of, skip_bad)


def read_mcqa(path: str, videos_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """Multiple-choice QA, JSON Lines or a JSON list of ``{video, question, options, answer index}``."""
    return _qa(path, videos_root, skip_bad, opts, multiple_choice=True)


def read_oeqa(path: str, videos_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """Open-ended QA, JSON Lines or a JSON list of ``{video, question, answer text}``."""
    return _qa(path, videos_root, skip_bad, opts, multiple_choice=False)


# --------------------------------------------------------------------------- synthetic sources


def _encoded_clips(rng: np.random.Generator, n: int, n_frames: int, size: int,
                   chunk: int = 64) -> Iterator[tuple[int, dict[str, Any], bytes]]:
    """``(i, clip, mp4 bytes)`` of ``n`` :func:`~.synth.sample_clip` clips, each with its QA
    ``options`` (the four directions in a random order). The clips and options are drawn from
    ``rng`` in order, one clip after the other; PyAV encodes without the GIL, so ``chunk`` clips
    at a time are encoded on threads (1.7x on 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    from . import synth
    from .video import encode_video

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        for lo in range(0, n, chunk):
            clips = []
            for _ in range(min(chunk, n - lo)):
                clip = synth.sample_clip(rng, n_frames=n_frames, size=size)
                clip["options"] = [str(d) for d in rng.permutation(list(synth.DIRECTIONS))]
                clips.append(clip)
            for k, (clip, mp4) in enumerate(zip(clips, pool.map(encode_video, [c["frames"] for c in clips]))):
                yield lo + k, clip, mp4


def write_synthetic_videos(out_dir: str, n: int, seed: int = 0, n_frames_source: int = 16,
                           size: int = 64) -> dict[str, str]:
    """Write ``n`` :func:`~.synth.sample_clip` clips as MP4 files plus source files in the layouts above.

    Returns paths: ``videos`` (folder of ``video0000.mp4``...), ``webvid`` (a results CSV whose
    ``page_dir`` is ``videos``, over ``webvid_root`` = ``out_dir``), ``cc`` (a CC3M TSV of caption
    and a made-up url per clip) over ``images`` (an img2dataset ``files`` output of each clip's
    first frame, ``00000/<key>.jpg`` + ``.txt`` + ``.json``), ``msrvtt`` (``MSRVTT_data.json``,
    every video in the official ``train`` split, one caption each), ``mcqa`` and ``oeqa`` (JSON Lines
    asking which way the clip's shape moves: options are the four directions in a per-clip random
    order; the open-ended answer is the direction word), and ``clips`` (JSON list of each clip's
    ``video``, ``colour``, ``shape``, ``direction``, ``caption``).
    """
    from PIL import Image

    from . import synth

    rng = np.random.default_rng(seed)
    videos, images = os.path.join(out_dir, "videos"), os.path.join(out_dir, "images")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(os.path.join(images, "00000"), exist_ok=True)
    webvid = [["videoid", "name", "page_idx", "page_dir", "duration", "contentUrl"]]
    clips, cc, mcqa, oeqa = [], [], [], []
    msrvtt: dict[str, list[dict[str, Any]]] = {"videos": [], "sentences": []}
    for i, clip, mp4 in _encoded_clips(rng, n, n_frames_source, size):
        vid = f"video{i:04d}"
        with open(os.path.join(videos, f"{vid}.mp4"), "wb") as f:
            f.write(mp4)
        key, url = f"{i:09d}", f"https://synthetic.invalid/{vid}.jpg"
        Image.fromarray(clip["frames"][0]).save(os.path.join(images, "00000", f"{key}.jpg"), quality=95)
        with open(os.path.join(images, "00000", f"{key}.txt"), "w", encoding="utf-8") as f:
            f.write(clip["caption"])
        with open(os.path.join(images, "00000", f"{key}.json"), "w", encoding="utf-8") as f:
            json.dump({"url": url, "key": key, "caption": clip["caption"], "status": "success"}, f, indent=4)
        question = synth.question(clip["colour"], clip["shape"])
        options = clip["options"]
        clips.append({"video": vid, **{k: clip[k] for k in ("colour", "shape", "direction", "caption")}})
        webvid.append([vid, clip["caption"], "0", "videos", "PT00H00M02S", f"https://synthetic.invalid/{vid}.mp4"])
        cc.append(f"{clip['caption']}\t{url}")
        msrvtt["videos"].append({"video_id": vid, "category": 0, "url": "", "start time": 0.0, "end time": 2.0,
                                 "split": "train", "id": i})
        msrvtt["sentences"].append({"sen_id": i, "video_id": vid, "caption": clip["caption"]})
        mcqa.append({"video": vid, "question": question, "options": options,
                     "answer": options.index(clip["direction"])})
        oeqa.append({"video": vid, "question": question, "answer": clip["direction"]})
    paths = {name: os.path.join(out_dir, file) for name, file in
             (("webvid", "results_synthetic.csv"), ("cc", "cc3m.tsv"), ("msrvtt", "MSRVTT_data.json"),
              ("mcqa", "mcqa.jsonl"), ("oeqa", "oeqa.jsonl"), ("clips", "clips.json"))}
    with open(paths["webvid"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(webvid)
    with open(paths["cc"], "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in cc))
    for name, data in (("msrvtt", msrvtt), ("clips", clips)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    for name, data in (("mcqa", mcqa), ("oeqa", oeqa)):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(e) + "\n" for e in data))
    return {"videos": videos, "webvid_root": out_dir, "images": images, **paths}
