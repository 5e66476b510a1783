"""SequenceFusion against the explicit outer-product fusion, paper mode, validation, init scale."""

import pytest
import torch

from polymodal.models.wander import SequenceFusion
from polymodal.models.wander.fusion import (VectorFusion, _cp_forward, outer_product_fusion,
                                            rebuild_full_weights)


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def _make(M, seed, rank_mode="cp"):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5, (M,), generator=g).tolist()
    dims = torch.randint(1, 5, (M,), generator=g).tolist()
    out_len, out_dim = torch.randint(1, 6, (2,), generator=g).tolist()
    rank_h, rank_t = torch.randint(1, 4, (2,), generator=g).tolist()
    torch.manual_seed(seed)
    sf = SequenceFusion(dims, lens, out_dim, out_len, rank_h, rank_t, rank_mode=rank_mode).double()
    B = int(torch.randint(1, 4, (1,), generator=g))
    xs = [torch.randn(B, l, d, dtype=torch.float64, generator=g) for l, d in zip(lens, dims)]
    return sf, xs


@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_cp_equals_outer_product(M, seed):
    sf, xs = _make(M, seed)
    W_t, W_h = rebuild_full_weights(sf)
    assert W_t.shape == (sf.out_len, *sf.seq_lens) and W_h.shape == (sf.out_dim, *sf.in_dims)
    out = sf(xs)
    assert out.shape == (xs[0].shape[0], sf.out_len, sf.out_dim)
    assert _rel_err(out, outer_product_fusion(xs, W_t, W_h)) < 1e-5


def test_factor_shapes():
    sf = SequenceFusion([3, 5], [2, 7], out_dim=4, out_len=6, rank_h=2, rank_t=3)
    assert [tuple(w.shape) for w in sf.factors_h] == [(2, 4, 3), (2, 4, 5)]
    assert [tuple(w.shape) for w in sf.factors_t] == [(3, 6, 2), (3, 6, 7)]
    assert not any("bias" in n for n, _ in sf.named_parameters())


@pytest.mark.parametrize("l_first", [True, False])
def test_chunked_with_checkpoint_matches_unchunked(l_first):
    torch.manual_seed(0)
    # both contraction orders (l <= d and l > d) and the chunked + checkpointed path
    l, d = (2, 5) if l_first else (6, 3)
    sf = SequenceFusion([d, d + 1], [l, l + 1], 4, 5, rank_h=3, rank_t=5).double()
    xs = [torch.randn(2, l, d, dtype=torch.float64, requires_grad=True),
          torch.randn(2, l + 1, d + 1, dtype=torch.float64, requires_grad=True)]
    wts, whs = list(sf.factors_t), list(sf.factors_h)
    full = _cp_forward(xs, wts, whs)
    grads_full = torch.autograd.grad(full.square().sum(), xs + wts + whs)
    chunked = _cp_forward(xs, wts, whs, chunk_elems=1)  # one r_t per chunk
    grads_chunked = torch.autograd.grad(chunked.square().sum(), xs + wts + whs)
    assert _rel_err(chunked, full) < 1e-12
    for a, b in zip(grads_chunked, grads_full):
        assert _rel_err(a, b) < 1e-12


@pytest.mark.parametrize("M", [2, 3])
def test_paper_mode_literal_formula(M):
    sf, xs = _make(M, seed=11, rank_mode="paper")
    # Eq. 13 by hand: prod_m (sum_rt w_t) @ h_m @ (sum_rh w_h)^T
    expected = None
    for x, wt, wh in zip(xs, sf.factors_t, sf.factors_h):
        term = wt.sum(0) @ x @ wh.sum(0).T          # (B, P, O)
        expected = term if expected is None else expected * term
    out = sf(xs)
    assert _rel_err(out, expected) < 1e-10
    # it is itself a (rank-1) outer-product fusion
    W_t, W_h = rebuild_full_weights(sf)
    assert _rel_err(out, outer_product_fusion(xs, W_t, W_h)) < 1e-10


def test_paper_mode_differs_from_cp_when_ranks_above_one():
    torch.manual_seed(0)
    cp = SequenceFusion([3, 4], [2, 3], 5, 4, rank_h=3, rank_t=2, rank_mode="cp").double()
    paper = SequenceFusion([3, 4], [2, 3], 5, 4, rank_h=3, rank_t=2, rank_mode="paper").double()
    paper.load_state_dict(cp.state_dict())
    xs = [torch.randn(2, 2, 3, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)]
    assert _rel_err(paper(xs), cp(xs)) > 1e-2
    # with all ranks 1 the two coincide
    cp1 = SequenceFusion([3, 4], [2, 3], 5, 4, rank_h=1, rank_t=1, rank_mode="cp").double()
    paper1 = SequenceFusion([3, 4], [2, 3], 5, 4, rank_h=1, rank_t=1, rank_mode="paper").double()
    paper1.load_state_dict(cp1.state_dict())
    assert _rel_err(paper1(xs), cp1(xs)) < 1e-12


def test_unknown_rank_mode():
    with pytest.raises(ValueError, match=r"rank_mode.*'cp'.*'paper'.*'tucker'"):
        SequenceFusion([3], [2], 4, 4, 2, 2, rank_mode="tucker")


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="rank_h"):
        SequenceFusion([3, 3], [2, 2], 4, 4, rank_h=bad, rank_t=2)


def test_validation_names_modality():
    sf = SequenceFusion([3, 4, 5], [2, 3, 4], 6, 5, 2, 2)
    good = [torch.randn(2, 2, 3), torch.randn(2, 3, 4), torch.randn(2, 4, 5)]
    assert sf(good).shape == (2, 5, 6)
    with pytest.raises(ValueError, match="M=3.*got 2"):
        sf(good[:2])
    with pytest.raises(ValueError, match=r"modality 1 has shape \(2, 3, 7\).*\(B, 3, 4\)"):
        sf([good[0], torch.randn(2, 3, 7), good[2]])
    with pytest.raises(ValueError, match=r"modality 2 has shape \(2, 9, 5\)"):
        sf([good[0], good[1], torch.randn(2, 9, 5)])
    with pytest.raises(ValueError, match="modality 0 must be a 3-d tensor"):
        sf([torch.randn(2, 3), good[1], good[2]])
    with pytest.raises(ValueError, match="modality 1 has batch size 3"):
        sf([good[0], torch.randn(3, 3, 4), good[2]])


@pytest.mark.parametrize("M", [1, 2, 3, 4])
def test_init_gives_unit_scale_output(M):
    torch.manual_seed(0)
    dims, lens = [16 + 4 * m for m in range(M)], [8 + 2 * m for m in range(M)]
    sf = SequenceFusion(dims, lens, 32, 12, rank_h=8, rank_t=6)
    xs = [torch.randn(64, l, d) for l, d in zip(lens, dims)]
    with torch.no_grad():
        std = sf(xs).std().item()
    assert 0.3 < std < 3.0, std


def test_vector_fusion_shapes_and_formula():
    torch.manual_seed(0)
    vf = VectorFusion([3, 4], out_dim=5, rank=2).double()
    xs = [torch.randn(2, 6, 3, dtype=torch.float64), torch.randn(2, 7, 4, dtype=torch.float64)]
    out = vf(xs)
    v0, v1 = xs[0].mean(1), xs[1].mean(1)
    expected = sum((v0 @ vf.factors[0][r].T) * (v1 @ vf.factors[1][r].T) for r in range(2))
    assert out.shape == (2, 5) and _rel_err(out, expected) < 1e-12
