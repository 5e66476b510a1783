"""Synthetic Wander data sets with a planted cross-modal interaction.

The point of these data sets is to tell a model that *fuses* modalities apart from one that
does not. Every target is built so that it is statistically independent of each modality
taken alone; only a function of two or more modalities together can predict it. In
particular no additive model ``f_0(x_0) + f_1(x_1) + ...`` (late fusion, or uni-modal
adapters with a summed head) beats chance, while a multiplicative fusion such as Wander's
tensor-product adapter can fit the target.

Construction
------------
Each modality ``m`` carries a latent ``z_m`` written onto *every* token along fixed random
orthonormal directions ``A_m`` (shape ``(hidden, k)``, drawn from the seed and shared by all
splits)::

    x_m[t] = noise * eps_t + A_m @ z_m        eps_t ~ N(0, I_hidden), t = 0..seq_len-1

so averaging the ``seq_len`` tokens and projecting on ``A_m`` recovers ``z_m`` up to noise of
standard deviation ``noise / sqrt(seq_len)``.

* classification (``k = 1``): ``z_m ~ N(0, 1)``; ``label = [prod_m z_m > 0]``. For M = 2 this
  is the XOR of the signs: ``sign(z_1)`` is a fair coin independent of ``z_0``, so the label
  is independent of every single modality.
* regression (``k = 1``): ``z_m ~ N(0, 1)``;
  ``y = clip(3 tanh(s) + N(0, 0.1^2), -3, 3)`` with ``s = sum_m 0.5^m z_m z_{m+1}``
  (M = 3: ``z_0 z_1 + 0.5 z_1 z_2``). ``s`` is odd in each ``z_m`` given the others, so
  ``E[y | z_m] = 0`` for every m: the best additive predictor is the constant 0. The clip is
  applied after the noise so targets stay in CMU-MOSI's range ``[-3, 3]``.
* multilabel (``k`` = :data:`MULTILABEL_TARGETS` targets): each modality carries a random
  sign vector ``z_m`` in ``{-1, +1}^k``; target j is ``[prod_m z_m[j] > 0]``. As for
  classification, each target is a fair coin independent of every single modality.
* retrieval (``k`` bits): the video side has modalities ``m0 .. m{M-2}``, each with a random
  sign vector ``z_m`` in ``{-1, +1}^k``; the query modality ``text`` carries their
  element-wise product ``w = z_0 * z_1 * ...``. Products of independent fair signs are
  fair signs independent of any proper subset of the factors, so a text and a single video
  modality look the same whether or not they are a pair; only the fused video code ``w``
  identifies the match. ``k`` (default 12) is large enough that 512 rows rarely share a
  code (2^12 = 4096 codes).

``noise`` defaults to 0.3: with ``seq_len = 8`` the token mean recovers ``sign(z_m)`` about
97 % of the time, so the best classifier is right ~93 % of the time (a tiny Wander model
reaches ~91 % validation accuracy after one epoch, uni-modal adapters stay at ~50 %), while
each token's noise (norm ``0.3 * sqrt(hidden)``, ~1.7 at ``hidden = 32``) still exceeds
its signal (``|z_m|``, ~0.8 on average). A larger noise such as 0.5 caps the best accuracy
below 90 %.

The pure ``sample_*`` functions return the latents too, so tests can check the planted
signal directly without training anything.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import StorageOptions

from .data import LABEL, LABEL_DTYPES, SYNTH_QUERY, TASKS, HeadKind, check_head, columns, feature_spec

Arrays = dict[str, np.ndarray]

__all__ = [
    "DEFAULT_NOISE",
    "SPLIT_ROWS",
    "default_modalities",
    "make_directions",
    "sample_classification",
    "sample_multilabel",
    "sample_regression",
    "sample_retrieval",
    "write_synthetic",
]

#: standard deviation of the per-token Gaussian noise (see the module docstring for why 0.3)
DEFAULT_NOISE = 0.3
#: rows per split at ``scale=1``; every split gets at least ``MIN_ROWS``
SPLIT_ROWS = {"train": 2048, "val": 512, "test": 512}
MIN_ROWS = 64
#: sign bits per modality in the retrieval data set (capped at ``hidden``)
RETRIEVAL_BITS = 12
#: binary targets of the multilabel data set (IEMOCAP has four emotions)
MULTILABEL_TARGETS = 4
#: rows generated per ``ShardWriter.write`` call; bounds memory at large ``scale``
_CHUNK = 1024
#: standard deviation of the regression target noise
_REGRESSION_NOISE = 0.1
_DEFAULT_M = {"classification": 2, "regression": 3, "retrieval": 3, "multilabel": 2}
_MIN_M = {"classification": 2, "regression": 2, "retrieval": 3, "multilabel": 2}
#: stream ids that keep direction sampling independent of row sampling for one seed
_DIRECTION_STREAM = 0
_SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}


def default_modalities(head: HeadKind, num_modalities: int | None = None) -> list[str]:
    """Modality names for a head: ``m0, m1, ...``; retrieval ends with the query ``text``.

    Parameters
    ----------
    head : {"classification", "regression", "retrieval"}
    num_modalities : int, optional
        Total number of modalities M (retrieval: video-side modalities + ``text``). ``None``
        picks 2 for classification and 3 for regression and retrieval.

    Returns
    -------
    list of str, length M
    """
    check_head(head)
    m = _DEFAULT_M[head] if num_modalities is None else int(num_modalities)
    if m < _MIN_M[head]:
        raise ValueError(
            f"{head} needs num_modalities >= {_MIN_M[head]} so that the target depends on an "
            f"interaction between modalities, got {m}"
        )
    if head == "retrieval":
        return [f"m{i}" for i in range(m - 1)] + [SYNTH_QUERY]
    return [f"m{i}" for i in range(m)]


def make_directions(
    seed: int, names: list[str], hidden: int, k: int = 1
) -> dict[str, np.ndarray]:
    """Fixed random orthonormal directions along which each modality carries its latent.

    Parameters
    ----------
    seed : int
        Data set seed; the same seed always gives the same directions.
    names : list of str
        Modality names, in order.
    hidden : int
        Token width.
    k : int
        Latent size per modality, ``1 <= k <= hidden``.

    Returns
    -------
    dict[str, numpy.ndarray]
        Name -> ``A`` of shape ``(hidden, k)``, float64, with orthonormal columns.
    """
    if not 1 <= k <= hidden:
        raise ValueError(f"latent size k must be in [1, hidden={hidden}], got {k}")
    rng = np.random.default_rng([seed, _DIRECTION_STREAM])
    out = {}
    for name in names:
        q, r = np.linalg.qr(rng.standard_normal((hidden, k)))
        # Fix QR's sign ambiguity so the directions depend only on the random draw.
        out[name] = q * np.sign(np.diag(r))[None, :]
    return out


def _tokens(
    rng: np.random.Generator, z: np.ndarray, a: np.ndarray, seq_len: int, noise: float
) -> np.ndarray:
    """Tokens ``noise * eps + A @ z`` repeated over the sequence.

    Parameters
    ----------
    z : numpy.ndarray, shape (n, k)
    a : numpy.ndarray, shape (hidden, k)

    Returns
    -------
    numpy.ndarray of float32, shape (n, seq_len, hidden)
    """
    n, hidden = z.shape[0], a.shape[0]
    x = noise * rng.standard_normal((n, seq_len, hidden))
    x += (z @ a.T)[:, None, :]
    return x.astype(np.float32)


def sample_classification(
    rng: np.random.Generator,
    n: int,
    directions: dict[str, np.ndarray],
    *,
    seq_len: int = 8,
    noise: float = DEFAULT_NOISE,
) -> tuple[Arrays, Arrays]:
    """Draw ``n`` rows of the XOR-like classification data set.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
        Rows to draw.
    directions : dict[str, numpy.ndarray]
        Modality name -> direction of shape ``(hidden, 1)`` from :func:`make_directions`;
        its order is the modality order.
    seq_len : int
        Tokens per modality.
    noise : float
        Per-token noise standard deviation.

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        One column per modality, float32 ``(n, seq_len, hidden)``, and ``label`` int64 ``(n,)``
        equal to ``[prod_m z_m > 0]``.
    latents : dict[str, numpy.ndarray]
        ``z``: float64 ``(n, M)``, column m is modality m's latent.
    """
    names = list(directions)
    z = rng.standard_normal((n, len(names)))
    arrays = {
        name: _tokens(rng, z[:, i : i + 1], directions[name], seq_len, noise)
        for i, name in enumerate(names)
    }
    arrays[LABEL] = (np.prod(z, axis=1) > 0).astype(LABEL_DTYPES["classification"])
    return arrays, {"z": z}


def sample_multilabel(
    rng: np.random.Generator,
    n: int,
    directions: dict[str, np.ndarray],
    *,
    seq_len: int = 8,
    noise: float = DEFAULT_NOISE,
) -> tuple[Arrays, Arrays]:
    """Draw ``n`` rows of the multi-label data set: ``k`` binary targets, each an XOR of signs.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
    directions : dict[str, numpy.ndarray]
        Modality name -> ``(hidden, k)`` directions, in modality order; ``k`` is the number of
        targets.
    seq_len : int
    noise : float

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        One float32 ``(n, seq_len, hidden)`` column per modality and ``label`` int64 ``(n, k)``
        equal to ``[prod_m z_m > 0]`` element-wise.
    latents : dict[str, numpy.ndarray]
        ``z``: float64 ``(n, M, k)`` sign codes.
    """
    names = list(directions)
    k = directions[names[0]].shape[1]
    z = rng.choice(np.array([-1.0, 1.0]), size=(n, len(names), k))
    arrays = {name: _tokens(rng, z[:, i], directions[name], seq_len, noise) for i, name in enumerate(names)}
    arrays[LABEL] = (np.prod(z, axis=1) > 0).astype(LABEL_DTYPES["multilabel"])
    return arrays, {"z": z}


def _interaction(z: np.ndarray) -> np.ndarray:
    """``s = sum_m 0.5^m z_m z_{m+1}`` for z of shape (n, M); returns shape (n,)."""
    weights = 0.5 ** np.arange(z.shape[1] - 1)
    return (z[:, :-1] * z[:, 1:]) @ weights


def sample_regression(
    rng: np.random.Generator,
    n: int,
    directions: dict[str, np.ndarray],
    *,
    seq_len: int = 8,
    noise: float = DEFAULT_NOISE,
) -> tuple[Arrays, Arrays]:
    """Draw ``n`` rows of the sentiment-like regression data set.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
    directions : dict[str, numpy.ndarray]
        Modality name -> ``(hidden, 1)`` direction, in modality order.
    seq_len : int
    noise : float

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        One float32 ``(n, seq_len, hidden)`` column per modality and ``label`` float32 ``(n,)``:
        ``clip(3 tanh(sum_m 0.5^m z_m z_{m+1}) + N(0, 0.1^2), -3, 3)``.
    latents : dict[str, numpy.ndarray]
        ``z``: float64 ``(n, M)``; ``clean``: float64 ``(n,)``, the target before noise.
    """
    names = list(directions)
    z = rng.standard_normal((n, len(names)))
    arrays = {
        name: _tokens(rng, z[:, i : i + 1], directions[name], seq_len, noise)
        for i, name in enumerate(names)
    }
    clean = 3.0 * np.tanh(_interaction(z))
    y = np.clip(clean + _REGRESSION_NOISE * rng.standard_normal(n), -3.0, 3.0)
    arrays[LABEL] = y.astype(LABEL_DTYPES["regression"])
    return arrays, {"z": z, "clean": clean}


def sample_retrieval(
    rng: np.random.Generator,
    n: int,
    directions: dict[str, np.ndarray],
    *,
    seq_len: int = 8,
    noise: float = DEFAULT_NOISE,
    query: str = SYNTH_QUERY,
) -> tuple[Arrays, Arrays]:
    """Draw ``n`` aligned (video, text) pairs whose match needs the fused video code.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
    directions : dict[str, numpy.ndarray]
        Modality name -> ``(hidden, k)`` directions for every video-side modality and for
        ``query``; all share the same ``k``.
    seq_len : int
    noise : float
    query : str
        Name of the query (text) modality in ``directions``.

    Returns
    -------
    arrays : dict[str, numpy.ndarray]
        One float32 ``(n, seq_len, hidden)`` column per modality; row i of ``query`` matches
        row i of the video-side modalities.
    latents : dict[str, numpy.ndarray]
        ``z``: float64 ``(n, M_video, k)`` sign codes of the video-side modalities;
        ``w``: float64 ``(n, k)``, their product, carried by the query.
    """
    video = [name for name in directions if name != query]
    if query not in directions or len(video) < 2:
        raise ValueError(
            f"retrieval needs the query modality {query!r} and >= 2 video-side modalities in "
            f"directions, got {list(directions)}"
        )
    k = directions[query].shape[1]
    z = rng.choice(np.array([-1.0, 1.0]), size=(n, len(video), k))
    w = np.prod(z, axis=1)
    arrays = {
        name: _tokens(rng, z[:, i], directions[name], seq_len, noise)
        for i, name in enumerate(video)
    }
    arrays[query] = _tokens(rng, w, directions[query], seq_len, noise)
    return arrays, {"z": z, "w": w}


def _split_rows(scale: float) -> dict[str, int]:
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return {split: max(MIN_ROWS, int(round(rows * scale))) for split, rows in SPLIT_ROWS.items()}


def write_synthetic(
    out_uri: str,
    head: HeadKind,
    *,
    seed: int = 0,
    scale: float = 1.0,
    hidden: int = 32,
    seq_len: int = 8,
    num_modalities: int | None = None,
    opts: StorageOptions | None = None,
    progress: bool | str = True,
) -> dict[str, str]:
    """Write a tiny frozen backbone and train/val/test shards of a synthetic Wander task.

    Parameters
    ----------
    out_uri : str
        Folder or ``s3://`` prefix; receives ``backbone/``, ``train/``, ``val/``, ``test/``.
    head : {"classification", "regression", "retrieval", "multilabel"}
        Which data set (see the module docstring for each construction).
    seed : int
        Seeds the backbone weights, the modality directions and every row; the output is
        identical for identical arguments.
    scale : float
        Multiplies the split sizes 2048 / 512 / 512 (each at least 64 rows).
    hidden : int
        Token width and backbone hidden size (must be divisible by the backbone's 2 heads).
    seq_len : int
        Tokens per modality.
    num_modalities : int, optional
        Total modalities M (retrieval counts ``text``); default 2 / 3 / 3 by head.
    opts : StorageOptions, optional
        S3 settings for ``s3://`` destinations.
    progress : bool or str
        Passed to :class:`~polymodal.shards.ShardWriter` (one bar per split).

    Returns
    -------
    dict[str, str]
        ``{"train": uri, "val": uri, "test": uri, "backbone": uri}``.

    Notes
    -----
    Every modality is an ``embeds`` input of shape ``(seq_len, hidden)``; the backbone is
    written by :func:`~polymodal.models.wander.backbone.save_tiny_backbone` in a temporary
    folder and copied with :func:`polymodal.storage.upload_dir`, so local and S3 outputs take
    the same path.
    """
    from polymodal.shards import ShardWriter

    from .backbone import save_tiny_backbone

    names = default_modalities(head, num_modalities)
    rows = _split_rows(scale)
    if seq_len < 1 or hidden < 1:
        raise ValueError(f"seq_len and hidden must be >= 1, got seq_len={seq_len}, hidden={hidden}")

    out = {split: storage.join(out_uri, split) for split in SPLIT_ROWS}
    out["backbone"] = storage.join(out_uri, "backbone")
    modalities = [
        {"name": name, "input": "embeds", "seq_len": seq_len, "feature_dim": hidden, "encoder": name}
        for name in names
    ]
    with tempfile.TemporaryDirectory(prefix="polymodal-synth-") as tmp:
        save_tiny_backbone(tmp, modalities, hidden=hidden, seed=seed)
        storage.upload_dir(tmp, out["backbone"], opts)

    sampler: Callable[..., tuple[Arrays, Arrays]]
    meta: dict[str, Any] = {"head": head, "modalities": names, "seed": seed}
    num_labels = min(MULTILABEL_TARGETS, hidden) if head == "multilabel" else None
    specs = columns(head, {name: feature_spec([seq_len, hidden]) for name in names}, num_labels)
    if head == "classification":
        k, sampler = 1, sample_classification
        meta.update(num_classes=2, planted="label = [" + "*".join(f"z{i}" for i in range(len(names))) + " > 0]")
    elif head == "regression":
        k, sampler = 1, sample_regression
        terms = " + ".join(
            (f"{0.5 ** i:g}*" if i else "") + f"z{i}*z{i + 1}" for i in range(len(names) - 1)
        )
        meta["planted"] = f"label = clip(3*tanh({terms}) + N(0, {_REGRESSION_NOISE}^2), -3, 3)"
    elif head == "multilabel":
        k, sampler = num_labels, sample_multilabel
        meta.update(num_classes=k, labels=[f"target{j}" for j in range(k)],
                    planted="label[j] = [" + "*".join(f"z{i}[j]" for i in range(len(names))) + " > 0]")
    else:
        k, sampler = min(RETRIEVAL_BITS, hidden), sample_retrieval
        video = "*".join(f"z{i}" for i in range(len(names) - 1))
        meta.update(
            query_modality=SYNTH_QUERY,
            planted=f"text code w = {video} (element-wise, sign vectors in {{-1,+1}}^{k})",
        )
    directions = make_directions(seed, names, hidden, k)

    for split, n in rows.items():
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        with ShardWriter(
            out[split],
            task=TASKS[head],
            split=split,
            columns=specs,
            meta=meta,
            opts=opts,
            progress=progress,
        ) as writer:
            for start in range(0, n, _CHUNK):
                arrays, _ = sampler(
                    rng, min(_CHUNK, n - start), directions, seq_len=seq_len, noise=DEFAULT_NOISE
                )
                writer.write(arrays)
    return out
