"""Video decoding and frame storage for VIOLET's raw-pixel pipeline.

* :func:`sample_indices`: VIOLET's sparse sampling, T frames from T equal segments of the video
  (the middle frame of each segment at evaluation; a random frame per segment in training);
* :func:`decode_frames`: decode a video file (PyAV, any container/codec ffmpeg reads) and return
  the sampled frames resized to ``size x size`` RGB;
* :func:`pack_jpegs` / :func:`unpack_jpegs`: T frames <-> one binary cell of concatenated JPEGs
  plus a ``(T,)`` byte-length column, so a shard row holds a whole clip and a reader decodes only
  the frames it needs;
* :func:`encode_video`: write frames as an MP4 (tests and the synthetic data build real files).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

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


def decode_frames(source: str | bytes, n_frames: int, size: int = 224, *, rng: np.random.Generator | None = None,
                  where: str | None = None) -> np.ndarray:
    """(n_frames, size, size, 3) uint8 sampled from the video at path ``source`` (or its bytes).

    A file ffmpeg cannot read, or one without video frames, raises ValueError naming ``where``
    (default: the path)."""
    import av

    name = where or (source if isinstance(source, str) else "video bytes")
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else source) as container:
            has_video = bool(container.streams.video)
            # decoding every frame is simplest and exact for short clips; seeking by timestamp is
            # unreliable across codecs (keyframes), and VIOLET's clips are seconds long
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)] if has_video else []
    except Exception as exc:  # noqa: BLE001 -- PyAV raises many error types (some ValueErrors) for bad input
        raise ValueError(f"{name}: cannot decode video ({type(exc).__name__}: {exc})") from None
    if not has_video:
        raise ValueError(f"{name}: no video stream")
    if not frames:
        raise ValueError(f"{name}: the video has no frames")
    return np.stack([_resize(frames[i], size) for i in sample_indices(len(frames), n_frames, rng=rng)])


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
                 pix_fmt: str = "yuv420p", container: str = "mp4") -> bytes:
    """(T, H, W, 3) uint8 -> video file bytes, MP4 by default (H and W even). The high default bit
    rate keeps small synthetic frames close to the originals; ``codec="png", pix_fmt="rgb24",
    container="mov"`` writes a lossless file that decodes to exactly ``frames``."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = pix_fmt
        if codec != "png":
            stream.bit_rate = bit_rate
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
