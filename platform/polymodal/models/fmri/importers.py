"""Story-listening data -> a polymodal fMRI dataset (words + voxel-chunked responses).

Output layout under ``out`` (local or ``s3://``)::

    stories.json                  story -> {"n_trs": feature TRs, "tr": seconds, "start_time": seconds,
                                            "response_start": TRs, "response_end": TRs}
    words/                        shard dataset: story, word, start, end (seconds)
    responses/<subject>/...       voxel-chunked responses (see polymodal.models.fmri.data)

A story's feature clock has ``n_trs`` TRs of ``tr`` seconds; TR ``k`` is the volume acquired
around ``k * tr - start_time + tr / 2`` seconds after the audio starts. Its stored responses
have ``n_trs - response_start - response_end`` rows: row 0 is feature TR ``response_start``
(the pipeline cuts the features to those TRs, :func:`~polymodal.models.fmri.features.aligned_rows`).

Three input layouts (local folders or ``s3://`` prefixes; response files on S3 are downloaded once into
the local cache, :func:`polymodal.cache.local_file`):

* **Huth lab** (``--format huth``; OpenNeuro ds003020 ``derivative/`` as released):
  ``TextGrids/{story}.TextGrid`` (words on tier index 1), ``respdict.json`` (story -> TRs) and
  ``preprocessed_data/{subject}/{story}.hf5`` (dataset ``data``, TRs x voxels). As in the lab's
  code (HuthLab/deep-fMRI-dataset ``ridge_utils/stimulus_utils.load_simulated_trfiles``,
  ``encoding_utils.apply_zscore_and_hrf``), a story's feature clock has ``respdict[story] - 5``
  TRs of 2 s starting 10 s before the audio, the features are used from TR 10 to 5 TRs before
  the end, and the ``.hf5`` rows are those TRs, untrimmed: ``respdict[story] - 20`` rows, so
  ``response_start = 10``, ``response_end = 5``.
* **Stat 214 lab report** (``--format huth-pkl``): ``raw_text.pkl`` (story -> the lab's
  ``DataSequence``: ``data`` words, ``split_inds``, ``data_times`` word midpoints, ``tr_times``
  TR midpoints, on the same clock) and ``{subject}/{story}.npy`` responses (TRs x voxels) with
  15 rows fewer than ``tr_times``; ``--response-window`` (default ``10,5``, the ds003020 rows
  they come from) places them on the clock. The pickle is read by :class:`DataSequenceUnpickler`.
* **plain** (``--format fmri-plain``): ``words.csv`` or ``words.parquet`` with columns
  ``story, word, start, end`` (seconds), ``stories.json`` (story -> {"n_trs", "tr"[,
  "start_time", "response_start", "response_end"]}, the last three 0 by default) and responses
  as ``responses/{subject}/{story}.npy`` or ``.hf5`` (dataset ``data``).

Responses are read one voxel chunk at a time (``.hf5`` column slices, ``.npy`` memory-mapped), so
a 95k-voxel subject never sits in memory whole. ``stories.json`` is written last; a rerun of the
same import (``resume``, the default) keeps what an interrupted run wrote: ``words/`` with the same
words and each voxel chunk whose manifest has the same ``import_key`` (the subject's response files
as they are now, the stories, the chunk size), so it continues with the first unfinished chunk.
"""

from __future__ import annotations

import builtins
import importlib
import json
import pickle
import re
from contextlib import ExitStack
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.cache import local_file
from polymodal.errors import PolymodalError
from polymodal.imports import ImportProgress, import_key
from polymodal.shards import ShardWriter
from polymodal.storage import StorageOptions

from .data import TASK, write_responses

# non-words in the Huth-lab TextGrids (ridge_utils/dsutils.py DEFAULT_BAD_WORDS), matched after
# stripping braces ("{SP}", "{LG}"); empty intervals are dropped too (the lab keeps them as "")
BAD_WORDS = frozenset({"sentence_start", "sentence_end", "br", "lg", "ls", "ns", "sp", ""})
HUTH_TR, HUTH_START_TIME, HUTH_PAD = 2.0, 10.0, 5
#: where ds003020's .hf5 rows sit on the feature clock: features [5 + trim : -trim] with trim 5
#: (HuthLab/deep-fMRI-dataset encoding/encoding_utils.py apply_zscore_and_hrf, encoding.py --trim 5)
HUTH_RESPONSE_WINDOW = (10, 5)


def is_word(token: str) -> bool:
    """False for the lab's non-word tokens: ``x.lower().strip("{}").strip()`` in :data:`BAD_WORDS`."""
    return token.lower().strip("{}").strip() not in BAD_WORDS

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
    """Words ``(word, start, end)`` of interval tier ``tier`` (Huth lab: 1), non-words dropped
    (:func:`is_word`), lower-cased as the lab's ``DataSequence.from_grid`` does."""
    tiers = parse_textgrid(text, source)
    if tier >= len(tiers) or tiers[tier]["class"] != "IntervalTier":
        raise PolymodalError(f"{source}: no interval tier at index {tier} (tiers: "
                             f"{[(t['name'], t['class']) for t in tiers]})")
    return [(w.strip().lower(), a, b) for a, b, w in tiers[tier]["items"] if is_word(w)]


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


def write_words(out: str, words: dict[str, list[tuple[str, float, float]]], opts: StorageOptions | None,
                key: str | None = None) -> None:
    """The ``words/`` shard dataset: one row per word (story, word, start, end in seconds); ``key``
    goes in its manifest's meta (``import_key``)."""
    columns = {"story": {"dtype": "string"}, "word": {"dtype": "string"},
               "start": {"dtype": "float64"}, "end": {"dtype": "float64"}}
    with ShardWriter(storage.join(out, "words"), task=TASK, split="words", columns=columns, opts=opts,
                     progress=False, meta={"import_key": key} if key else None) as writer:
        for story, items in words.items():
            writer.write({"story": np.array([story] * len(items), dtype=object),
                          "word": np.array([w for w, _, _ in items], dtype=object),
                          "start": np.array([a for _, a, _ in items]), "end": np.array([b for _, _, b in items])})


def write_story_meta(out: str, meta: dict[str, dict[str, Any]], opts: StorageOptions | None) -> None:
    """``stories.json``, written last: its presence marks a complete dataset."""
    storage.write_text(storage.join(out, "stories.json"), json.dumps(meta, indent=2), opts)


def _open_responses(uri: str, stack: ExitStack, opts: StorageOptions | None) -> Any:
    """An array-like (TRs, voxels) that reads column slices lazily (an ``s3://`` file is
    downloaded once into the local cache, :func:`polymodal.cache.local_file`)."""
    path = local_file(uri, opts)
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r")
    import h5py

    handle = stack.enter_context(h5py.File(path, "r"))
    if "data" not in handle:
        raise PolymodalError(f"{uri}: no dataset 'data' (has {list(handle)})")
    return handle["data"]


def _expected_rows(meta: dict[str, Any]) -> int:
    return int(meta["n_trs"]) - int(meta.get("response_start", 0)) - int(meta.get("response_end", 0))


def _check_subjects(stories: dict[str, dict[str, Any]], files: dict[str, dict[str, str]], hint: str,
                    opts: StorageOptions | None) -> None:
    """Every subject has a (TRs, voxels) file per story with the rows its story's meta expects.

    Run before anything is written, so a bad file leaves no half-imported dataset behind."""
    for subject, per_story in files.items():
        missing = [story for story in stories if story not in per_story]
        if missing:
            raise PolymodalError(f"subject {subject!r}: no responses for stories {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of {len(stories)}); "
                                 "import the subjects that heard every chosen story (--subjects) or choose "
                                 "the stories (--stories)")
        with ExitStack() as stack:
            for story, meta in stories.items():
                path = per_story[story]
                shape = tuple(_open_responses(path, stack, opts).shape)
                if len(shape) != 2:
                    raise PolymodalError(f"{path}: subject {subject!r}, story {story!r}: responses must be "
                                         f"(TRs, voxels), got shape {shape}")
                want = _expected_rows(meta)
                if shape[0] != want:
                    raise PolymodalError(
                        f"{path}: subject {subject!r}, story {story!r}: {shape[0]} response rows, expected {want} "
                        f"(a {meta['n_trs']}-TR feature clock less {meta.get('response_start', 0)} TRs before "
                        f"and {meta.get('response_end', 0)} after the responses; {hint})")


def _write_subjects(out: str, stories: dict[str, dict[str, Any]], files: dict[str, dict[str, str]],
                    chunk: int, opts: StorageOptions | None, progress: bool, resume: bool) -> None:
    """Each subject's responses; voxel chunks an interrupted run of the same import (the
    subject's response files as they are now, the same stories and chunk size) finished are kept."""
    for subject, per_story in files.items():
        key = import_key([per_story[story] for story in stories], {"subject": subject, "stories": stories,
                                                                   "chunk": chunk}, opts)
        with ExitStack() as stack:
            arrays = {story: _open_responses(per_story[story], stack, opts) for story in stories}
            write_responses(out, subject, arrays, chunk=chunk, opts=opts, progress=progress, key=key, resume=resume)


def _folders(uri: str, opts: StorageOptions | None) -> dict[str, str]:
    """name -> URI of the folders directly below ``uri`` (local or ``s3://``); none if it is absent."""
    fs, path = storage.get_fs(uri, opts)
    try:
        names = storage.listdir(uri, opts)
    except FileNotFoundError:
        return {}
    return {name: storage.join(uri, name) for name in names if fs.isdir(f"{path.rstrip('/')}/{name}")}


def _files(folder: str, suffixes: tuple[str, ...], opts: StorageOptions | None) -> dict[str, str]:
    """stem -> URI of the files in ``folder`` ending in one of ``suffixes``."""
    return {name.rsplit(".", 1)[0]: storage.join(folder, name) for name in storage.listdir(folder, opts)
            if name.endswith(suffixes)}


def _subject_files(folders: dict[str, str], suffixes: tuple[str, ...], subjects: list[str] | None,
                   opts: StorageOptions | None) -> dict[str, dict[str, str]]:
    """subject folder name -> story -> response file URI, for the chosen subjects (None: all)."""
    if subjects is not None:
        unknown = sorted(set(subjects) - set(folders))
        if unknown:
            raise PolymodalError(f"unknown subjects {unknown}; the source has {sorted(folders)}")
    return {name: _files(uri, suffixes, opts) for name, uri in folders.items() if subjects is None or name in subjects}


def _choose_stories(available: list[str], stories: list[str] | None, where: str) -> list[str]:
    if stories is None:
        return sorted(available)
    unknown = sorted(set(stories) - set(available))
    if unknown:
        raise PolymodalError(f"stories {unknown} are not in {where}")
    return list(stories)


def import_huth(root: str, out: str, *, subjects: list[str] | None = None, stories: list[str] | None = None,
                chunk: int = 4096, opts: StorageOptions | None = None, progress: bool = True,
                resume: bool = True) -> dict[str, Any]:
    """The ds003020 ``derivative/`` folder (local or ``s3://``, as released) -> dataset at ``out``.

    Every chosen subject needs ``preprocessed_data/<subject>/<story>.hf5`` with
    ``respdict[story] - 20`` rows for every chosen story (see the module docstring)."""
    respdict_path = storage.join(root, "respdict.json")
    if not storage.exists(respdict_path, opts):
        raise PolymodalError(f"{respdict_path} not found: point --source at the ds003020 derivative/ folder")
    respdict = json.loads(storage.read_text(respdict_path, opts))
    names = stories or sorted(respdict)
    before, after = HUTH_RESPONSE_WINDOW
    words, meta = {}, {}
    for story in names:
        grid = storage.join(root, "TextGrids", f"{story}.TextGrid")
        if story not in respdict or not storage.exists(grid, opts):
            raise PolymodalError(f"story {story!r}: needs {grid} and an entry in {respdict_path}")
        words[story] = textgrid_words(storage.read_bytes(grid, opts).decode("utf-8", errors="replace"), source=grid)
        _check_times(story, words[story], grid)
        n_trs = int(respdict[story]) - HUTH_PAD
        if n_trs <= before + after:
            raise PolymodalError(f"{respdict_path}: story {story!r} has {respdict[story]} TRs, too few for the "
                                 f"{HUTH_PAD}-TR pad and the {before}/{after}-TR response window")
        meta[story] = {"n_trs": n_trs, "tr": HUTH_TR, "start_time": HUTH_START_TIME,
                       "response_start": before, "response_end": after}
    files = _subject_files(_folders(storage.join(root, "preprocessed_data"), opts), (".hf5",), subjects, opts)
    hint = (f"ds003020's .hf5 files hold respdict - {HUTH_PAD + before + after} rows: the feature clock of "
            f"respdict - {HUTH_PAD} TRs cut [{before}:-{after}]")
    return _finish(out, words, meta, files, chunk, opts, progress, hint, resume)


# --------------------------------------------------------------------------- the lab report's pickle


class DataSequenceRecord:
    """What :class:`DataSequenceUnpickler` builds for a pickled ``DataSequence``: its attributes
    only (``data``, ``split_inds``, ``data_times``, ``tr_times``), none of its methods."""

    data: Any
    split_inds: Any
    data_times: Any
    tr_times: Any


#: where the lab's DataSequence class lives, as a pickle names it (the class file is
#: ridge_utils/DataSequence.py in HuthLab/deep-fMRI-dataset and in the lab report's code)
DATASEQUENCE_CLASSES = frozenset({("ridge_utils.DataSequence", "DataSequence"), ("DataSequence", "DataSequence"),
                                  ("encoding.ridge_utils.DataSequence", "DataSequence")})
_PICKLE_BUILTINS = frozenset({"dict", "list", "tuple", "int", "float", "str", "bytes", "bool"})
# the globals numpy's array and scalar pickles name (numpy 1.x and 2.x module names)
_PICKLE_NUMPY = frozenset({("numpy", "ndarray"), ("numpy", "dtype"),
                           ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                           ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                           ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")})


class DataSequenceUnpickler(pickle.Unpickler):
    """Reads ``raw_text.pkl`` without running code from it.

    ``find_class`` maps the lab's ``DataSequence`` (:data:`DATASEQUENCE_CLASSES`) to
    :class:`DataSequenceRecord`, allows builtin containers and what numpy arrays and scalars
    need, and refuses every other global, naming it. This blocks the usual payloads
    (``os.system``, ``builtins.eval``); it does not make a hostile pickle safe to read.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DATASEQUENCE_CLASSES:
            return DataSequenceRecord
        if module == "builtins" and name in _PICKLE_BUILTINS:
            return getattr(builtins, name)
        if (module, name) in _PICKLE_NUMPY:
            # numpy 2 renamed numpy.core to numpy._core; pickles written by numpy 1.x name the old one
            modern = "numpy._core." + module[len("numpy.core."):] if module.startswith("numpy.core.") else module
            return getattr(importlib.import_module(modern), name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: raw_text.pkl may only hold the lab's "
                                     "DataSequence objects (ridge_utils.DataSequence.DataSequence), builtin "
                                     "containers and numpy arrays")


def read_raw_text(path: str, opts: StorageOptions | None = None) -> dict[str, DataSequenceRecord]:
    """``raw_text.pkl`` (local or ``s3://``) -> story -> :class:`DataSequenceRecord`; every
    failure names the file."""
    try:
        with storage.open_uri(path, "rb", opts) as fh:
            obj = DataSequenceUnpickler(fh).load()
    except FileNotFoundError:
        raise PolymodalError(f"{path} not found: point --source at the folder holding raw_text.pkl") from None
    except pickle.UnpicklingError as exc:
        raise PolymodalError(f"{path}: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError, KeyError) as exc:
        raise PolymodalError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, DataSequenceRecord) for v in obj.values()):
        raise PolymodalError(f"{path}: expected a dict story -> DataSequence, got {type(obj).__name__}")
    return obj


def _sequence_story(story: str, seq: DataSequenceRecord, source: str) -> tuple[list[tuple[str, float, float]],
                                                                                 dict[str, Any]]:
    """One DataSequence -> (words with start = end = their midpoint time, clock meta)."""
    for field in ("data", "data_times", "tr_times"):
        if getattr(seq, field, None) is None:
            raise PolymodalError(f"{source}: story {story!r}: DataSequence has no {field}")
    words, times = list(seq.data), np.asarray(seq.data_times, dtype=np.float64)
    trs = np.asarray(seq.tr_times, dtype=np.float64)
    if len(words) != len(times):
        raise PolymodalError(f"{source}: story {story!r}: {len(words)} words but {len(times)} data_times")
    if trs.ndim != 1 or len(trs) < 2:
        raise PolymodalError(f"{source}: story {story!r}: tr_times must list at least 2 TRs, got shape {trs.shape}")
    steps = np.diff(trs)
    tr = float(steps.mean())
    if not np.allclose(steps, tr, atol=1e-3):
        raise PolymodalError(f"{source}: story {story!r}: tr_times are not evenly spaced "
                             f"(steps {steps.min():g}..{steps.max():g} s)")
    kept = [(str(w).strip(), float(t), float(t)) for w, t in zip(words, times) if is_word(str(w))]
    # tr_times are TR midpoints, k * tr - start_time + tr / 2 (features.tr_times)
    return kept, {"n_trs": len(trs), "tr": tr, "start_time": float(tr / 2.0 - trs[0])}


def import_huth_pickle(root: str, out: str, *, subjects: list[str] | None = None,
                       stories: list[str] | None = None, response_window: tuple[int, int] = HUTH_RESPONSE_WINDOW,
                       chunk: int = 4096, opts: StorageOptions | None = None,
                       progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """The Stat 214 lab report's data folder (``raw_text.pkl`` + ``<subject>/<story>.npy``) ->
    dataset at ``out``. ``response_window``: TRs of the feature clock (``tr_times``) before and
    after the responses (default ``(10, 5)``: the ds003020 rows they are)."""
    source = storage.join(root, "raw_text.pkl")
    sequences = read_raw_text(source, opts)
    names = _choose_stories(list(sequences), stories, source)
    before, after = (int(v) for v in response_window)
    words, meta = {}, {}
    for story in names:
        words[story], clock = _sequence_story(story, sequences[story], source)
        _check_times(story, words[story], source)
        meta[story] = {**clock, "response_start": before, "response_end": after}
    folders = {name: uri for name, uri in _folders(root, opts).items() if _files(uri, (".npy",), opts)}
    files = _subject_files(folders, (".npy",), subjects, opts)
    hint = (f"--response-window {before},{after} places them; the lab report's .npy files have "
            f"len(tr_times) - 15 rows")
    return _finish(out, words, meta, files, chunk, opts, progress, hint, resume)


def import_plain(root: str, out: str, *, chunk: int = 4096, opts: StorageOptions | None = None,
                 progress: bool = True, resume: bool = True) -> dict[str, Any]:
    """The plain layout (see the module docstring) -> dataset at ``out``."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table_path = next((uri for uri in (storage.join(root, "words.parquet"), storage.join(root, "words.csv"))
                       if storage.exists(uri, opts)), None)
    if table_path is None:
        raise PolymodalError(f"{root}: needs words.parquet or words.csv (columns story, word, start, end)")
    local = local_file(table_path, opts)
    table = pq.read_table(local) if table_path.endswith(".parquet") else pcsv.read_csv(local)
    missing = {"story", "word", "start", "end"} - set(table.column_names)
    if missing:
        raise PolymodalError(f"{table_path}: missing columns {sorted(missing)}")
    cols = {c: table.column(c).to_pylist() for c in ("story", "word", "start", "end")}
    meta_path = storage.join(root, "stories.json")
    if not storage.exists(meta_path, opts):
        raise PolymodalError(f"{meta_path} not found: story -> {{\"n_trs\": ..., \"tr\": ...}}")
    meta = {}
    for s, m in json.loads(storage.read_text(meta_path, opts)).items():
        try:
            meta[s] = {"n_trs": int(m["n_trs"]), "tr": float(m["tr"]), "start_time": float(m.get("start_time", 0.0)),
                       "response_start": int(m.get("response_start", 0)), "response_end": int(m.get("response_end", 0))}
        except (KeyError, TypeError, ValueError) as exc:
            raise PolymodalError(f"{meta_path}: story {s!r}: needs n_trs and tr (numbers), optional start_time, "
                                 f"response_start, response_end; {type(exc).__name__}: {exc}") from None
        if min(meta[s]["response_start"], meta[s]["response_end"]) < 0 or _expected_rows(meta[s]) < 1:
            raise PolymodalError(f"{meta_path}: story {s!r}: response_start {meta[s]['response_start']} and "
                                 f"response_end {meta[s]['response_end']} leave no response rows of its "
                                 f"{meta[s]['n_trs']} TRs")
    words: dict[str, list[tuple[str, float, float]]] = {s: [] for s in meta}
    for row, (story, word, start, end) in enumerate(zip(*cols.values())):
        if story not in words:
            raise PolymodalError(f"{table_path}: row {row} names story {story!r}, which {meta_path} lacks")
        if word is None or not is_word(str(word)):
            continue
        words[story].append((str(word).strip(), float(start), float(end)))
    for story, items in words.items():
        _check_times(story, items, table_path)
    files = _subject_files(_folders(storage.join(root, "responses"), opts), (".npy", ".hf5"), None, opts)
    hint = "set response_start / response_end in stories.json where the responses cover part of the clock"
    return _finish(out, words, meta, files, chunk, opts, progress, hint, resume)


def _finish(out: str, words: dict, meta: dict, files: dict, chunk: int, opts: StorageOptions | None,
            progress: bool, hint: str, resume: bool) -> dict[str, Any]:
    """Write ``words/``, each subject's responses, then ``stories.json`` (last). A rerun of the same
    import (``resume``) keeps what an interrupted or finished run already wrote: ``words/`` with
    the same words, each voxel chunk with the same response files, an identical ``stories.json``."""
    if not files:
        raise PolymodalError("no subjects with responses found")
    _check_subjects(meta, files, hint, opts)
    stories_uri, stories_text = storage.join(out, "stories.json"), json.dumps(meta, indent=2)
    found = storage.exists(stories_uri, opts)
    same = resume and found and storage.read_text(stories_uri, opts) == stories_text
    if found and not same:
        storage.remove(stories_uri, opts=opts)  # the dataset is incomplete until it is written again, last
    words_key = import_key([], {"words": words, "stories": meta})
    if ImportProgress(storage.join(out, "words"), words_key, opts, resume=resume).finished(quiet=True) is None:
        write_words(out, words, opts, key=words_key)
    _write_subjects(out, meta, files, chunk, opts, progress, resume)
    if not same:
        write_story_meta(out, meta, opts)
    return {"stories": len(meta), "words": sum(len(w) for w in words.values()), "subjects": sorted(files),
            "out": out}
