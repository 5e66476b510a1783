"""VIOLET's Video Swin backbone: window functions, 3D shifted-window attention, the backbone.

References are written out here independently of the module: plain global multi-head attention,
relative indices by loops over coordinates, and the shifted windows as the cells of a grid offset
by ``shift`` in the original (unrolled) coordinates.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from polymodal.models.violet.swin import (MASKED, SwinBlock3D, VideoSwin, WindowAttention3D, pad_to_window,
                                          padded_size, relative_position_index, resolve_window,
                                          shifted_window_mask, window_partition, window_reverse)

DTYPE = torch.float64  # exact enough that "equal" means allclose at 1e-10


def loop_relative_index(window, table_window):
    """(N, N) bias-table row per (query, key) of a ``window``, by explicit loops."""
    tokens = list(itertools.product(*(range(w) for w in window)))
    st, sh, sw = (2 * w - 1 for w in table_window)
    out = torch.empty(len(tokens), len(tokens), dtype=torch.long)
    for i, (ti, hi, wi) in enumerate(tokens):
        for j, (tj, hj, wj) in enumerate(tokens):
            dt, dh, dw = ti - tj + table_window[0] - 1, hi - hj + table_window[1] - 1, wi - wj + table_window[2] - 1
            out[i, j] = (dt * sh + dh) * sw + dw
    return out


def global_attention(attn: WindowAttention3D, x, bias=None):
    """Plain multi-head self-attention over all L tokens of x (B, L, C), with attn's weights."""
    B, L, C = x.shape
    heads, d = attn.heads, C // attn.heads
    Wq, Wk, Wv = attn.qkv.weight.split(C, dim=0)
    bq, bk, bv = attn.qkv.bias.split(C)
    q, k, v = ((x @ Wm.T + bm).reshape(B, L, heads, d).transpose(1, 2)
               for Wm, bm in ((Wq, bq), (Wk, bk), (Wv, bv)))  # (B, heads, L, d)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias
    out = torch.softmax(scores, dim=-1) @ v  # (B, heads, L, d)
    return out.transpose(1, 2).reshape(B, L, C) @ attn.proj.weight.T + attn.proj.bias


def cell(o: int, window: int, shift: int) -> int:
    """Shifted window of original coordinate o on one axis: the windows are a grid offset by shift."""
    return (o - shift) // window


def rolled_windows_of_ids(padded, window, shift):
    """(nW, N) ids (raveled padded (t, h, w)) of the tokens in each window after the roll by -shift."""
    ids = torch.arange(math.prod(padded)).reshape(1, *padded, 1)
    ids = torch.roll(ids, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    return window_partition(ids, window)[..., 0]


def allowed_pairs(ids, padded, real, window, shift):
    """(nW, N, N) bool: which key each query may attend, from the original coordinates."""
    coords = [tuple(int(c) for c in torch.unravel_index(torch.tensor(i), padded)) for i in range(math.prod(padded))]
    nW, N = ids.shape
    out = torch.zeros(nW, N, N, dtype=torch.bool)
    for w in range(nW):
        for i, j in itertools.product(range(N), range(N)):
            oi, oj = coords[ids[w, i]], coords[ids[w, j]]
            real_key = all(c < r for c, r in zip(oj, real))
            same = all(cell(a, ws, s) == cell(b, ws, s) for a, b, ws, s in zip(oi, oj, window, shift))
            out[w, i, j] = real_key and same
    return out


def token_cells(size, padded, window, shift):
    """Per axis, the (start, stop) of each shifted window cut to the real size."""
    per_axis = []
    for S, Sp, w, s in zip(size, padded, window, shift):
        spans = [(max(0, k * w + s), min(S, (k + 1) * w + s)) for k in range(-1 if s else 0, Sp // w)]
        per_axis.append([(a, b) for a, b in spans if a < b])
    return itertools.product(*per_axis)


# --------------------------------------------------------------------------- window functions


def test_resolve_window_shrinks_to_small_inputs_and_drops_their_shift():
    assert resolve_window((1, 7, 7), (2, 7, 7), (1, 3, 3)) == ((1, 7, 7), (0, 0, 0))
    assert resolve_window((4, 9, 5), (2, 7, 7), (1, 3, 3)) == ((2, 7, 5), (1, 3, 0))
    assert padded_size((3, 9, 5), (2, 7, 5)) == (4, 14, 5)


def test_window_partition_matches_slicing_and_reverse_inverts_it():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 3, 5)
    window = (2, 3, 3)
    wins = window_partition(x, window)
    assert wins.shape == (2 * 2 * 2 * 1, 18, 5)
    k = 0
    for b, t, h, w in itertools.product(range(2), range(0, 4, 2), range(0, 6, 3), range(0, 3, 3)):
        torch.testing.assert_close(wins[k], x[b, t:t + 2, h:h + 3, w:w + 3].reshape(-1, 5))
        k += 1
    torch.testing.assert_close(window_reverse(wins, window, (4, 6, 3)), x)
    with pytest.raises(ValueError, match="not a multiple"):
        window_partition(x, (3, 3, 3))


def test_pad_to_window_pads_the_far_end_with_zeros():
    x = torch.ones(1, 3, 5, 4, 2)
    p = pad_to_window(x, (2, 3, 2))
    assert p.shape == (1, 4, 6, 4, 2)
    assert p[:, :3, :5].eq(1).all() and p[:, 3:].eq(0).all() and p[:, :, 5:].eq(0).all()


@pytest.mark.parametrize("window, table", [((2, 3, 3), (2, 3, 3)), ((1, 7, 7), (2, 7, 7)), ((2, 1, 3), (4, 3, 3))])
def test_relative_position_index_matches_loops(window, table):
    got = relative_position_index(window, table)
    assert torch.equal(got, loop_relative_index(window, table))
    assert got.max() < math.prod(2 * w - 1 for w in table)


# --------------------------------------------------------------------------- global attention


@pytest.mark.parametrize("window, shift", [((2, 3, 3), (0, 0, 0)),
                                           ((2, 3, 3), (1, 1, 1)),  # covers the input: the shift is dropped
                                           ((4, 7, 7), (2, 3, 3))])  # larger than the input: shrinks to it
@pytest.mark.parametrize("zero_bias", [True, False])
def test_window_covering_the_input_is_global_attention(window, shift, zero_bias):
    torch.manual_seed(0)
    size, C = (2, 3, 3), 8
    block = SwinBlock3D(C, heads=2, window=window, shift=shift).to(DTYPE)
    with torch.no_grad():
        if zero_bias:
            block.attn.relative_bias.zero_()
        block.attn.qkv.bias.normal_()  # nonzero biases are part of what must match
    x = torch.randn(2, *size, C, dtype=DTYPE)
    got = block(x)

    L = math.prod(size)
    bias = None
    if not zero_bias:  # gathered by the loop index of the (2, 3, 3) input under the block's table
        bias = block.attn.relative_bias[loop_relative_index(size, window)].permute(2, 0, 1)
    attn = global_attention(block.attn, block.norm1(x).reshape(2, L, C), bias).reshape(x.shape)
    ref = x + attn
    ref = ref + block.mlp(block.norm2(ref))
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def test_window_attention_with_and_without_probabilities_agree():
    torch.manual_seed(0)
    attn = WindowAttention3D(8, 2, (2, 2, 2)).to(DTYPE)
    x = torch.randn(6, 8, 8, dtype=DTYPE)  # 2 batches x 3 windows
    mask = shifted_window_mask((2, 2, 6), (2, 2, 2), (0, 0, 1), dtype=DTYPE)  # 3 windows
    out, probs = attn(x, mask, return_attention=True)
    assert probs.shape == (6, 2, 8, 8)
    torch.testing.assert_close(attn(x, mask), out, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 2, 8, dtype=DTYPE))
    with pytest.raises(ValueError, match="whole number"):
        attn(x[:5], mask)


# --------------------------------------------------------------------------- shift + mask containment

CASES = [((4, 6, 6), (2, 3, 3), (1, 1, 1)),
         ((4, 4, 4), (2, 2, 2), (1, 0, 1)),
         ((3, 5, 7), (2, 3, 3), (1, 1, 2)),  # padded to (4, 6, 9)
         ((3, 5, 5), (2, 3, 3), (0, 0, 0))]  # padding only


@pytest.mark.parametrize("size, window, shift", CASES)
def test_shift_and_mask_keep_every_token_inside_its_window(size, window, shift):
    padded = padded_size(size, window)
    ids = rolled_windows_of_ids(padded, window, shift)
    mask = shifted_window_mask(padded, window, shift, real_size=size)
    assert mask.shape == ids.shape + (ids.shape[1],)
    assert set(mask.unique().tolist()) <= {0.0, MASKED}
    expected = allowed_pairs(ids, padded, size, window, shift)
    assert torch.equal(mask == 0, expected)

    # Swin's regions, in the rolled frame: a rolled position p = (o - s) mod S lies in [0, S - w),
    # [S - w, S - s) or [S - s, S); every allowed pair shares its region on every axis.
    def region(p, S, w, s):
        return 0 if p < S - w else (1 if p < S - s else 2)

    coords = torch.stack(torch.unravel_index(ids, padded), dim=-1)  # (nW, N, 3) original coordinates
    for w, i, j in (mask == 0).nonzero().tolist():
        for axis in range(3):
            S, ws, s = padded[axis], window[axis], shift[axis]
            pi, pj = ((int(coords[w, n, axis]) - s) % S for n in (i, j))
            assert region(pi, S, ws, s) == region(pj, S, ws, s)


@pytest.mark.parametrize("size, window, shift", CASES)
def test_attention_probabilities_are_exactly_zero_across_windows_and_on_padding(size, window, shift):
    torch.manual_seed(0)
    block = SwinBlock3D(8, heads=2, window=window, shift=shift)
    x = torch.randn(2, *size, 8)
    _, probs = block(x, return_attention=True)
    padded = padded_size(size, window)
    ids = rolled_windows_of_ids(padded, window, shift)
    allowed = allowed_pairs(ids, padded, size, window, shift)
    # Rows of padding queries are discarded (and may see only padding); check the real queries.
    real_query = torch.stack(torch.unravel_index(ids, padded), dim=-1).lt(torch.tensor(size)).all(dim=-1)
    real_query = real_query[:, :, None].expand_as(allowed)
    probs = probs.reshape(2, -1, *probs.shape[1:]).transpose(1, 2)  # (B, heads, nW, N, N): windows are batch-major
    assert probs[:, :, real_query & ~allowed].eq(0).all()
    assert probs[:, :, real_query & allowed].gt(0).all()


@pytest.mark.parametrize("size, window, shift", [((4, 4, 4), (2, 2, 2), (0, 0, 0)),
                                                 ((4, 4, 4), (2, 2, 2), (1, 1, 1)),
                                                 ((3, 3, 3), (2, 2, 2), (1, 1, 1))])  # padded
def test_a_token_changes_only_the_outputs_of_its_window(size, window, shift):
    torch.manual_seed(0)
    block = SwinBlock3D(4, heads=2, window=window, shift=shift).to(DTYPE)
    L = math.prod(size)
    # Batch element 1 + j has input token j moved; element 0 is the original.
    x = torch.randn(1, *size, 4, dtype=DTYPE).repeat(1 + L, 1, 1, 1, 1)
    # Random moves: adding the same amount to every channel would vanish in the LayerNorm.
    x.view(1 + L, L, 4)[torch.arange(1, 1 + L), torch.arange(L)] += torch.randn(L, 4, dtype=DTYPE)
    with torch.no_grad():
        out = block(x).reshape(1 + L, L, 4)
    moved = (out[1:] - out[:1]).abs().amax(dim=-1)  # (L, L): [j, i] = change of output i when token j moves
    depends = (moved > 1e-9).T  # (L, L): output token i depends on input token j (rounding is ~1e-16)
    coords = list(itertools.product(*(range(s) for s in size)))
    for i, j in itertools.product(range(L), range(L)):
        same = all(cell(a, w, s) == cell(b, w, s) for a, b, w, s in zip(coords[i], coords[j], window, shift))
        assert bool(depends[i, j]) == same, (coords[i], coords[j])


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 1, 1)])
def test_padded_block_equals_the_block_on_each_window_alone(shift):
    """Masked padding: a real token's output is that of its window cut out and attended alone
    (where the window shrinks to the cut, and the bias is indexed by the shrunk window)."""
    torch.manual_seed(0)
    size, window = (3, 5, 7), (2, 3, 3)
    block = SwinBlock3D(8, heads=2, window=window, shift=shift).to(DTYPE)
    plain = SwinBlock3D(8, heads=2, window=window, shift=0).to(DTYPE)
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, *size, 8, dtype=DTYPE)
    got = block(x)
    n = 0
    for (t0, t1), (h0, h1), (w0, w1) in token_cells(size, padded_size(size, window), window, shift):
        crop = x[:, t0:t1, h0:h1, w0:w1]
        torch.testing.assert_close(got[:, t0:t1, h0:h1, w0:w1], plain(crop), atol=1e-10, rtol=1e-10)
        n += crop[0, ..., 0].numel()
    assert n == math.prod(size)  # the cells tile the input


def test_block_rejects_a_shift_outside_the_window():
    with pytest.raises(ValueError, match="shift"):
        SwinBlock3D(8, 2, window=(2, 7, 7), shift=(2, 0, 0))
    with pytest.raises(ValueError, match="heads=3 must divide dim=8"):
        SwinBlock3D(8, 3, window=(2, 7, 7))


# --------------------------------------------------------------------------- backbone


def tiny(**kw):
    args = dict(dim=16, depth=2, heads=2, image_size=64, patch_size=32, max_frames=4)
    return VideoSwin(**(args | kw))


@pytest.mark.parametrize("image_size, window, T", [(64, (2, 7, 7), 4), (64, (2, 7, 7), 1),
                                                  (224, (2, 3, 3), 3), (224, (2, 7, 7), 1)])
def test_video_swin_returns_one_token_per_frame_and_patch(image_size, window, T):
    torch.manual_seed(0)
    model = tiny(image_size=image_size, window=window)
    out = model(torch.randn(2, T, 3, image_size, image_size))
    g = image_size // 32
    assert out.shape == (2, T, g, g, 16) and torch.isfinite(out).all()


def test_an_image_is_a_one_frame_video_whose_frames_do_not_mix_when_the_window_is_one_frame():
    torch.manual_seed(0)
    model = tiny(window=(1, 7, 7)).eval()
    frames = torch.randn(1, 3, 3, 64, 64)
    video = model(frames)
    # With p_t of frame t moved into frame 0's slot, each frame alone gives the same tokens.
    for t in range(3):
        single = tiny(window=(1, 7, 7)).eval()
        single.load_state_dict(model.state_dict())
        with torch.no_grad():
            single.pos_temporal[:, 0] = model.pos_temporal[:, t]
        torch.testing.assert_close(single(frames[:, t:t + 1])[:, 0], video[:, t], atol=1e-5, rtol=1e-5)


def test_embed_adds_p_s_plus_p_t_to_per_frame_patch_projections():
    torch.manual_seed(0)
    model = tiny()
    frames = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        model.patch_embed.weight.zero_()
        model.patch_embed.bias.zero_()
    tokens = model.embed(frames)
    assert tokens.shape == (2, 3, 2, 2, 16)
    for b, t, h, w in itertools.product(range(2), range(3), range(2), range(2)):
        torch.testing.assert_close(tokens[b, t, h, w], model.pos_spatial[0, 0, h, w] + model.pos_temporal[0, t, 0, 0])

    torch.manual_seed(1)
    model = tiny()
    tokens = model.embed(frames)
    W, bias = model.patch_embed.weight.reshape(16, -1), model.patch_embed.bias  # kernel (1, 32, 32)
    for b, t, h, w in itertools.product(range(2), range(3), range(2), range(2)):
        patch = frames[b, t, :, 32 * h:32 * (h + 1), 32 * w:32 * (w + 1)].reshape(-1)
        expected = W @ patch + bias + model.pos_spatial[0, 0, h, w] + model.pos_temporal[0, t, 0, 0]
        torch.testing.assert_close(tokens[b, t, h, w], expected, atol=1e-5, rtol=1e-5)


def test_video_swin_rejects_bad_frames_with_a_helpful_message():
    model = tiny()
    with pytest.raises(ValueError, match=r"5 frames.*max_frames=4"):
        model(torch.zeros(1, 5, 3, 64, 64))
    with pytest.raises(ValueError, match=r"48x64 px.*image_size=64"):
        model(torch.zeros(1, 2, 3, 48, 64))
    with pytest.raises(ValueError, match="in_chans=3"):
        model(torch.zeros(1, 2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, T, 3, 64, 64\)"):
        model(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="patch_size=32 must divide image_size=100"):
        tiny(image_size=100)


def test_gradients_reach_the_position_embeddings_and_every_relative_bias_table():
    torch.manual_seed(0)
    model = tiny(image_size=224, window=(2, 3, 3))  # 7x7 grid: padded, shifted windows
    model(torch.randn(2, 3, 3, 224, 224)).square().sum().backward()
    assert model.pos_spatial.grad.abs().sum() > 0
    assert model.pos_temporal.grad[:, :3].abs().amax(dim=(2, 3, 4)).gt(0).all()
    assert model.pos_temporal.grad[:, 3:].eq(0).all()  # frame 4 is absent
    for block in model.blocks:
        assert block.attn.relative_bias.grad.abs().sum() > 0
