"""From batch tensors to VIOLET's inputs and scores, shared by training (:mod:`.task`) and serving
(:mod:`.serving`): frame layout and standardisation, tokenization with the model's own tokenizer,
and the cross-encoder scores of every (text, video) pair.

``net`` is always the bare :class:`~.model.Violet` (not a DeepSpeed engine).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .swin3d import KINETICS400_MEAN, KINETICS400_STD

#: (text, video) pairs per pass through BERT when scoring a full matrix (evaluation and serving)
SCORE_CHUNK = 128


def param_dtype(net: nn.Module) -> torch.dtype:
    """The dtype the model computes in (bf16 / fp16 under DeepSpeed, else fp32)."""
    return net.video_proj.weight.dtype


def normalise_frames(frames: Tensor, dtype: torch.dtype,
                     stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> Tensor:
    """uint8 (B, T, 3, S, S) -> standardised ``dtype`` pixels (B, T, 3, S, S).

    ``stats``: (mean, std) of the visual backbone's weights (``net.pixel_stats``); default those of
    torchvision's Kinetics-400 transforms, which every torchvision ``swin3d`` checkpoint was made with.
    """
    mean, std = stats or (KINETICS400_MEAN, KINETICS400_STD)
    mean = torch.tensor(mean, device=frames.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(std, device=frames.device).view(1, 1, 3, 1, 1)
    return ((frames.float() / 255.0 - mean) / std).to(dtype)


def channels_first(frames: Tensor) -> Tensor:
    """Collated frames (B, T, S, S, 3) -> (B, T, 3, S, S), still uint8."""
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (B, T, S, S, 3) as collate gives them, got {tuple(frames.shape)}")
    return frames.permute(0, 1, 4, 2, 3)


def tokenize(net: nn.Module, texts: list[str], pairs: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """Texts (or ``text [SEP] pair`` pairs) -> input_ids, attention_mask (N, L) on the model's device,
    ``[CLS] ... [SEP]``, truncated to ``max_text_tokens``."""
    enc = net.tokenizer(texts, pairs, padding=True, truncation=True, max_length=net.cfg.max_text_tokens,
                        return_tensors="pt")
    device = net.video_proj.weight.device
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


@torch.no_grad()
def cross_scores(net: nn.Module, video: Tensor, input_ids: Tensor, attention_mask: Tensor,
                 chunk: int = 64) -> Tensor:
    """The match log-odds of every (text, video) pair, from already encoded videos.

    :meth:`.model.Violet.retrieval_scores` without the video encoding: evaluation encodes each
    video once in ``predict`` and scores the whole split here.

    Parameters
    ----------
    net : a :class:`~.model.Violet`
    video : (V, Nv, D) from ``net.encode_video``
    input_ids, attention_mask : (N, L) texts
    chunk : pairs per pass through BERT (memory)

    Returns
    -------
    (N, V) float32 scores, text-major like ``retrieval_scores``.
    """
    N, V = input_ids.shape[0], video.shape[0]
    out = torch.empty(N * V, dtype=torch.float32, device=video.device)
    for start in range(0, N * V, chunk):
        pair = torch.arange(start, min(start + chunk, N * V), device=video.device)
        t, v = pair // V, pair % V
        cls = net.fuse(video[v], input_ids[t], attention_mask[t])["cls"]  # (chunk, D)
        out[start:start + len(pair)] = net.match_score(cls).float()
    return out.view(N, V)
