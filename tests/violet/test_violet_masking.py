"""VIOLET masking: MLM 80/10/10, blockwise and attended masks hit their ratios, BM+AM coin, bad inputs.

Statistical checks use fixed seeds and 5-sigma binomial tolerances: with the seed fixed they are
deterministic, and a correct implementation with any other seed would fail them with chance
below 1e-6 each.
"""

import math

import pytest
import torch
from scipy import ndimage, stats

from polymodal.models.violet.masking import (IGNORE, apply_video_mask, attended_text_mask,
                                             attended_video_mask, block_shapes, blockwise_video_mask,
                                             choose_strategy, cross_attention_scores, mlm_eligible,
                                             mlm_mask, mvm_labels, random_selection, top_attended_mask)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = {PAD, UNK, CLS, SEP, MASK}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _five_sigma(p, n):
    return 5 * math.sqrt(p * (1 - p) / n)


def _text_batch(B, L, vocab, seed):
    """[CLS] words [SEP] [PAD]..., lengths uniform in [L/2, L]; returns ids, attention mask, and the
    positions of ordinary words built here independently of mlm_eligible."""
    g = _gen(seed)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    ids = torch.randint(len(SPECIAL), vocab, (B, L), generator=g)
    pos = torch.arange(L)[None]
    real = pos < lengths[:, None]
    words = real & (pos > 0) & (pos < lengths[:, None] - 1)
    ids[:, 0] = CLS
    ids[pos == lengths[:, None] - 1] = SEP
    ids[~real] = PAD
    return ids, real.long(), words


# --------------------------------------------------------------------------- MLM


@pytest.fixture(scope="module")
def mlm_run():
    vocab = 1000
    ids, attn, words = _text_batch(512, 512, vocab, seed=1)
    masked, labels = mlm_mask(ids, attn, mask_token_id=MASK, vocab_size=vocab, special_ids=SPECIAL,
                              generator=_gen(2))
    return vocab, ids, attn, words, masked, labels


def test_mlm_chooses_15_percent_of_words_only(mlm_run):
    _, ids, _, words, masked, labels = mlm_run
    chosen = labels != IGNORE
    n = int(words.sum())
    assert n > 150_000
    frac = chosen[words].float().mean().item()
    assert abs(frac - 0.15) < _five_sigma(0.15, n)  # about 0.004
    # specials and padding are never chosen nor altered
    assert not chosen[~words].any()
    assert torch.equal(masked[~words], ids[~words])
    # labels: the original id exactly where chosen, IGNORE everywhere else
    assert torch.equal(labels[chosen], ids[chosen])
    assert (labels[~chosen] == IGNORE).all()
    # tokens not chosen are fed unchanged
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_mlm_replacement_is_80_10_10(mlm_run):
    vocab, ids, _, _, masked, labels = mlm_run
    chosen = labels != IGNORE
    n = int(chosen.sum())
    orig, new = ids[chosen], masked[chosen]
    n_ordinary = vocab - len(SPECIAL)
    # a random replacement equals the original with chance 1/n_ordinary; count that as "unchanged"
    expected = {"mask": 0.8, "random": 0.1 * (1 - 1 / n_ordinary), "unchanged": 0.1 + 0.1 / n_ordinary}
    observed = {"mask": (new == MASK).float().mean().item(),
                "random": ((new != MASK) & (new != orig)).float().mean().item(),
                "unchanged": (new == orig).float().mean().item()}
    for key, p in expected.items():
        assert abs(observed[key] - p) < _five_sigma(p, n), (key, observed[key], p)  # 0.012 / 0.009
    # random replacements never draw a special id
    assert not torch.isin(new[(new != MASK) & (new != orig)], torch.tensor(sorted(SPECIAL))).any()


def test_mlm_random_ids_spread_over_vocabulary():
    vocab = 40  # 35 ordinary ids: about 290 draws each, enough for a chi-square test
    ids, attn, words = _text_batch(256, 512, vocab, seed=3)
    masked, labels = mlm_mask(ids, attn, mask_token_id=MASK, vocab_size=vocab, special_ids=SPECIAL,
                              generator=_gen(4), selected=words.clone(), mask_fraction=0.0,
                              random_fraction=1.0)
    # with random_fraction=1 every chosen token is a uniform draw from the ordinary ids
    drawn = masked[words]
    counts = torch.bincount(drawn, minlength=vocab)
    assert (counts[sorted(SPECIAL)] == 0).all()
    ordinary = counts[len(SPECIAL):].double()
    assert (ordinary > 0).all()
    assert stats.chisquare(ordinary.numpy()).pvalue > 1e-3


def test_mlm_reproducible_with_same_seed(mlm_run):
    vocab, ids, attn, *_ = mlm_run
    kw = dict(mask_token_id=MASK, vocab_size=vocab, special_ids=SPECIAL)
    a = mlm_mask(ids[:8], attn[:8], generator=_gen(7), **kw)
    b = mlm_mask(ids[:8], attn[:8], generator=_gen(7), **kw)
    c = mlm_mask(ids[:8], attn[:8], generator=_gen(8), **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], c[1])


def test_mlm_selected_forces_the_choice():
    ids, attn, words = _text_batch(4, 32, 100, seed=5)
    selected = torch.zeros_like(words)
    selected[:, :6] = True  # includes position 0, [CLS]: must be dropped
    selected[:, -1] = True  # padding or [SEP] on every row: must be dropped
    _, labels = mlm_mask(ids, attn, mask_token_id=MASK, vocab_size=100, special_ids=SPECIAL,
                         generator=_gen(0), selected=selected)
    assert torch.equal(labels != IGNORE, selected & words)
    # the tensor form of special_ids and mlm_eligible agree with the hand-built word positions
    assert torch.equal(mlm_eligible(ids, attn, torch.tensor(sorted(SPECIAL))), words)


def test_random_selection_is_a_subset_at_the_rate():
    eligible = torch.rand(200, 500, generator=_gen(0)) < 0.7
    sel = random_selection(eligible, generator=_gen(1))
    assert not (sel & ~eligible).any()
    n = int(eligible.sum())
    assert abs(sel[eligible].float().mean().item() - 0.15) < _five_sigma(0.15, n)


# --------------------------------------------------------------------------- blockwise


@pytest.mark.parametrize("T", [1, 4])
def test_blockwise_exceeds_ratio_by_less_than_a_block(T):
    H = W = 7
    N = T * H * W
    masks = blockwise_video_mask(400, T, H, W, generator=_gen(T))
    assert masks.shape == (400, T, H, W) and masks.dtype == torch.bool
    counts = masks.flatten(1).sum(1)
    # defaults: max_area = ceil(0.15 * 49) = 8, max_frames = T; the last block starts at <= 15 %
    largest_block = T * 8
    assert (counts > 0.15 * N).all()
    assert (counts <= math.floor(0.15 * N) + largest_block).all()
    # mean overshoot is about half a typical block; observed 0.198 (T=1) and 0.187 (T=4)
    assert 0.15 < (counts.float() / N).mean().item() < 0.15 + 0.5 * largest_block / N


def test_blockwise_single_block_is_a_box_within_bounds():
    # with ratio 0.01 the target is below one block, so each mask is exactly one drawn block
    T, H, W = 4, 7, 7
    masks = blockwise_video_mask(300, T, H, W, generator=_gen(0), ratio=0.01, min_area=2, max_area=8,
                                 max_frames=3)
    shapes = set()
    for m in masks:
        _, n_components = ndimage.label(m.numpy())
        assert n_components == 1
        ts, ys, xs = (idx.unique() for idx in torch.nonzero(m, as_tuple=True))
        t, h, w = len(ts), len(ys), len(xs)
        assert int(m.sum()) == t * h * w  # filled bounding box: a 3D box
        assert 1 <= t <= 3 and 2 <= h * w <= 8 and 0.3 <= h / w <= 1 / 0.3
        shapes.add((h, w))
    assert shapes == set(block_shapes(H, W, min_area=2, max_area=8))  # every admissible shape occurs


def test_blockwise_reproducible_and_image_case():
    a = blockwise_video_mask(16, 1, 7, 7, generator=_gen(3))
    b = blockwise_video_mask(16, 1, 7, 7, generator=_gen(3))
    assert torch.equal(a, b)
    tiny = blockwise_video_mask(5, 1, 1, 1, generator=_gen(0), min_area=1)
    assert tiny.all()  # one patch: "more than 15 %" means all of it


def test_block_shapes_hand_worked():
    assert block_shapes(2, 3, min_area=2, max_area=4) == [(1, 2), (1, 3), (2, 1), (2, 2)]
    # (1, 3) has aspect 1/3 < 0.35
    assert block_shapes(2, 3, min_area=2, max_area=4, aspect=(0.35, 3.0)) == [(1, 2), (2, 1), (2, 2)]


def test_apply_video_mask_zeros_exactly_masked_patches():
    B, T, C, H, W, P = 2, 3, 3, 4, 5, 4
    frames = torch.rand(B, T, C, H * P, W * P, generator=_gen(0)) + 0.5  # no pixel is zero
    mask = torch.rand(B, T, H, W, generator=_gen(1)) < 0.3
    out = apply_video_mask(frames, mask, P)
    for b in range(B):
        for t in range(T):
            for y in range(H):
                for x in range(W):
                    patch = out[b, t, :, y * P:(y + 1) * P, x * P:(x + 1) * P]
                    src = frames[b, t, :, y * P:(y + 1) * P, x * P:(x + 1) * P]
                    if mask[b, t, y, x]:
                        assert (patch == 0).all()
                    else:
                        assert torch.equal(patch, src)
    assert (frames >= 0.5).all()  # input untouched


def test_mvm_labels():
    ids = torch.randint(0, 8192, (2, 4, 7, 7), generator=_gen(0))
    mask = torch.rand(2, 4, 7, 7, generator=_gen(1)) < 0.2
    labels = mvm_labels(ids, mask)
    assert torch.equal(labels[mask], ids[mask]) and (labels[~mask] == IGNORE).all()


# --------------------------------------------------------------------------- attended


def _reference_top(scores, valid, ratio):
    """Plain Python: sort valid indices by (-score, index), keep floor(ratio * n + 0.5)."""
    out = torch.zeros_like(valid)
    for b in range(scores.shape[0]):
        idx = [i for i in range(scores.shape[1]) if valid[b, i]]
        k = math.floor(ratio * len(idx) + 0.5)
        for i in sorted(idx, key=lambda i: (-float(scores[b, i]), i))[:k]:
            out[b, i] = True
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_attended_takes_exact_top_share(ties):
    g = _gen(int(ties))
    B, N = 64, 120
    scores = torch.rand(B, N, generator=g)
    if ties:
        scores = torch.randint(0, 4, (B, N), generator=g).float()  # many equal scores
    valid = torch.rand(B, N, generator=g) < 0.7
    valid[0] = False  # an all-padding row selects nothing
    scores[~valid] += 10.0  # padding scores highest: must still never be picked
    got = attended_text_mask(scores, valid)
    assert torch.equal(got, _reference_top(scores, valid, 0.15))
    n_valid = valid.sum(1)
    assert torch.equal(got.sum(1), torch.floor(0.15 * n_valid.double() + 0.5).long())
    assert not (got & ~valid).any()
    assert torch.equal(got, attended_text_mask(scores.clone(), valid.clone()))  # deterministic


def test_attended_video_all_valid_and_rounding():
    scores = torch.rand(3, 196, generator=_gen(0))
    got = attended_video_mask(scores)
    assert (got.sum(1) == 29).all()  # round(0.15 * 196 = 29.4)
    assert torch.equal(got, _reference_top(scores, torch.ones_like(got), 0.15))
    # half rounds up: 0.25 * 10 = 2.5 -> 3; ties go to the lower index
    assert top_attended_mask(torch.zeros(1, 10), ratio=0.25).nonzero()[:, 1].tolist() == [0, 1, 2]


def _reference_cross(A, v, t, text_valid, video_valid):
    B, _, N, _ = A.shape
    M = A.mean(1)
    vs = torch.zeros(B, v.stop - v.start)
    ts = torch.zeros(B, t.stop - t.start)
    for b in range(B):
        tq = [q for q in range(t.start, t.stop) if text_valid[b, q - t.start]]
        vq = [q for q in range(v.start, v.stop) if video_valid[b, q - v.start]]
        for j in range(v.start, v.stop):
            vs[b, j - v.start] = sum(M[b, q, j] for q in tq) / len(tq)
        for j in range(t.start, t.stop):
            ts[b, j - t.start] = sum(M[b, q, j] for q in vq) / len(vq)
    return vs, ts


def test_cross_attention_scores_against_loops():
    B, heads, Nv, Lt = 2, 3, 6, 4
    N = Nv + 1 + Lt  # [video; CLS; text]
    A = torch.softmax(torch.randn(B, heads, N, N, generator=_gen(0)), dim=-1)
    v, t = slice(0, Nv), slice(Nv + 1, N)
    text_valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    video_valid = torch.ones(B, Nv, dtype=torch.bool)
    vs, ts = cross_attention_scores(A, v, t, text_valid=text_valid)
    ref_v, ref_t = _reference_cross(A, v, t, text_valid, video_valid)
    assert torch.allclose(vs, ref_v, atol=1e-6) and torch.allclose(ts, ref_t, atol=1e-6)
    # a leading layer axis is averaged: two copies of the same layer give the same scores
    vs2, ts2 = cross_attention_scores(torch.stack([A, A]), v, t, text_valid=text_valid)
    assert torch.allclose(vs2, vs) and torch.allclose(ts2, ts)
    # direction: attention *received* — text queries pouring onto patch 2 raise only patch 2
    A2 = A.clone()
    A2[:, :, t, :] = 0
    A2[:, :, t, 2] = 1
    vs3, _ = cross_attention_scores(A2, v, t)
    assert attended_video_mask(vs3, ratio=0.1).nonzero()[:, 1].tolist() == [2, 2]


# --------------------------------------------------------------------------- BM + AM


def test_choose_strategy_is_fifty_fifty():
    n = 10_000
    coin = choose_strategy(n, generator=_gen(0))
    assert coin.shape == (n,) and coin.dtype == torch.bool
    assert abs(coin.float().mean().item() - 0.5) < _five_sigma(0.5, n)  # 0.025
    assert torch.equal(coin, choose_strategy(n, generator=_gen(0)))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        blockwise_video_mask(2, 1, 7, 7, generator=_gen(), ratio=ratio)
    with pytest.raises(ValueError, match="ratio"):
        attended_video_mask(torch.rand(2, 10), ratio=ratio)
    with pytest.raises(ValueError, match="prob"):
        mlm_mask(torch.full((1, 4), 7), torch.ones(1, 4), mask_token_id=MASK, vocab_size=10,
                 special_ids=SPECIAL, generator=_gen(), prob=ratio)


def test_bad_shapes_and_values():
    ids, attn = torch.full((2, 5), 7), torch.ones(2, 5)
    kw = dict(mask_token_id=MASK, vocab_size=10, special_ids=SPECIAL, generator=_gen())
    with pytest.raises(ValueError, match="attention_mask"):
        mlm_mask(ids, torch.ones(2, 4), **kw)
    with pytest.raises(ValueError, match="selected"):
        mlm_mask(ids, attn, selected=torch.ones(2, 4, dtype=torch.bool), **kw)
    with pytest.raises(ValueError, match="input_ids"):
        mlm_mask(torch.full((2, 5), 10), attn, **kw)
    with pytest.raises(ValueError, match="mask_fraction"):
        mlm_mask(ids, attn, mask_fraction=0.95, **kw)
    with pytest.raises(ValueError, match="mask has shape"):
        apply_video_mask(torch.rand(1, 2, 3, 28, 28), torch.zeros(1, 2, 7, 6, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="valid"):
        attended_text_mask(torch.rand(2, 5), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="scores"):
        attended_video_mask(torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="min_area"):
        blockwise_video_mask(2, 1, 1, 1, generator=_gen())  # default min_area=2 > 1 patch
    with pytest.raises(ValueError, match="max_frames"):
        blockwise_video_mask(2, 2, 7, 7, generator=_gen(), max_frames=3)
    with pytest.raises(ValueError, match="overlap"):
        cross_attention_scores(torch.rand(1, 2, 8, 8), slice(0, 5), slice(4, 8))
    with pytest.raises(ValueError, match="attn_probs"):
        cross_attention_scores(torch.rand(1, 2, 8, 7), slice(0, 4), slice(5, 8))
    with pytest.raises(ValueError, match="p_block"):
        choose_strategy(4, generator=_gen(), p_block=1.5)
