"""Video decoding and frame storage for VIOLET's raw-pixel pipeline.

* :func:`sample_indices`: VIOLET's sparse sampling, T frames from T equal segments of the video
  (the middle frame of each segment at evaluation; a random frame per segment in training);
* :func:`sample_video` / :func:`decode_frames`: read the sampled frames of a video file (PyAV, any
  container/codec ffmpeg reads) resized to ``size x size`` RGB. The packets give the frame count
  and timestamps; each sampled frame is reached by a seek to the keyframe before it and a short
  decode, and only sampled frames are converted, so memory holds T small frames whatever the
  video's length. Files whose seeks cannot be trusted are decoded forward once, keeping the same
  frames; either way the frames equal those of decoding everything and sampling;
* :func:`pack_jpegs` / :func:`unpack_jpegs`: T frames <-> one binary cell of concatenated JPEGs
  plus a ``(T,)`` byte-length column, so a shard row holds a whole clip and a reader decodes only
  the frames it needs;
* :func:`encode_video`: write frames as an MP4 (tests and the synthetic data build real files).
"""

from __future__ import annotations

import bisect
import copy
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def sample_indices(n_available: int, n_frames: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """(n_frames,) frame indices: one per equal segment of ``[0, n_available)``, the middle of the
    segment, or a uniform draw inside it when ``rng`` is given. Short videos repeat frames."""
    if n_available < 1 or n_frames < 1:
        raise ValueError(f"need at least one frame to sample from and to sample, got {n_available} and {n_frames}")
    edges = np.linspace(0, n_available, n_frames + 1)
    if rng is None:
        picks = (edges[:-1] + edges[1:]) / 2
    else:
        picks = rng.uniform(edges[:-1], edges[1:])
    return np.clip(np.floor(picks).astype(np.int64), 0, n_available - 1)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


class _Unreliable(Exception):
    """Seeking cannot be trusted for this file (no timestamps, a seek that lands after its target,
    a frame that never comes): decode it forward instead."""


@dataclass
class SampledVideo:
    """What :func:`sample_video` read: the frames and how it got them."""

    #: (T, size, size, 3) uint8, the sampled frames in sampling order
    frames: np.ndarray
    #: frames in the video (the count a full decode would give)
    n_total: int
    #: frames the decoder produced to get there (all of them for a forward pass, fewer when seeking)
    n_decoded: int
    #: "seek" (keyframe seeks), or "stream" (forward pass from the start, for files whose seeking
    #: cannot be trusted or when asked for)
    method: str


def _open(source: str | bytes):
    import av

    return av.open(io.BytesIO(source) if isinstance(source, bytes) else source)


def _rgb(frame, size: int) -> np.ndarray:
    """A decoded frame -> (size, size, 3) uint8 right away, so no full-size frame is kept."""
    return _resize(frame.to_ndarray(format="rgb24"), size)


def _timestamps(container, stream) -> tuple[list[int], list[int]] | None:
    """(presentation timestamps of every frame, in display order; keyframe timestamps, sorted),
    from the packets alone (demuxing, no decoding); None when the file cannot be seeked by them: a
    format without an index (GIF), a packet without a timestamp, or a repeated timestamp."""
    if container.format.name == "gif" or stream.time_base is None:
        return None
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the flush packet; edit-list frames never shown
            continue
        if packet.pts is None:
            return None
        pts.append(int(packet.pts))
        if packet.is_keyframe:
            keys.append(int(packet.pts))
    pts.sort()
    if not pts or not keys or len(set(pts)) != len(pts):
        return None
    return pts, sorted(keys)


def _seek_pick(container, stream, targets: list[int], keys: list[int], size: int) -> tuple[dict[int, np.ndarray], int]:
    """Frames at the presentation timestamps ``targets`` (sorted, distinct): before each, seek to
    the keyframe at or before it (``keys``), unless the decoder is already past that keyframe (then
    decoding on is cheaper), and decode forward to it. Returns ``({pts: (size, size, 3) uint8},
    frames decoded)``.

    Raises _Unreliable when a seek lands after its target or on a frame that is not a keyframe
    (MPEG-TS seeks by bytes and can land on a P-frame, which decodes without its reference), a
    frame has no timestamp, or the target never comes out of the decoder."""
    out: dict[int, np.ndarray] = {}
    frames, last, decoded = None, None, 0
    for target in targets:
        key = keys[max(bisect.bisect_right(keys, target) - 1, 0)]
        fresh = frames is None or last is None or key > last
        if fresh:
            try:
                container.seek(key, backward=True, any_frame=False, stream=stream)
            except Exception:  # noqa: BLE001 -- a format that cannot seek (PyAV raises per-errno types)
                raise _Unreliable from None
            frames = container.decode(stream)
        for frame in frames:
            decoded += 1
            if frame.pts is None or (fresh and (frame.pts > target or not frame.key_frame)):
                raise _Unreliable
            fresh, last = False, frame.pts
            if frame.pts == target:
                out[target] = _rgb(frame, size)
                break
            if frame.pts > target:  # skipped over: the decoder dropped it
                raise _Unreliable
        else:
            raise _Unreliable
    return out, decoded


def _stream_pick(source: str | bytes, wanted: set[int], size: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode forward from the start, converting only frames whose index is in ``wanted``: (kept
    frames by index, number of frames in the video)."""
    kept: dict[int, np.ndarray] = {}
    n = 0
    with _open(source) as container:
        for n, frame in enumerate(container.decode(video=0), start=1):
            if n - 1 in wanted:
                kept[n - 1] = _rgb(frame, size)
    return kept, n


def sample_video(source: str | bytes, n_frames: int, size: int = 224, *, rng: np.random.Generator | None = None,
                 where: str | None = None, seek: bool = True) -> SampledVideo:
    """Sample ``n_frames`` frames (:func:`sample_indices`) of the video at path ``source`` (or its
    bytes), resized to ``size x size`` RGB, holding at most those frames in memory.

    The frame count and the frames' timestamps come from the packets (demuxing reads the file but
    decodes nothing); each sampled frame is then reached by seeking to the keyframe before it and
    decoding forward. Where that cannot be trusted (``seek=False``, GIF, packets without timestamps,
    a seek landing after its target) a forward pass from the start keeps only the sampled frames;
    when the count it finds differs from the packets' count, the indices are drawn again from the
    true count (with ``rng`` in the state it had), so the frames are always those a full decode would
    give. A file ffmpeg cannot read, or one without video frames, raises ValueError naming ``where``
    (default: the path).
    """
    name = where or (source if isinstance(source, str) else "video bytes")
    state = None if rng is None else copy.deepcopy(rng.bit_generator.state)

    def draw(n: int) -> np.ndarray:
        """The indices for ``n`` frames, drawn from ``rng`` as it was on entry (a redraw repeats it)."""
        if rng is not None:
            rng.bit_generator.state = copy.deepcopy(state)
        return sample_indices(n, n_frames, rng=rng)

    try:
        out = _sample(source, size, draw, seek)
    except Exception as exc:  # noqa: BLE001 -- PyAV raises many error types (some ValueErrors) for bad input
        raise ValueError(f"{name}: cannot decode video ({type(exc).__name__}: {exc})") from None
    if out is None:
        raise ValueError(f"{name}: no video stream")
    if not out.n_total:
        raise ValueError(f"{name}: the video has no frames")
    return out


def _sample(source: str | bytes, size: int, draw: Callable[[int], np.ndarray], seek: bool) -> SampledVideo | None:
    """:func:`sample_video` without the error wording: None when there is no video stream, a
    result with ``n_total == 0`` when it has no frames."""
    with _open(source) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        index = _timestamps(container, stream)
        if index is not None and seek:
            pts, keys = index
            picks = draw(len(pts))
            try:
                got, decoded = _seek_pick(container, stream, sorted({pts[i] for i in picks}), keys, size)
                return SampledVideo(np.stack([got[pts[i]] for i in picks]), len(pts), decoded, "seek")
            except _Unreliable:
                pass
        guess = len(index[0]) if index is not None else int(stream.frames or 0)
    # forward passes: one when the packets' (or header's) count is right, else a second with the true count
    picks = draw(guess) if guess else np.zeros(0, np.int64)
    kept, n = _stream_pick(source, set(picks.tolist()), size)
    decoded = n
    if n and n != guess:
        picks = draw(n)
        kept, n = _stream_pick(source, set(picks.tolist()), size)
        decoded += n
    frames = np.stack([kept[int(i)] for i in picks]) if n else np.zeros((0, size, size, 3), np.uint8)
    return SampledVideo(frames, n, decoded, "stream")


def decode_frames(source: str | bytes, n_frames: int, size: int = 224, *, rng: np.random.Generator | None = None,
                  where: str | None = None) -> np.ndarray:
    """(n_frames, size, size, 3) uint8 sampled from the video at path ``source`` (or its bytes):
    :func:`sample_video`'s frames (seeking, memory bounded by the sampled frames).

    A file ffmpeg cannot read, or one without video frames, raises ValueError naming ``where``
    (default: the path)."""
    return sample_video(source, n_frames, size, rng=rng, where=where).frames


def pack_jpegs(frames: np.ndarray, quality: int = 90) -> tuple[bytes, np.ndarray]:
    """(T, H, W, 3) uint8 -> (concatenated JPEG bytes, (T,) int32 byte lengths)."""
    from PIL import Image

    parts = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
        parts.append(buf.getvalue())
    return b"".join(parts), np.array([len(p) for p in parts], dtype=np.int32)


def unpack_jpegs(blob: bytes, lengths: Sequence[int], *, where: str = "frames") -> np.ndarray:
    """Inverse of :func:`pack_jpegs`: (T, H, W, 3) uint8. Lengths that do not add up to the blob,
    or a frame that does not decode, raise ValueError naming ``where``."""
    from PIL import Image

    lengths = [int(n) for n in lengths]
    if sum(lengths) != len(blob) or any(n <= 0 for n in lengths):
        raise ValueError(f"{where}: frame lengths {lengths} do not add up to the {len(blob)} stored bytes")
    out, start = [], 0
    for t, n in enumerate(lengths):
        try:
            img = Image.open(io.BytesIO(blob[start:start + n]))
            img.load()
        except Exception as exc:  # noqa: BLE001 -- PIL raises several types for broken JPEGs
            raise ValueError(f"{where}: frame {t} is not a decodable JPEG ({type(exc).__name__})") from None
        out.append(np.asarray(img.convert("RGB")))
        start += n
    return np.stack(out)


def encode_video(frames: np.ndarray, fps: int = 8, codec: str = "mpeg4", bit_rate: int = 8_000_000, *,
                 pix_fmt: str = "yuv420p", container: str = "mp4", gop: int | None = None,
                 options: dict[str, str] | None = None) -> bytes:
    """(T, H, W, 3) uint8 -> video file bytes, MP4 by default (H and W even). The high default bit
    rate keeps small synthetic frames close to the originals; ``codec="png", pix_fmt="rgb24",
    container="mov"`` writes a lossless file that decodes to exactly ``frames``. ``gop``: frames
    between keyframes (the codec's default when None); ``options``: codec options (e.g.
    ``{"bf": "2"}`` for B-frames)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = pix_fmt
        if codec not in ("png", "gif"):
            stream.bit_rate = bit_rate
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
