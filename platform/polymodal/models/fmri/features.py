"""Stimulus features on the fMRI clock: Lanczos resampling, trimming, z-scoring, delays.

Conventions follow the Huth-lab ``ridge_utils`` code (HuthLab/deep-fMRI-dataset):

* a word's time is the midpoint of its TextGrid interval;
* :func:`lanczos_interp` does **not** normalise the sinc rows, so the output scale follows the
  word rate (a TR with more words gets a larger feature vector), as in ``lanczosinterp2D``;
* :func:`make_delayed` pads with zeros (no wrap-around) and stacks the delayed copies in delay
  order: ``[X(t-d1), X(t-d2), ...]``;
* :func:`zscore` centres every column and divides by its std only where the std is nonzero.

Two trimming conventions are supported by :class:`Trim` and applied identically to features
and responses (the lab report's 5 s / 10 s and the Huth-lab 10 / 5 TRs differ). Responses
may cover only part of the feature clock (ds003020's ``.hf5`` files start 10 TRs after it and
stop 5 before its end); :func:`aligned_rows` lines the two up and trims both without cutting
the responses twice.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


def lanczos_fun(cutoff: float, t: np.ndarray, window: int = 3) -> np.ndarray:
    """Lanczos kernel ``w sin(pi x) sin(pi x / w) / (pi x)^2`` at ``x = t * cutoff``; 1 at 0, 0 beyond ``w``."""
    x = np.asarray(t, dtype=np.float64) * cutoff
    with np.errstate(divide="ignore", invalid="ignore"):
        val = window * np.sin(np.pi * x) * np.sin(np.pi * x / window) / (np.pi ** 2 * x ** 2)
    val[x == 0] = 1.0
    val[np.abs(x) > window] = 0.0
    return val


def lanczos_interp(data: np.ndarray, old_times: np.ndarray, new_times: np.ndarray, window: int = 3,
                   cutoff_mult: float = 1.0) -> np.ndarray:
    """Resample ``data`` (n_old, F) sampled at ``old_times`` onto ``new_times`` -> (n_new, F).

    The cutoff frequency is ``cutoff_mult / mean(diff(new_times))`` (the new sampling rate, so
    nothing above the TR Nyquist leaks in); each output row is the kernel-weighted sum of the
    input rows within ``window`` lobes.
    """
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    if data.shape[0] != np.shape(old_times)[0]:
        raise ValueError(f"data has {data.shape[0]} rows but old_times has {np.shape(old_times)[0]} entries")
    return lanczos_matrix(old_times, new_times, window, cutoff_mult) @ data


def lanczos_matrix(old_times: np.ndarray, new_times: np.ndarray, window: int = 3,
                   cutoff_mult: float = 1.0) -> np.ndarray:
    """(n_new, n_old) resampling weights of :func:`lanczos_interp`."""
    old_times = np.asarray(old_times, dtype=np.float64)
    new_times = np.asarray(new_times, dtype=np.float64)
    if new_times.shape[0] < 2:
        raise ValueError("new_times needs at least 2 entries to define a sampling rate")
    cutoff = cutoff_mult / float(np.mean(np.diff(new_times)))
    return lanczos_fun(cutoff, new_times[:, None] - old_times[None, :], window)


def make_delayed(X: np.ndarray, delays: Sequence[int]) -> np.ndarray:
    """(T, F) -> (T, F * len(delays)): copies of ``X`` shifted down by each delay, zero-padded.

    A positive delay ``d`` puts ``X[t - d]`` in row ``t`` (the response lags the stimulus);
    negative delays shift the other way; 0 is ``X`` itself.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"make_delayed expects a (T, F) array, got shape {X.shape}")
    T = X.shape[0]
    out = []
    for d in delays:
        d = int(d)
        shifted = np.zeros_like(X)
        if d > 0:
            shifted[d:] = X[:T - d]
        elif d < 0:
            shifted[:T + d] = X[-d:]
        else:
            shifted = X.copy()
        out.append(shifted)
    return np.hstack(out)


def zscore(X: np.ndarray) -> np.ndarray:
    """Column-wise: subtract the mean; divide by the std where it is nonzero."""
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=0, keepdims=True)
    std = centred.std(axis=0, keepdims=True)
    return centred / np.where(std > 0, std, 1.0)


class Trim(BaseModel):
    """TRs dropped at the start and end of every story, from features and responses alike.

    They count TRs of the story's feature clock: where the stored responses cover only part of
    it (ds003020), :func:`aligned_rows` cuts the responses only where the trim reaches past them.

    ``unit: tr`` counts TRs (Huth lab: ``start: 10, end: 5``); ``unit: s`` counts seconds and
    drops ``ceil(seconds / tr)`` TRs (the Stat 214 lab report: ``start: 5, end: 10``).
    """

    model_config = ConfigDict(extra="forbid")

    unit: Literal["tr", "s"] = "tr"
    start: float = Field(10, ge=0)
    end: float = Field(5, ge=0)

    def trs(self, tr: float) -> tuple[int, int]:
        if self.unit == "tr":
            return int(self.start), int(self.end)
        return int(math.ceil(self.start / tr - 1e-9)), int(math.ceil(self.end / tr - 1e-9))

    def apply(self, X: np.ndarray, tr: float) -> np.ndarray:
        start, end = self.trs(tr)
        if start + end >= X.shape[0]:
            raise ValueError(f"trimming {start} + {end} TRs leaves nothing of a {X.shape[0]}-TR story")
        return X[start:X.shape[0] - end]


def tr_times(n_trs: int, tr: float, start_time: float = 0.0) -> np.ndarray:
    """Acquisition midpoints of ``n_trs`` volumes: ``k * tr - start_time + tr / 2``."""
    return np.arange(n_trs, dtype=np.float64) * tr - start_time + tr / 2.0


def aligned_rows(n_trs: int, trim: Trim, tr: float, response: tuple[int, int] = (0, 0)) -> tuple[slice, slice]:
    """Which feature rows and which response rows of one story line up, after trimming.

    ``n_trs`` is the length of the story's feature clock; ``response = (before, after)`` says
    where its stored responses sit on that clock: they start ``before`` TRs after the clock
    starts and stop ``after`` TRs before it ends (ds003020 as released: ``(10, 5)``; responses
    that cover the whole clock: ``(0, 0)``). ``trim`` counts TRs of the feature clock, so TRs the
    responses already lack are not cut from them again: the kept window is
    ``[max(trim start, before), n_trs - max(trim end, after))`` on the clock, the features keep
    those rows and the responses the same TRs, shifted by ``before``.

    Returns ``(feature rows, response rows)`` as slices of equal length.
    """
    start, end = trim.trs(tr)
    before, after = (int(v) for v in response)
    if before < 0 or after < 0 or before + after >= n_trs:
        raise ValueError(f"responses placed {before} TRs after the start and {after} before the end of a "
                         f"{n_trs}-TR feature clock leave no response rows")
    first, stop = max(start, before), n_trs - max(end, after)
    if stop <= first:
        raise ValueError(f"trimming {start} + {end} TRs leaves nothing of a {n_trs}-TR story "
                         f"(responses cover TRs {before}..{n_trs - after - 1})")
    return slice(first, stop), slice(first - before, stop - before)


def story_design(on_trs: np.ndarray, tr: float, trim: Trim, delays: Sequence[int],
                 response: tuple[int, int] = (0, 0)) -> np.ndarray:
    """One story's design matrix: cut to the response window and trim, z-score per column,
    then stack the delays.

    (n_trs, F) -> (kept TRs, F * len(delays)), the kept TRs as in :func:`aligned_rows`. The
    order is the Huth lab's (``apply_zscore_and_hrf``): responses are cut and z-scored the
    same way, so both sides have zero mean over the kept TRs.
    """
    rows, _ = aligned_rows(on_trs.shape[0], trim, tr, response)
    return make_delayed(zscore(on_trs[rows]), delays)
