"""Adapters inserted between the frozen backbone layers.

- :class:`WanderAdapter`: the cross-modal Wander adapter, one per selected layer, shared by
  all fused modalities. Down-project each modality, fuse all of them token-level with one
  :class:`SequenceFusion`, split the fused sequence back per modality and add it as a gated
  residual.
- :class:`HoulsbyAdapter`: the classic bottleneck adapter, one per modality per layer, with no
  cross-modal interaction (the uni-modal PEFT baseline).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.wander.fusion import OuterProductFusion, SequenceFusion, VectorFusion


#: the adapter's fusion: Wander's CP sequence fusion, and the ablations of the paper's Tables 5-7
FUSIONS = ("sequence", "outer", "vector", "vector_cls")


class WanderAdapter(nn.Module):
    """``h_m + gate * split_m( SF([act(Down_m(h_m)) for m]) )`` for every modality m.

    Args:
        hidden_dims: backbone width D_m of each modality; the joint form needs them all equal (D),
            because one fused (B, sum l_m, D) sequence is split back into per-modality residuals.
        seq_lens: token count l_m of each modality.
        down_dim: d, the width each modality is projected to before fusion.
        rank_h, rank_t, rank_mode: passed to :class:`SequenceFusion`.
        act: the backbone's own activation (one module, or one per modality).
        dropout: applied to the fused residual before gating.
        fusion: ``sequence`` (Wander: low-rank CP sequence fusion); ``outer``: SF-OP, the same
            token-level fusion with full, unfactored weights (:class:`OuterProductFusion`);
            ``vector``: SF-VF, each modality mean-pooled over its (unpadded) tokens, the vectors
            fused by a rank-R_h CP fusion (:class:`VectorFusion`) and the fused vector added to
            every token; ``vector_cls``: the same vector fusion on each modality's first (CLS)
            token, added back to the CLS tokens only.
        nonlinearity: apply ``act`` after Down (False: the "without nonlinearity" ablation).
        residual: keep the ``h_m +`` term (False: the "without residual" ablation, the output is
            ``gate * residual_m`` with the gate starting at 1 instead of 0).

    There is no Up projection: SF maps straight to out_dim = D and out_len = sum_m l_m.

    Shapes: ``forward(hs, masks)`` with hs[m] (B, l_m, D) and masks[m] None or (B, l_m) bool (True
    = a real token) returns a list of M tensors (B, l_m, D). Masked tokens are not fused (their
    down-projected features are zeroed) and receive no residual.
    """

    def __init__(self, hidden_dims: Sequence[int], seq_lens: Sequence[int], down_dim: int,
                 rank_h: int, rank_t: int, act: nn.Module | Sequence[nn.Module],
                 rank_mode: str = "cp", dropout: float = 0.0, fusion: str = "sequence",
                 nonlinearity: bool = True, residual: bool = True):
        super().__init__()
        hidden_dims, seq_lens = list(hidden_dims), list(seq_lens)
        if len(set(hidden_dims)) != 1:
            raise ValueError(
                f"WanderAdapter fuses into one sequence of width D, so all modalities need the same hidden "
                f"size; got hidden_dims={hidden_dims}. Use encoders of equal width, or method 'houlsby'/'lora'")
        if len(hidden_dims) != len(seq_lens):
            raise ValueError(f"hidden_dims ({len(hidden_dims)}) and seq_lens ({len(seq_lens)}) must have one "
                             "entry per modality")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        M, D = len(hidden_dims), hidden_dims[0]
        self.hidden_dim, self.seq_lens = D, seq_lens
        self.fusion_kind, self.nonlinearity, self.residual = fusion, nonlinearity, residual
        acts = list(act) if isinstance(act, (list, tuple, nn.ModuleList)) else [act] * M
        if len(acts) != M:
            raise ValueError(f"act must be one module or one per modality ({M}), got {len(acts)}")
        self.acts = nn.ModuleList(acts)
        self.down = nn.ModuleList([nn.Linear(D, down_dim) for _ in range(M)])
        if fusion == "sequence":
            self.fusion = SequenceFusion([down_dim] * M, seq_lens, out_dim=D, out_len=sum(seq_lens),
                                         rank_h=rank_h, rank_t=rank_t, rank_mode=rank_mode)
        elif fusion == "outer":
            self.fusion = OuterProductFusion([down_dim] * M, seq_lens, out_dim=D, out_len=sum(seq_lens))
        else:
            self.fusion = VectorFusion([down_dim] * M, out_dim=D, rank=rank_h)
        self.dropout = nn.Dropout(dropout)
        # The gate starts at 0 so the adapted backbone equals the frozen one exactly at init. The
        # factors stay random, not zero: SF's gradient w.r.t. one modality's factors is a product
        # of the OTHER modalities' terms, so zero-initialising all factors would make every factor
        # gradient zero forever for M >= 2. With a zero gate, step one moves only the gate (its
        # gradient is the random fused output), and from then on the factors receive gradient too.
        # Without the residual a zero gate would zero the whole stream, so it starts at 1 there.
        # shape (1,), not (): DeepSpeed broadcasts parameters as byte views, which 0-d tensors refuse
        self.gate = nn.Parameter(torch.zeros(1) if residual else torch.ones(1))

    def _residuals(self, zs: list[Tensor], masks: list[Tensor | None]) -> list[Tensor]:
        """zs[m] (B, l_m, d), pads zeroed -> fused residual per modality (B, l_m, D)."""
        if self.fusion_kind in ("sequence", "outer"):
            fused = self.dropout(self.fusion(zs))                          # (B, sum l_m, D)
            return list(torch.split(fused, self.seq_lens, dim=1))          # (B, l_m, D) each
        if self.fusion_kind == "vector":
            pooled = []
            for z, mask in zip(zs, masks):                                  # mean over real tokens
                n = z.shape[1] if mask is None else mask.sum(1, keepdim=True).clamp(min=1).to(z.dtype)
                pooled.append((z.sum(1) / n).unsqueeze(1))                  # (B, 1, d)
            v = self.dropout(self.fusion(pooled)).unsqueeze(1)              # (B, 1, D)
            return [v.expand(-1, l, -1) for l in self.seq_lens]            # every token
        v = self.dropout(self.fusion([z[:, :1] for z in zs])).unsqueeze(1)  # CLS tokens: (B, 1, D)
        return [F.pad(v, (0, 0, 0, l - 1)) for l in self.seq_lens]        # CLS token only

    def forward(self, hs: list[Tensor], masks: list[Tensor | None] | None = None) -> list[Tensor]:
        """hs[m]: (B, l_m, D), masks[m]: None or (B, l_m) bool  ->  [h_m + gate * residual_m]: (B, l_m, D) each."""
        if len(hs) != len(self.down):
            raise ValueError(f"WanderAdapter was built for {len(self.down)} modalities, got {len(hs)} inputs")
        masks = list(masks) if masks is not None else [None] * len(hs)
        zs = []
        for h, down, act, mask in zip(hs, self.down, self.acts, masks):
            z = down(h)                                                     # (B, l_m, d)
            z = act(z) if self.nonlinearity else z
            zs.append(z if mask is None else z * mask.unsqueeze(-1).to(z.dtype))  # pads are not fused
        parts = self._residuals(zs, masks)
        parts = [r if mask is None else r * mask.unsqueeze(-1).to(r.dtype) for r, mask in zip(parts, masks)]
        if self.residual:
            return [h + self.gate * r for h, r in zip(hs, parts)]
        return [self.gate * r for r in parts]


class HoulsbyAdapter(nn.Module):
    """Bottleneck adapter ``h + Up(act(Down(h)))`` for one modality; Up starts at zero (identity at init).

    Shapes: (B, l, D) -> (B, l, D).
    """

    def __init__(self, hidden_dim: int, bottleneck: int, act: nn.Module, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(hidden_dim, bottleneck)
        self.up = nn.Linear(bottleneck, hidden_dim)
        self.act = act
        self.dropout = nn.Dropout(dropout)
        # Zero Up -> the adapter is the identity at init. Unlike SF, Down still gets gradient
        # (through Up's input) after Up's first update, and Up's gradient is nonzero at once.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.dropout(self.act(self.down(h))))  # (B, l, D)
