"""VIOLET's synthetic moving shapes: the caption's facts are in the frames, and the direction of
motion is readable from the order of the frames only."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.models.violet.synth import (COLOURS, DIRECTIONS, caption, order_features, order_free_features,
                                           sample_clip, sample_clips)


def test_a_clip_shows_its_colour_moving_its_way():
    rng = np.random.default_rng(0)
    for direction, (axis, sign) in DIRECTIONS.items():
        clip = sample_clip(rng, direction=direction, colour="blue", shape="square", n_frames=6, size=48)
        assert clip["frames"].shape == (6, 48, 48, 3) and clip["frames"].dtype == np.uint8
        assert clip["caption"] == caption("blue", "square", direction)
        step = np.diff(clip["path"][:, axis])
        assert np.all(np.sign(step) == sign) and np.allclose(np.diff(clip["path"][:, 1 - axis]), 0)
        r, c = np.round(clip["path"][0]).astype(int)
        assert tuple(clip["frames"][0, r, c]) == COLOURS["blue"]  # the shape sits on its path


def test_reversed_frames_are_a_clip_of_the_opposite_direction():
    """Same seed, same segment: a left clip read backwards is the right clip, frame for frame."""
    left = sample_clip(np.random.default_rng(5), direction="left", colour="red", shape="disc")
    right = sample_clip(np.random.default_rng(5), direction="right", colour="red", shape="disc")
    assert np.array_equal(left["frames"][::-1], right["frames"])


def test_direction_is_chance_from_the_frame_set_and_certain_from_the_order():
    """Nearest-centroid classifiers on 400 clips: order-free features (mean/spread/min/max of the
    shape's centre) get left vs right at chance; last minus first centre gets it right."""
    rng = np.random.default_rng(1)
    clips = sample_clips(rng, 400, n_frames=6, size=48, colour=None)
    clips = [c for c in clips if c["direction"] in ("left", "right")]
    y = np.array([c["direction"] == "right" for c in clips])
    half = len(clips) // 2

    def accuracy(features):
        x = np.stack([features(c["frames"]) for c in clips])
        x = (x - x[:half].mean(0)) / (x[:half].std(0) + 1e-6)
        mu1, mu0 = x[:half][y[:half]].mean(0), x[:half][~y[:half]].mean(0)
        pred = ((x[half:] - mu1) ** 2).sum(1) < ((x[half:] - mu0) ** 2).sum(1)
        return float((pred == y[half:]).mean())

    n_test = len(clips) - half
    assert abs(accuracy(order_free_features) - 0.5) < 3 * 0.5 / np.sqrt(n_test) + 0.02
    assert accuracy(order_features) > 0.97


@pytest.mark.parametrize("n_frames", [1, 4])
def test_short_clips(n_frames):
    clip = sample_clip(np.random.default_rng(2), n_frames=n_frames, size=32)
    assert clip["frames"].shape == (n_frames, 32, 32, 3)
