"""Sequence fusion (SF): the low-rank, CP-decomposed, token-level fusion at the heart of Wander.

Notation (Guo et al., 'A Wander Through the Multimodal Landscape'): M modalities, modality m
gives a token sequence ``h_m`` of shape (B, l_m, d_m). The *full* outer-product fusion
(Eq. 9-10) forms the tensor product of all M sequences, ``Z[b, j_1..j_M, i_1..i_M] =
prod_m h_m[b, j_m, i_m]``, and contracts it with a token-axis weight ``W_t`` (out_len, l_1..l_M)
and a feature-axis weight ``W_h`` (out_dim, d_1..d_M)::

    H[b, p, o] = sum_{j, i} W_t[p, j_1..j_M] W_h[o, i_1..i_M] prod_m h_m[b, j_m, i_m]

Both weights are exponentially large in M. SF keeps them in CP form,
``W_h[o, i_1..i_M] = sum_r prod_m w_h,m^r[o, i_m]`` (rank R_h) and likewise for ``W_t``
(rank R_t), which lets the contraction be done modality by modality::

    H = sum_{r_t, r_h} prod_m ( w_t,m^{r_t} @ h_m @ (w_h,m^{r_h})^T )      # (B, out_len, out_dim)

so the cost is linear in M and nothing of size l_1*...*l_M or d_1*...*d_M is ever built.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

RANK_MODES = ("cp", "paper")

# Elements of one per-modality (B, R_t-chunk, R_h, out_len, out_dim) term we allow at once.
# 2**24 float32 elements = 64 MiB; above that the rank sum is done in chunks (see _cp_forward).
_CHUNK_ELEMS = 2 ** 24


def _check_inputs(xs: Sequence[Tensor], in_dims: Sequence[int], seq_lens: Sequence[int], who: str) -> None:
    """Raise a ValueError that names the modality when ``xs`` does not match the declared shapes."""
    if not isinstance(xs, (list, tuple)):
        raise ValueError(f"{who} expects a list of M={len(in_dims)} tensors (B, l_m, d_m), got {type(xs).__name__}")
    if len(xs) != len(in_dims):
        raise ValueError(
            f"{who} was built for M={len(in_dims)} modalities but got {len(xs)} inputs; "
            f"pass one (B, l_m, d_m) tensor per modality in the order of in_dims={list(in_dims)}")
    batch = None
    for m, (x, d, l) in enumerate(zip(xs, in_dims, seq_lens)):
        if not isinstance(x, Tensor) or x.dim() != 3:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{who}: modality {m} must be a 3-d tensor (B, l_m={l}, d_m={d}), got {got}")
        if x.shape[1] != l or x.shape[2] != d:
            raise ValueError(
                f"{who}: modality {m} has shape {tuple(x.shape)} but (B, {l}, {d}) was expected "
                f"(seq_lens[{m}]={l}, in_dims[{m}]={d}); fix the input or the module's seq_lens/in_dims")
        if batch is None:
            batch = x.shape[0]
        elif x.shape[0] != batch:
            raise ValueError(f"{who}: modality {m} has batch size {x.shape[0]} but modality 0 has {batch}; "
                             "all modalities must share the batch axis")


def _check_sizes(**sizes: object) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must hold positive integers, got {value!r}")


def _modality_term(x: Tensor, w_t: Tensor, w_h: Tensor) -> Tensor:
    """One modality's rank terms ``w_t^{r_t} @ x @ (w_h^{r_h})^T``.

    x: (B, l, d), w_t: (Rt, P, l), w_h: (Rh, O, d)  ->  (B, Rt, Rh, P, O).
    The two contractions can go in either order; we do the one whose second (dominant)
    step sums over the shorter of the token axis l and the feature axis d.
    """
    l, d = x.shape[1], x.shape[2]
    if l <= d:
        u = torch.einsum("bld,hod->bhlo", x, w_h)      # (B, Rh, l, O): features first
        return torch.einsum("tpl,bhlo->bthpo", w_t, u)  # (B, Rt, Rh, P, O)
    v = torch.einsum("tpl,bld->btpd", w_t, x)          # (B, Rt, P, d): tokens first
    return torch.einsum("btpd,hod->bthpo", v, w_h)      # (B, Rt, Rh, P, O)


def _cp_chunk(xs: Sequence[Tensor], wts: Sequence[Tensor], whs: Sequence[Tensor]) -> Tensor:
    """Sum over one chunk of ranks of the product over modalities -> (B, P, O)."""
    prod = None
    for x, w_t, w_h in zip(xs, wts, whs):
        term = _modality_term(x, w_t, w_h)             # (B, rt_chunk, Rh, P, O)
        prod = term if prod is None else prod * term
    return prod.sum(dim=(1, 2))                        # (B, P, O)


def _cp_forward(xs: Sequence[Tensor], wts: Sequence[Tensor], whs: Sequence[Tensor],
                chunk_elems: int = _CHUNK_ELEMS) -> Tensor:
    """CP fusion, chunked along R_t so that at most ~chunk_elems elements per modality live at once.

    The rank sum must come after the product over modalities, so every (r_t, r_h) pair needs its
    own (out_len, out_dim) map per modality; there is no way around materialising those, only
    around materialising all of them together. With more than one chunk and autograd on, each
    chunk is recomputed in backward (activation checkpointing), because otherwise autograd would
    keep every chunk's M terms alive and chunking would save nothing.
    """
    B = xs[0].shape[0]
    r_t, r_h, P, O = wts[0].shape[0], whs[0].shape[0], wts[0].shape[1], whs[0].shape[1]
    per_rt = max(1, B * r_h * P * O)
    step = max(1, min(r_t, chunk_elems // per_rt))
    if step >= r_t:
        return _cp_chunk(xs, wts, whs)
    out = None
    for s in range(0, r_t, step):
        wts_c = [w[s:s + step] for w in wts]
        if torch.is_grad_enabled():
            part = checkpoint(_cp_chunk, list(xs), wts_c, list(whs), use_reentrant=False)
        else:
            part = _cp_chunk(xs, wts_c, whs)
        out = part if out is None else out + part
    return out


class SequenceFusion(nn.Module):
    """Low-rank token-level fusion of M sequences into one (B, out_len, out_dim) sequence.

    Args:
        in_dims: feature width d_m of each modality.
        seq_lens: token count l_m of each modality.
        out_dim: feature width of the fused sequence.
        out_len: token count of the fused sequence.
        rank_h: CP rank R_h of the feature-axis weight W_h.
        rank_t: CP rank R_t of the token-axis weight W_t.
        rank_mode:
            ``"cp"`` (default): the exact CP form, rank sums *after* the product over modalities,
            ``H = sum_{r_t, r_h} prod_m (w_t,m^{r_t} @ h_m @ (w_h,m^{r_h})^T)``. It equals the full
            outer-product fusion with W_t, W_h rebuilt from the factors (see
            :func:`rebuild_full_weights`).
            ``"paper"``: the literal Eq. 13 of the paper, rank sums *inside* the product,
            ``H = prod_m ((sum_{r_t} w_t,m^{r_t}) @ h_m @ (sum_{r_h} w_h,m^{r_h})^T)``. Because the
            rank sums act on each factor before anything is multiplied, this collapses to a
            rank-1 fusion with factors ``sum_r w^r``: the extra ranks add parameters but no
            expressiveness, and it is NOT equal to the rank-(R_t, R_h) outer-product fusion.
            Kept for faithfulness to the text and for ablations.

    Parameters: ``factors_h[m]`` (rank_h, out_dim, d_m) and ``factors_t[m]`` (rank_t, out_len, l_m).
    There is no bias.

    Shapes: ``forward([h_1, ..., h_M])`` with ``h_m`` (B, l_m, d_m) returns (B, out_len, out_dim).
    """

    def __init__(self, in_dims: list[int], seq_lens: list[int], out_dim: int, out_len: int,
                 rank_h: int, rank_t: int, rank_mode: str = "cp"):
        super().__init__()
        if rank_mode not in RANK_MODES:
            raise ValueError(f"rank_mode must be one of {RANK_MODES}, got {rank_mode!r}; "
                             "use 'cp' for the exact CP fusion")
        in_dims, seq_lens = list(in_dims), list(seq_lens)
        if not in_dims or len(in_dims) != len(seq_lens):
            raise ValueError(f"in_dims and seq_lens need one entry per modality (M >= 1) and equal lengths, "
                             f"got in_dims={in_dims}, seq_lens={seq_lens}")
        _check_sizes(in_dims=in_dims, seq_lens=seq_lens, out_dim=out_dim, out_len=out_len,
                     rank_h=rank_h, rank_t=rank_t)
        self.in_dims, self.seq_lens = in_dims, seq_lens
        self.out_dim, self.out_len = out_dim, out_len
        self.rank_h, self.rank_t, self.rank_mode = rank_h, rank_t, rank_mode
        M = len(in_dims)
        # Init so that O(1) inputs give an O(1) output for any M. With w_h ~ N(0, 1/d_m) and
        # w_t ~ N(0, 1/l_m), each modality term w_t @ h_m @ w_h^T has unit-variance entries, and a
        # product of M independent unit-variance terms still has unit variance.
        #  - cp: the sum over R_t*R_h rank pairs multiplies the variance by R_t*R_h. We fold
        #    1/sqrt(R_t*R_h) into the factors, spread evenly over the 2M factors that multiply
        #    into each term: w_h,m gets R_h^(-1/(2M)) and w_t,m gets R_t^(-1/(2M)).
        #  - paper: the rank sum happens on each factor, sum_r w^r, which has R times the
        #    variance of one w^r, so each factor's variance is divided by its rank instead.
        if rank_mode == "cp":
            sh = [(1.0 / d) ** 0.5 * rank_h ** (-1.0 / (2 * M)) for d in in_dims]
            st = [(1.0 / l) ** 0.5 * rank_t ** (-1.0 / (2 * M)) for l in seq_lens]
        else:
            sh = [(1.0 / (d * rank_h)) ** 0.5 for d in in_dims]
            st = [(1.0 / (l * rank_t)) ** 0.5 for l in seq_lens]
        self.factors_h = nn.ParameterList(
            [nn.Parameter(torch.randn(rank_h, out_dim, d) * s) for d, s in zip(in_dims, sh)])
        self.factors_t = nn.ParameterList(
            [nn.Parameter(torch.randn(rank_t, out_len, l) * s) for l, s in zip(seq_lens, st)])

    @property
    def num_modalities(self) -> int:
        return len(self.in_dims)

    def forward(self, xs: list[Tensor]) -> Tensor:
        """xs[m]: (B, l_m, d_m)  ->  (B, out_len, out_dim)."""
        _check_inputs(xs, self.in_dims, self.seq_lens, "SequenceFusion")
        wts, whs = list(self.factors_t), list(self.factors_h)
        if self.rank_mode == "paper":
            # Eq. 13 literally: sum each factor over its ranks first, then one rank-1 product.
            wts = [w.sum(0, keepdim=True) for w in wts]  # (1, P, l_m)
            whs = [w.sum(0, keepdim=True) for w in whs]  # (1, O, d_m)
        return _cp_forward(xs, wts, whs)

    def extra_repr(self) -> str:
        return (f"in_dims={self.in_dims}, seq_lens={self.seq_lens}, out_dim={self.out_dim}, "
                f"out_len={self.out_len}, rank_h={self.rank_h}, rank_t={self.rank_t}, "
                f"rank_mode={self.rank_mode!r}")


# --------------------------------------------------------------------------- reference forms
# The explicit forms below exist for tests and the benchmark; never use them in a model.

_LETTERS = "acefgijkmnqrsuvwxyzACDEFGHIJKLMNQRSUVWXYZ"  # einsum letters, leaving b, o, p, t, h, l, d


def outer_product_fusion(xs: list[Tensor], W_t: Tensor, W_h: Tensor) -> Tensor:
    """The full outer-product fusion of Eq. 9-10, built explicitly.

    xs[m]: (B, l_m, d_m); W_t: (out_len, l_1, ..., l_M); W_h: (out_dim, d_1, ..., d_M).
    Returns H (B, out_len, out_dim) with
    ``H[b,p,o] = sum_{j,i} W_t[p,j_1..j_M] W_h[o,i_1..i_M] prod_m h_m[b,j_m,i_m]``.

    The tensor product Z (B, l_1, d_1, ..., l_M, d_M) of the inputs is formed first, exactly as
    the equation reads, so memory grows as prod_m l_m d_m: that is what SF avoids.
    """
    M = len(xs)
    if W_t.dim() != M + 1 or W_h.dim() != M + 1:
        raise ValueError(f"for M={M} inputs W_t and W_h need {M + 1} axes, got W_t {tuple(W_t.shape)} "
                         f"and W_h {tuple(W_h.shape)}")
    _check_inputs(xs, list(W_h.shape[1:]), list(W_t.shape[1:]), "outer_product_fusion")
    if 2 * M > len(_LETTERS):
        raise ValueError(f"outer_product_fusion supports at most {len(_LETTERS) // 2} modalities, got {M}")
    js, is_ = _LETTERS[:M], _LETTERS[M:2 * M]
    z = xs[0]  # (B, l_1, d_1)
    for x in xs[1:]:
        # outer product with the next modality: (B, ..., l_m, d_m)
        z = z.reshape(*z.shape, *([1] * 2)) * x.reshape(x.shape[0], *([1] * (z.dim() - 1)), *x.shape[1:])
    z_sub = "b" + "".join(j + i for j, i in zip(js, is_))
    return torch.einsum(f"{z_sub},p{js},o{is_}->bpo", z, W_t, W_h)


def rebuild_full_weights(fusion: SequenceFusion) -> tuple[Tensor, Tensor]:
    """The full weights a SequenceFusion stands for: W_t (out_len, l_1..l_M), W_h (out_dim, d_1..d_M).

    cp mode: ``W[o, i_1..i_M] = sum_r prod_m w_m^r[o, i_m]``. paper mode: the same with each
    factor first summed over its ranks (a rank-1 tensor), which is what Eq. 13 computes.
    Size is exponential in M; for tests and benchmarks only.
    """
    M = fusion.num_modalities
    letters = _LETTERS[:M]

    def build(factors: list[Tensor], lead: str) -> Tensor:
        if fusion.rank_mode == "paper":
            factors = [w.sum(0, keepdim=True) for w in factors]
        subs = ",".join(f"t{lead}{c}" for c in letters)
        return torch.einsum(f"{subs}->{lead}{letters}", *factors)

    return build(list(fusion.factors_t), "p"), build(list(fusion.factors_h), "o")


class OuterProductFusion(nn.Module):
    """Sequence fusion with the full (unfactored) weights of Eq. 9-10: the paper's SF-OP ablation.

    Parameters ``W_t`` (out_len, l_1..l_M) and ``W_h`` (out_dim, d_1..d_M): what
    :class:`SequenceFusion` keeps in CP form, here kept whole, so their size is exponential in M.
    ``forward`` computes :func:`outer_product_fusion` without building the tensor product Z: the
    token axes are contracted one modality at a time, then the feature axes with ``W_h``.

    Shapes: ``forward([h_1, ..., h_M])`` with ``h_m`` (B, l_m, d_m) returns (B, out_len, out_dim).
    """

    def __init__(self, in_dims: list[int], seq_lens: list[int], out_dim: int, out_len: int):
        super().__init__()
        in_dims, seq_lens = list(in_dims), list(seq_lens)
        if not in_dims or len(in_dims) != len(seq_lens):
            raise ValueError(f"in_dims and seq_lens need one entry per modality and equal lengths, "
                             f"got in_dims={in_dims}, seq_lens={seq_lens}")
        if 2 * len(in_dims) > len(_LETTERS):
            raise ValueError(f"OuterProductFusion supports at most {len(_LETTERS) // 2} modalities, "
                             f"got {len(in_dims)}")
        _check_sizes(in_dims=in_dims, seq_lens=seq_lens, out_dim=out_dim, out_len=out_len)
        self.in_dims, self.seq_lens, self.out_dim, self.out_len = in_dims, seq_lens, out_dim, out_len
        # unit-variance output for unit-variance inputs: each weight entry ~ N(0, 1 / fan-in)
        fan_t, fan_h = math.prod(seq_lens), math.prod(in_dims)
        self.W_t = nn.Parameter(torch.randn(out_len, *seq_lens) / fan_t ** 0.5)
        self.W_h = nn.Parameter(torch.randn(out_dim, *in_dims) / fan_h ** 0.5)

    def forward(self, xs: list[Tensor]) -> Tensor:
        """xs[m]: (B, l_m, d_m)  ->  (B, out_len, out_dim)."""
        _check_inputs(xs, self.in_dims, self.seq_lens, "OuterProductFusion")
        M = len(xs)
        js, is_ = _LETTERS[:M], _LETTERS[M:2 * M]
        state, sub = self.W_t, "p" + js  # (P, l_1..l_M)
        for m, x in enumerate(xs):  # swap token axis j_m for feature axis i_m: (B, P, i_1..i_m, j_m+1..j_M)
            out = ("" if m else "b") + sub.replace(js[m], is_[m])
            state = torch.einsum(f"{sub},b{js[m]}{is_[m]}->{out}", state, x)
            sub = out
        return torch.einsum(f"{sub},o{is_}->bpo", state, self.W_h)  # (B, P, O)


class VectorFusion(nn.Module):
    """Vector-level low-rank fusion (LMF-style; the paper's Table 6 comparison).

    Each sequence is mean-pooled over tokens to a vector, then fused with a rank-R CP weight:
    ``out = sum_r prod_m (mean_j h_m[:, j] @ (w_m^r)^T)``. The token axis is gone, so this
    cannot model token-to-token interactions; it is here as the benchmark baseline.

    Parameters: ``factors[m]`` (rank, out_dim, d_m). ``forward(xs)``: xs[m] (B, l_m, d_m) -> (B, out_dim).
    """

    def __init__(self, in_dims: list[int], out_dim: int, rank: int):
        super().__init__()
        in_dims = list(in_dims)
        if not in_dims:
            raise ValueError("VectorFusion needs at least one modality in in_dims, got []")
        _check_sizes(in_dims=in_dims, out_dim=out_dim, rank=rank)
        self.in_dims, self.out_dim, self.rank = in_dims, out_dim, rank
        M = len(in_dims)
        # Same reasoning as SequenceFusion: unit-variance terms, 1/sqrt(R) spread over M factors.
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.randn(rank, out_dim, d) * (1.0 / d) ** 0.5 * rank ** (-1.0 / (2 * M)))
             for d in in_dims])

    def forward(self, xs: list[Tensor]) -> Tensor:
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.in_dims):
            got = len(xs) if isinstance(xs, (list, tuple)) else type(xs).__name__
            raise ValueError(f"VectorFusion was built for M={len(self.in_dims)} modalities, got {got} inputs")
        prod = None
        for m, (x, w) in enumerate(zip(xs, self.factors)):
            if x.dim() != 3 or x.shape[-1] != self.in_dims[m]:
                raise ValueError(f"VectorFusion: modality {m} has shape {tuple(x.shape)}, expected "
                                 f"(B, l_m, {self.in_dims[m]})")
            v = x.mean(dim=1)                               # (B, d_m)
            term = torch.einsum("bd,rod->bro", v, w)        # (B, R, O)
            prod = term if prod is None else prod * term
        return prod.sum(dim=1)                              # (B, O)


__all__ = ["SequenceFusion", "OuterProductFusion", "VectorFusion", "outer_product_fusion", "rebuild_full_weights", "RANK_MODES"]
