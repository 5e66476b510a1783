"""Video Swin Transformer with torchvision's parameter layout: VIOLET's real visual backbone.

The paper (Fu et al., VIOLET) initialises its Video Swin Transformer from Video Swin-B pre-trained
on Kinetics-400 and removes the temporal down-sampling, so every sampled frame keeps its own
tokens. :class:`SwinTransformer3d` is Video Swin (Liu et al., 'Video Swin Transformer') with the
module and parameter names and shapes of ``torchvision.models.video.swin3d_t / s / b``
(torchvision 0.28, ``torchvision/models/video/swin_transformer.py``), so torchvision's Kinetics-400
checkpoints load unchanged (:func:`load_torchvision_weights`). One block of the diagram each:

* :class:`PatchEmbed3d` (``patch_embed.proj`` Conv3d + ``patch_embed.norm``): (t, 4, 4) patches;
  VIOLET uses t = 1 (torchvision's checkpoints have t = 2, see :func:`fold_temporal_kernel`);
* four stages in ``features``: ``features.0, 2, 4, 6`` hold the :class:`SwinTransformerBlock` s
  (``norm1``, ``attn.qkv / proj / relative_position_bias_table / relative_position_index``,
  ``norm2``, ``mlp.0 / mlp.3``), alternating plain and shifted 3D windows (shift = window // 2);
  ``features.1, 3, 5`` are :class:`PatchMerging` (2 x 2 spatial neighbours -> twice the width);
* ``norm`` over the last stage; ``head`` (a Kinetics classifier) only when ``num_classes > 0``.

At 224 px the stages see 56, 28, 14 and 7 tokens per side, widths C, 2C, 4C, 8C (C = 128 for
Swin-B): the last stage's 7 x 7 tokens per frame (each 32 px) are VIOLET's video tokens.

The window code is :mod:`.swin`'s. It differs from torchvision's only where a 224-px VIOLET input
never goes: (a) zero padding (an axis not a multiple of the window) is masked out of attention,
where torchvision lets it take part as keys; (b) a window shrunk on the h or w axis (an input
smaller than the window) indexes the bias table by its own tokens' offsets, where torchvision
slices the full window's index (right only when the leading t axis alone shrinks, as T = 4 frames
under a window of 8 do). At 224 px every grid is a multiple of 7 and only t shrinks, so the
outputs are torchvision's; ``tests/violet/test_violet_swin3d.py`` checks it against a reference
made with torchvision's own module.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import PolymodalError

from .swin import pad_to_window, relative_position_index, resolve_window, shifted_window_mask, window_partition, \
    window_reverse

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Arch:
    """One of torchvision's ``swin3d_*`` builders: width of the first stage, blocks and heads per stage."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: Triple = (8, 7, 7)
    #: torchvision's builder default (its Kinetics recipe)
    stochastic_depth_prob: float = 0.1


#: torchvision's ``swin3d_t / s / b`` (patch (2, 4, 4), window (8, 7, 7) for all three)
ARCHS: dict[str, Arch] = {
    "swin3d_t": Arch(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin3d_s": Arch(96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin3d_b": Arch(128, (2, 2, 18, 2), (4, 8, 16, 32)),
}
#: torchvision's patch: 2 frames x 4 x 4 px
TORCHVISION_PATCH: Triple = (2, 4, 4)
#: VIOLET's: one frame x 4 x 4 px (no temporal down-sampling)
VIOLET_PATCH: Triple = (1, 4, 4)

#: The statistics of torchvision's Kinetics-400 transforms (``VideoClassification(mean=..., std=...)``
#: of every ``Swin3D_*_Weights``): frames for these weights are standardised with them.
KINETICS400_MEAN = (0.4850, 0.4560, 0.4060)
KINETICS400_STD = (0.2290, 0.2240, 0.2250)


@dataclass(frozen=True)
class TorchvisionWeights:
    """A named torchvision checkpoint: its download address and its transforms' statistics."""

    url: str
    mean: tuple[float, float, float] = KINETICS400_MEAN
    std: tuple[float, float, float] = KINETICS400_STD


#: ``Swin3D_{T,S,B}_Weights`` of torchvision 0.28 (``torchvision/models/video/swin_transformer.py``)
TORCHVISION_WEIGHTS: dict[str, dict[str, TorchvisionWeights]] = {
    "swin3d_t": {"KINETICS400_V1": TorchvisionWeights("https://download.pytorch.org/models/swin3d_t-7615ae03.pth")},
    "swin3d_s": {"KINETICS400_V1": TorchvisionWeights("https://download.pytorch.org/models/swin3d_s-da41c237.pth")},
    "swin3d_b": {
        "KINETICS400_V1": TorchvisionWeights("https://download.pytorch.org/models/swin3d_b_1k-24f7c7c6.pth"),
        "KINETICS400_IMAGENET22K_V1": TorchvisionWeights(
            "https://download.pytorch.org/models/swin3d_b_22k-7c6ae6fa.pth"),
    },
}


def pixel_stats(arch: str, weights: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) to standardise frames in [0, 1] for ``weights``: a named torchvision checkpoint's
    own transforms' statistics; for a weights file (or none) those of torchvision's Kinetics-400
    transforms, which every torchvision ``swin3d`` checkpoint was made with."""
    named = TORCHVISION_WEIGHTS.get(arch, {}).get(weights or "")
    if named is not None:
        return named.mean, named.std
    return KINETICS400_MEAN, KINETICS400_STD


# ----------------------------------------------------------------------------- modules


class StochasticDepth(nn.Module):
    """torchvision's ``StochasticDepth(p, "row")``: in training, drop a residual branch per sample with
    probability ``p`` and scale the kept ones by ``1 / (1 - p)``; identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"stochastic depth probability must lie in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)
        return x * keep.bernoulli_(1.0 - self.p).div_(1.0 - self.p)


class PatchEmbed3d(nn.Module):
    """(B, C_in, T, H, W) -> (B, T / pt, H / ph, W / pw, C) patch tokens (zero-padded to whole
    patches), then LayerNorm. Parameters ``proj`` (Conv3d) and ``norm``, as torchvision's."""

    def __init__(self, patch_size: Sequence[int], in_channels: int = 3, embed_dim: int = 96):
        super().__init__()
        self.tuple_patch_size: Triple = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.tuple_patch_size,
                              stride=self.tuple_patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        T, H, W = x.shape[2:]
        pt, ph, pw = self.tuple_patch_size
        x = F.pad(x, (0, -W % pw, 0, -H % ph, 0, -T % pt))
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))  # (B, T', H', W', C)


@functools.lru_cache(maxsize=8)
def _full_window_index(window: Triple) -> Tensor:
    """:func:`.swin.relative_position_index` of a full window, on the CPU (also under a meta-device
    context) and computed once per window: Swin-B's 24 blocks share one (392, 392) table."""
    return relative_position_index(window, device="cpu")


class ShiftedWindowAttention3d(nn.Module):
    """Multi-head self-attention inside (shifted) 3D windows with a relative position bias.

    Parameters (torchvision's names): ``qkv``, ``proj``, ``relative_position_bias_table``
    ((2Wt-1)(2Wh-1)(2Ww-1), heads) and the buffer ``relative_position_index`` (N, N), N = Wt*Wh*Ww.
    The input (B, T, H, W, C) is padded to whole windows, rolled by ``-shift`` when shifted, cut
    into windows, attended with bias + :func:`.swin.shifted_window_mask`, and put back.
    """

    def __init__(self, dim: int, window_size: Sequence[int], shift_size: Sequence[int], num_heads: int,
                 qkv_bias: bool = True, proj_bias: bool = True, attention_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.window_size: Triple = tuple(int(w) for w in window_size)  # type: ignore[assignment]
        self.shift_size: Triple = tuple(int(s) for s in shift_size)  # type: ignore[assignment]
        if any(not 0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift {self.shift_size} must lie in [0, window) on each axis, window={self.window_size}")
        self.num_heads, self.attention_dropout, self.dropout = num_heads, attention_dropout, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window_size), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", _full_window_index(self.window_size).clone())

    def windows(self, size: Sequence[int]) -> tuple[Triple, Triple]:
        """(window, shift) this layer uses on a (T, H, W) input: per axis a window at least as large as
        the input shrinks to it and does not shift (as torchvision's ``_get_window_and_shift_size``)."""
        return resolve_window(size, self.window_size, self.shift_size)

    def bias(self, window: Sequence[int]) -> Tensor:
        """(heads, N, N) relative position bias of ``window``."""
        window = tuple(window)
        if window == self.window_size:
            index = self.relative_position_index
        else:  # a shrunk window: its own tokens' offsets into the full window's table
            index = relative_position_index(window, self.window_size, device=self.relative_position_bias_table.device)
        return self.relative_position_bias_table[index].permute(2, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, H, W, C) -> (B, T, H, W, C)."""
        B, T, H, W, C = x.shape
        window, shift = self.windows((T, H, W))
        h = pad_to_window(x, window)
        size = tuple(h.shape[1:4])
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        win = window_partition(h, window)  # (B * nW, N, C)
        Bw, N, _ = win.shape
        d = C // self.num_heads
        q, k, v = self.qkv(win).view(Bw, N, 3, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias(window)[None]  # (1, heads, N, N)
        if any(shift) or size != (T, H, W):
            mask = shifted_window_mask(size, window, shift, real_size=(T, H, W), device=x.device)  # (nW, N, N)
            bias = (bias + mask[:, None]).repeat(Bw // mask.shape[0], 1, 1, 1)  # windows are batch-major
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.attention_dropout if self.training else 0.0)
        out = F.dropout(self.proj(out.transpose(1, 2).reshape(Bw, N, C)), self.dropout, self.training)
        h = window_reverse(out, window, size)
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=(1, 2, 3))
        return h[:, :T, :H, :W]


class SwinTransformerBlock(nn.Module):
    """x + SD(attn(norm1(x))), then x + SD(mlp(norm2(x))); ``mlp`` is torchvision's ``MLP``
    (Linear, GELU, Dropout, Linear, Dropout: parameters ``mlp.0`` and ``mlp.3``)."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shift_size: Sequence[int],
                 mlp_ratio: float = 4.0, dropout: float = 0.0, attention_dropout: float = 0.0,
                 stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention3d(dim, window_size, shift_size, num_heads,
                                             attention_dropout=attention_dropout, dropout=dropout)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(B, T, H, W, C) -> (B, T, H/2, W/2, 2C): each 2 x 2 spatial neighbourhood (zero-padded to even
    sides) concatenated in torchvision's order (0,0), (1,0), (0,1), (1,1), LayerNorm, Linear."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]], -1)
        return self.reduction(self.norm(x))


class SwinTransformer3d(nn.Module):
    """Video Swin: frames (B, C_in, T, H, W) -> features (B, T', H/32, W/32, 8 C) (or Kinetics logits).

    Parameters
    ----------
    patch_size : (t, h, w) of a patch; torchvision (2, 4, 4), VIOLET (1, 4, 4)
    embed_dim, depths, num_heads : width of stage 1 (stage i has ``embed_dim * 2**i``), blocks and heads per stage
    window_size : (Wt, Wh, Ww); odd blocks of a stage shift by ``window // 2``
    stochastic_depth_prob : rises linearly from 0 (first block) to this (last block), as torchvision
    num_classes : 0 = no classifier (VIOLET); > 0 adds torchvision's ``avgpool`` + ``head``
    """

    def __init__(self, patch_size: Sequence[int], embed_dim: int, depths: Sequence[int], num_heads: Sequence[int],
                 window_size: Sequence[int], mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.1, num_classes: int = 0,
                 in_channels: int = 3):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have one entry per stage")
        self.patch_size: Triple = tuple(int(p) for p in patch_size)  # type: ignore[assignment]
        self.window_size: Triple = tuple(int(w) for w in window_size)  # type: ignore[assignment]
        self.patch_embed = PatchEmbed3d(self.patch_size, in_channels, embed_dim)
        self.pos_drop = nn.Dropout(p=dropout)
        layers: list[nn.Module] = []
        total, block_id = sum(depths), 0
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            blocks = []
            for i in range(depth):
                blocks.append(SwinTransformerBlock(
                    dim, heads, self.window_size, [0 if i % 2 == 0 else w // 2 for w in self.window_size],
                    mlp_ratio=mlp_ratio, dropout=dropout, attention_dropout=attention_dropout,
                    stochastic_depth_prob=stochastic_depth_prob * block_id / max(total - 1, 1)))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        if num_classes:
            self.avgpool = nn.AdaptiveAvgPool3d(1)
            self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def stride(self) -> int:
        """Pixels per side of a last-stage token: the patch, doubled by each patch merging."""
        return self.patch_size[1] * 2 ** (sum(isinstance(m, PatchMerging) for m in self.features))

    def blocks(self) -> list[SwinTransformerBlock]:
        """Every block, stage by stage."""
        return [m for m in self.modules() if isinstance(m, SwinTransformerBlock)]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, T, H, W) -> (B, T', H', W', num_features), after the last LayerNorm."""
        return self.norm(self.features(self.pos_drop(self.patch_embed(x))))

    def forward(self, x: Tensor) -> Tensor:
        """Features (no ``head``) or (B, num_classes) logits (with one)."""
        x = self.forward_features(x)
        if not hasattr(self, "head"):
            return x
        return self.head(torch.flatten(self.avgpool(x.permute(0, 4, 1, 2, 3)), 1))


def build(arch: str, *, patch_size: Sequence[int] = VIOLET_PATCH, embed_dim: int | None = None,
          depths: Sequence[int] | None = None, num_heads: Sequence[int] | None = None,
          window_size: Sequence[int] | None = None, stochastic_depth_prob: float | None = None,
          num_classes: int = 0) -> SwinTransformer3d:
    """torchvision's ``arch`` (``swin3d_t / s / b``), optionally narrowed or shortened (tests)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown Video Swin {arch!r}; choose one of {sorted(ARCHS)}")
    a = ARCHS[arch]
    return SwinTransformer3d(patch_size, embed_dim or a.embed_dim, depths or a.depths, num_heads or a.num_heads,
                             window_size or a.window_size,
                             stochastic_depth_prob=a.stochastic_depth_prob if stochastic_depth_prob is None
                             else stochastic_depth_prob, num_classes=num_classes)


# ----------------------------------------------------------------------------- checkpoints


def fold_temporal_kernel(weight: Tensor, frames: int) -> Tensor:
    """A patch-embedding kernel (C, C_in, t, ph, pw) folded to ``frames`` (1) frames: summed over t.

    Summation keeps the response to a static clip: a t-frame kernel over t copies of one frame
    gives exactly what the summed one-frame kernel gives on that frame, so on a still video the
    folded model's tokens are the checkpoint's. (Averaging would divide them by t.)
    """
    if weight.ndim != 5 or weight.shape[2] == frames:
        return weight
    if frames != 1:
        raise ValueError(f"can fold a {weight.shape[2]}-frame patch kernel to 1 frame only, not {frames}")
    return weight.sum(dim=2, keepdim=True)


def _read_state_dict(path: str, field: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with objects (not weights-only), truncated file, not a checkpoint
        raise PolymodalError(f"{field} {path!r}: not a weights-only torch checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise PolymodalError(f"{field} {path!r}: holds a {type(state).__name__}, not a state dict")
    return state


def read_checkpoint(arch: str, weights: str, field: str = "model.visual_weights", opts=None) -> dict[str, Tensor]:
    """The state dict ``weights`` names: a torchvision weights name of ``arch`` (downloaded once into
    torch's hub cache with ``torch.hub.load_state_dict_from_url``, hash-checked; refused while
    ``HF_HUB_OFFLINE=1``), or a ``.pth`` (read weights-only) / ``.safetensors`` file, local or ``s3://``."""
    from polymodal.cache import local_file

    names = TORCHVISION_WEIGHTS.get(arch, {})
    if weights in names:
        url = names[weights].url
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise PolymodalError(f"{field} {weights!r}: a torchvision weights name is downloaded from {url}, but "
                                 "HF_HUB_OFFLINE=1; give a local or s3:// .pth / .safetensors file instead")
        try:
            return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                      weights_only=True)
        except Exception as exc:  # no network, proxy, HTTP error, hash mismatch
            raise PolymodalError(f"{field} {weights!r}: could not fetch {url} ({exc}); give a local or s3:// "
                                 ".pth / .safetensors file instead") from None
    if re.fullmatch(r"[A-Z0-9_]+", weights):
        known = "; ".join(f"{a}: {', '.join(sorted(n))}" for a, n in TORCHVISION_WEIGHTS.items())
        raise PolymodalError(f"{field} {weights!r} is not a torchvision weights name of model.visual {arch} "
                             f"({known}), nor a file")
    path = local_file(weights, opts)
    if not Path(path).is_file():
        raise PolymodalError(f"{field} {weights!r}: no such file; give a torchvision .pth / .safetensors file "
                             "(local or s3://) or a torchvision weights name")
    return _read_state_dict(path, field)


def load_torchvision_weights(model: SwinTransformer3d, weights: str, field: str = "model.visual_weights",
                             arch: str = "swin3d_b", opts=None) -> None:
    """Load a torchvision ``swin3d`` checkpoint into ``model``, unchanged but for two things:

    * the patch kernel (C, 3, 2, 4, 4) is folded to the model's temporal patch by summing over the
      frames (:func:`fold_temporal_kernel`);
    * the Kinetics classifier ``head.*`` is dropped when the model has none (VIOLET's).

    Every other tensor must match by name and shape; the error names ``field`` and what differs.
    """
    state = dict(read_checkpoint(arch, weights, field, opts))
    key = "patch_embed.proj.weight"
    if key in state:
        state[key] = fold_temporal_kernel(state[key], model.patch_size[0])
    if not hasattr(model, "head"):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(f"{k} {tuple(state[k].shape)} vs ours {tuple(own[k].shape)}" for k in set(own) & set(state)
                   if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{what}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                 for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise PolymodalError(f"{field} {weights!r} does not fit the {arch} backbone ({'; '.join(parts)}); give a "
                             f"torchvision {arch} checkpoint or change model.visual")
    model.load_state_dict(state)
