"""Serving hooks for VIOLET: text-to-video retrieval over an indexed video set, and video QA.

What a server answers follows from its checkpoint's task (:data:`MODES`):

* ``violet.retrieval``, and zero-shot a ``violet.pretrain`` checkpoint (its VTM head is the same
  cross-encoder)::

      {"text": "a red disc moves to the left", "top_k": 5}
      -> {"results": [{"video": "<a video id of the index>", "score": 2.7}, ...]}    best first

  ranks every distinct ``video`` of the server's index (serve args ``index``: a VIOLET dataset of
  any kind). Each index video is encoded once per model, on the first request, and its tokens kept
  (:meth:`VideoIndex.tokens`); a batch's texts are then scored against all of them with
  :func:`.encode.cross_scores`, as evaluation scores a split. ``score`` is the VTM match log-odds.

* ``violet.oeqa`` / ``violet.mcqa``: a question about ONE video, given as ``vid`` (a video of the
  index), ``video_b64`` (a video file, base64: decoded and sampled to the model's ``frames`` the
  way ingestion samples, one frame from the middle of each of T equal segments) or ``frames_b64``
  (base64 JPEG/PNG frames: one frame is an image, T = 1; another count than the model's ``frames``
  is sampled the same way). Every frame is squashed to the model's ``image_size``::

      {"question": "which way does the red disc move?", "vid": "video000017", "top_k": 2}
      -> {"answer": "left", "answer_index": 1, "prob": 0.91,
          "candidates": [{"answer": "left", "index": 1, "prob": 0.91}, ...], "scores": null}

  Open-ended answers are entries of the answer vocabulary, which the checkpoint does not carry: it
  is read from the index's manifest (``meta["answer_vocab"]``; ingestion writes the train split's
  vocabulary into every split of an oeqa dataset), so serve an oeqa model with an index of its
  dataset. Without one the server still answers ``answer_index`` and ``prob``, with
  ``answer: null``. Multiple-choice requests add ``options`` (2 to the model's ``num_options``):
  the answer is the option with the highest VTM score, ``scores`` the match log-odds of every
  option in the request's order, ``prob`` its softmax over the options.

Over multipart (``POST /v1/predict/upload``) the files arrive as base64 fields: upload the video as
``video_b64`` (or one image as ``frames_b64``) and send ``options`` as a JSON list.

Pydantic checks the JSON types and bounds; :data:`MODES`' ``predict`` functions check content and
raise :class:`~polymodal.errors.ServeInputError` naming the field (HTTP 422): a blank text or
question, an unknown ``vid``, none or several of the video fields, undecodable base64, video or
image, options the model cannot take.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError, ServeInputError

from .config import VioletConfig
from .data import TASKS, frames_of
from .encode import SCORE_CHUNK, channels_first, cross_scores, normalise_frames, param_dtype, tokenize
from .video import _resize, decode_frames, sample_indices

#: longest text or question a request may carry, in characters (the model reads max_text_tokens)
MAX_TEXT = 2000
#: most results (retrieval) or candidates (QA) one response may list
MAX_TOP_K = 100
#: most frames ``frames_b64`` may carry (they are sampled to the model's ``frames``)
MAX_FRAMES_IN = 64
#: most options a request may carry (the model takes up to its num_options)
MAX_OPTIONS = 32
#: largest image or video frame (width x height) a request may carry
MAX_PIXELS = 4096 * 4096
#: decoding keeps only the sampled frames (:func:`.video.sample_video`), but a file whose seeks
#: cannot be trusted is decoded whole, once or twice; this bounds one request's decoding work:
#: videos of more decoded bytes than this are refused (about 30 s of 720p at 30 fps)
MAX_DECODED_BYTES = 2 << 30
#: index videos per encode_video pass when the index is first encoded
ENCODE_CHUNK = 16


# ----------------------------------------------------------------------------- requests and responses


class RetrievalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., max_length=MAX_TEXT, description="the query: a caption of the video to find")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="videos returned (at most the index's)")


class RetrievalHit(BaseModel):
    video: str = Field(..., description="a video id of the server's index")
    score: float = Field(..., description="VTM match log-odds of (text, video)")


class RetrievalResponse(BaseModel):
    results: list[RetrievalHit] = Field(..., description="best first")


class QARequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., max_length=MAX_TEXT)
    vid: str | None = Field(None, min_length=1, max_length=256, description="a video of the server's index")
    video_b64: str | None = Field(None, min_length=1, description="a video file (any container/codec ffmpeg "
                                                                  "reads), base64; a data: URL prefix is accepted")
    frames_b64: list[str] | None = Field(None, min_length=1, max_length=MAX_FRAMES_IN,
                                         description="frames as base64 JPEG/PNG, in time order; one = an image")
    # the per-item max_length also makes pydantic refuse a lone UTF-16 surrogate ("\ud800"), which
    # a plain list[str] lets through to the tokenizer (a TypeError there)
    options: list[Annotated[str, Field(max_length=MAX_TEXT)]] | None = Field(
        None, max_length=MAX_OPTIONS, description="multiple-choice models: the candidate answers")
    top_k: int = Field(1, ge=1, le=MAX_TOP_K, description="candidates listed in the response")

    @field_validator("frames_b64", mode="before")
    @classmethod
    def _one_file(cls, value: Any) -> Any:
        # a multipart upload gives one file as one base64 string
        return [value] if isinstance(value, str) else value

    @field_validator("options", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # multipart form fields are strings: options come as a JSON list there
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError('give options as a list of strings (in a form field: a JSON list, ["a", "b"])') from None


class Candidate(BaseModel):
    answer: str | None = Field(..., description="the answer text (null: the server has no answer vocabulary)")
    index: int = Field(..., description="into the answer vocabulary (open-ended) or the request's options")
    prob: float


class QAResponse(BaseModel):
    answer: str | None = Field(..., description="the best answer (null: the server has no answer vocabulary)")
    answer_index: int = Field(..., description="into the answer vocabulary (open-ended) or the request's options")
    prob: float = Field(..., description="softmax probability of the answer")
    candidates: list[Candidate] = Field(..., description="the top_k answers, best first")
    scores: list[float] | None = Field(None, description="multiple choice: VTM match log-odds per option, in the "
                                                         "request's order")


# ----------------------------------------------------------------------------- the index


class VideoIndex:
    """The distinct videos of a VIOLET dataset (serve args ``index``) with their frames decoded once,
    the dataset's answer vocabulary (oeqa datasets), and each model's encoded tokens of every video,
    computed on first use and kept while the model lives.

    Frames stay as stored, (T, S, S, 3) uint8; :meth:`model_frames` fits them to a model.
    """

    def __init__(self, uri: str, frames: dict[str, np.ndarray], answer_vocab: list[str] | None = None):
        self.uri, self.frames, self.answer_vocab = uri, frames, answer_vocab
        self.ids = list(frames)  # V ids, in dataset order; the rows of tokens()
        self._tokens: weakref.WeakKeyDictionary[nn.Module, Tensor] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # Serve runs batches in threads; encode the index once

    def __contains__(self, vid: str) -> bool:
        return vid in self.frames

    def __len__(self) -> int:
        return len(self.ids)

    def model_frames(self, vid: str, cfg: VioletConfig) -> np.ndarray:
        """(T, image_size, image_size, 3) uint8 of ``vid``: T as stored (as evaluation reads the
        dataset) unless it exceeds the model's max_frames, then sampled to its ``frames``."""
        frames = self.frames[vid]
        if len(frames) > cfg.max_frames:
            frames = frames[sample_indices(len(frames), cfg.frames)]
        return _squashed(frames, cfg.image_size)

    @torch.no_grad()
    def tokens(self, net: nn.Module) -> Tensor:
        """(V, Nv, D) ``net.encode_video`` of every index video, in :attr:`ids` order."""
        with self._lock:
            if net not in self._tokens:
                parts = [net.encode_video(_pixels(net, np.stack([self.model_frames(v, net.cfg) for v in chunk])))
                         for chunk in (self.ids[i:i + ENCODE_CHUNK] for i in range(0, len(self.ids), ENCODE_CHUNK))]
                self._tokens[net] = torch.cat(parts)
            return self._tokens[net]


def open_index(uri: str, opts: StorageOptions | None = None) -> VideoIndex:
    """Read a VIOLET dataset of any kind: the frames of each distinct ``video`` (its first row)
    and ``meta["answer_vocab"]`` when the manifest has one."""
    from polymodal import shards

    manifest = shards.open_dataset(uri, opts)
    if manifest.task not in TASKS.values():
        raise PolymodalError(f"index {uri} is a {manifest.task!r} dataset; serve args `index` must be a VIOLET "
                             f"dataset (one of {sorted(TASKS.values())})")
    frames: dict[str, np.ndarray] = {}
    for batch in shards.iter_local_batches(uri, 64, manifest=manifest, shuffle=False, shuffle_buffer=0, opts=opts):
        for row_id, vid, blob, lengths in zip(batch["id"], batch["video"], batch["frames"], batch["frame_bytes"]):
            if str(vid) not in frames:
                frames[str(vid)] = frames_of({"id": str(row_id), "frames": bytes(blob), "frame_bytes": lengths})
    if not frames:
        raise PolymodalError(f"index {uri} has no rows; give a dataset with the videos to serve")
    vocab = manifest.meta.get("answer_vocab")
    return VideoIndex(uri, frames, list(vocab) if vocab is not None else None)


# ----------------------------------------------------------------------------- frames


def _squashed(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) -> (T, size, size, 3), resized as ingestion resizes."""
    return np.stack([_resize(f, size) for f in frames])


def _pixels(net: nn.Module, clips: np.ndarray) -> Tensor:
    """uint8 (B, T, S, S, 3) -> standardised (B, T, 3, S, S) on the model's device and dtype."""
    frames = torch.from_numpy(np.ascontiguousarray(clips)).to(net.video_proj.weight.device)
    return normalise_frames(channels_first(frames), param_dtype(net), net.pixel_stats)


def _b64(data: str, field: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)  # line breaks as `base64` writes them are fine
    except (binascii.Error, ValueError):
        raise ServeInputError(field, "is not valid base64") from None
    if not raw:
        raise ServeInputError(field, "is empty")
    return raw


def _check_video_size(raw: bytes, field: str) -> None:
    """Refuse a video whose decoded frames would exceed :data:`MAX_DECODED_BYTES` (when the
    container tells its length) before decoding it."""
    import av

    try:
        with av.open(io.BytesIO(raw)) as container:
            if not container.streams.video:
                raise ServeInputError(field, "has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            n = stream.frames
            if not n and container.duration and stream.average_rate:
                n = int(container.duration / 1e6 * float(stream.average_rate))  # duration is in microseconds
    except ServeInputError:
        raise
    except Exception as exc:  # noqa: BLE001 -- PyAV raises many error types for bad input
        raise ServeInputError(field, f"is not a decodable video ({type(exc).__name__})") from None
    if width * height > MAX_PIXELS:
        raise ServeInputError(field, f"is {width}x{height} pixels; the limit is {MAX_PIXELS} pixels per frame")
    if n * width * height * 3 > MAX_DECODED_BYTES:
        raise ServeInputError(field, f"has about {n} frames of {width}x{height}, more than fit the decoding limit "
                                     f"of {MAX_DECODED_BYTES >> 20} MiB; send a shorter or smaller clip")


def decode_video(data: str, cfg: VioletConfig, field: str = "video_b64") -> np.ndarray:
    """base64 video file -> (cfg.frames, image_size, image_size, 3) uint8, sampled as ingestion does."""
    raw = _b64(data, field)
    _check_video_size(raw, field)
    try:
        return decode_frames(raw, cfg.frames, cfg.image_size, where=field)
    except ValueError as exc:
        raise ServeInputError(field, str(exc).removeprefix(f"{field}: ")) from None


def decode_images(items: list[str], cfg: VioletConfig, field: str = "frames_b64") -> np.ndarray:
    """base64 JPEG/PNG frames -> (T, image_size, image_size, 3) uint8: one frame stays an image
    (T = 1), another count than ``cfg.frames`` is sampled to it."""
    from PIL import Image

    out = []
    for i, data in enumerate(items):
        where = f"{field}.{i}"
        raw = _b64(data, where)
        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ServeInputError(where, f"is {img.width}x{img.height} pixels; the limit is {MAX_PIXELS}")
                # as ingestion reads an image
                rgb = img.convert("RGB").resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
        except ServeInputError:
            raise
        except Exception:  # noqa: BLE001 -- any decoder failure is the client's bad image
            raise ServeInputError(where, "is not a decodable image (JPEG, PNG, ...)") from None
        out.append(np.asarray(rgb))
    frames = np.stack(out)
    if len(frames) not in (1, cfg.frames):
        frames = frames[sample_indices(len(frames), cfg.frames)]
    return frames


_VIDEO_FIELDS = ("vid", "video_b64", "frames_b64")


def request_frames(req: QARequest, cfg: VioletConfig, index: VideoIndex | None) -> np.ndarray:
    """The (T, image_size, image_size, 3) uint8 clip of a QA request, from whichever video field it set."""
    given = [name for name in _VIDEO_FIELDS if getattr(req, name) is not None]
    if len(given) != 1:
        got = " and ".join(f"`{g}`" for g in given) or "none"
        raise ServeInputError(given[1] if given else "vid", "give exactly one of `vid` (a video of the index), "
                                                            f"`video_b64` (a video file) or `frames_b64` (images); "
                                                            f"got {got}")
    if req.vid is not None:
        if index is None:
            raise ServeInputError("vid", "this server has no video index (serve args `index`); send `video_b64` or "
                                         "`frames_b64`")
        if req.vid not in index:
            raise ServeInputError("vid", f"unknown video {req.vid!r}; the index {index.uri} has {len(index)} videos")
        return index.model_frames(req.vid, cfg)
    if req.video_b64 is not None:
        return decode_video(req.video_b64, cfg)
    return decode_images(req.frames_b64, cfg)


# ----------------------------------------------------------------------------- predict


def _top(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, best first (ties: the lower index first)."""
    return np.argsort(-probs, kind="stable")[:k]


@torch.no_grad()
def predict_retrieval(model: nn.Module, requests: list[RetrievalRequest]) -> list[RetrievalResponse]:
    """Rank the index's videos for each text: one (N, V) matrix of match log-odds for the batch."""
    for req in requests:
        if not req.text.strip():
            raise ServeInputError("text", "is empty; send the caption of the video to find")
    index: VideoIndex | None = getattr(model, "serve_index", None)
    if index is None:
        raise ServeInputError("index", "this server has no video index to retrieve from; start it with serve args "
                                       "`index: <a VIOLET dataset>`")
    video = index.tokens(model)  # (V, Nv, D)
    ids, attn = tokenize(model, [r.text for r in requests])
    scores = cross_scores(model, video, ids, attn, chunk=SCORE_CHUNK).cpu().numpy()  # (N, V)
    return [RetrievalResponse(results=[RetrievalHit(video=index.ids[v], score=float(row[v]))
                                       for v in _top(row, req.top_k)])
            for req, row in zip(requests, scores)]


def _qa_inputs(model: nn.Module, requests: list[QARequest]) -> tuple[list[np.ndarray], dict[int, list[int]]]:
    """Each request's clip, and the requests grouped by frame count (a group stacks into one batch)."""
    clips, groups = [], {}
    index = getattr(model, "serve_index", None)
    for i, req in enumerate(requests):
        if not req.question.strip():
            raise ServeInputError("question", "is empty; ask a question about the video")
        clips.append(request_frames(req, model.cfg, index))
        groups.setdefault(len(clips[-1]), []).append(i)
    return clips, groups


def _qa_response(probs: np.ndarray, labels: list[str] | None, top_k: int,
                 scores: list[float] | None = None) -> QAResponse:
    candidates = [Candidate(answer=labels[j] if labels else None, index=int(j), prob=float(probs[j]))
                  for j in _top(probs, top_k)]
    best = candidates[0]
    return QAResponse(answer=best.answer, answer_index=best.index, prob=best.prob, candidates=candidates,
                      scores=scores)


@torch.no_grad()
def predict_oeqa(model: nn.Module, requests: list[QARequest]) -> list[QAResponse]:
    """Open-ended QA: softmax over the answer vocabulary, named by the index's ``answer_vocab``."""
    for req in requests:
        if req.options is not None:
            raise ServeInputError("options", "this model answers open-ended from its vocabulary (violet.oeqa); drop "
                                             "`options`, or serve a violet.mcqa checkpoint for multiple choice")
    index = getattr(model, "serve_index", None)
    vocab = index.answer_vocab if index is not None else None
    if vocab is not None and len(vocab) != model.cfg.num_answers:
        raise PolymodalError(f"the index {index.uri} has {len(vocab)} answers in meta['answer_vocab'] but the model "
                             f"has num_answers {model.cfg.num_answers}; serve it with an index of the dataset it was "
                             "trained on")
    clips, groups = _qa_inputs(model, requests)
    out: list[Any] = [None] * len(requests)
    for idx in groups.values():
        ids, attn = tokenize(model, [requests[i].question for i in idx])
        logits = model.oeqa_logits(_pixels(model, np.stack([clips[i] for i in idx])), ids, attn)  # (B, A)
        for i, probs in zip(idx, logits.float().softmax(-1).cpu().numpy()):
            out[i] = _qa_response(probs, vocab, requests[i].top_k)
    return out


@torch.no_grad()
def predict_mcqa(model: nn.Module, requests: list[QARequest]) -> list[QAResponse]:
    """Multiple-choice QA: one VTM score per ``question [SEP] option``, softmax over the options."""
    K = model.cfg.num_options
    for req in requests:
        if req.options is None or not 2 <= len(req.options) <= K:
            got = "none" if req.options is None else len(req.options)
            raise ServeInputError("options", f"this multiple-choice model (violet.mcqa) picks one of 2 to {K} "
                                             f"candidate answers (its num_options); got {got}")
        blank = [j for j, o in enumerate(req.options) if not o.strip()]
        if blank:
            raise ServeInputError(f"options.{blank[0]}", "is empty")
    clips, groups = _qa_inputs(model, requests)
    out: list[Any] = [None] * len(requests)
    for idx in groups.values():
        B, options = len(idx), [requests[i].options for i in idx]
        # as the task pads: empty options fill each row to K and score -inf
        padded = [o + [""] * (K - len(o)) for o in options]
        ids, attn = tokenize(model, [requests[i].question for i in idx for _ in range(K)],
                             [a for o in padded for a in o])
        scores = model.mcqa_scores(_pixels(model, np.stack([clips[i] for i in idx])), ids.view(B, K, -1),
                                   attn.view(B, K, -1)).float()  # (B, K)
        real = torch.tensor([[k < len(o) for k in range(K)] for o in options], device=scores.device)
        probs = scores.masked_fill(~real, float("-inf")).softmax(-1).cpu().numpy()
        for row, (i, o) in enumerate(zip(idx, options)):
            out[i] = _qa_response(probs[row, :len(o)], o, requests[i].top_k,
                                  [float(s) for s in scores[row, :len(o)].cpu()])
    return out


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ServeMode:
    """What a checkpoint of one VIOLET task answers."""

    request: type[BaseModel]
    response: type[BaseModel]
    predict: Callable[[nn.Module, list[Any]], list[Any]]


RETRIEVAL = ServeMode(RetrievalRequest, RetrievalResponse, predict_retrieval)
#: the data kind of the checkpoint's task (:data:`.data.TASKS`) -> its serving; a pre-trained
#: model retrieves zero-shot with its VTM head
MODES = {"pretrain": RETRIEVAL, "retrieval": RETRIEVAL, "oeqa": ServeMode(QARequest, QAResponse, predict_oeqa),
         "mcqa": ServeMode(QARequest, QAResponse, predict_mcqa)}
