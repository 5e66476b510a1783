"""VIOLET video handling: sparse sampling, decoding real MP4 files, and JPEG frame packing."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.models.violet.synth import sample_clip
from polymodal.models.violet.video import decode_frames, encode_video, pack_jpegs, sample_indices, unpack_jpegs


def test_sparse_sampling_takes_one_frame_per_segment():
    assert sample_indices(40, 4).tolist() == [5, 15, 25, 35]  # segment middles
    assert sample_indices(3, 5).tolist() == [0, 0, 1, 2, 2]  # short videos repeat frames
    rng = np.random.default_rng(0)
    draws = np.stack([sample_indices(40, 4, rng=rng) for _ in range(2000)])
    for seg in range(4):
        assert draws[:, seg].min() == 10 * seg and draws[:, seg].max() == 10 * seg + 9  # whole segment, nothing else
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(0, 4)


def test_decoded_frames_follow_the_clip(tmp_path):
    """A synthetic clip written as MP4, decoded with 4 sparse samples at 32 px: each sampled frame
    is close to the original frame at that index (lossy codec), and nowhere near the others."""
    clip = sample_clip(np.random.default_rng(3), n_frames=16, size=64)
    path = tmp_path / "clip.mp4"
    path.write_bytes(encode_video(clip["frames"]))
    frames = decode_frames(str(path), 4, size=64)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    for got, idx in zip(frames, sample_indices(16, 4)):
        errors = [np.abs(got.astype(int) - f.astype(int)).mean() for f in clip["frames"]]
        assert int(np.argmin(errors)) == idx
    small = decode_frames(path.read_bytes(), 2, size=32)
    assert small.shape == (2, 32, 32, 3)


def test_undecodable_video_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0not a video")
    with pytest.raises(ValueError, match="broken.mp4: cannot decode video"):
        decode_frames(str(bad), 4)


def test_jpeg_packing_round_trips_and_checks_lengths():
    frames = sample_clip(np.random.default_rng(4), n_frames=3, size=32)["frames"]
    blob, lengths = pack_jpegs(frames, quality=95)
    assert lengths.shape == (3,) and lengths.sum() == len(blob)
    back = unpack_jpegs(blob, lengths)
    assert back.shape == frames.shape and np.abs(back.astype(int) - frames.astype(int)).mean() < 10  # noisy 32 px frames
    with pytest.raises(ValueError, match="do not add up"):
        unpack_jpegs(blob, [int(lengths[0]), int(lengths[1])], where="row 7")
    with pytest.raises(ValueError, match="row 7: frame 1 is not a decodable JPEG"):
        unpack_jpegs(blob[:lengths[0]] + b"x" * int(lengths[1]), [int(lengths[0]), int(lengths[1])], where="row 7")


# ----------------------------------------------------------------------------- seeking decoder


def _full_decode(data: bytes, n_frames: int, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The reference: every frame decoded into memory, then sampled (what decode_frames did before
    it learned to seek)."""
    import io

    import av

    from polymodal.models.violet.video import _resize

    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([_resize(frames[i], size) for i in sample_indices(len(frames), n_frames, rng=rng)])


def _ramp_clip(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """(n, h, w, 3) uint8: a brightness ramp that changes every frame and a red square sliding
    across, smooth enough that the codecs write real P-/B-frames between keyframes."""
    i, y, x = np.arange(n)[:, None, None], np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    frames = np.repeat((40 + (i * 5) % 160 + 0 * y + x).astype(np.uint8)[..., None], 3, axis=-1)
    frames[..., 0][((x - i % (w - 8)) ** 2 < 16) & ((y - h // 2) ** 2 < 16)] = 250
    return frames


# (container, codec, codec options, how the sampled frames are reached). Real releases: WebVid and
# MSR-VTT are MP4, MSVD-QA AVI (YouTubeClips/*.avi), TGIF-QA GIF; the others are common containers.
CONTAINERS = [
    ("mp4", "mpeg4", None, "seek"),
    ("mp4", "libx264", {"bf": "2"}, "seek"),  # B-frames: decode order differs from display order
    ("mov", "libx264", None, "seek"),
    ("matroska", "libx264", None, "seek"),
    ("webm", "libvpx-vp9", None, "seek"),
    ("mpegts", "mpeg4", None, "seek"),  # seeks by bytes; landing on a P-frame must not be trusted
    ("avi", "mpeg4", None, "seek"),
    ("avi", "mpeg4", {"bf": "2"}, "seek"),
    ("h264", "libx264", None, "stream"),  # a raw H.264 stream: packets without timestamps
    ("gif", "gif", None, "stream"),  # no index to seek by
]


@pytest.mark.parametrize("container,codec,options,method", CONTAINERS,
                         ids=[f"{c}-{k}{'-bf' if o else ''}" for c, k, o, _ in CONTAINERS])
def test_seeking_decoder_returns_the_frames_of_a_full_decode(container, codec, options, method):
    """120 frames with a keyframe every 12, sampled for T = 4 and 5 (segment middles) and at random
    inside the segments: the same frames, bit for bit, as decoding every frame and sampling; indexed
    containers get there by seeking (decoding far fewer frames), the others by one forward pass."""
    from polymodal.models.violet.video import sample_video

    pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
    data = encode_video(_ramp_clip(120), fps=25, codec=codec, container=container, pix_fmt=pix_fmt,
                        gop=None if codec == "gif" else 12, options=options)
    for n_frames in (4, 5):
        got = sample_video(data, n_frames, 32)
        assert got.method == method and got.n_total == 120
        assert np.array_equal(got.frames, _full_decode(data, n_frames, 32))
        if method == "seek":
            assert got.n_decoded <= n_frames * 12 + 16 < 120  # a GOP per frame at most (+ decoder delay)
    drawn = sample_video(data, 4, 32, rng=np.random.default_rng(7)).frames
    assert np.array_equal(drawn, _full_decode(data, 4, 32, rng=np.random.default_rng(7)))


def test_lying_timestamps_fall_back_to_a_forward_pass(monkeypatch):
    """When the packets' timestamps do not match what the decoder produces (a seek then skips past
    its target), the decoder falls back to a forward pass and still returns the full decode's frames."""
    from polymodal.models.violet import video

    real = video._timestamps

    def shifted(container, stream):
        pts, keys = real(container, stream)
        return [p + 1 for p in pts], [k + 1 for k in keys]

    monkeypatch.setattr(video, "_timestamps", shifted)
    data = encode_video(_ramp_clip(60), fps=25, gop=12)
    got = video.sample_video(data, 4, 32)
    assert got.method == "stream" and got.n_total == 60
    assert np.array_equal(got.frames, _full_decode(data, 4, 32))


def test_a_seek_the_format_refuses_falls_back_to_a_forward_pass(monkeypatch):
    """A container whose seek raises (a pipe, a format without seeking) is decoded forward instead,
    not reported as an undecodable video."""
    from polymodal.models.violet import video

    class NoSeek:
        def __init__(self, container):
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def seek(self, *args, **kwargs):
            raise OSError(1, "Operation not permitted")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

    real = video._open
    monkeypatch.setattr(video, "_open", lambda source: NoSeek(real(source)))
    data = encode_video(_ramp_clip(60), fps=25, gop=12)
    got = video.sample_video(data, 4, 32)
    assert got.method == "stream" and np.array_equal(got.frames, _full_decode(data, 4, 32))


def test_long_video_keeps_only_the_sampled_frames():
    """2,400 frames (96 s at 25 fps) sampled for 4: each returned frame is the one at its sampled
    index (read back from a 12-bit frame-number code drawn into the frame, independent of any
    decoder), about 4 GOPs are decoded instead of 2,400 frames, and the decoder's Python-side peak
    memory stays under 2 MB where a full decode would hold 2,400 RGB frames (29 MB)."""
    import tracemalloc

    from polymodal.models.violet.video import sample_video

    n, side, bits = 2400, 64, 12
    frames = np.full((n, side, side, 3), 128, np.uint8)
    for b in range(bits):  # bit b of the frame number: a black or white 16 x 16 block
        on = (np.arange(n) >> b) & 1
        r, c = divmod(b, 4)
        frames[:, 16 * r:16 * r + 16, 16 * c:16 * c + 16] = np.where(on, 255, 0)[:, None, None, None]
    data = encode_video(frames, fps=25, gop=25)
    tracemalloc.start()
    try:
        got = sample_video(data, 4, side)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.method == "seek" and got.n_total == n and got.n_decoded <= 4 * 25 + 8
    read = [sum(int(f[16 * (b // 4) + 8, 16 * (b % 4) + 8].mean() > 128) << b for b in range(bits)) for f in got.frames]
    assert read == sample_indices(n, 4).tolist()
    assert peak < 2 * 2**20 < n * side * side * 3
