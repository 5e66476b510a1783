"""Span utilities of the DETR moment head: formats, temporal (g)IoU, Hungarian matching, losses.

A *span* is a moment in a video. The head predicts spans as normalised ``(center, width)``
("cxw", both in [0, 1] after a sigmoid); IoU and gIoU are taken on ``(start, end)`` ("xx").
Class 0 of the 2-way classifier is *foreground* (the query is a real moment), class 1 is
*background* (an unmatched query).

The matching costs and loss weights default to Moment-DETR's (Lei et al., 2021; the defaults
of ``jayleicn/moment_detr``): span L1 10, gIoU 1, class 4, background weight ``eos_coef`` 0.1.
Everything here is plain PyTorch (the assignment itself is ``scipy.optimize.linear_sum_assignment``)
so it can be tested against hand-worked cases and reused by any DETR-style head.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

FOREGROUND = 0
BACKGROUND = 1

MatchIndices = list[tuple[Tensor, Tensor]]


def _require_tensor(x, name: str, expected: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    return x


def _check_last2(x, name: str, expected: str = "(..., 2)") -> Tensor:
    x = _require_tensor(x, name, expected)
    if x.ndim < 1 or x.shape[-1] != 2:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    return x


def _check_pairs(x, name: str, rows: str) -> Tensor:
    x = _require_tensor(x, name, f"({rows}, 2)")
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"{name} must have shape ({rows}, 2) in (start, end) format, got {tuple(x.shape)}")
    return x


def span_cxw_to_xx(spans: Tensor) -> Tensor:
    """(center, width) -> (start, end); spans (..., 2) -> (..., 2)."""
    spans = _check_last2(spans, "spans")
    center, width = spans.unbind(-1)
    return torch.stack([center - 0.5 * width, center + 0.5 * width], dim=-1)


def span_xx_to_cxw(spans: Tensor) -> Tensor:
    """(start, end) -> (center, width); spans (..., 2) -> (..., 2)."""
    spans = _check_last2(spans, "spans")
    start, end = spans.unbind(-1)
    return torch.stack([0.5 * (start + end), end - start], dim=-1)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    # den == 0 only for two zero-length spans at the same point, where num is 0 too; 0/0 -> 0
    # keeps the matrices finite (and the gradients defined) instead of NaN.
    return num / torch.where(den > 0, den, torch.ones_like(den))


def temporal_iou(spans1: Tensor, spans2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise temporal IoU of spans in (start, end) format.

    Parameters
    ----------
    spans1 : (N, 2) tensor
    spans2 : (M, 2) tensor

    Returns
    -------
    iou : (N, M) tensor, ``inter / union`` (0 where the union is empty)
    union : (N, M) tensor, ``len1 + len2 - inter``
    """
    spans1 = _check_pairs(spans1, "spans1", "N")
    spans2 = _check_pairs(spans2, "spans2", "M")
    len1 = spans1[:, 1] - spans1[:, 0]  # (N,)
    len2 = spans2[:, 1] - spans2[:, 0]  # (M,)
    left = torch.maximum(spans1[:, None, 0], spans2[None, :, 0])  # (N, M)
    right = torch.minimum(spans1[:, None, 1], spans2[None, :, 1])  # (N, M)
    inter = (right - left).clamp(min=0)
    union = len1[:, None] + len2[None, :] - inter
    return _safe_div(inter, union), union


def generalized_temporal_iou(spans1: Tensor, spans2: Tensor) -> Tensor:
    """Pairwise generalized temporal IoU, ``iou - (enclosing - union) / enclosing``.

    ``enclosing`` is the length of the smallest span covering both, ``max(end) - min(start)``.
    Unlike IoU, gIoU keeps falling as disjoint spans move apart (it lies in (-1, 1]), which gives
    the matcher and the loss a signal for predictions that do not overlap their target yet.

    spans1 (N, 2), spans2 (M, 2) in (start, end) format -> (N, M).
    """
    iou, union = temporal_iou(spans1, spans2)
    enclosing = (torch.maximum(spans1[:, None, 1], spans2[None, :, 1])
                 - torch.minimum(spans1[:, None, 0], spans2[None, :, 0]))  # (N, M)
    return iou - _safe_div(enclosing - union, enclosing)


def matching_cost(pred_spans: Tensor, pred_logits: Tensor, targets: Tensor, *, cost_span: float = 10.0,
                  cost_giou: float = 1.0, cost_class: float = 4.0) -> Tensor:
    """The matcher's cost matrix for one video.

    ``C[q, t] = cost_span * L1(cxw_q, cxw_t) - cost_giou * gIoU(xx_q, xx_t) - cost_class * p_fg(q)``
    where L1 sums |d center| + |d width| and ``p_fg = softmax(logits)[0]``.

    pred_spans (Q, 2) cxw, pred_logits (Q, 2), targets (T, 2) cxw -> (Q, T).
    """
    p_fg = pred_logits.softmax(-1)[:, FOREGROUND]  # (Q,)
    l1 = torch.cdist(pred_spans, targets, p=1)  # (Q, T)
    giou = generalized_temporal_iou(span_cxw_to_xx(pred_spans), span_cxw_to_xx(targets))  # (Q, T)
    return cost_span * l1 - cost_giou * giou - cost_class * p_fg[:, None]


def _check_batch(pred_spans, pred_logits, targets) -> None:
    pred_spans = _require_tensor(pred_spans, "pred_spans", "(B, Q, 2)")
    pred_logits = _require_tensor(pred_logits, "pred_logits", "(B, Q, 2)")
    if pred_spans.ndim != 3 or pred_spans.shape[-1] != 2:
        raise ValueError(f"pred_spans must have shape (B, Q, 2) in normalised (center, width), "
                         f"got {tuple(pred_spans.shape)}")
    if pred_logits.shape != pred_spans.shape:
        raise ValueError(f"pred_logits must have shape (B, Q, 2) = {tuple(pred_spans.shape)} like pred_spans "
                         f"(class 0 foreground, class 1 background), got {tuple(pred_logits.shape)}")
    if not isinstance(targets, (list, tuple)) or len(targets) != pred_spans.shape[0]:
        got = len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__
        raise ValueError(f"targets must be a list of B={pred_spans.shape[0]} tensors (n_b, 2) in (center, width), "
                         f"got {got}")
    for b, tgt in enumerate(targets):
        tgt = _require_tensor(tgt, f"targets[{b}]", "(n_b, 2)")
        if tgt.ndim != 2 or tgt.shape[1] != 2:
            raise ValueError(f"targets[{b}] must have shape (n_b, 2) in (center, width), got {tuple(tgt.shape)}")


class HungarianMatcher:
    """One-to-one assignment of predicted spans to ground-truth spans, per video.

    Minimises the summed :func:`matching_cost` with ``scipy.optimize.linear_sum_assignment``.
    With Q queries and n_b targets, min(Q, n_b) pairs are returned; queries left out are the
    ones the loss pushes to *background*.
    """

    def __init__(self, cost_span: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0):
        costs = {"cost_span": cost_span, "cost_giou": cost_giou, "cost_class": cost_class}
        bad = {k: v for k, v in costs.items() if not v >= 0}
        if bad:
            raise ValueError(f"matcher costs must be >= 0, got {bad}")
        if not any(costs.values()):
            raise ValueError("at least one of cost_span, cost_giou, cost_class must be > 0")
        self.cost_span, self.cost_giou, self.cost_class = float(cost_span), float(cost_giou), float(cost_class)

    def __repr__(self) -> str:
        return (f"HungarianMatcher(cost_span={self.cost_span}, cost_giou={self.cost_giou}, "
                f"cost_class={self.cost_class})")

    @torch.no_grad()
    def __call__(self, pred_spans: Tensor, pred_logits: Tensor, targets: Sequence[Tensor]) -> MatchIndices:
        """Match a batch.

        Parameters
        ----------
        pred_spans : (B, Q, 2) tensor, normalised (center, width)
        pred_logits : (B, Q, 2) tensor, class 0 = foreground
        targets : list of B tensors (n_b, 2), normalised (center, width); n_b may be 0

        Returns
        -------
        list of B pairs ``(pred_idx, tgt_idx)``, int64 CPU tensors of length min(Q, n_b), sorted by
        ``pred_idx``: query ``pred_idx[k]`` is matched to target ``tgt_idx[k]``.
        """
        _check_batch(pred_spans, pred_logits, targets)
        sizes = [int(tgt.shape[0]) for tgt in targets]
        blocks: Sequence[Tensor] = ()
        if sum(sizes):
            # one cost matrix for the batch, every query against every target, cut per video (as
            # Moment-DETR's matcher does): a few tensor ops and one copy to the CPU per batch
            # instead of per video, whose small ops cost a tenth of a CPU train step
            n_videos, n_queries = pred_spans.shape[:2]
            cost = matching_cost(pred_spans.flatten(0, 1).float(), pred_logits.flatten(0, 1).float(),
                                 torch.cat(list(targets)).to(pred_spans.device, torch.float32),
                                 cost_span=self.cost_span, cost_giou=self.cost_giou,
                                 cost_class=self.cost_class)  # (B * Q, sum n_b)
            blocks = cost.view(n_videos, n_queries, -1).cpu().double().split(sizes, dim=-1)  # B x (B, Q, n_b)
        out: MatchIndices = []
        for b, n in enumerate(sizes):
            if n == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty.clone()))
                continue
            rows, cols = linear_sum_assignment(blocks[b][b].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out


def set_prediction_losses(outputs: Mapping[str, Tensor], targets: Sequence[Tensor], indices: MatchIndices, *,
                          w_span: float = 10.0, w_giou: float = 1.0, w_class: float = 4.0,
                          eos_coef: float = 0.1) -> dict[str, Tensor]:
    """Moment-DETR's set-prediction losses for one decoder layer, already weighted.

    With K matched (query, target) pairs over the batch (from :class:`HungarianMatcher`):

    - ``loss_span = w_span * mean |cxw_pred - cxw_tgt|`` -- L1 over the K matched spans, averaged over
      the K targets and their two coordinates (``F.l1_loss`` with the default mean).
    - ``loss_giou = w_giou * mean_k (1 - gIoU(xx_pred_k, xx_tgt_k))``.
    - ``loss_label = w_class * mean_{b, q} w_{c(b,q)} * CE(logits[b, q], c(b, q))`` over all B*Q
      queries, where ``c = 0`` (foreground) for matched queries and ``1`` (background) otherwise,
      with class weights ``w = [1, eos_coef]``. As in Moment-DETR the weighted per-query losses
      are divided by B*Q, not by the sum of the weights (which ``F.cross_entropy(weight=...)``'s
      own mean would do); ``eos_coef`` < 1 keeps the many background queries from dominating.

    When no video in the batch has a target (K = 0) the span terms are 0 (still attached to the
    graph) instead of the NaN of an empty mean.

    Parameters
    ----------
    outputs : {"pred_spans": (B, Q, 2) normalised cxw, "pred_logits": (B, Q, 2)}
    targets : list of B tensors (n_b, 2), normalised cxw
    indices : the matcher's output, B pairs (pred_idx, tgt_idx)

    Returns
    -------
    {"loss_span", "loss_giou", "loss_label"}: scalar tensors; their sum is the training loss.
    """
    if not isinstance(outputs, Mapping) or "pred_spans" not in outputs or "pred_logits" not in outputs:
        raise ValueError("outputs must be a mapping with 'pred_spans' (B, Q, 2) and 'pred_logits' (B, Q, 2)")
    pred_spans, pred_logits = outputs["pred_spans"], outputs["pred_logits"]
    _check_batch(pred_spans, pred_logits, targets)
    B, Q, _ = pred_logits.shape
    if not isinstance(indices, (list, tuple)) or len(indices) != B:
        got = len(indices) if isinstance(indices, (list, tuple)) else type(indices).__name__
        raise ValueError(f"indices must be a list of B={B} (pred_idx, tgt_idx) pairs from the matcher, got {got}")
    for b, (src, tgt) in enumerate(indices):
        if src.ndim != 1 or src.shape != tgt.shape:
            raise ValueError(f"indices[{b}] must be two 1-D tensors of equal length (K_b,), "
                             f"got {tuple(src.shape)} and {tuple(tgt.shape)}")
    if not eos_coef >= 0:
        raise ValueError(f"eos_coef must be >= 0, got {eos_coef}")

    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)]).to(pred_spans.device)
    src_idx = torch.cat([src for src, _ in indices]).to(pred_spans.device)
    matched = pred_spans[batch_idx, src_idx]  # (K, 2)
    tgt = torch.cat([t.to(pred_spans.device, pred_spans.dtype)[j.to(pred_spans.device)]
                     for t, (_, j) in zip(targets, indices)])  # (K, 2)

    if matched.shape[0] > 0:
        l1 = F.l1_loss(matched, tgt)
        giou = generalized_temporal_iou(span_cxw_to_xx(matched), span_cxw_to_xx(tgt)).diagonal()  # (K,)
        giou_loss = (1 - giou).mean()
    else:
        l1 = giou_loss = pred_spans.sum() * 0

    target_classes = torch.full((B, Q), BACKGROUND, dtype=torch.int64, device=pred_logits.device)
    target_classes[batch_idx, src_idx] = FOREGROUND
    class_weight = torch.tensor([1.0, eos_coef], dtype=pred_logits.dtype, device=pred_logits.device)
    ce = F.cross_entropy(pred_logits.transpose(1, 2), target_classes, weight=class_weight, reduction="none")  # (B, Q)
    return {"loss_span": w_span * l1, "loss_giou": w_giou * giou_loss, "loss_label": w_class * ce.mean()}
