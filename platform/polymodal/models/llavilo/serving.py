"""Serving hooks for LLaViLo: a query plus a video in, ranked windows with scores out.

A request is ONE query::

    {"query": "a man opens the fridge",
     "text": [[...text_dim floats], ...],        # the query's token features (as the `text` column)
     "video": [[...video_dim floats], ...],      # clip features as stored (L2 per source + tef)
     "duration": 150.0,                          # seconds, with "video"
     "top_k": 5}

or, when the server has a video index (``args.index``: a dataset of this task), ``"vid":
"abc_60.0_210.0"`` instead of ``video`` and ``duration``. The response is the QVHighlights
submission row of that query: ``{"pred_relevant_windows": [[st, ed, score], ...]}``, best first.

Pydantic checks the JSON types; :func:`serve_predict` checks widths, lengths and values against
the model and raises :class:`~polymodal.errors.ServeInputError` naming the field (HTTP 422).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from polymodal.config import StorageOptions
from polymodal.errors import ServeInputError

from .config import LLaViLoConfig

#: longest video a request may carry, in clips (QVHighlights: 75)
MAX_CLIPS = 1024
#: longest query a request may carry, in tokens of text features (Moment-DETR: 32)
MAX_TEXT_TOKENS = 256
#: longest video a request may describe, in seconds: windows are float32 seconds, which resolve
#: 1/100 s up to about a day (a JSON 1e300 or Infinity would become inf and answer NaN windows)
MAX_DURATION_S = 86_400.0


class MomentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(..., max_length=2000, description="the sentence; the LLM reads it after the instruction")
    text: list[list[float]] = Field(..., description="token features of the query: n_tokens x text_dim")
    video: list[list[float]] | None = Field(None, description="clip features: n_clips x video_dim (tef included), "
                                                              "prepared as the dataset's `video` column")
    duration: float | None = Field(None, gt=0, le=MAX_DURATION_S, description="video length in seconds (with "
                                                                             "`video`)")
    vid: str | None = Field(None, min_length=1, max_length=256, description="a video of the server's index, "
                                                                           "instead of `video` + `duration`")
    top_k: int = Field(5, ge=1, le=100, description="windows returned (at most the model's anchors)")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value


class MomentResponse(BaseModel):
    pred_relevant_windows: list[list[float]] = Field(..., description="[start s, end s, score], best first")
    duration: float


@dataclass(frozen=True)
class VideoIndex:
    """Clip features by video id, from a dataset of this task (one entry per ``vid``)."""

    uri: str
    video: dict[str, np.ndarray]  # vid -> (n_clips, video_dim)
    duration: dict[str, float]

    def __contains__(self, vid: str) -> bool:
        return vid in self.video


def open_index(uri: str, opts: StorageOptions | None = None) -> VideoIndex:
    """Read the ``vid``, ``video``, ``n_clips`` and ``duration`` columns of a dataset."""
    from .data import read_all

    rows = read_all(uri, opts, columns=["vid", "video", "n_clips", "duration"])
    video, duration = {}, {}
    for vid, feats, n, d in zip(rows["vid"], rows["video"], rows["n_clips"], rows["duration"]):
        video.setdefault(str(vid), np.ascontiguousarray(feats[:int(n)], dtype=np.float32))
        duration.setdefault(str(vid), float(d))
    return VideoIndex(uri, video, duration)


def _matrix(value: list[list[float]], field: str, width: int, what: str, max_rows: int) -> np.ndarray:
    rows = len(value)
    if rows == 0:
        raise ServeInputError(field, f"needs at least one row of {width} {what}")
    if rows > max_rows:
        raise ServeInputError(field, f"at most {max_rows} rows, got {rows}")
    widths = {len(r) for r in value}
    if widths != {width}:
        got = ", ".join(str(w) for w in sorted(widths))
        raise ServeInputError(field, f"expected {what} of width {width} per row, got width {got}")
    arr = np.asarray(value, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ServeInputError(field, "values must be finite (no NaN or Infinity)")
    return arr


def _video_of(req: MomentRequest, cfg: LLaViLoConfig, index: VideoIndex | None) -> tuple[np.ndarray, float]:
    if (req.video is None) == (req.vid is None):
        raise ServeInputError("video", "give exactly one of `video` (with `duration`) or `vid`")
    if req.vid is not None:
        if index is None:
            raise ServeInputError("vid", "this server has no video index (serve args `index`); send `video`")
        if req.vid not in index:
            raise ServeInputError("vid", f"unknown video {req.vid!r} in the index {index.uri}")
        return index.video[req.vid], index.duration[req.vid]
    if req.duration is None:
        raise ServeInputError("duration", "required with `video`: the video length in seconds")
    return _matrix(req.video, "video", cfg.video_dim, "clip features (tef included)", MAX_CLIPS), req.duration


def _pad(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (n_i, D) arrays into (B, max n, D) zeros-padded and the (B, max n) keep-mask."""
    longest = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), longest, arrays[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(arrays), longest), dtype=bool)
    for i, a in enumerate(arrays):
        out[i, :len(a)], mask[i, :len(a)] = a, True
    return torch.from_numpy(out), torch.from_numpy(mask)


@torch.no_grad()
def serve_predict(task, model: nn.Module, requests: list[MomentRequest]) -> list[MomentResponse]:
    """Check, pad and batch the requests, run :meth:`MomentRetrievalTask.predict`, keep ``top_k``."""
    from .model import encode_queries

    cfg: LLaViLoConfig = model.cfg
    index = getattr(model, "serve_index", None)
    videos, durations, texts = [], [], []
    for req in requests:
        video, duration = _video_of(req, cfg, index)
        videos.append(video)
        durations.append(duration)
        texts.append(_matrix(req.text, "text", cfg.text_dim, "token features", MAX_TEXT_TOKENS))
    device = next(model.parameters()).device
    video, video_mask = _pad(videos)
    text, text_mask = _pad(texts)
    n = len(requests)
    batch = {"video": video, "video_mask": video_mask, "text": text, "text_mask": text_mask,
             "query_bytes": torch.from_numpy(encode_queries([r.query for r in requests])),
             "duration": torch.tensor(durations, dtype=torch.float32),
             "n_clips": torch.tensor([len(v) for v in videos], dtype=torch.int32),
             "qid": torch.arange(n), "windows": torch.zeros(n, 1, 2), "n_windows": torch.zeros(n, dtype=torch.int32)}
    out = task.predict(model, {k: v.to(device) for k, v in batch.items()})
    for i, req in enumerate(requests):
        if not (np.isfinite(out["scores"][i]).all() and np.isfinite(out["spans"][i]).all()):
            # finite but huge features overflow inside the model, and JSON cannot carry NaN back;
            # the larger of the request's own feature arrays is the likely culprit
            field = "text" if req.vid is not None or np.abs(texts[i]).max() >= np.abs(videos[i]).max() else "video"
            peak = float(np.abs(texts[i] if field == "text" else videos[i]).max())
            raise ServeInputError(field, f"the model output is not finite for these features (largest |value| "
                                         f"{peak:.3g}); send features scaled as the dataset's are")
    responses = []
    for i, req in enumerate(requests):
        kept = np.flatnonzero(out["keep"][i])[:req.top_k]  # predict sorts best first
        windows = [[float(out["spans"][i, j, 0]), float(out["spans"][i, j, 1]), round(float(out["scores"][i, j]), 6)]
                   for j in kept]
        responses.append(MomentResponse(pred_relevant_windows=windows, duration=durations[i]))
    return responses
