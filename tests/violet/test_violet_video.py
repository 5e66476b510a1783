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
