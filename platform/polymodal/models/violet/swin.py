"""Shifted 3D windows (Video Swin) and VIOLET's small one-stage backbone (``model.visual: swin``).

The window functions here are the ones VIOLET's real backbone, torchvision's Video Swin layout
(:mod:`.swin3d`, ``model.visual: swin3d_t / s / b``), runs on. :class:`VideoSwin` is a one-stage
Video Swin on ``patch_size``-px patches with its own ``p_s + p_t``: the fast, random-weight
backbone of the ``tiny`` preset, tests and demos (Liu et al., 'Video Swin Transformer', CVPR 2022).

One block of the diagram per piece:

* pure window functions: :func:`resolve_window` (per axis, a window at least as large as the input
  shrinks to the input and its shift drops to 0), :func:`pad_to_window`, :func:`window_partition` /
  :func:`window_reverse`, :func:`relative_position_index` and :func:`shifted_window_mask` (the additive
  mask that keeps attention inside the shifted windows and off the padding);
* :class:`WindowAttention3D`: multi-head self-attention inside each window with a learnable relative
  position bias, ``(2Wt-1)(2Wh-1)(2Ww-1)`` entries per head;
* :class:`SwinBlock3D`: pre-norm (shifted) window attention + MLP, both residual;
* :class:`VideoSwin`: patch embedding (``patch_size`` px, one frame per patch: no temporal
  downsampling), ``p_s + p_t``, ``depth`` blocks alternating unshifted / shifted windows, LayerNorm.
  At 224 px and patch 32 the grid is 7 x 7 per frame; images are videos of one frame (T = 1).

Shifted windows (Swin): block 2k+1 uses windows moved by ``shift`` (half a window) on each axis, so
information crosses the previous block's window borders. Rather than attend in the uneven windows
of a grid offset by ``shift``, the tokens are rolled cyclically by ``-shift`` and cut into even
windows; the windows at the far end then hold tokens that were not neighbours (they wrapped
around), and :func:`shifted_window_mask` forbids attention between them. Inputs that are not a
multiple of the window are zero-padded at the far end; unlike the reference implementations, which
mask only across shifted regions and let the zero padding take part as keys, the padding is masked
too, so a real token's output does not depend on how much padding its window got.

The relative bias of a window shrunk to a small input is indexed by the shrunk window's own
coordinates (not by slicing the full window's index), so it stays right whichever axes shrink.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Triple = tuple[int, int, int]

# Additive mask value: exp(-1e4) underflows to exactly 0 in fp32/bf16/fp16 (so masked probabilities
# are exactly 0), it fits fp16, and unlike -inf a row with every key masked (a padding query whose
# window region is all padding) gives a finite softmax instead of NaN (its output is discarded).
MASKED = -1e4


def _triple(value: int | Sequence[int], name: str) -> Triple:
    """An int (same on every axis) or 3 ints -> (t, h, w); ValueError otherwise."""
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (t, h, w), got {value}")
    return value  # type: ignore[return-value]


# ----------------------------------------------------------------------------- windows


def resolve_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Triple, Triple]:
    """The window and shift a block uses on an input of ``size`` (T, H, W).

    Per axis, a window at least as large as the input shrinks to the input (one window covers the
    axis: nothing to pad) and its shift becomes 0 (a single window has no border to cross).
    """
    win, sh = list(window), list(shift)
    for i in range(3):
        if size[i] <= win[i]:
            win[i], sh[i] = int(size[i]), 0
    return tuple(win), tuple(sh)  # type: ignore[return-value]


def padded_size(size: Sequence[int], window: Sequence[int]) -> Triple:
    """(T, H, W) rounded up to multiples of the window."""
    return tuple(math.ceil(s / w) * w for s, w in zip(size, window))  # type: ignore[return-value]


def pad_to_window(x: Tensor, window: Sequence[int]) -> Tensor:
    """(B, T, H, W, C) -> (B, Tp, Hp, Wp, C), zero-padded at the far end of each axis to a multiple of the window."""
    T, H, W = x.shape[1:4]
    Tp, Hp, Wp = padded_size((T, H, W), window)
    if (Tp, Hp, Wp) == (T, H, W):
        return x
    return F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H, 0, Tp - T))  # F.pad pairs run from the last dim back


def window_partition(x: Tensor, window: Sequence[int]) -> Tensor:
    """(B, T, H, W, C) -> (B * nW, Wt * Wh * Ww, C) windows, batch-major, then windows in (t, h, w) order.

    T, H, W must be multiples of the window (see :func:`pad_to_window`).
    """
    B, T, H, W, C = x.shape
    wt, wh, ww = window
    if T % wt or H % wh or W % ww:
        raise ValueError(f"input (T, H, W)={(T, H, W)} is not a multiple of the window {tuple(window)}; "
                         "pad it first (pad_to_window)")
    x = x.reshape(B, T // wt, wt, H // wh, wh, W // ww, ww, C)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, nT, nH, nW, wt, wh, ww, C)
    return x.reshape(-1, wt * wh * ww, C)


def window_reverse(windows: Tensor, window: Sequence[int], size: Sequence[int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, Wt * Wh * Ww, C) -> (B, T, H, W, C), ``size`` = (T, H, W)."""
    wt, wh, ww = window
    T, H, W = size
    C = windows.shape[-1]
    x = windows.reshape(-1, T // wt, H // wh, W // ww, wt, wh, ww, C)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, nT, wt, nH, wh, nW, ww, C)
    return x.reshape(-1, T, H, W, C)


def relative_position_index(window: Sequence[int], table_window: Sequence[int] | None = None,
                            device=None) -> Tensor:
    """(N, N) long, N = Wt * Wh * Ww: row of the bias table for each (query, key) pair of a window.

    The table of a ``table_window`` (default: ``window``) holds one entry per relative offset
    (dt, dh, dw), each in ``[-(Wx - 1), Wx - 1]``, raveled in (t, h, w) order. ``window`` may be
    smaller than ``table_window`` on any axis (a window shrunk to a small input): offsets are
    those of the smaller window's own tokens.
    """
    table_window = tuple(window if table_window is None else table_window)
    if any(w > tw for w, tw in zip(window, table_window)):
        raise ValueError(f"window {tuple(window)} exceeds the bias table's window {table_window}")
    grids = torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij")
    coords = torch.stack([g.flatten() for g in grids], dim=1)  # (N, 3) (t, h, w) of each token
    rel = coords[:, None, :] - coords[None, :, :] + torch.tensor(table_window, device=device) - 1  # (N, N, 3) >= 0
    _, sh, sw = (2 * w - 1 for w in table_window)
    return rel[..., 0] * sh * sw + rel[..., 1] * sw + rel[..., 2]


def _region_ids(length: int, window: int, shift: int, device=None) -> Tensor:
    """(length,) region of each rolled position on one axis: 0 for [0, L - w), 1 for [L - w, L - s),
    2 for [L - s, L) (the part that wrapped around from the start). With no shift, all 0."""
    ids = torch.zeros(length, dtype=torch.long, device=device)
    if shift:
        ids[length - window:length - shift] = 1
        ids[length - shift:] = 2
    return ids


def shifted_window_mask(size: Sequence[int], window: Sequence[int], shift: Sequence[int], *,
                        real_size: Sequence[int] | None = None, device=None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention mask (nW, N, N) for the windows of a rolled, padded (T, H, W) grid.

    ``size``: the padded grid (multiples of ``window``), rolled by ``-shift``. ``real_size``: the
    unpadded input (default ``size``). Entry [w, i, j] is 0 when query i may attend to key j of
    window w, else :data:`MASKED`:

    * i and j must come from the same region after the roll (Swin): on each axis a rolled position
      lies in [0, S - w), [S - w, S - s) or [S - s, S), the last one having wrapped around from the
      start, so tokens of different regions were never neighbours;
    * j must be a real token, not padding.

    Windows are in :func:`window_partition` order; N = Wt * Wh * Ww.
    """
    size, window, shift = tuple(size), tuple(window), tuple(shift)
    real_size = size if real_size is None else tuple(real_size)
    if any(s % w for s, w in zip(size, window)):
        raise ValueError(f"size {size} is not a multiple of the window {window}")
    if any(not 0 <= s < w for s, w in zip(shift, window)):
        raise ValueError(f"shift {shift} must lie in [0, window) on each axis, window={window}")
    T, H, W = size
    rt, rh, rw = (_region_ids(n, w, s, device) for n, w, s in zip(size, window, shift))
    region = rt[:, None, None] * 9 + rh[None, :, None] * 3 + rw[None, None, :]  # (T, H, W) ids 0..26
    # Padding sits at the far end before the roll; roll the flag like the tokens.
    pad = torch.zeros(size, dtype=torch.bool, device=device)
    pad[real_size[0]:] = True
    pad[:, real_size[1]:] = True
    pad[:, :, real_size[2]:] = True
    pad = torch.roll(pad, shifts=tuple(-s for s in shift), dims=(0, 1, 2))
    region = window_partition(region[None, ..., None], window)[..., 0]  # (nW, N)
    pad = window_partition(pad[None, ..., None], window)[..., 0]  # (nW, N)
    blocked = (region[:, :, None] != region[:, None, :]) | pad[:, None, :]  # (nW, N, N)
    mask = torch.zeros(blocked.shape, dtype=dtype, device=device)
    return mask.masked_fill_(blocked, MASKED)


# ----------------------------------------------------------------------------- attention


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside each window, plus a learnable relative position bias.

    Parameters
    ----------
    dim : token width C
    heads : attention heads (must divide ``dim``)
    window : (Wt, Wh, Ww), the largest window the bias table covers
    """

    def __init__(self, dim: int, heads: int, window: int | Sequence[int], qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.dim, self.heads = dim, heads
        self.window = _triple(window, "window")
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        n_offsets = math.prod(2 * w - 1 for w in self.window)
        self.relative_bias = nn.Parameter(torch.zeros(n_offsets, heads))  # ((2Wt-1)(2Wh-1)(2Ww-1), heads)
        nn.init.trunc_normal_(self.relative_bias, std=0.02)

    def bias(self, window: Sequence[int] | None = None) -> Tensor:
        """(heads, N, N) relative position bias of a ``window`` (default: the full one)."""
        window = self.window if window is None else tuple(window)
        index = relative_position_index(window, self.window, device=self.relative_bias.device)  # (N, N)
        return self.relative_bias[index].permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None, window: Sequence[int] | None = None,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Attention within windows.

        Parameters
        ----------
        x : (B * nW, N, C) windows, batch-major (as :func:`window_partition` gives)
        mask : (nW, N, N) additive mask (:func:`shifted_window_mask`), or None
        window : the (Wt, Wh, Ww) the windows were cut with (N = Wt * Wh * Ww); default: the full one
        return_attention : also return the (B * nW, heads, N, N) attention probabilities

        Returns
        -------
        (B * nW, N, C), and the probabilities when asked.
        """
        Bw, N, C = x.shape
        window = self.window if window is None else tuple(window)
        if math.prod(window) != N:
            raise ValueError(f"windows hold {N} tokens but window {window} has {math.prod(window)}")
        d = C // self.heads
        qkv = self.qkv(x).view(Bw, N, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # (3, B*nW, heads, N, d)
        q, k, v = qkv.unbind(0)
        attn_bias = self.bias(window)[None]  # (1, heads, N, N)
        if mask is not None:
            nW = mask.shape[0]
            if Bw % nW:
                raise ValueError(f"{Bw} windows are not a whole number of batches of the mask's {nW} windows")
            # (nW, heads, N, N), repeated per batch element: windows are batch-major.
            attn_bias = (attn_bias + mask[:, None]).repeat(Bw // nW, 1, 1, 1)
        attn_bias = attn_bias.to(q.dtype)
        if return_attention:
            probs = ((q @ k.transpose(-2, -1)) / math.sqrt(d) + attn_bias).softmax(dim=-1)  # (B*nW, heads, N, N)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # (B*nW, heads, N, d)
        out = self.proj(out.transpose(1, 2).reshape(Bw, N, C))
        return (out, probs) if return_attention else out


class SwinBlock3D(nn.Module):
    """Pre-norm Swin block: x + (shifted) window attention(LN(x)), then x + MLP(LN(x)).

    Parameters
    ----------
    dim, heads : token width and attention heads
    window : (Wt, Wh, Ww) attention window (shrinks per axis to a smaller input)
    shift : (St, Sh, Sw) cyclic shift, each in [0, window); (0, 0, 0) for plain windows
    mlp_ratio : hidden width of the MLP over ``dim``
    """

    def __init__(self, dim: int, heads: int, window: int | Sequence[int], shift: int | Sequence[int] = 0,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.window = _triple(window, "window")
        self.shift = _triple(shift, "shift")
        if any(w < 1 for w in self.window):
            raise ValueError(f"window {self.window} must be >= 1 on every axis")
        if any(not 0 <= s < w for s, w in zip(self.shift, self.window)):
            raise ValueError(f"shift {self.shift} must lie in [0, window) on each axis, window={self.window}")
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, heads, self.window)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, T, H, W, C) -> (B, T, H, W, C).

        With ``return_attention`` also the (B * nW, heads, N, N) probabilities, in the windows of the
        padded grid rolled by ``-shift`` (:func:`window_partition` order of that grid).
        """
        B, T, H, W, C = x.shape
        window, shift = resolve_window((T, H, W), self.window, self.shift)
        h = pad_to_window(self.norm1(x), window)  # (B, Tp, Hp, Wp, C)
        size = tuple(h.shape[1:4])
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        mask = None
        if any(shift) or size != (T, H, W):
            mask = shifted_window_mask(size, window, shift, real_size=(T, H, W), device=x.device)
        out = self.attn(window_partition(h, window), mask, window, return_attention=return_attention)
        out, probs = out if return_attention else (out, None)
        h = window_reverse(out, window, size)  # (B, Tp, Hp, Wp, C)
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=(1, 2, 3))
        x = x + h[:, :T, :H, :W]
        x = x + self.mlp(self.norm2(x))
        return (x, probs) if return_attention else x


# ----------------------------------------------------------------------------- backbone


class VideoSwin(nn.Module):
    """Frames (B, T, in_chans, image_size, image_size) -> video tokens (B, T, H', W', dim).

    H' = W' = image_size // patch_size (7 at 224 px, patch 32); T is kept (no temporal downsampling).

    Parameters
    ----------
    dim, depth, heads : token width, number of blocks, attention heads
    image_size, patch_size, in_chans : the frames
    window : (Wt, Wh, Ww) attention window
    shift : the shift of the odd blocks; default ``window // 2`` per axis (Swin). Even blocks never shift.
    max_frames : the number of temporal embeddings ``p_t`` (the most frames a video may have)
    mlp_ratio : MLP hidden width over ``dim``
    """

    def __init__(self, dim: int, depth: int, heads: int, *, image_size: int = 224, patch_size: int = 32,
                 in_chans: int = 3, window: int | Sequence[int] = (2, 7, 7),
                 shift: int | Sequence[int] | None = None, max_frames: int = 16, mlp_ratio: float = 4.0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        if depth < 1 or max_frames < 1:
            raise ValueError(f"depth={depth} and max_frames={max_frames} must be >= 1")
        window = _triple(window, "window")
        shift = tuple(w // 2 for w in window) if shift is None else _triple(shift, "shift")
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.max_frames, self.dim = max_frames, dim
        self.grid = image_size // patch_size  # H' = W'
        # Kernel 1 in time: every frame keeps its own tokens.
        self.patch_embed = nn.Conv3d(in_chans, dim, kernel_size=(1, patch_size, patch_size),
                                     stride=(1, patch_size, patch_size))
        self.pos_spatial = nn.Parameter(torch.zeros(1, 1, self.grid, self.grid, dim))  # p_s: (1, 1, H', W', C)
        self.pos_temporal = nn.Parameter(torch.zeros(1, max_frames, 1, 1, dim))  # p_t: (1, max_frames, 1, 1, C)
        nn.init.trunc_normal_(self.pos_spatial, std=0.02)
        nn.init.trunc_normal_(self.pos_temporal, std=0.02)
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, heads, window, shift=(0, 0, 0) if i % 2 == 0 else shift, mlp_ratio=mlp_ratio)
            for i in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_linear)

    def _check_frames(self, frames: Tensor) -> None:
        if frames.ndim != 5:
            raise ValueError(f"frames must be (B, T, {self.in_chans}, {self.image_size}, {self.image_size}), "
                             f"got shape {tuple(frames.shape)}")
        B, T, C, H, W = frames.shape
        if not 1 <= T <= self.max_frames:
            raise ValueError(f"got {T} frames but the model has temporal embeddings for max_frames="
                             f"{self.max_frames}; sample at most {self.max_frames} frames or raise max_frames")
        if C != self.in_chans:
            raise ValueError(f"frames have {C} channels, the model expects in_chans={self.in_chans}")
        if (H, W) != (self.image_size, self.image_size):
            raise ValueError(f"frames are {H}x{W} px, the model expects image_size={self.image_size}; "
                             f"resize/crop them to {self.image_size}x{self.image_size}")

    def embed(self, frames: Tensor) -> Tensor:
        """(B, T, in_chans, S, S) -> patch tokens + p_s + p_t, (B, T, H', W', C) (Eq. 2), before the blocks."""
        self._check_frames(frames)
        T = frames.shape[1]
        x = self.patch_embed(frames.transpose(1, 2))  # (B, C, T, H', W')
        x = x.permute(0, 2, 3, 4, 1)  # (B, T, H', W', C)
        return x + self.pos_spatial + self.pos_temporal[:, :T]  # p_v = p_s + p_t, broadcast over (t, h, w)

    def forward(self, frames: Tensor) -> Tensor:
        """(B, T, in_chans, S, S) -> (B, T, H', W', C)."""
        x = self.embed(frames)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
