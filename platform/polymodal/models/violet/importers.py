"""Source files -> :class:`Record` lists for :func:`~.ingest.ingest` (checks only; nothing is decoded).

Formats
-------
* :func:`read_webvid_csv` (pre-training): a CSV with a header holding at least ``videoid`` and
  ``name`` (the caption), as WebVid ships it; other columns are ignored.
* :func:`read_cc_tsv` (pre-training on images): ``caption<TAB>image path`` per line, CC-style, an
  optional ``caption<TAB>url`` header; paths are relative to ``images_root`` (default: the TSV's
  folder), absolute, or ``s3://``. Each image becomes a T=1 clip. ``http(s)://`` URLs are refused:
  download the images first (e.g. with img2dataset) and point the paths at the files.
* :func:`read_msrvtt_json` (retrieval): a JSON list of ``{"video": "video7010", "caption": ...}``
  (or ``{"video_id", "sentence"}``), or MSR-VTT's own ``{"sentences": [...]}`` object.
* :func:`read_mcqa` (multiple-choice QA): JSON Lines (``.jsonl``) or a JSON list of
  ``{"video", "question", "options": [...], "answer": <index into options>}``.
* :func:`read_oeqa` (open-ended QA): the same with ``"answer": <answer text>``; the text is
  normalised (:func:`~.data.normalise_answer`); the answer vocabulary is built at ingestion.

Videos are looked up as ``<videos_root>/<video id>.<ext>`` for ``ext`` in :data:`VIDEO_EXTS`, the
first that exists; the folder is listed once. A row whose video is missing is a bad row.

A bad row raises :class:`~polymodal.errors.ImportDataError` naming the file and the line (entry,
for a JSON list); with ``skip_bad=True`` it is logged and counted in :attr:`Parsed.skipped`
instead. A file that cannot be read at all (missing, not UTF-8, no header) always raises.

:func:`write_synthetic_videos` writes a small dataset in all these formats from
:mod:`.synth` clips, so the whole pipeline runs on real files in tests and demos.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ImportDataError, StorageError

from .data import normalise_answer

__all__ = ["Record", "Parsed", "VIDEO_EXTS", "read_webvid_csv", "read_cc_tsv", "read_msrvtt_json", "read_mcqa",
           "read_oeqa", "write_synthetic_videos"]

logger = logging.getLogger(__name__)

#: video file extensions tried for an id, in this order
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm")
#: warnings per file for skipped rows; the rest are summarised in one line
_MAX_LOGGED = 20


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


@dataclass
class Parsed:
    """What an importer read: the good records, and how many bad rows ``skip_bad`` dropped."""

    path: str
    records: list[Record] = field(default_factory=list)
    skipped: int = 0


class _Rows:
    """Collects records of one file; raises on a bad row or (``skip_bad``) logs and counts it."""

    def __init__(self, path: str, skip_bad: bool) -> None:
        self.out = Parsed(path)
        self.skip_bad = skip_bad
        self._texts_per_video: dict[str, int] = {}

    def bad(self, where: str, message: str) -> None:
        if not self.skip_bad:
            raise ImportDataError(f"{where}: {message} (pass skip_bad=True to drop such rows; they are counted)")
        self.out.skipped += 1
        if self.out.skipped <= _MAX_LOGGED:
            logger.warning("skipped %s: %s", where, message)

    def add(self, video: str, **fields: Any) -> None:
        k = self._texts_per_video.get(video, 0)
        self._texts_per_video[video] = k + 1
        self.out.records.append(Record(id=f"{video}#{k}", video=video, **fields))

    def done(self) -> Parsed:
        if self.out.skipped > _MAX_LOGGED:
            logger.warning("%s: %d more rows skipped (%d in total)", self.out.path, self.out.skipped - _MAX_LOGGED,
                           self.out.skipped)
        return self.out


class _Videos:
    """``video id -> file`` under one folder, listed once."""

    def __init__(self, root: str, opts: StorageOptions | None) -> None:
        self.root = os.fspath(root)
        try:
            names = storage.listdir(self.root, opts)
        except FileNotFoundError:
            raise ImportDataError(f"{self.root}: videos folder not found; pass videos_root=<the folder holding "
                                  f"<video id>{{{','.join(VIDEO_EXTS)}}}>") from None
        self.files: dict[str, str] = {}
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTS:
                continue
            held = self.files.get(stem)
            # several files for one id: the first extension of VIDEO_EXTS wins, whatever the listing order
            if held is None or VIDEO_EXTS.index(ext.lower()) < VIDEO_EXTS.index(os.path.splitext(held)[1].lower()):
                self.files[stem] = name

    def find(self, video: str) -> str | None:
        name = self.files.get(video)
        return storage.join(self.root, name) if name else None

    def missing(self, video: str) -> str:
        return f"no video file {self.root}/{video}{{{','.join(VIDEO_EXTS)}}}"


def _read_text(path: str, opts: StorageOptions | None) -> str:
    try:
        data = storage.read_bytes(path, opts)
    except FileNotFoundError:
        raise ImportDataError(f"{path}: file not found") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportDataError(f"{path}: not UTF-8 text ({exc})") from None


def _text(value: Any) -> str | None:
    """A non-blank string field, whitespace-normalised; None otherwise."""
    if not isinstance(value, str):
        return None
    return " ".join(value.split()) or None


def _entries(path: str, opts: StorageOptions | None, list_key: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(where, entry)`` of a JSON Lines file (``line N``) or a JSON list (``entry N``)."""
    text = _read_text(path, opts)
    if path.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}: line {n}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"{path}: line {n}", ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportDataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and list_key is not None and isinstance(data.get(list_key), list):
        data = data[list_key]
    if not isinstance(data, list):
        raise ImportDataError(f"{path}: top level is a JSON {type(data).__name__}, expected a list of objects"
                              + (f" (or an object with a {list_key!r} list)" if list_key else ""))
    for i, entry in enumerate(data):
        yield f"{path}: entry {i}", entry


def _field(entry: dict[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``entry`` (alternative spellings of one field)."""
    for name in names:
        if name in entry:
            return entry[name]
    return None


def read_webvid_csv(path: str, videos_root: str, *, skip_bad: bool = False,
                    opts: StorageOptions | None = None) -> Parsed:
    """WebVid-style ``videoid, name`` CSV -> pre-training records."""
    rows, videos = _Rows(path, skip_bad), _Videos(videos_root, opts)
    reader = csv.DictReader(io.StringIO(_read_text(path, opts), newline=""))
    missing = [c for c in ("videoid", "name") if c not in (reader.fieldnames or [])]
    if missing:
        raise ImportDataError(f"{path}: line 1: header {reader.fieldnames} lacks column(s) {missing}; a WebVid CSV "
                              "has at least 'videoid' and 'name' (the caption)")
    for raw in reader:
        where = f"{path}: line {reader.line_num}"
        vid, caption = _text(raw.get("videoid")), _text(raw.get("name"))
        if vid is None or caption is None:
            rows.bad(where, f"needs a non-empty 'videoid' and 'name', got {vid!r} and {raw.get('name')!r}")
            continue
        _add_clip(rows, videos, vid, caption, where)
    return rows.done()


def _add_clip(rows, videos, vid: str, caption: str, where: str) -> None:
    """One caption of video ``vid``: a record, or a bad row when the video file is missing."""
    source = videos.find(vid)
    if source is None:
        rows.bad(where, videos.missing(vid))
    else:
        rows.add(vid, text=caption, source=source, where=where)


def read_cc_tsv(path: str, images_root: str | None = None, *, skip_bad: bool = False,
                opts: StorageOptions | None = None) -> Parsed:
    """CC-style ``caption<TAB>image path`` TSV -> image records (T=1 clips)."""
    rows = _Rows(path, skip_bad)
    root = os.fspath(images_root) if images_root is not None else os.path.dirname(os.path.abspath(path))
    for n, line in enumerate(_read_text(path, opts).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        parts = line.split("\t")
        if n == 1 and [p.strip().lower() for p in parts] in (["caption", "url"], ["caption", "image"],
                                                            ["caption", "path"]):
            continue  # header
        if len(parts) != 2:
            rows.bad(where, f"expected 'caption<TAB>image path' (2 fields), got {len(parts)} field(s)")
            continue
        caption, ref = _text(parts[0]), parts[1].strip()
        if caption is None or not ref:
            rows.bad(where, f"empty caption or image path: {line[:80]!r}")
            continue
        if ref.startswith(("http://", "https://")):
            rows.bad(where, f"{ref} is a URL; download the images first (e.g. img2dataset) and list their paths")
            continue
        try:
            source = ref if storage.is_s3(ref) or os.path.isabs(ref) else storage.join(root, ref)
        except StorageError as exc:
            rows.bad(where, str(exc))
            continue
        if not storage.is_s3(source) and not os.path.exists(source):
            rows.bad(where, f"image file {source} not found")
            continue
        image_id = os.path.splitext(os.path.basename(ref))[0]
        rows.add(image_id, text=caption, source=source, where=where, image=True)
    return rows.done()


def read_msrvtt_json(path: str, videos_root: str, *, skip_bad: bool = False,
                     opts: StorageOptions | None = None) -> Parsed:
    """MSR-VTT retrieval JSON (``video``/``video_id`` and ``caption``/``sentence``) -> records."""
    rows, videos = _Rows(path, skip_bad), _Videos(videos_root, opts)
    for where, entry in _entries(path, opts, list_key="sentences"):
        if isinstance(entry, Exception) or not isinstance(entry, dict):
            rows.bad(where, str(entry) if isinstance(entry, Exception) else
                     f"is a JSON {type(entry).__name__}, expected an object with 'video' and 'caption'")
            continue
        vid, caption = _text(_field(entry, "video", "video_id")), _text(_field(entry, "caption", "sentence"))
        if vid is None or caption is None:
            rows.bad(where, "needs a non-empty 'video' (or 'video_id') and 'caption' (or 'sentence'), "
                            f"got {str(entry)[:80]}")
            continue
        _add_clip(rows, videos, vid, caption, where)
    return rows.done()


def _qa(path: str, videos_root: str, skip_bad: bool, opts: StorageOptions | None, multiple_choice: bool) -> Parsed:
    rows, videos = _Rows(path, skip_bad), _Videos(videos_root, opts)
    for where, entry in _entries(path, opts):
        if isinstance(entry, Exception) or not isinstance(entry, dict):
            rows.bad(where, str(entry) if isinstance(entry, Exception) else
                     f"is a JSON {type(entry).__name__}, expected an object with 'video', 'question', 'answer'")
            continue
        vid, question = _text(_field(entry, "video", "video_id")), _text(entry.get("question"))
        if vid is None or question is None:
            rows.bad(where, f"needs a non-empty 'video' (or 'video_id') and 'question', got {str(entry)[:80]}")
            continue
        answer = entry.get("answer")
        extra: dict[str, Any]
        if multiple_choice:
            options = entry.get("options")
            if not isinstance(options, list) or len(options) < 2 or any(_text(o) is None for o in options):
                rows.bad(where, f"'options' must be a list of 2 or more non-empty strings, got {options!r}")
                continue
            if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
                rows.bad(where, f"'answer' must be the index of the right option, an integer in "
                                f"0..{len(options) - 1}, got {answer!r}")
                continue
            extra = {"options": tuple(_text(o) for o in options), "answer": answer}
        else:
            if _text(answer) is None:
                rows.bad(where, f"'answer' must be a non-empty string, got {answer!r}")
                continue
            extra = {"answer_text": normalise_answer(answer)}
        source = videos.find(vid)
        if source is None:
            rows.bad(where, videos.missing(vid))
            continue
        rows.add(vid, text=question, source=source, where=where, **extra)
    return rows.done()


def read_mcqa(path: str, videos_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """Multiple-choice QA (``video, question, options, answer`` index) -> records."""
    return _qa(path, videos_root, skip_bad, opts, multiple_choice=True)


def read_oeqa(path: str, videos_root: str, *, skip_bad: bool = False, opts: StorageOptions | None = None) -> Parsed:
    """Open-ended QA (``video, question, answer`` text) -> records."""
    return _qa(path, videos_root, skip_bad, opts, multiple_choice=False)


# --------------------------------------------------------------------------- synthetic sources


def write_synthetic_videos(out_dir: str, n: int, seed: int = 0, n_frames_source: int = 16,
                           size: int = 64) -> dict[str, str]:
    """Write ``n`` :func:`~.synth.sample_clip` clips as MP4 files plus one source file per format.

    Returns paths: ``videos`` (folder of ``video0000.mp4``...), ``images`` (folder of each clip's
    first frame as PNG), ``webvid`` (CSV), ``cc`` (TSV over the PNGs), ``msrvtt`` (JSON list),
    ``mcqa`` and ``oeqa`` (JSON Lines asking which way the clip's shape moves: options are the four
    directions in a per-clip random order; the open-ended answer is the direction word), and
    ``clips`` (JSON list of each clip's ``video``, ``colour``, ``shape``, ``direction``, ``caption``).
    """
    from PIL import Image

    from . import synth
    from .video import encode_video

    rng = np.random.default_rng(seed)
    videos, images = os.path.join(out_dir, "videos"), os.path.join(out_dir, "images")
    os.makedirs(videos, exist_ok=True)
    os.makedirs(images, exist_ok=True)
    clips, webvid, cc, msrvtt, mcqa, oeqa = [], [["videoid", "name", "duration"]], [], [], [], []
    for i in range(n):
        clip = synth.sample_clip(rng, n_frames=n_frames_source, size=size)
        vid = f"video{i:04d}"
        with open(os.path.join(videos, f"{vid}.mp4"), "wb") as f:
            f.write(encode_video(clip["frames"]))
        Image.fromarray(clip["frames"][0]).save(os.path.join(images, f"{vid}.png"))
        question = synth.question(clip["colour"], clip["shape"])
        options = [str(d) for d in rng.permutation(list(synth.DIRECTIONS))]
        clips.append({"video": vid, **{k: clip[k] for k in ("colour", "shape", "direction", "caption")}})
        webvid.append([vid, clip["caption"], "PT00H00M02S"])
        cc.append(f"{clip['caption']}\timages/{vid}.png")
        msrvtt.append({"video": vid, "caption": clip["caption"]})
        mcqa.append({"video": vid, "question": question, "options": options,
                     "answer": options.index(clip["direction"])})
        oeqa.append({"video": vid, "question": question, "answer": clip["direction"]})
    paths = {name: os.path.join(out_dir, name + ext) for name, ext in
             (("webvid", ".csv"), ("cc", ".tsv"), ("msrvtt", ".json"), ("mcqa", ".jsonl"), ("oeqa", ".jsonl"),
              ("clips", ".json"))}
    with open(paths["webvid"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(webvid)
    with open(paths["cc"], "w", encoding="utf-8") as f:
        f.write("caption\turl\n" + "".join(line + "\n" for line in cc))
    for name, data in (("msrvtt", msrvtt), ("clips", clips)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
    for name, data in (("mcqa", mcqa), ("oeqa", oeqa)):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(e) + "\n" for e in data))
    return {"videos": videos, "images": images, **paths}
