"""The official QVHighlights evaluation: moment retrieval (MR) and highlight detection (HL).

Re-implements the protocol of ``jayleicn/moment_detr:standalone_eval/eval.py`` and ``utils.py``
(Lei et al., 'QVHighlights: Detecting Moments and Highlights in Videos via Natural Language
Queries', NeurIPS 2021) so that a submission scores the same numbers as on the official
evaluator, quirks included. Pure numpy; files are read through :mod:`polymodal.storage`.

Rows (JSON Lines)
-----------------
submission: ``{"qid", "pred_relevant_windows": [[st, ed, score], ...] (best first),
"pred_saliency_scores": [one float per 2-s clip]}``;
ground truth: ``{"qid", "duration", "relevant_windows": [[st, ed], ...], "relevant_clip_ids": [...],
"saliency_scores": [[a1, a2, a3], ...]}`` (times in seconds, saliency 0-4 from 3 annotators).

Moment retrieval
----------------
- **mAP.** Per query, the first ``max_pred_windows`` (10) predicted windows are sorted by score
  (stable). Each one, in that order, is matched to the unmatched ground-truth window of highest
  IoU if that IoU reaches the threshold (ties go to the later GT window, the order the official
  code visits them in), giving a TP/FP sequence. AP is the VOC-2011 interpolated AP of that
  sequence, ``sum_{TP k} max_{j >= k} precision_j / n_gt``. APs are averaged over queries for
  each IoU threshold in 0.5:0.05:0.95, then over thresholds ("average").
- **R1@t.** The *first listed* predicted window of each query (the official code assumes the
  list is sorted by score) is paired with the GT window of highest IoU (the first one on ties),
  and counts as a hit when their *paired* IoU reaches t. The official paired IoU divides by
  ``max(ed) - min(st)``, the enclosing length, instead of the union ('not the correct union
  though', says its comment). For valid windows the two are the same number -- they differ only
  when the windows are disjoint, and then the intersection is 0 -- but the float arithmetic
  differs, so we compute it the official way to compare with t bit for bit.
- **Length buckets.** short (0, 10], middle (10, 30], long (30, 150] seconds: a query takes part
  when at least one of its GT windows has a length in the range, and only those windows count
  as its ground truth (its predictions are unchanged). "full" keeps every query and window.
  The Charades-STA-style protocol (``line/lighthouse:training/standalone_eval/eval.py``) has
  the single bucket "full" = (0, 1500] -- a real filter, so zero-length GT windows drop out --
  and no HL.

Highlight detection
-------------------
The GT saliency of a video is a (n_clips, 3) matrix, ``n_clips = int(duration / 2)``, with the
annotators' scores on ``relevant_clip_ids`` and 0 elsewhere; a clip is positive for annotator a at
level Fair / Good / VeryGood when its score is >= 2 / 3 / 4. The prediction vector is cut or
zero-padded to n_clips.

- **HL-mAP**: AP per (query, annotator), averaged over all of them. The official AP (video2gif's
  ``get_ap``): walk the PR curve (one point per distinct score), interpolate each precision as
  the maximum precision at equal or higher recall, and take the *plain mean* of the
  interpolated precision at every point where recall increases. All-negative labels give 0,
  all-positive labels 1.
- **HL-Hit1**: the clip of highest predicted score (first one on ties, over the uncut list) is a
  hit when at least one annotator marks it positive; averaged over queries.

All reported numbers are percentages rounded to 2 decimals.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from polymodal import storage
from polymodal.errors import PolymodalError

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(float(t), 2) for t in np.linspace(0.5, 0.95, 10))
# (name, minimum GT saliency score of a positive clip), as in the official eval_highlight
SALIENCY_LEVELS: tuple[tuple[str, int], ...] = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
_SHOW = 5  # how many offending qids / problems an error message lists


class EvalInputError(PolymodalError, ValueError):
    """A submission or ground-truth file cannot be evaluated; the message names the file, line or qid."""


class QidMismatchError(EvalInputError):
    """The submission's qids differ from the ground truth's; ``missing`` and ``extra`` hold them."""

    def __init__(self, missing: Sequence[Any], extra: Sequence[Any], submission: str = "submission",
                 ground_truth: str = "ground truth"):
        self.missing = list(missing)
        self.extra = list(extra)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} ground-truth qid(s) missing from the submission: "
                         f"{_preview(self.missing)}")
        if self.extra:
            parts.append(f"{len(self.extra)} submission qid(s) not in the ground truth: {_preview(self.extra)}")
        super().__init__(f"{submission} does not match {ground_truth}: " + "; ".join(parts)
                         + ". Predict every ground-truth query exactly once, against the ground truth of the "
                           "same split")


def _preview(items: Sequence[Any]) -> str:
    shown = ", ".join(repr(x) for x in items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _raise_problems(problems: list[str], where: str) -> None:
    if not problems:
        return
    head = "; ".join(problems[:_SHOW])
    more = f"; ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
    raise EvalInputError(f"{where}: {len(problems)} problem(s): {head}{more}")


@dataclass(frozen=True)
class Protocol:
    """What gets evaluated.

    ``buckets``: (name, (min_len, max_len) or None); a window counts in a bucket when
    ``min_len < end - start <= max_len``; None means every query and window, unfiltered. One
    bucket must be called "full" (it feeds R1 and the full-set mAPs of the brief).
    """

    name: str
    buckets: tuple[tuple[str, tuple[float, float] | None], ...]
    highlights: bool
    max_pred_windows: int = 10
    clip_length: float = 2.0  # seconds per saliency clip
    iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS
    saliency_levels: tuple[tuple[str, int], ...] = SALIENCY_LEVELS

    def __post_init__(self):
        names = [name for name, _ in self.buckets]
        if "full" not in names or len(set(names)) != len(names):
            raise ValueError(f"protocol {self.name!r}: bucket names must be unique and include 'full', got {names}")
        if self.max_pred_windows < 1:
            raise ValueError(f"protocol {self.name!r}: max_pred_windows must be >= 1, got {self.max_pred_windows}")
        for t in (0.5, 0.7):
            if t not in self.iou_thresholds:
                raise ValueError(f"protocol {self.name!r}: iou_thresholds must include {t} (reported in the brief)")


PROTOCOLS: dict[str, Protocol] = {
    # jayleicn/moment_detr standalone_eval/eval.py: length_ranges [[0,10],[10,30],[30,150],[0,150]];
    # its [0, 150] "full" range returns the data unfiltered, hence None here.
    "qvhighlights": Protocol("qvhighlights", (("short", (0.0, 10.0)), ("middle", (10.0, 30.0)),
                                              ("long", (30.0, 150.0)), ("full", None)), highlights=True),
    # line/lighthouse training/standalone_eval/eval.py: length_ranges [[0, 1500]] for Charades-STA,
    # TACoS, ActivityNet Captions (videos longer than 150 s); no saliency labels.
    "charades": Protocol("charades", (("full", (0.0, 1500.0)),), highlights=False),
}


def get_protocol(protocol: str | Protocol) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return PROTOCOLS[protocol]
    except (KeyError, TypeError):
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)} "
                         "(or pass a Protocol)") from None


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def load_jsonl(uri: str, opts: storage.StorageOptions | None = None) -> list[dict]:
    """Rows of a JSON Lines file (local path or s3:// URI); blank lines are skipped.

    Raises :class:`EvalInputError` naming the file and line of a row that is not a JSON object.
    """
    rows = []
    # split on "\n" only: str.splitlines() would also break at U+2028 etc., legal inside JSON strings
    for lineno, line in enumerate(storage.read_text(uri, opts).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{uri} line {lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                                 "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise EvalInputError(f"{uri} line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise EvalInputError(f"{uri} has no rows; expected one JSON object per line")
    return rows


# --------------------------------------------------------------------------------------------
# Metric primitives (pure numpy)
# --------------------------------------------------------------------------------------------

def temporal_iou_cross(windows1: np.ndarray, windows2: np.ndarray) -> np.ndarray:
    """IoU of every (start, end) window in windows1 (N, 2) with every one in windows2 (M, 2) -> (N, M).

    Same arithmetic as the official ``compute_temporal_iou_batch_cross`` (so thresholds compare
    bit-identically), except that an empty union gives 0 instead of NaN.
    """
    len1 = windows1[:, 1] - windows1[:, 0]
    len2 = windows2[:, 1] - windows2[:, 0]
    left = np.maximum(windows1[:, None, 0], windows2[None, :, 0])
    right = np.minimum(windows1[:, None, 1], windows2[None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = len1[:, None] + len2[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=float), where=union != 0)


def temporal_iou_paired_official(windows1: np.ndarray, windows2: np.ndarray) -> np.ndarray:
    """Row-wise IoU as the official R1 computes it: intersection / (max(ed) - min(st)); (N, 2), (N, 2) -> (N,).

    The enclosing length equals the union whenever the windows overlap or touch, and the
    intersection is 0 when they do not, so this is the IoU; only the float rounding can differ
    from :func:`temporal_iou_cross`, which matters for values right at a threshold.
    """
    inter = np.maximum(0.0, np.minimum(windows1[:, 1], windows2[:, 1]) - np.maximum(windows1[:, 0], windows2[:, 0]))
    enclosing = np.maximum(windows1[:, 1], windows2[:, 1]) - np.minimum(windows1[:, 0], windows2[:, 0])
    return np.divide(inter, enclosing, out=np.zeros_like(inter, dtype=float), where=enclosing != 0)


def interpolated_ap(tp: np.ndarray, n_gt: int) -> np.ndarray:
    """VOC-2011 interpolated AP of ranked detections.

    tp : (T, P) bool, whether the k-th ranked prediction is a true positive (per threshold row)
    n_gt : number of ground-truth windows (> 0)

    Returns (T,): ``sum over TP ranks k of max_{j >= k} precision_j``, divided by n_gt -- the area
    under the precision envelope, since recall rises by 1/n_gt at every TP.
    """
    tp = np.atleast_2d(tp)
    precision = np.cumsum(tp, axis=1) / np.arange(1, tp.shape[1] + 1)  # (T, P)
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    return (envelope * tp).sum(axis=1) / n_gt


def greedy_matches(pred_windows: np.ndarray, gt_windows: np.ndarray,
                   iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """TP flags of the official greedy matching.

    pred_windows (P, 3) [st, ed, score], gt_windows (G, 2) -> tp (T, P), predictions in
    descending score order (stable on ties). A prediction is a TP at threshold t when an
    unmatched GT window has IoU >= t with it; it then takes the one of highest IoU (the later
    one on ties).
    """
    order = np.argsort(-pred_windows[:, 2], kind="stable")
    iou = temporal_iou_cross(pred_windows[order, :2], gt_windows)  # (P, G)
    thr = np.asarray(iou_thresholds, dtype=float)[:, None]  # (T, 1)
    n_thr, n_pred, n_gt = len(thr), len(order), gt_windows.shape[0]
    taken = np.zeros((n_thr, n_gt), dtype=bool)
    tp = np.zeros((n_thr, n_pred), dtype=bool)
    for k in range(n_pred):
        ok = (iou[k] >= thr) & ~taken  # (T, G) GT windows this prediction may take
        hit = np.flatnonzero(ok.any(axis=1))
        if hit.size == 0:
            continue
        masked = np.where(ok[hit], iou[k], -1.0)[:, ::-1]  # reversed so argmax picks the later GT on ties
        j = n_gt - 1 - masked.argmax(axis=1)
        taken[hit, j] = True
        tp[hit, k] = True
    return tp


def moment_average_precision(pred_windows: np.ndarray, gt_windows: np.ndarray,
                             iou_thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """Per-query MR AP at each IoU threshold: pred (P, 3) [st, ed, score], gt (G >= 1, 2) -> (T,)."""
    if pred_windows.shape[0] == 0:
        return np.zeros(len(iou_thresholds))
    return interpolated_ap(greedy_matches(pred_windows, gt_windows, iou_thresholds), gt_windows.shape[0])


def highlight_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """The official HL AP (video2gif ``get_ap``, interpolated, not 11-point) of one label vector.

    labels (C,) in {0, 1}, scores (C,). The PR curve has one point per distinct score
    (thresholds in descending order); each precision is replaced by the maximum precision at
    equal or higher recall, and AP is the plain mean of those values over the points where
    recall increases. All-negative labels give 0, all-positive labels 1.
    """
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return 0.0
    if n_pos == labels.size:
        return 1.0
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s, y = np.asarray(scores, dtype=float)[order], labels[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # one PR point per distinct score
    tps = np.cumsum(y)[last_of_tie]
    ranks = np.arange(1, s.size + 1)[last_of_tie]
    envelope = np.maximum.accumulate((tps / ranks)[::-1])[::-1]
    recall_rises = np.diff(np.r_[0, tps]) > 0
    return float(envelope[recall_rises].mean())


# --------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _windows(value: Any, width: int, qid: Any, key: str, problems: list[str], *, allow_empty: bool) -> np.ndarray:
    """(n, width) float array of [st, ed(, score)] windows, or an empty array after logging a problem."""
    fmt = "[start, end, score]" if width == 3 else "[start, end]"
    if not isinstance(value, list) or (not value and not allow_empty):
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        problems.append(f"qid {qid!r}: {key} must be a non-empty list of {fmt} windows, got {got}")
        return np.zeros((0, width))
    for i, w in enumerate(value):
        if not isinstance(w, list) or len(w) != width or not all(_is_number(v) for v in w):
            problems.append(f"qid {qid!r}: {key}[{i}] = {w!r} is not {fmt} (finite numbers)")
            return np.zeros((0, width))
        if w[1] < w[0]:
            problems.append(f"qid {qid!r}: {key}[{i}] = {w!r} ends before it starts; need end >= start (seconds)")
            return np.zeros((0, width))
    return np.asarray(value, dtype=float).reshape(len(value), width)


def _index_rows(rows: Iterable[Mapping], name: str) -> dict[Any, Mapping]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise EvalInputError(f"{name} must be a list of row dicts, got {type(rows).__name__}")
    out: dict[Any, Mapping] = {}
    problems: list[str] = []
    dup: Counter = Counter()
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "qid" not in row:
            problems.append(f"row {i}: expected an object with a 'qid', got {str(row)[:80]}")
            continue
        qid = row["qid"]
        if not isinstance(qid, (int, str)) or isinstance(qid, bool):
            problems.append(f"row {i}: qid must be an int or a string, got {qid!r}")
            continue
        if qid in out:
            dup[qid] += 1
        out[qid] = row
    problems += [f"qid {q!r} appears {n + 1} times; each query must have exactly one row" for q, n in dup.items()]
    _raise_problems(problems, name)
    if not out:
        raise EvalInputError(f"{name} has no rows")
    return out


def _all_or_none(rows: Mapping[Any, Mapping], key: str, name: str) -> bool:
    """True when every row has ``key``, False when none has; mixed -> EvalInputError naming the qids."""
    lacking = [qid for qid, row in rows.items() if key not in row]
    if len(lacking) == len(rows):
        return False
    if lacking:
        raise EvalInputError(f"{name}: {len(lacking)} of {len(rows)} rows have no {key!r} (qids {_preview(lacking)}); "
                             f"give it for every query or for none")
    return True


def _gt_saliency(row: Mapping, qid: Any, clip_length: float, problems: list[str]) -> np.ndarray | None:
    """(n_clips, n_annotators) GT saliency of one video, the official ``mk_gt_scores``."""
    duration, clip_ids, scores = row.get("duration"), row.get("relevant_clip_ids"), row.get("saliency_scores")
    if not _is_number(duration) or duration <= 0:
        problems.append(f"qid {qid!r}: duration must be a positive number of seconds, got {duration!r}")
        return None
    n_clips = int(duration / clip_length)
    if not isinstance(clip_ids, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in clip_ids):
        problems.append(f"qid {qid!r}: relevant_clip_ids must be a list of ints, got {str(clip_ids)[:80]}")
        return None
    bad = [c for c in clip_ids if not 0 <= c < n_clips]
    if bad:
        problems.append(f"qid {qid!r}: relevant_clip_ids {bad[:_SHOW]} outside [0, {n_clips}) for duration "
                        f"{duration} s ({clip_length:g}-s clips)")
        return None
    if (not isinstance(scores, list) or len(scores) != len(clip_ids) or not scores
            or not all(isinstance(s, list) and s and len(s) == len(scores[0]) and all(_is_number(v) for v in s)
                       for s in scores)):
        problems.append(f"qid {qid!r}: saliency_scores must hold one equal-length list of annotator scores per "
                        f"relevant clip id ({len(clip_ids)} ids), got {str(scores)[:80]}")
        return None
    full = np.zeros((n_clips, len(scores[0])))
    full[np.asarray(clip_ids, dtype=int)] = np.asarray(scores, dtype=float)
    return full


@dataclass
class _Query:
    qid: Any
    pred: np.ndarray | None = None  # (P, 3) windows in submission order
    gt: np.ndarray | None = None  # (G, 2)
    saliency_pred: np.ndarray | None = None  # (L,)
    saliency_gt: np.ndarray | None = None  # (n_clips, n_annotators)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------

def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * float(x), 2)


def _bucket_queries(queries: list[_Query], bounds: tuple[float, float] | None) -> list[tuple[_Query, np.ndarray]]:
    if bounds is None:
        return [(q, q.gt) for q in queries]
    lo, hi = bounds
    kept = []
    for q in queries:
        lengths = q.gt[:, 1] - q.gt[:, 0]
        in_range = q.gt[(lengths > lo) & (lengths <= hi)]
        if len(in_range):
            kept.append((q, in_range))
    return kept


def _moment_retrieval(queries: list[_Query], bounds: tuple[float, float] | None, protocol: Protocol) -> dict:
    thresholds = protocol.iou_thresholds
    keys = [str(t) for t in thresholds]
    selected = _bucket_queries(queries, bounds)
    if not selected:  # the official code would divide by zero here; report the bucket as empty
        return {"MR-mAP": {**{k: None for k in keys}, "average": None}, "MR-R1": {k: None for k in keys},
                "num_queries": 0}
    ap = np.stack([moment_average_precision(q.pred[:protocol.max_pred_windows], gt, thresholds)
                   for q, gt in selected])  # (N, T)
    per_threshold = ap.mean(axis=0)
    mr_map = {k: _pct(v) for k, v in zip(keys, per_threshold)}
    mr_map["average"] = _pct(per_threshold.mean())

    top1 = np.stack([q.pred[0, :2] for q, _ in selected])  # (N, 2)
    best_gt = np.stack([gt[temporal_iou_cross(top1[i:i + 1], gt)[0].argmax()] for i, (_, gt) in enumerate(selected)])
    paired = temporal_iou_paired_official(top1, best_gt)  # (N,)
    mr_r1 = {k: _pct(np.mean(paired >= t)) for k, t in zip(keys, thresholds)}
    return {"MR-mAP": mr_map, "MR-R1": mr_r1, "num_queries": len(selected)}


def _highlights(queries: list[_Query], min_score: int) -> dict:
    aps, hits = [], []
    for q in queries:
        positive = q.saliency_gt >= min_score  # (n_clips, A)
        n_clips = positive.shape[0]
        pred = np.zeros(n_clips)
        pred[:min(n_clips, q.saliency_pred.size)] = q.saliency_pred[:n_clips]
        aps += [highlight_average_precision(positive[:, a], pred) for a in range(positive.shape[1])]
        top = int(np.argmax(q.saliency_pred))  # over the uncut prediction, as the official Hit@1
        hits.append(bool(top < n_clips and positive[top].any()))
    return {"HL-mAP": _pct(np.mean(aps)), "HL-Hit1": _pct(np.mean(hits))}


def evaluate(submission: Iterable[Mapping], ground_truth: Iterable[Mapping], *,
             protocol: str | Protocol = "qvhighlights", match_qids: bool = True,
             submission_name: str = "submission", ground_truth_name: str = "ground truth") -> dict:
    """Score a submission against the ground truth with the official QVHighlights protocol.

    Parameters
    ----------
    submission, ground_truth : lists of row dicts (see the module docstring)
    protocol : "qvhighlights" (4 length buckets + HL), "charades" (one unfiltered-to-1500-s
        "full" bucket, R1/mAP only, no HL), or a :class:`Protocol`
    match_qids : if True (the official default) the two qid sets must be equal, else
        :class:`QidMismatchError`; if False only the shared qids are scored
    submission_name, ground_truth_name : how error messages name the two inputs (e.g. paths)

    Returns
    -------
    ``{"brief": {...}, <section>: {...}, ...}`` as the official evaluator writes it: "brief" first
    (MR keys sorted, then ``HL-min-{Fair,Good,VeryGood}-{mAP,Hit1}``), then the sections in
    sorted order -- ``HL-min-<level>: {"HL-mAP", "HL-Hit1"}`` and ``<bucket>: {"MR-mAP": {"0.5",
    ..., "0.95", "average"}, "MR-R1": {"0.5", ...}, "num_queries"}``. MR is evaluated when the
    submission has ``pred_relevant_windows``; HL when the protocol has highlights, the submission
    has ``pred_saliency_scores`` and the ground truth has ``saliency_scores``. A bucket with no
    query reports None.
    """
    protocol = get_protocol(protocol)
    sub = _index_rows(submission, submission_name)
    gt = _index_rows(ground_truth, ground_truth_name)
    missing = [q for q in gt if q not in sub]
    extra = [q for q in sub if q not in gt]
    if match_qids and (missing or extra):
        raise QidMismatchError(missing, extra, submission_name, ground_truth_name)
    qids = [q for q in gt if q in sub]
    if not qids:
        raise EvalInputError(f"{submission_name} and {ground_truth_name} share no qid")
    sub = {q: sub[q] for q in qids}
    gt = {q: gt[q] for q in qids}

    do_mr = _all_or_none(sub, "pred_relevant_windows", submission_name)
    do_hl = (protocol.highlights and _all_or_none(sub, "pred_saliency_scores", submission_name)
             and _all_or_none(gt, "saliency_scores", ground_truth_name))
    if not do_mr and not do_hl:
        raise EvalInputError(f"nothing to evaluate: {submission_name} has no 'pred_relevant_windows'"
                             + (" and no 'pred_saliency_scores' with GT saliency" if protocol.highlights else ""))

    queries = [_Query(q) for q in qids]
    sub_problems: list[str] = []
    gt_problems: list[str] = []
    for query in queries:
        s, g = sub[query.qid], gt[query.qid]
        if do_mr:
            query.pred = _windows(s["pred_relevant_windows"], 3, query.qid, "pred_relevant_windows", sub_problems,
                                  allow_empty=False)
            query.gt = _windows(g.get("relevant_windows"), 2, query.qid, "relevant_windows", gt_problems,
                                allow_empty=False)
        if do_hl:
            scores = s["pred_saliency_scores"]
            if not isinstance(scores, list) or not scores or not all(_is_number(v) for v in scores):
                sub_problems.append(f"qid {query.qid!r}: pred_saliency_scores must be a non-empty list of finite "
                                    f"numbers (one per {protocol.clip_length:g}-s clip), got {str(scores)[:80]}")
            else:
                query.saliency_pred = np.asarray(scores, dtype=float)
            query.saliency_gt = _gt_saliency(g, query.qid, protocol.clip_length, gt_problems)
    _raise_problems(sub_problems, submission_name)
    _raise_problems(gt_problems, ground_truth_name)

    brief: dict[str, float | None] = {}
    sections: dict[str, dict] = {}
    if do_mr:
        for name, bounds in protocol.buckets:
            sections[name] = _moment_retrieval(queries, bounds, protocol)
        mr_brief = {f"MR-{name}-mAP": sections[name]["MR-mAP"]["average"] for name, _ in protocol.buckets}
        full = sections["full"]
        mr_brief.update({"MR-full-mAP@0.5": full["MR-mAP"].get("0.5"), "MR-full-mAP@0.75": full["MR-mAP"].get("0.75"),
                         "MR-full-R1@0.5": full["MR-R1"]["0.5"], "MR-full-R1@0.7": full["MR-R1"]["0.7"]})
        brief.update(sorted(mr_brief.items()))
    if do_hl:
        n_annotators = {q.saliency_gt.shape[1] for q in queries}
        if len(n_annotators) > 1:
            raise EvalInputError(f"{ground_truth_name}: saliency_scores rows must have the same number of "
                                 f"annotators in every query, got {sorted(n_annotators)}")
        for level, min_score in protocol.saliency_levels:
            section = sections[f"HL-min-{level}"] = _highlights(queries, min_score)
            brief[f"HL-min-{level}-mAP"] = section["HL-mAP"]
            brief[f"HL-min-{level}-Hit1"] = section["HL-Hit1"]
    return {"brief": brief, **dict(sorted(sections.items()))}


def evaluate_files(submission_uri: str, ground_truth_uri: str, *, protocol: str | Protocol = "qvhighlights",
                   match_qids: bool = True, opts: storage.StorageOptions | None = None) -> dict:
    """:func:`evaluate` on two JSON Lines files (local paths or s3:// URIs); errors name the files."""
    return evaluate(load_jsonl(submission_uri, opts), load_jsonl(ground_truth_uri, opts), protocol=protocol,
                    match_qids=match_qids, submission_name=submission_uri, ground_truth_name=ground_truth_uri)
