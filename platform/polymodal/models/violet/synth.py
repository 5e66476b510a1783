"""Synthetic videos for VIOLET: one coloured shape moving across a noisy background.

A clip is a shape (disc, square, triangle) in a colour (red, green, blue, yellow) that moves in a
straight line, left, right, up or down, over ``n_frames`` frames. Its caption names all three
(``"a red disc moves to the left"``); QA asks for the direction.

Direction is only recoverable from the **order** of the frames. The path is a segment ``[a, b]``
along the motion axis drawn without regard to direction, and the direction only decides whether
the shape goes from ``a`` to ``b`` or from ``b`` to ``a``; so the frames of a left-moving clip,
read backwards, are a right-moving clip of the same segment, and any function of the *set* of
frames (a mean frame, a bag of patches) carries no information about direction.
:func:`order_free_features` / :func:`order_features` let the tests check both halves of that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("disc", "square", "triangle")
#: direction -> (axis of motion: 1 = x / columns, 0 = y / rows, sign of motion along it)
DIRECTIONS = {"left": (1, -1), "right": (1, 1), "up": (0, -1), "down": (0, 1)}
#: default range of a path's length, as a share of the room along the axis of motion
TRAVEL = (0.7, 0.95)


def caption(colour: str, shape: str, direction: str) -> str:
    return f"a {colour} {shape} moves {'to the ' if direction in ('left', 'right') else ''}{direction}"


def question(colour: str, shape: str) -> str:
    return f"which way does the {colour} {shape} move?"


def draw_frame(centre: tuple[float, float], colour: str, shape: str, size: int, radius: float,
               background: np.ndarray) -> np.ndarray:
    """(size, size, 3) uint8: ``shape`` of ``radius`` px at ``centre`` (row, col) over ``background``."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = rows - centre[0], cols - centre[1]
    if shape == "disc":
        inside = dy ** 2 + dx ** 2 <= radius ** 2
    elif shape == "square":
        inside = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    else:  # triangle, apex up: inside the box and below both slanted edges
        inside = (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    frame = background.copy()
    frame[inside] = COLOURS[colour]
    return frame


def sample_clip(rng: np.random.Generator, *, n_frames: int = 8, size: int = 64, colour: str | None = None,
                shape: str | None = None, direction: str | None = None, noise: float = 12.0,
                travel: tuple[float, float] = TRAVEL) -> dict[str, Any]:
    """One clip: ``frames`` (n_frames, size, size, 3) uint8 plus its ``colour``, ``shape``,
    ``direction``, ``caption`` and the ``path`` (n_frames, 2) of centres (row, col).

    ``travel``: the range of the path's length, as a share of the room the shape has along its axis.
    """
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    direction = direction or str(rng.choice(list(DIRECTIONS)))
    radius = size * rng.uniform(0.1, 0.14)
    margin = radius + 1
    # a segment along the motion axis, drawn independently of the direction (see the module doc)
    length = rng.uniform(*travel) * (size - 2 * margin)
    a = rng.uniform(margin, size - margin - length)
    along = np.linspace(a, a + length, n_frames)
    axis, sign = DIRECTIONS[direction]
    if sign < 0:
        along = along[::-1]
    across = np.full(n_frames, rng.uniform(margin, size - margin))
    path = np.stack([along, across] if axis == 0 else [across, along], axis=1)  # (n_frames, 2) row, col
    background = np.clip(rng.normal(128, noise, (size, size, 3)), 0, 255).astype(np.uint8)
    frames = np.stack([draw_frame(tuple(p), colour, shape, size, radius, background) for p in path])
    return {"frames": frames, "colour": colour, "shape": shape, "direction": direction,
            "caption": caption(colour, shape, direction), "path": path.astype(np.float32)}


def sample_clips(rng: np.random.Generator, n: int, **kw: Any) -> list[dict[str, Any]]:
    return [sample_clip(rng, **kw) for _ in range(n)]


def _centroids(frames: np.ndarray) -> np.ndarray:
    """(T, 2) centre of mass (row, col) of the pixels that differ most from the frame's median."""
    dev = np.abs(frames.astype(np.float32) - np.median(frames, axis=(1, 2), keepdims=True)).sum(-1)  # (T, H, W)
    weight = (dev > np.percentile(dev, 90, axis=(1, 2), keepdims=True)).astype(np.float32)
    rows, cols = np.mgrid[0:frames.shape[1], 0:frames.shape[2]]
    total = weight.sum((1, 2)).clip(min=1)
    return np.stack([(weight * rows).sum((1, 2)) / total, (weight * cols).sum((1, 2)) / total], axis=1)


def order_free_features(frames: np.ndarray) -> np.ndarray:
    """Features of the *set* of frames (mean and spread of the shape's centre over time): the
    same for a clip and its time reversal."""
    c = _centroids(frames)
    return np.concatenate([c.mean(0), c.std(0), c.min(0), c.max(0)])


def order_features(frames: np.ndarray) -> np.ndarray:
    """Last minus first centre (row, col): the direction, readable only from frame order."""
    c = _centroids(frames)
    return c[-1] - c[0]
