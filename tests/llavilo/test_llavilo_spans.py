"""LLaViLo span ops: span formats, temporal (g)IoU, Hungarian matcher and set-prediction losses,
against hand-worked cases and a brute-force assignment."""

import itertools
import math

import pytest
import torch

from polymodal.models.llavilo.spans import (HungarianMatcher, generalized_temporal_iou, matching_cost,
                                            set_prediction_losses, span_cxw_to_xx, span_xx_to_cxw,
                                            temporal_iou)

D = torch.float64


def _t(rows):
    return torch.tensor(rows, dtype=D)


# (a, b, iou, union, giou), spans in (start, end); worked out in the comments
IOU_CASES = {
    # inter 0, union 1 + 2 = 3, enclosing [0, 4] = 4: giou = 0 - (4 - 3) / 4
    "disjoint": ([0, 1], [2, 4], 0.0, 3.0, -0.25),
    # [1, 2] inside [0, 4]: inter 1, union 4, enclosing 4
    "nested": ([0, 4], [1, 2], 0.25, 4.0, 0.25),
    "identical": ([1, 3], [1, 3], 1.0, 2.0, 1.0),
    # share only the point 2: inter 0, union 2 + 3 = 5 = enclosing
    "touching": ([0, 2], [2, 5], 0.0, 5.0, 0.0),
    # inter [2, 3] = 1, union 3 + 4 - 1 = 6 = enclosing
    "overlap": ([0, 3], [2, 6], 1 / 6, 6.0, 1 / 6),
    # two zero-length spans at the same point: 0/0 is defined as 0, not NaN
    "same point": ([1, 1], [1, 1], 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("case", IOU_CASES)
def test_iou_and_giou_hand_worked(case):
    a, b, iou, union, giou = IOU_CASES[case]
    got_iou, got_union = temporal_iou(_t([a]), _t([b]))
    assert got_iou.shape == got_union.shape == (1, 1)
    assert got_iou.item() == pytest.approx(iou)
    assert got_union.item() == pytest.approx(union)
    assert generalized_temporal_iou(_t([a]), _t([b])).item() == pytest.approx(giou)
    # symmetric
    assert generalized_temporal_iou(_t([b]), _t([a])).item() == pytest.approx(giou)


def test_iou_matrix_is_every_pair():
    a = _t([case[0] for case in IOU_CASES.values()])  # (6, 2)
    b = _t([case[1] for case in IOU_CASES.values()])  # (6, 2)
    iou, _ = temporal_iou(a, b)
    giou = generalized_temporal_iou(a, b)
    assert iou.shape == giou.shape == (6, 6)
    assert torch.isfinite(giou).all()
    for i, j in itertools.product(range(6), range(6)):
        assert iou[i, j] == temporal_iou(a[i:i + 1], b[j:j + 1])[0][0, 0]
        assert giou[i, j] == generalized_temporal_iou(a[i:i + 1], b[j:j + 1])[0, 0]
    assert (giou <= iou + 1e-12).all() and (giou > -1).all()


def test_cxw_xx_round_trip():
    assert torch.allclose(span_xx_to_cxw(_t([[0.2, 0.6]])), _t([[0.4, 0.4]]))
    assert torch.allclose(span_cxw_to_xx(_t([[0.4, 0.4]])), _t([[0.2, 0.6]]))
    g = torch.Generator().manual_seed(0)
    cxw = torch.rand(3, 5, 2, generator=g, dtype=D)  # any leading shape
    assert torch.allclose(span_xx_to_cxw(span_cxw_to_xx(cxw)), cxw)
    xx = torch.sort(torch.rand(7, 2, generator=g, dtype=D), dim=-1).values
    assert torch.allclose(span_cxw_to_xx(span_xx_to_cxw(xx)), xx)


# ---- matcher ------------------------------------------------------------------------------------
# Targets t0 = (0.3, 0.2) -> [0.2, 0.4], t1 = (0.5, 0.2) -> [0.4, 0.6]   (center, width) -> (start, end)
# Queries p0 = (0.38, 0.2) -> [0.28, 0.48]  p_fg 0.9 (logits [ln 9, 0])
#         p1 = (0.85, 0.1) -> [0.80, 0.90]  p_fg 0.5 (logits [0, 0])
#         p2 = (0.30, 0.24) -> [0.18, 0.42] p_fg 0.2 (logits [0, ln 4])
# L1 (|dc| + |dw|):  p0: 0.08, 0.12   p1: 0.65, 0.45   p2: 0.04, 0.24
# gIoU:  p0-t0 inter .12 union .28 encl .28 -> 3/7;   p0-t1 inter .08 union .32 encl .32 -> 1/4
#        p1-t0 inter 0 union .3 encl .7 -> -4/7;      p1-t1 inter 0 union .3 encl .5 -> -2/5
#        p2-t0 inter .2 union .24 encl .24 -> 5/6;    p2-t1 inter .02 union .42 encl .42 -> 1/21
# C = 10 L1 - gIoU - 4 p_fg:
COST = [[0.8 - 3 / 7 - 3.6, 1.2 - 1 / 4 - 3.6],    # p0: -3.2286, -2.65
        [6.5 + 4 / 7 - 2.0, 4.5 + 2 / 5 - 2.0],    # p1:  5.0714,  2.9
        [0.4 - 5 / 6 - 0.8, 2.4 - 1 / 21 - 0.8]]   # p2: -1.2333,  1.5524
# Pairs: (p0->t0, p1->t1) -0.33, (p0->t0, p2->t1) -1.68, (p0->t1, p2->t0) -3.88 <- optimum,
# (p0->t1, p1->t0) 2.42, (p1->t0, p2->t1) 6.62, (p2->t0, p1->t1) 1.67. The cheapest single
# entry (p0->t0) is not part of it, so a greedy matcher would get this wrong.
PRED_SPANS = [[0.38, 0.2], [0.85, 0.1], [0.30, 0.24]]
PRED_LOGITS = [[math.log(9), 0.0], [0.0, 0.0], [0.0, math.log(4)]]
TARGETS = [[0.3, 0.2], [0.5, 0.2]]


def test_matching_cost_hand_worked():
    cost = matching_cost(_t(PRED_SPANS), _t(PRED_LOGITS), _t(TARGETS))
    assert cost.shape == (3, 2)
    assert torch.allclose(cost, _t(COST), atol=1e-9)


def _brute_force(cost):
    n_q, n_t = len(cost), len(cost[0])
    best = min(itertools.permutations(range(n_q), n_t), key=lambda rows: sum(cost[r][c] for c, r in enumerate(rows)))
    pairs = sorted(zip(best, range(n_t)))
    return [r for r, _ in pairs], [c for _, c in pairs]


def test_matcher_hand_worked_optimum():
    assert _brute_force(COST) == ([0, 2], [1, 0])
    (pred_idx, tgt_idx), = HungarianMatcher()(_t([PRED_SPANS]), _t([PRED_LOGITS]), [_t(TARGETS)])
    assert pred_idx.dtype == tgt_idx.dtype == torch.int64
    assert pred_idx.tolist() == [0, 2] and tgt_idx.tolist() == [1, 0]


@pytest.mark.parametrize("seed", range(5))
def test_matcher_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    B, Q = 4, 5
    spans, logits = torch.rand(B, Q, 2, generator=g), torch.randn(B, Q, 2, generator=g)
    targets = [torch.rand(n, 2, generator=g) for n in (1, 0, 3, 5)]  # one cost matrix for the batch, cut per video
    matcher = HungarianMatcher()
    for b, (pred_idx, tgt_idx) in enumerate(matcher(spans, logits, targets)):
        if not len(targets[b]):
            assert pred_idx.numel() == tgt_idx.numel() == 0
            continue
        cost = matching_cost(spans[b], logits[b], targets[b]).tolist()
        rows, cols = _brute_force(cost)
        assert pred_idx.tolist() == rows and tgt_idx.tolist() == cols


def test_matcher_empty_targets_and_no_grad():
    spans = torch.rand(2, 4, 2, requires_grad=True)
    logits = torch.randn(2, 4, 2)
    out = HungarianMatcher()(spans, logits, [torch.zeros(0, 2), torch.tensor([[0.5, 0.2]])])
    assert [len(p) for p, _ in out] == [0, 1]
    assert out[0][0].dtype == torch.int64 and out[0][1].numel() == 0
    assert not out[1][0].requires_grad


# ---- losses ---------------------------------------------------------------------------------------
# One video, Q = 2 queries, one target t = (0.5, 0.4) -> [0.3, 0.7]; q0 = (0.4, 0.4) -> [0.2, 0.6] is matched.
# L1 = mean(|0.4 - 0.5|, |0.4 - 0.4|) = 0.05 -> loss_span = 10 * 0.05 = 0.5
# gIoU(q0, t): inter [0.3, 0.6] = 0.3, union 0.5, enclosing 0.5 -> 0.6 -> loss_giou = 1 - 0.6 = 0.4
# q0 logits [0, 0], target foreground: CE = ln 2, weight 1
# q1 logits [ln 3, 0] (p_bg = 1/4), target background: CE = ln 4 = 2 ln 2, weight eos_coef
# loss_label = 4 * (ln 2 + eos * 2 ln 2) / 2   (divided by the B*Q = 2 queries, not by the weight sum)
LOSS_OUTPUTS = {"pred_spans": _t([[[0.4, 0.4], [0.8, 0.2]]]), "pred_logits": _t([[[0.0, 0.0], [math.log(3), 0.0]]])}
LOSS_TARGETS = [_t([[0.5, 0.4]])]
LOSS_INDICES = [(torch.tensor([0]), torch.tensor([0]))]


@pytest.mark.parametrize("eos", [0.1, 1.0])
def test_losses_hand_worked(eos):
    losses = set_prediction_losses(LOSS_OUTPUTS, LOSS_TARGETS, LOSS_INDICES, eos_coef=eos)
    assert set(losses) == {"loss_span", "loss_giou", "loss_label"}
    assert losses["loss_span"].item() == pytest.approx(0.5)
    assert losses["loss_giou"].item() == pytest.approx(0.4)
    ln2 = math.log(2)
    assert losses["loss_label"].item() == pytest.approx(4 * (ln2 + eos * 2 * ln2) / 2)
    if eos != 1.0:  # not PyTorch's weight-normalised mean
        assert losses["loss_label"].item() != pytest.approx(4 * (ln2 + eos * 2 * ln2) / (1 + eos))


def test_losses_weights_and_gradients():
    spans = LOSS_OUTPUTS["pred_spans"].clone().requires_grad_(True)
    logits = LOSS_OUTPUTS["pred_logits"].clone().requires_grad_(True)
    losses = set_prediction_losses({"pred_spans": spans, "pred_logits": logits}, LOSS_TARGETS, LOSS_INDICES,
                                   w_span=1.0, w_giou=2.0, w_class=1.0)
    assert losses["loss_span"].item() == pytest.approx(0.05)
    assert losses["loss_giou"].item() == pytest.approx(0.8)
    sum(losses.values()).backward()
    assert spans.grad[0, 0].abs().sum() > 0 and spans.grad[0, 1].abs().sum() == 0  # only the matched span
    assert logits.grad.abs().sum() > 0


def test_losses_without_targets_are_background_only():
    spans = torch.rand(2, 3, 2, requires_grad=True)
    logits = torch.zeros(2, 3, 2)
    empty = torch.zeros(0, 2)
    indices = HungarianMatcher()(spans, logits, [empty, empty])
    losses = set_prediction_losses({"pred_spans": spans, "pred_logits": logits}, [empty, empty], indices)
    assert losses["loss_span"].item() == 0 and losses["loss_giou"].item() == 0
    assert losses["loss_span"].requires_grad
    assert losses["loss_label"].item() == pytest.approx(4 * 0.1 * math.log(2))  # every query background


def test_match_then_loss_end_to_end():
    g = torch.Generator().manual_seed(0)
    spans, logits = torch.rand(2, 4, 2, generator=g), torch.randn(2, 4, 2, generator=g)
    targets = [torch.rand(2, 2, generator=g), torch.rand(1, 2, generator=g)]
    losses = set_prediction_losses({"pred_spans": spans, "pred_logits": logits}, targets,
                                   HungarianMatcher()(spans, logits, targets))
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


# ---- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name, shape", [
    (lambda: temporal_iou(torch.zeros(3), torch.zeros(2, 2)), "spans1", "(N, 2)"),
    (lambda: generalized_temporal_iou(torch.zeros(2, 2), torch.zeros(2, 3)), "spans2", "(M, 2)"),
    (lambda: span_cxw_to_xx(torch.zeros(4, 3)), "spans", "(..., 2)"),
    (lambda: HungarianMatcher()(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), [torch.zeros(1, 2)]),
     "pred_spans", "(B, Q, 2)"),
    (lambda: HungarianMatcher()(torch.zeros(1, 4, 2), torch.zeros(1, 5, 2), [torch.zeros(1, 2)]),
     "pred_logits", "(B, Q, 2)"),
    (lambda: HungarianMatcher()(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), [torch.zeros(1, 2)]),
     "targets", "B=2"),
    (lambda: HungarianMatcher()(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), [torch.zeros(2)]),
     "targets[0]", "(n_b, 2)"),
    (lambda: set_prediction_losses(LOSS_OUTPUTS, LOSS_TARGETS, []), "indices", "B=1"),
])
def test_malformed_shapes_name_argument_and_shape(call, name, shape):
    with pytest.raises(ValueError) as info:
        call()
    assert name in str(info.value) and shape in str(info.value)


def test_matcher_rejects_negative_costs():
    with pytest.raises(ValueError, match="cost_giou"):
        HungarianMatcher(cost_giou=-1)
