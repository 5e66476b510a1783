"""Masking strategies of VIOLET's pre-training: MLM on text, MVM on video, blockwise and attended.

Fu et al., 'VIOLET: End-to-End Video-Language Transformers with Masked Visual-token Modeling':

* **MLM** (masked language modelling, BERT): 15 % of the ordinary text tokens are chosen; a chosen
  token becomes ``[MASK]`` 80 % of the time, a random vocabulary id 10 %, and stays itself 10 %.
  Labels are the original ids at chosen positions and ``IGNORE`` (-100) elsewhere
  (:func:`mlm_mask`).
* **MVM** (masked visual-token modelling): the pixels of masked video patches are set to zero
  (:func:`apply_video_mask`) and the model classifies each masked patch into the id a frozen
  discrete VAE gave that patch (:func:`mvm_labels`).
* **Blockwise masking (BM)**: spatio-temporal (T', H', W') boxes of patches are drawn until more
  than 15 % of the video patches are masked (:func:`blockwise_video_mask`); the text gets plain
  random MLM.
* **Attended masking (AM)**: a forward pass without gradients on the unmasked pair gives the
  cross-modal attention; the 15 % most-attended video patches and text tokens are masked
  (:func:`cross_attention_scores`, :func:`attended_video_mask`, :func:`attended_text_mask`; the
  text mask goes to :func:`mlm_mask` as ``selected``).
* **BM+AM**: each sample uses one of the two, 50/50 (:func:`choose_strategy`).

How close each strategy gets to its ratio differs on purpose. Blockwise stops at the first block
that takes the masked share *above* ``ratio`` ("until more than 15 %"), so it overshoots by less
than one block: ``ratio < masked / (T*H*W) <= ratio + max_frames * max_area / (T*H*W)``.
Attended masking takes exactly ``round(ratio * n_valid)`` items per sample (rounded half up).
MLM chooses each eligible token independently, so its 15 % holds on average only, as in BERT.

Every function is pure: randomness comes from an explicit ``torch.Generator``, so a seed gives the
same masks. Draws are made on the generator's device and moved to the data's device, so a CPU
generator gives the same masks whether the batch sits on a CPU or a GPU.

A step of BM+AM pre-training, for orientation (``model`` and ``dvae`` are not defined here)::

    use_block = choose_strategy(B, generator=g)                              # (B,)
    valid = mlm_eligible(input_ids, attention_mask, special_ids)             # (B, L)
    with torch.no_grad():
        probs = model.attention_probs(frames, input_ids)                     # (B, heads, N, N)
    video_att, text_att = cross_attention_scores(probs, video_slice, text_slice, text_valid=valid)
    video_mask = torch.where(use_block[:, None, None, None],
                             blockwise_video_mask(B, T, H, W, generator=g),
                             attended_video_mask(video_att).view(B, T, H, W))
    chosen = torch.where(use_block[:, None], random_selection(valid, generator=g),
                         attended_text_mask(text_att, valid))
    ids, mlm_labels = mlm_mask(input_ids, attention_mask, ..., generator=g, selected=chosen)
    mvm_targets = mvm_labels(dvae(frames), video_mask)                       # ids of the clean frames
    masked_frames = apply_video_mask(frames, video_mask, patch_size)
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch
from torch import Tensor

IGNORE = -100  # label of positions that are not predicted (torch cross_entropy's ignore_index)
MASK_RATIO = 0.15  # the paper's share for MLM, blockwise and attended masking alike
# BEiT's aspect-ratio range for blocks: long thin strips are allowed, lines of single patches not.
BLOCK_ASPECT = (0.3, 1 / 0.3)


# --------------------------------------------------------------------------- validation helpers


def _check_ratio(ratio: float, name: str = "ratio") -> None:
    if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and 0 < ratio < 1):
        raise ValueError(f"{name} must be a number strictly between 0 and 1, got {ratio!r}; "
                         f"the paper uses {MASK_RATIO}")


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) draws made on the generator's device, then moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


# --------------------------------------------------------------------------- MLM


def mlm_eligible(input_ids: Tensor, attention_mask: Tensor, special_ids: Iterable[int] | Tensor) -> Tensor:
    """Tokens MLM may choose: real (``attention_mask`` 1) and not special.

    Args:
        input_ids: (B, L) integer token ids.
        attention_mask: (B, L), 1/True for real tokens, 0/False for padding.
        special_ids: ids that are never predicted ([CLS], [SEP], [PAD], [MASK], ...).

    Returns:
        (B, L) bool. Pass it as ``valid`` to :func:`attended_text_mask` so attended masking
        ranks exactly the tokens MLM is allowed to mask.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                         f"{tuple(input_ids.shape)}; they must match")
    special = torch.as_tensor(list(special_ids) if not isinstance(special_ids, Tensor) else special_ids,
                              dtype=torch.long, device=input_ids.device).reshape(-1)
    return attention_mask.bool() & ~torch.isin(input_ids, special)


def random_selection(eligible: Tensor, *, generator: torch.Generator, prob: float = MASK_RATIO) -> Tensor:
    """BERT's choice: each eligible token independently with chance ``prob``.

    Args:
        eligible: (B, L) bool, e.g. from :func:`mlm_eligible`.
        generator: source of the draws.
        prob: chance of choosing an eligible token.

    Returns:
        (B, L) bool, a subset of ``eligible``. Under BM+AM, mix it per sample with
        :func:`attended_text_mask` and pass the result to :func:`mlm_mask` as ``selected``.
    """
    _check_ratio(prob, "prob")
    if eligible.dtype != torch.bool:
        raise ValueError(f"eligible must be a bool tensor, got {eligible.dtype}")
    return eligible & (_uniform(tuple(eligible.shape), generator, eligible.device) < prob)


def mlm_mask(input_ids: Tensor, attention_mask: Tensor, *, mask_token_id: int, vocab_size: int,
             special_ids: Iterable[int] | Tensor, generator: torch.Generator, prob: float = MASK_RATIO,
             selected: Tensor | None = None, mask_fraction: float = 0.8,
             random_fraction: float = 0.1) -> tuple[Tensor, Tensor]:
    """BERT masking: choose tokens, then replace them 80/10/10 with [MASK] / a random id / themselves.

    Args:
        input_ids: (B, L) integer token ids in ``[0, vocab_size)``.
        attention_mask: (B, L), 1/True for real tokens, 0/False for padding.
        mask_token_id: id of ``[MASK]``.
        vocab_size: number of ids; random replacements are drawn uniformly from
            ``[0, vocab_size)`` minus ``special_ids``.
        special_ids: ids that are never chosen nor drawn as replacements ([CLS], [SEP], [PAD],
            [MASK], ...). ``mask_token_id`` is added to them if missing.
        generator: source of all randomness.
        prob: chance of choosing each eligible token when ``selected`` is None.
        selected: optional (B, L) bool that fixes the chosen tokens instead of drawing them (the
            attended strategy passes :func:`attended_text_mask` here). Padding and special tokens
            are dropped from it, so they are never chosen whatever it says.
        mask_fraction, random_fraction: shares of the chosen tokens that become ``[MASK]`` and a
            random id; the rest, ``1 - mask_fraction - random_fraction``, stay unchanged.

    Returns:
        ``(masked_ids, labels)``, both (B, L) long: the ids fed to the model, and the original id at
        chosen positions with :data:`IGNORE` everywhere else. A random replacement can by chance
        draw the original id, as in BERT; the label still counts.
    """
    eligible = mlm_eligible(input_ids, attention_mask, special_ids)  # validates the shapes
    _check_ratio(prob, "prob")
    _check_positive_int(vocab_size, "vocab_size")
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the vocabulary [0, {vocab_size})")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError(f"mask_fraction ({mask_fraction}) and random_fraction ({random_fraction}) must be "
                         f">= 0 and sum to at most 1; BERT uses 0.8 and 0.1")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids hold ids outside [0, vocab_size={vocab_size}): "
                         f"min {int(input_ids.min())}, max {int(input_ids.max())}")
    special = {int(i) for i in (special_ids.reshape(-1).tolist() if isinstance(special_ids, Tensor)
                                else special_ids)} | {mask_token_id}
    # Replacements come from ordinary ids only: a random [CLS] or [PAD] mid-sentence would teach the
    # model to read structure into noise, and a random [MASK] would skew the 80 % share.
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in special], dtype=torch.long)
    if ordinary.numel() == 0:
        raise ValueError(f"every id of the vocabulary (vocab_size={vocab_size}) is special; "
                         f"nothing is left to draw random replacements from")

    device, shape = input_ids.device, input_ids.shape
    if selected is None:
        chosen = random_selection(eligible, generator=generator, prob=prob)
    else:
        if selected.shape != shape or selected.dtype != torch.bool:
            raise ValueError(f"selected must be a bool tensor of shape {tuple(shape)} like input_ids, got "
                             f"{selected.dtype} of shape {tuple(selected.shape)}")
        chosen = selected.to(device) & eligible

    # One uniform draw per token splits the chosen ones into the three outcomes, so the shares are
    # exact in expectation and independent of which tokens were chosen.
    u = _uniform(shape, generator, device)
    to_mask = chosen & (u < mask_fraction)
    to_random = chosen & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
    pick = torch.randint(ordinary.numel(), shape, generator=generator, device=generator.device)
    random_ids = ordinary.to(pick.device)[pick].to(device)

    ids = input_ids.long()
    masked_ids = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    labels = ids.masked_fill(~chosen, IGNORE)
    return masked_ids, labels


# --------------------------------------------------------------------------- MVM


def mvm_labels(visual_token_ids: Tensor, mask: Tensor) -> Tensor:
    """MVM targets: the visual-token id of each masked patch, :data:`IGNORE` elsewhere.

    Args:
        visual_token_ids: (B, T, H, W) integer ids from the discrete VAE, computed on the
            *unmasked* frames.
        mask: (B, T, H, W) bool, True where the patch is masked.

    Returns:
        (B, T, H, W) long.
    """
    if mask.shape != visual_token_ids.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but visual_token_ids has "
                         f"{tuple(visual_token_ids.shape)}; they must match")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    return visual_token_ids.long().masked_fill(~mask, IGNORE)


def apply_video_mask(frames: Tensor, mask: Tensor, patch_size: int) -> Tensor:
    """Zero the pixels of masked patches (VIOLET feeds masked patches as black pixels).

    Args:
        frames: (B, T, C, H * patch_size, W * patch_size) pixels.
        mask: (B, T, H, W) bool, True where the patch is masked.
        patch_size: side of a square patch in pixels.

    Returns:
        A new tensor shaped like ``frames``; the input is left untouched.
    """
    _check_positive_int(patch_size, "patch_size")
    if frames.dim() != 5:
        raise ValueError(f"frames must be (B, T, C, H_px, W_px), got shape {tuple(frames.shape)}")
    if mask.dim() != 4 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, T, H, W) bool tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    B, T, _, Hpx, Wpx = frames.shape
    expected = (B, T, Hpx // patch_size, Wpx // patch_size)
    if Hpx % patch_size or Wpx % patch_size or tuple(mask.shape) != expected:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but frames {tuple(frames.shape)} with "
                         f"patch_size {patch_size} need {expected} (pixel sides must be multiples of patch_size)")
    pixel_mask = mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, T, Hpx, Wpx)
    return frames.masked_fill(pixel_mask.unsqueeze(2).to(frames.device), 0)


# --------------------------------------------------------------------------- blockwise masking


def block_shapes(H: int, W: int, *, min_area: int, max_area: int,
                 aspect: tuple[float, float] = BLOCK_ASPECT) -> list[tuple[int, int]]:
    """Every spatial block shape ``(h, w)`` that fits an H x W frame with ``min_area <= h*w <=
    max_area`` and ``aspect[0] <= h/w <= aspect[1]``, in a fixed order.

    BEiT draws an area and an aspect ratio and rounds ``sqrt(area * aspect)``; on a 7 x 7 grid the
    rounding dominates and breaks both bounds, so blockwise masking draws uniformly from this list
    instead, and every block provably respects them.
    """
    lo, hi = aspect
    if not 0 < lo <= hi:
        raise ValueError(f"aspect must be (low, high) with 0 < low <= high, got {aspect!r}")
    return [(h, w) for h in range(1, H + 1) for w in range(1, W + 1)
            if min_area <= h * w <= max_area and lo <= h / w <= hi]


def blockwise_video_mask(batch: int, T: int, H: int, W: int, *, generator: torch.Generator,
                         ratio: float = MASK_RATIO, min_area: int = 2, max_area: int | None = None,
                         max_frames: int | None = None, aspect: tuple[float, float] = BLOCK_ASPECT,
                         device: torch.device | str | None = None) -> Tensor:
    """Blockwise masking: per sample, add random (t', h', w') boxes until more than ``ratio`` of
    the T*H*W patches are masked.

    A block spans ``t'`` consecutive frames (uniform in ``[1, max_frames]``) and a spatial
    rectangle drawn uniformly from :func:`block_shapes`; its position is uniform among those
    that fit. Boxes may overlap. Masking isolated patches would be too easy: neighbouring patches
    and the same spot in the next frame look alike, so the model could copy instead of reasoning.

    Args:
        batch, T, H, W: number of samples and the patch grid (T=1 for images).
        generator: source of all randomness.
        ratio: the share to exceed; the result lies in ``(ratio, ratio + max_frames*max_area/(T*H*W)]``.
        min_area, max_area: bounds on a block's spatial area ``h'*w'`` in patches. ``max_area``
            defaults to ``ceil(ratio * H * W)`` (at least ``min_area``): one block then never
            covers much more than a frame's share, which keeps the overshoot small.
        max_frames: longest temporal extent of a block; defaults to T.
        aspect: (low, high) bounds on ``h'/w'``.
        device: where the mask is returned (it is built on the CPU).

    Returns:
        (batch, T, H, W) bool, True where a patch is masked.
    """
    for name, value in (("batch", batch), ("T", T), ("H", H), ("W", W), ("min_area", min_area)):
        _check_positive_int(value, name)
    _check_ratio(ratio)
    if max_area is None:
        max_area = min(H * W, max(min_area, math.ceil(ratio * H * W)))
    _check_positive_int(max_area, "max_area")
    if not min_area <= max_area <= H * W:
        raise ValueError(f"need min_area <= max_area <= H*W, got min_area={min_area}, max_area={max_area}, "
                         f"H*W={H * W}; lower min_area (e.g. min_area=1 for tiny grids)")
    max_frames = T if max_frames is None else max_frames
    _check_positive_int(max_frames, "max_frames")
    if max_frames > T:
        raise ValueError(f"max_frames={max_frames} exceeds the number of frames T={T}")
    shapes = block_shapes(H, W, min_area=min_area, max_area=max_area, aspect=aspect)
    if not shapes:
        raise ValueError(f"no block shape fits a {H}x{W} grid with min_area={min_area}, max_area={max_area} "
                         f"and aspect={aspect}; lower min_area or widen aspect")

    target = ratio * T * H * W
    masks = torch.zeros(batch, T, H, W, dtype=torch.bool)
    for b in range(batch):
        m = masks[b]
        # Terminates with probability 1: while at most `target` < T*H*W patches are masked, every
        # draw has a positive chance to cover an unmasked one.
        while int(m.sum()) <= target:
            u = torch.rand(5, generator=generator, device=generator.device, dtype=torch.float64).tolist()
            h, w = shapes[min(int(u[0] * len(shapes)), len(shapes) - 1)]
            t = 1 + min(int(u[1] * max_frames), max_frames - 1)
            t0 = min(int(u[2] * (T - t + 1)), T - t)
            y0 = min(int(u[3] * (H - h + 1)), H - h)
            x0 = min(int(u[4] * (W - w + 1)), W - w)
            m[t0:t0 + t, y0:y0 + h, x0:x0 + w] = True
    return masks if device is None else masks.to(device)


# --------------------------------------------------------------------------- attended masking


def cross_attention_scores(attn_probs: Tensor, video_slice: slice, text_slice: slice, *,
                           text_valid: Tensor | None = None,
                           video_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cross-modal attention each video patch and each text token *receives* from the other modality.

    VIOLET picks what to mask from "the attention weights from the cross-modal transformer". Here a
    video patch scores the attention text tokens pay to it (column of the attention matrix, mean
    over text queries), and a text token the attention video patches pay to it. We use attention
    *received*: a patch the caption looks at is the visual evidence the caption grounds in, so
    masking it forces MVM to reconstruct it from the text, and vice versa. Attention *paid* (a row)
    would measure how much a patch leans on the text, not how important it is to the text.

    Args:
        attn_probs: softmax attention of the joint sequence (e.g. [video; CLS; text]), either
            (B, heads, N, N) for one layer or (layers, B, heads, N, N); layers and heads are
            averaged. ``attn_probs[..., i, j]`` is the weight query i puts on key j. Compute it with
            a forward pass on the unmasked inputs under ``torch.no_grad()``.
        video_slice, text_slice: positions of the Nv video patches and the Lt text tokens in the
            sequence (contiguous, non-overlapping).
        text_valid: optional (B, Lt) bool; padded text queries are left out of the mean.
        video_valid: optional (B, Nv) bool; likewise for video queries.

    Returns:
        ``(video_scores, text_scores)``: (B, Nv) and (B, Lt) float, for
        :func:`attended_video_mask` and :func:`attended_text_mask`.
    """
    if attn_probs.dim() == 5:
        attn_probs = attn_probs.mean(dim=0)
    if attn_probs.dim() != 4 or attn_probs.shape[-1] != attn_probs.shape[-2]:
        raise ValueError(f"attn_probs must be (B, heads, N, N) or (layers, B, heads, N, N), got shape "
                         f"{tuple(attn_probs.shape)}")
    N = attn_probs.shape[-1]
    spans = {}
    for name, s in (("video_slice", video_slice), ("text_slice", text_slice)):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"{name} must be a slice with step 1, got {s!r}")
        start, stop, _ = s.indices(N)
        if stop <= start:
            raise ValueError(f"{name} {s!r} selects no position of a sequence of length {N}")
        spans[name] = (start, stop)
    (v0, v1), (t0, t1) = spans["video_slice"], spans["text_slice"]
    if v0 < t1 and t0 < v1:
        raise ValueError(f"video_slice {video_slice!r} and text_slice {text_slice!r} overlap")
    A = attn_probs.float().mean(dim=1)  # (B, N, N), averaged over heads
    B = A.shape[0]

    def received(queries: slice, keys: slice, valid: Tensor | None, name: str) -> Tensor:
        block = A[:, queries, keys]  # (B, Nq, Nk)
        n_q = block.shape[1]
        if valid is None:
            valid = torch.ones(B, n_q, dtype=torch.bool, device=A.device)
        elif valid.shape != (B, n_q) or valid.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor of shape {(B, n_q)}, got {valid.dtype} of "
                             f"shape {tuple(valid.shape)}")
        w = valid.to(A.device, A.dtype)  # (B, Nq)
        # clamp: a sample with no valid query gets zeros rather than NaNs
        return torch.einsum("bq,bqk->bk", w, block) / w.sum(dim=1, keepdim=True).clamp_min(1)

    video_scores = received(slice(t0, t1), slice(v0, v1), text_valid, "text_valid")
    text_scores = received(slice(v0, v1), slice(t0, t1), video_valid, "video_valid")
    return video_scores, text_scores


def top_attended_mask(scores: Tensor, valid: Tensor | None = None, ratio: float = MASK_RATIO) -> Tensor:
    """The ``round(ratio * n_valid)`` highest-scoring valid items of each sample (half rounds up).

    Ties go to the lower index, so the result depends on the scores alone. Invalid items are
    never selected, whatever their score.

    Args:
        scores: (B, N) float.
        valid: (B, N) bool, or None when every item is valid.
        ratio: share of the valid items to select.

    Returns:
        (B, N) bool with exactly ``floor(ratio * n_valid + 0.5)`` True per row.
    """
    _check_ratio(ratio)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    elif valid.shape != scores.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(scores.shape)} like scores, got "
                         f"{valid.dtype} of shape {tuple(valid.shape)}")
    valid = valid.to(scores.device)
    if bool(torch.isnan(scores[valid]).any()):
        raise ValueError("scores hold NaN at valid positions; check the attention that produced them")
    # Two stable sorts give the order (valid first, then score descending, then index ascending):
    # sort by the minor key first, then stably by the major key.
    by_score = torch.sort(scores, dim=1, descending=True, stable=True).indices
    valid_first = torch.sort((~valid.gather(1, by_score)).to(torch.uint8), dim=1, stable=True).indices
    order = by_score.gather(1, valid_first)  # (B, N) item indices, best first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order).contiguous())
    # float64 and half-up, so the count matches a hand computation of round(ratio * n)
    k = torch.floor(ratio * valid.sum(dim=1).double() + 0.5).long()  # (B,)
    return rank < k[:, None]


def attended_video_mask(video_scores: Tensor, valid: Tensor | None = None, ratio: float = MASK_RATIO) -> Tensor:
    """Attended masking for video: the top ``round(ratio * n_valid)`` patches by cross-modal attention.

    Args:
        video_scores: (B, Nv) from :func:`cross_attention_scores`, patches in (T, H, W) order.
        valid: optional (B, Nv) bool (e.g. padded frames); None means every patch counts.
        ratio: share to mask.

    Returns:
        (B, Nv) bool; ``.view(B, T, H, W)`` gives the layout of :func:`apply_video_mask`.
    """
    return top_attended_mask(video_scores, valid, ratio)


def attended_text_mask(text_scores: Tensor, valid: Tensor, ratio: float = MASK_RATIO) -> Tensor:
    """Attended masking for text: the top ``round(ratio * n_valid)`` tokens by cross-modal attention.

    Args:
        text_scores: (B, L) from :func:`cross_attention_scores`.
        valid: (B, L) bool, the tokens MLM may mask (:func:`mlm_eligible`); required because text is
            padded and its [CLS]/[SEP] must never be picked.
        ratio: share to mask.

    Returns:
        (B, L) bool, to pass as ``selected`` to :func:`mlm_mask`.
    """
    return top_attended_mask(text_scores, valid, ratio)


# --------------------------------------------------------------------------- BM + AM


def choose_strategy(batch: int, *, generator: torch.Generator, p_block: float = 0.5,
                    device: torch.device | str | None = None) -> Tensor:
    """Per-sample coin for BM+AM: True = blockwise masking, False = attended masking.

    Args:
        batch: number of samples.
        generator: source of the coin flips.
        p_block: chance of blockwise masking; the paper mixes the two 50/50.
        device: where the result goes (drawn on the generator's device).

    Returns:
        (batch,) bool.
    """
    _check_positive_int(batch, "batch")
    if not 0 <= p_block <= 1:
        raise ValueError(f"p_block must lie in [0, 1], got {p_block!r}; the paper uses 0.5")
    flips = torch.rand(batch, generator=generator, device=generator.device) < p_block
    return flips if device is None else flips.to(device)
