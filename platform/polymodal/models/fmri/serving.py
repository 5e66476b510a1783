"""Serving a fitted encoding model: a story's words with times in, predicted voxels out.

A request names a subject and gives the words (``word``, ``start``, ``end`` in seconds). The
response holds predictions on the TR clock for the requested ``voxels`` or, without them, the
``top_k`` voxels with the best held-out correlation. Predictions are in the units the model was
fitted in: responses z-scored per story.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from polymodal.errors import ServeInputError

from .model import EncodingModel
from .pipeline import Story

#: most TRs one request may predict: the design matrix is (n_trs, features x delays) floats
MAX_TRS = 100_000
MIN_TRS = 2  # Lanczos interpolation onto the TR clock needs two TRs to know its sampling rate
#: latest word time a request may give, in seconds (a day); a JSON 1e300 or Infinity would make
#: n_trs overflow or ask for an array no replica can hold
MAX_SECONDS = 86_400.0


class Word(BaseModel):
    model_config = ConfigDict(extra="forbid")

    word: str = Field(..., min_length=1)
    start: float = Field(..., ge=0, le=MAX_SECONDS, description="seconds from the story's start")
    end: float = Field(..., ge=0, le=MAX_SECONDS)


class EncodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str
    words: list[Word] = Field(..., min_length=1, description="the story, in time order")
    n_trs: int | None = Field(None, ge=MIN_TRS, le=MAX_TRS,
                              description=f"TRs to predict; None: until the last word ends (at least {MIN_TRS})")
    voxels: list[int] | None = Field(None, min_length=1, max_length=10_000, description="voxel indices")
    top_k: int = Field(10, ge=1, le=10_000, description="without voxels: the k best-predicted voxels")


class EncodeResponse(BaseModel):
    subject: str
    tr: float
    n_trs: int
    voxels: list[int]
    test_r: list[float] = Field(..., description="each voxel's held-out correlation")
    predictions: list[list[float]] = Field(..., description="(n_trs, len(voxels)), z-scored response units")


def _check(model: EncodingModel, req: EncodeRequest) -> Story:
    if req.subject not in model.subjects:
        raise ServeInputError("subject", f"unknown subject {req.subject!r}; this model has {model.subjects}")
    starts = np.array([w.start for w in req.words])
    ends = np.array([w.end for w in req.words])
    for i in range(len(req.words)):
        if ends[i] < starts[i]:
            raise ServeInputError(f"words.{i}.end", f"ends ({ends[i]}) before it starts ({starts[i]})")
        if i and starts[i] < starts[i - 1]:
            raise ServeInputError(f"words.{i}.start", f"times must not decrease: {starts[i]} comes after "
                                                      f"{starts[i - 1]} (word {i - 1})")
    n_voxels = model.coef(req.subject).shape[1]
    if req.voxels is not None:
        bad = [v for v in req.voxels if not 0 <= v < n_voxels]
        if bad:
            raise ServeInputError("voxels", f"indices {bad[:5]} are outside 0..{n_voxels - 1}")
    n_trs = req.n_trs or max(MIN_TRS, math.ceil(float(ends.max()) / model.tr))
    if n_trs > MAX_TRS:  # only when derived: the field itself is bounded
        last = int(ends.argmax())
        raise ServeInputError(f"words.{last}.end", f"ends at {ends[last]:g} s: {n_trs} TRs of {model.tr:g} s, more "
                                                   f"than the {MAX_TRS} one request may predict; split the story")
    return Story([w.word for w in req.words], (starts + ends) / 2.0, n_trs, model.tr)


def serve_predict(model: EncodingModel, requests: list[EncodeRequest]) -> list[EncodeResponse]:
    out = []
    for req in requests:
        story = _check(model, req)
        r = model.test_r(req.subject)
        if req.voxels is not None:
            voxels = torch.as_tensor(req.voxels)
        else:
            voxels = torch.argsort(r, descending=True)[:req.top_k]
        with torch.no_grad():
            pred = model.design(story) @ model.coef(req.subject)[:, voxels]     # (n_trs, k)
        out.append(EncodeResponse(subject=req.subject, tr=model.tr, n_trs=story.n_trs, voxels=voxels.tolist(),
                                  test_r=r[voxels].tolist(), predictions=pred.tolist()))
    return out
