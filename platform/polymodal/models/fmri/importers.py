"""Story-listening data -> a polymodal fMRI dataset (words + voxel-chunked responses).

Output layout under ``out`` (local or ``s3://``)::

    stories.json                  story -> {"n_trs": feature TRs, "tr": seconds, "start_time": seconds}
    words/                        shard dataset: story, word, start, end (seconds)
    responses/<subject>/...       voxel-chunked responses (see polymodal.models.fmri.data)

Two input layouts:

* **Huth lab** (OpenNeuro ds003020 ``derivative/``): ``TextGrids/{story}.TextGrid`` (words on
  tier index 1), ``respdict.json`` (story -> TRs) and ``preprocessed_data/{subject}/{story}.hf5``
  (dataset ``data``, TRs x voxels). As in the lab's ``load_simulated_trfiles``, a story's feature
  clock has ``respdict[story] - 5`` TRs of 2 s starting 10 s before the audio.
* **plain**: ``words.csv`` or ``words.parquet`` with columns ``story, word, start, end`` (seconds),
  ``stories.json`` (story -> {"n_trs", "tr"[, "start_time"]}) and responses as
  ``responses/{subject}/{story}.npy`` or ``.hf5`` (dataset ``data``).

Responses are read one voxel chunk at a time (``.hf5`` column slices, ``.npy`` memory-mapped), so
a 95k-voxel subject never sits in memory whole.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.errors import PolymodalError
from polymodal.shards import ShardWriter
from polymodal.storage import StorageOptions

from .data import TASK, write_responses

# non-words in the Huth-lab TextGrids (ridge_utils/dsutils.py DEFAULT_BAD_WORDS)
BAD_WORDS = frozenset({"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp", ""})
HUTH_TR, HUTH_START_TIME, HUTH_PAD = 2.0, 10.0, 5

_TOKEN = re.compile(r'"((?:[^"]|"")*)"|(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(<exists>)')


def parse_textgrid(text: str, source: str = "TextGrid") -> list[dict[str, Any]]:
    """Praat TextGrid (long or short text format) -> tiers ``[{"name", "class", "items"}]``.

    Interval tiers' items are ``(xmin, xmax, text)``; point tiers' are ``(time, text)``. Both
    formats carry the same values in the same order; the long one adds bare ``key =`` labels
    (not tokens) and ``[n]`` indices, which are dropped before tokenising.
    """
    body = re.sub(r"\[\s*\d*\s*\]", " ", text)
    tokens = []
    for m in _TOKEN.finditer(body):
        if m.group(1) is not None:
            tokens.append(m.group(1).replace('""', '"'))
        elif m.group(2) is not None:
            tokens.append(float(m.group(2)))
        else:
            tokens.append("<exists>")
    pos = 0

    def take(kind: type, what: str) -> Any:
        nonlocal pos
        if pos >= len(tokens):
            raise PolymodalError(f"{source}: ends early, expected {what}")
        tok = tokens[pos]
        if kind is float and not isinstance(tok, float) or kind is str and not isinstance(tok, str):
            raise PolymodalError(f"{source}: expected {what}, found {tok!r} (token {pos})")
        pos += 1
        return tok

    if take(str, "the file type") != "ooTextFile" or take(str, "the object class") != "TextGrid":
        raise PolymodalError(f"{source}: not a Praat TextGrid (needs 'ooTextFile' / 'TextGrid')")
    take(float, "xmin"), take(float, "xmax")
    if pos < len(tokens) and tokens[pos] == "<exists>":
        pos += 1
    tiers = []
    for _ in range(int(take(float, "the tier count"))):
        cls, name = take(str, "a tier class"), take(str, "a tier name")
        take(float, "tier xmin"), take(float, "tier xmax")
        n = int(take(float, "the item count"))
        if cls == "IntervalTier":
            items = [(take(float, "xmin"), take(float, "xmax"), take(str, "text")) for _ in range(n)]
        elif cls == "TextTier":
            items = [(take(float, "time"), take(str, "mark")) for _ in range(n)]
        else:
            raise PolymodalError(f"{source}: unknown tier class {cls!r}")
        tiers.append({"name": name, "class": cls, "items": items})
    return tiers


def textgrid_words(text: str, tier: int = 1, source: str = "TextGrid") -> list[tuple[str, float, float]]:
    """Words ``(word, start, end)`` of interval tier ``tier`` (Huth lab: 1), non-words dropped."""
    tiers = parse_textgrid(text, source)
    if tier >= len(tiers) or tiers[tier]["class"] != "IntervalTier":
        raise PolymodalError(f"{source}: no interval tier at index {tier} (tiers: "
                             f"{[(t['name'], t['class']) for t in tiers]})")
    return [(w.strip(), a, b) for a, b, w in tiers[tier]["items"] if w.strip().lower() not in BAD_WORDS]


def _check_times(story: str, words: list[tuple[str, float, float]], source: str) -> None:
    if not words:
        raise PolymodalError(f"{source}: story {story!r} has no words")
    starts = np.array([w[1] for w in words])
    ends = np.array([w[2] for w in words])
    bad = np.flatnonzero((ends < starts) | (np.diff(starts, prepend=-np.inf) < 0))
    if bad.size:
        i = int(bad[0])
        raise PolymodalError(f"{source}: story {story!r}, word {i} ({words[i][0]!r}): times must be "
                             f"non-decreasing with end >= start, got start={starts[i]}, end={ends[i]}")


def write_words(out: str, words: dict[str, list[tuple[str, float, float]]], opts: StorageOptions | None) -> None:
    """The ``words/`` shard dataset: one row per word (story, word, start, end in seconds)."""
    columns = {"story": {"dtype": "string"}, "word": {"dtype": "string"},
               "start": {"dtype": "float64"}, "end": {"dtype": "float64"}}
    with ShardWriter(storage.join(out, "words"), task=TASK, split="words", columns=columns, opts=opts,
                     progress=False) as writer:
        for story, items in words.items():
            writer.write({"story": np.array([story] * len(items), dtype=object),
                          "word": np.array([w for w, _, _ in items], dtype=object),
                          "start": np.array([a for _, a, _ in items]), "end": np.array([b for _, _, b in items])})


def write_story_meta(out: str, meta: dict[str, dict[str, Any]], opts: StorageOptions | None) -> None:
    """``stories.json``, written last: its presence marks a complete dataset."""
    storage.write_text(storage.join(out, "stories.json"), json.dumps(meta, indent=2), opts)


def _open_responses(path: Path, stack: ExitStack) -> Any:
    """An array-like (TRs, voxels) that reads column slices lazily."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    import h5py

    handle = stack.enter_context(h5py.File(path, "r"))
    if "data" not in handle:
        raise PolymodalError(f"{path}: no dataset 'data' (has {list(handle)})")
    return handle["data"]


def _write_subjects(out: str, stories: dict[str, dict[str, Any]], files: dict[str, dict[str, Path]],
                    chunk: int, opts: StorageOptions | None, progress: bool) -> None:
    for subject, per_story in files.items():
        with ExitStack() as stack:
            arrays = {}
            for story in stories:
                if story not in per_story:
                    raise PolymodalError(f"subject {subject!r}: no responses for story {story!r}")
                arr = _open_responses(per_story[story], stack)
                if len(arr.shape) != 2:
                    raise PolymodalError(f"{per_story[story]}: responses must be (TRs, voxels), got {arr.shape}")
                n_feat = stories[story]["n_trs"]
                if arr.shape[0] != n_feat:
                    raise PolymodalError(f"{per_story[story]}: {arr.shape[0]} TRs, but the story's feature clock "
                                         f"has {n_feat}; responses must cover the same TRs (trimming happens later)")
                arrays[story] = arr
            write_responses(out, subject, arrays, chunk=chunk, opts=opts, progress=progress)


def import_huth(root: str, out: str, *, subjects: list[str] | None = None, stories: list[str] | None = None,
                chunk: int = 4096, opts: StorageOptions | None = None, progress: bool = True) -> dict[str, Any]:
    """The ds003020 ``derivative/`` folder (local) -> dataset at ``out``."""
    base = Path(root)
    respdict_path = base / "respdict.json"
    if not respdict_path.exists():
        raise PolymodalError(f"{respdict_path} not found: point --source at the ds003020 derivative/ folder")
    respdict = json.loads(respdict_path.read_text())
    names = stories or sorted(respdict)
    words, meta = {}, {}
    for story in names:
        grid = base / "TextGrids" / f"{story}.TextGrid"
        if story not in respdict or not grid.exists():
            raise PolymodalError(f"story {story!r}: needs {grid} and an entry in {respdict_path}")
        words[story] = textgrid_words(grid.read_text(errors="replace"), source=str(grid))
        _check_times(story, words[story], str(grid))
        meta[story] = {"n_trs": int(respdict[story]) - HUTH_PAD, "tr": HUTH_TR, "start_time": HUTH_START_TIME}
    subject_dirs = sorted(p for p in (base / "preprocessed_data").glob("*") if p.is_dir())
    files = {p.name: {f.stem: f for f in p.glob("*.hf5")} for p in subject_dirs
             if subjects is None or p.name in subjects}
    return _finish(out, words, meta, files, chunk, opts, progress)


def import_plain(root: str, out: str, *, chunk: int = 4096, opts: StorageOptions | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """The plain layout (see the module docstring) -> dataset at ``out``."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    base = Path(root)
    table_path = next((p for p in (base / "words.parquet", base / "words.csv") if p.exists()), None)
    if table_path is None:
        raise PolymodalError(f"{base}: needs words.parquet or words.csv (columns story, word, start, end)")
    table = pq.read_table(table_path) if table_path.suffix == ".parquet" else pcsv.read_csv(table_path)
    missing = {"story", "word", "start", "end"} - set(table.column_names)
    if missing:
        raise PolymodalError(f"{table_path}: missing columns {sorted(missing)}")
    cols = {c: table.column(c).to_pylist() for c in ("story", "word", "start", "end")}
    meta_path = base / "stories.json"
    if not meta_path.exists():
        raise PolymodalError(f"{meta_path} not found: story -> {{\"n_trs\": ..., \"tr\": ...}}")
    meta = {s: {"n_trs": int(m["n_trs"]), "tr": float(m["tr"]), "start_time": float(m.get("start_time", 0.0))}
            for s, m in json.loads(meta_path.read_text()).items()}
    words: dict[str, list[tuple[str, float, float]]] = {s: [] for s in meta}
    for row, (story, word, start, end) in enumerate(zip(*cols.values())):
        if story not in words:
            raise PolymodalError(f"{table_path}: row {row} names story {story!r}, which {meta_path} lacks")
        if word is None or str(word).strip().lower() in BAD_WORDS:
            continue
        words[story].append((str(word).strip(), float(start), float(end)))
    for story, items in words.items():
        _check_times(story, items, str(table_path))
    files = {p.name: {f.stem: f for f in sorted(p.iterdir()) if f.suffix in (".npy", ".hf5")}
             for p in sorted((base / "responses").glob("*")) if p.is_dir()}
    return _finish(out, words, meta, files, chunk, opts, progress)


def _finish(out: str, words: dict, meta: dict, files: dict, chunk: int, opts: StorageOptions | None,
            progress: bool) -> dict[str, Any]:
    if not files:
        raise PolymodalError("no subjects with responses found")
    write_words(out, words, opts)
    _write_subjects(out, meta, files, chunk, opts, progress)
    write_story_meta(out, meta, opts)
    return {"stories": len(meta), "words": sum(len(w) for w in words.values()), "subjects": sorted(files),
            "out": out}
