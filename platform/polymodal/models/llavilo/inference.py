"""From model outputs to QVHighlights submissions: anchor windows and parsed generations.

Two sources of windows per query:

* **Anchors** (the main one): each anchor's ``(center, width)`` becomes ``[start, end]`` seconds
  (times the video duration), clipped to the video and rounded to whole clips; windows are ranked
  by foreground probability, and temporal NMS (optional) drops lower-scored windows that overlap a
  kept one by more than an IoU threshold.
* **Generation** (optional): the frozen LLM, given instruction + query and the video, greedily
  writes the caption target (``"[[82, 150]]"``); :func:`parse_windows` reads the windows from that
  text. Text that holds no well-formed window inside the video is *invalid*: it is counted, never
  raised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["snap_to_clips", "temporal_nms", "parse_windows", "greedy_generate", "submission_row"]

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_WINDOW = re.compile(r"\[\s*" + _NUMBER + r"\s*,\s*" + _NUMBER + r"\s*\]")


def snap_to_clips(windows: np.ndarray, duration: float, clip_length: float) -> np.ndarray:
    """(n, 2) ``[start, end]`` seconds -> clipped to ``[0, duration]`` and rounded to multiples of
    ``clip_length`` (windows end at the last whole clip); every window keeps at least one clip."""
    w = np.clip(np.asarray(windows, dtype=np.float64).reshape(-1, 2), 0.0, duration)
    if clip_length <= 0:
        return w
    last = max(clip_length, np.floor(duration / clip_length + 1e-6) * clip_length)
    start = np.clip(np.round(w[:, 0] / clip_length) * clip_length, 0.0, last - clip_length)
    end = np.clip(np.round(w[:, 1] / clip_length) * clip_length, 0.0, last)
    end = np.maximum(end, start + clip_length)
    return np.stack([start, end], axis=1)


def _iou_matrix(w: np.ndarray) -> np.ndarray:
    inter = np.clip(np.minimum(w[:, None, 1], w[None, :, 1]) - np.maximum(w[:, None, 0], w[None, :, 0]), 0, None)
    union = (w[:, 1] - w[:, 0])[:, None] + (w[:, 1] - w[:, 0])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def temporal_nms(windows: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept windows, best score first. A window is dropped when its
    IoU with an already kept (higher-scored) window exceeds ``iou_threshold``."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    iou = _iou_matrix(np.asarray(windows, dtype=np.float64))
    kept: list[int] = []
    for i in order:
        if all(iou[i, k] <= iou_threshold for k in kept):
            kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def parse_windows(text: str, duration: float) -> list[list[float]] | None:
    """Windows ``[[st, ed], ...]`` (seconds) written in ``text``, or None when none is valid.

    A window is valid when ``0 <= st < ed`` and ``st < duration``; ``ed`` is clipped to the
    duration. Malformed pieces are skipped; text with no valid window gives None (an *invalid*
    generation), never an exception.
    """
    out = []
    for a, b in _WINDOW.findall(text or ""):
        st, ed = float(a), float(b)
        if 0.0 <= st < ed and st < duration:
            out.append([st, min(ed, duration)])
    return out or None


@torch.no_grad()
def greedy_generate(model, batch: dict[str, Tensor], max_new_tokens: int | None) -> list[str]:
    """Greedy continuation of ``instruction + query`` with the video injected, per row.

    ``InjectedLlama`` runs full-sequence forwards (no KV cache), so each new token costs one
    forward of the prompt so far; rows with equal prompt length decode together.
    """
    from .model import build_text_inputs, decode_queries

    if max_new_tokens is None:
        raise ValueError("model.parse_generation needs model.max_target_tokens, the generation budget: a trained "
                         "run records it (the longest caption of its training data); set it for an untrained model")
    tok = model.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    prompts = model.prompts(decode_queries(batch["query_bytes"]))
    text = build_text_inputs(tok, prompts, None, max_text_tokens=model.cfg.max_text_tokens,
                             max_target_tokens=model.cfg.max_target_tokens)
    device = batch["video"].device
    lengths = text["attention_mask"].sum(1).tolist()
    tokens = model.adapter(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
    video_mask = batch["video_mask"].bool()
    out: list[str] = [""] * len(prompts)
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        ids = text["input_ids"][rows, :length].to(device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        new: list[Tensor] = []
        for _ in range(max_new_tokens):
            logits = model.injected(ids, None, tokens[rows], video_mask=video_mask[rows],
                                    output_anchor_states=False).logits
            nxt = logits[:, -1].argmax(-1)
            if eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
                done |= nxt == eos
            new.append(nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        gen = torch.stack(new, dim=1).cpu().tolist() if new else [[] for _ in rows]
        for r, seq in zip(rows, gen):
            if eos is not None and eos in seq:
                seq = seq[:seq.index(eos)]
            out[r] = tok.decode(seq, skip_special_tokens=True)
    return out


def submission_row(qid: int, windows: np.ndarray, scores: np.ndarray, *, keep: Sequence[bool] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One QVHighlights submission row: ``{"qid", "pred_relevant_windows": [[st, ed, score], ...]}``
    (best first, suppressed windows left out) plus ``extra`` fields."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    rows = [[round(float(windows[i][0]), 4), round(float(windows[i][1]), 4), round(float(scores[i]), 6)]
            for i in order if keep is None or keep[i]]
    return {"qid": int(qid), "pred_relevant_windows": rows, **(extra or {})}
