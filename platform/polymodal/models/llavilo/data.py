"""The LLaViLo moment-retrieval dataset: one row per (video, query) pair, fixed-shape columns.

Schema (``task = "llavilo.moment_retrieval"``; shapes are per row)
-----------------------------------------------------------------
==============  ===============================  ==============================================
column          type                             meaning
==============  ===============================  ==============================================
``qid``         int64                            query id (unique within the dataset)
``vid``         string                           video id (several queries may share one)
``query``       string                           the raw sentence, for a text encoder run later
``duration``    float32                          video length in seconds
``n_clips``     int32                            clips with features (the rest is padding)
``video``       float32[max_clips, D]            clip features, zero-padded (see below)
``video_mask``  bool[max_clips]                  True on the first ``n_clips`` clips
``windows``     float32[max_windows, 2]          GT ``[start, end]`` in seconds, zero-padded
``n_windows``   int32                            real rows of ``windows`` (0: unlabelled split)
``saliency``    float32[max_clips]               optional: mean annotator score per clip
``text``        float32[max_words, Dt]           optional: precomputed token features
``text_mask``   bool[max_words]                  optional, with ``text``: True on real tokens
==============  ===============================  ==============================================

Video features follow Moment-DETR (``jayleicn/moment_detr: moment_detr/start_end_dataset.py``):
each source (e.g. SlowFast 2304-d, CLIP 512-d) is cut to ``max_clips`` and L2-normalised per
clip, the sources are trimmed to the shortest and concatenated, and with ``tef`` two temporal
endpoint features ``[i / L, (i + 1) / L]`` are appended to clip ``i`` of the ``L`` kept clips
(``ctx_mode=video_tef``: D = 2304 + 512 + 2 = 2818). Text token features are cut to
``max_words`` (Moment-DETR ``max_q_l = 32``) and L2-normalised per token.

The manifest ``meta`` records ``clip_length`` (s), ``feature_dims`` (per source, before tef),
``tef``, and for the QVHighlights/Charades importers where the data came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polymodal.config import StorageOptions
from polymodal.shards import ColumnSpec, iter_local_batches, open_dataset

__all__ = [
    "TASK", "QVH_CLIP_LENGTH", "QVH_MAX_CLIPS", "CHARADES_CLIP_LENGTH", "MAX_WORDS", "L2_EPS",
    "l2_normalize", "temporal_endpoint_features", "prepare_video", "prepare_text", "pad_windows",
    "saliency_vector", "moment_columns", "read_all",
]

TASK = "llavilo.moment_retrieval"
#: QVHighlights: 2-s clips, 150-s videos -> 75 clips (Moment-DETR clip_len=2, max_v_l=75)
QVH_CLIP_LENGTH = 2.0
QVH_MAX_CLIPS = 75
#: Charades-STA: 1-s clips (lighthouse configs/base.yml clip_length)
CHARADES_CLIP_LENGTH = 1.0
#: Moment-DETR max_q_l
MAX_WORDS = 32
#: Moment-DETR's l2_normalize_np_array adds this to the norm (so all-zero rows stay zero)
L2_EPS = 1e-5


def l2_normalize(x: np.ndarray, eps: float = L2_EPS) -> np.ndarray:
    """Rows of ``x`` (..., D) divided by ``norm + eps``, as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + np.float32(eps))


def temporal_endpoint_features(n_clips: int) -> np.ndarray:
    """(n_clips, 2) float32: clip i -> ``[i / L, (i + 1) / L]`` with ``L = n_clips``."""
    start = np.arange(n_clips, dtype=np.float32) / np.float32(max(n_clips, 1))
    return np.stack([start, start + np.float32(1.0 / max(n_clips, 1))], axis=1)


def prepare_video(sources: Sequence[np.ndarray], max_clips: int, *, tef: bool = True,
                  normalize: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-clip features of one video from several sources, Moment-DETR style.

    Parameters
    ----------
    sources : list of arrays shaped (L_s, D_s), one per feature source (same clips, same order)
    max_clips : rows of the output; longer videos are cut
    tef : append ``[i / L, (i + 1) / L]`` to each kept clip (L = clips kept, before padding)
    normalize : L2-normalise each source per clip before concatenating

    Returns
    -------
    video : float32 (max_clips, sum_s D_s [+ 2]), zero rows after the kept clips
    mask : bool (max_clips,), True on the kept clips
    n_clips : int, clips kept = min(max_clips, min_s L_s)
    """
    if not sources:
        raise ValueError("prepare_video needs at least one feature source")
    parts = []
    for i, src in enumerate(sources):
        arr = np.asarray(src, dtype=np.float32)
        if arr.ndim != 2:
            raise ValueError(f"feature source {i} must be (clips, dim), got shape {list(arr.shape)}")
        arr = arr[:max_clips]
        parts.append(l2_normalize(arr) if normalize else arr)
    # Sources of one video may differ by a clip or two (different extractors); keep the overlap.
    n = min(p.shape[0] for p in parts)
    feats = np.concatenate([p[:n] for p in parts], axis=1)  # (n, sum D_s)
    if tef:
        feats = np.concatenate([feats, temporal_endpoint_features(n)], axis=1)
    video = np.zeros((max_clips, feats.shape[1]), dtype=np.float32)
    video[:n] = feats
    mask = np.zeros(max_clips, dtype=bool)
    mask[:n] = True
    return video, mask, n


def prepare_text(tokens: np.ndarray, max_words: int = MAX_WORDS, *,
                 normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(L, Dt) token features (or a pooled (Dt,) vector = one token) -> padded (max_words, Dt), mask."""
    arr = np.asarray(tokens, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"text features must be (tokens, dim) or (dim,), got shape {list(arr.shape)}")
    arr = arr[:max_words]
    if normalize:
        arr = l2_normalize(arr)
    out = np.zeros((max_words, arr.shape[1]), dtype=np.float32)
    out[:len(arr)] = arr
    mask = np.zeros(max_words, dtype=bool)
    mask[:len(arr)] = True
    return out, mask


def pad_windows(windows: np.ndarray | Sequence[Sequence[float]], max_windows: int) -> tuple[np.ndarray, int]:
    """(n, 2) windows in seconds -> zero-padded float32 (max_windows, 2) and n (must be <= max_windows)."""
    arr = np.asarray(windows, dtype=np.float32).reshape(-1, 2)
    if len(arr) > max_windows:
        raise ValueError(f"{len(arr)} windows do not fit max_windows={max_windows}; raise max_windows")
    out = np.zeros((max_windows, 2), dtype=np.float32)
    out[:len(arr)] = arr
    return out, len(arr)


def saliency_vector(clip_ids: Sequence[int], scores: np.ndarray, max_clips: int) -> np.ndarray:
    """Per-clip saliency (max_clips,) float32: the annotators' mean on ``clip_ids``, 0 elsewhere.

    ``scores`` is (len(clip_ids), n_annotators); ids at or past ``max_clips`` are dropped (the
    clip has no features).
    """
    out = np.zeros(max_clips, dtype=np.float32)
    ids = np.asarray(clip_ids, dtype=np.int64)
    mean = np.asarray(scores, dtype=np.float32).reshape(len(ids), -1).mean(axis=1)
    keep = ids < max_clips
    out[ids[keep]] = mean[keep]
    return out


def moment_columns(*, max_clips: int, video_dim: int, max_windows: int, saliency: bool,
                   text_shape: tuple[int, int] | None = None) -> dict[str, ColumnSpec]:
    """The column specs of a moment-retrieval dataset (see the module table)."""
    cols = {
        "qid": ColumnSpec(dtype="int64"),
        "vid": ColumnSpec(dtype="string"),
        "query": ColumnSpec(dtype="string"),
        "duration": ColumnSpec(dtype="float32"),
        "n_clips": ColumnSpec(dtype="int32"),
        "video": ColumnSpec(dtype="float32", shape=[max_clips, video_dim]),
        "video_mask": ColumnSpec(dtype="bool", shape=[max_clips]),
        "windows": ColumnSpec(dtype="float32", shape=[max_windows, 2]),
        "n_windows": ColumnSpec(dtype="int32"),
    }
    if saliency:
        cols["saliency"] = ColumnSpec(dtype="float32", shape=[max_clips])
    if text_shape is not None:
        cols["text"] = ColumnSpec(dtype="float32", shape=list(text_shape))
        cols["text_mask"] = ColumnSpec(dtype="bool", shape=[text_shape[0]])
    return cols


def read_all(uri: str, opts: StorageOptions | None = None,
             columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Every row of a (small) dataset in manifest order, as ``{column: (rows, *shape)}``.

    Meant for evaluation ground truth and tests; training streams with
    :func:`polymodal.shards.iter_local_batches` or Ray Data instead.
    """
    manifest = open_dataset(uri, opts)
    if columns is not None:
        unknown = sorted(set(columns) - set(manifest.columns))
        if unknown:
            raise ValueError(f"dataset {uri} has no columns {unknown}; it has {sorted(manifest.columns)}")
        manifest = manifest.model_copy(update={"columns": {c: manifest.columns[c] for c in columns}})
    batches = list(iter_local_batches(uri, 4096, manifest=manifest, shuffle=False, opts=opts))
    if not batches:
        return {name: np.zeros((0, *spec.shape), dtype=spec.numpy_dtype) for name, spec in manifest.columns.items()}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
