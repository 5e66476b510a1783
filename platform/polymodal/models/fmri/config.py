"""The ``model:`` section of an fMRI encoding experiment, and its presets.

One run fits one feature space for every listed subject::

    task: fmri.encoding
    model: {preset: huth, feature: bow, test_stories: [wheretheressmoke]}
    data: {train: s3://bucket/fmri/ds003020}      # root written by `polymodal data import`

``data.train`` is the imported dataset root (``stories.json``, ``words/``, ``responses/``); the
model section says which stories train and which are held out. Presets: ``tiny`` (tests),
``paper`` (the Stat 214 lab report's trim in seconds and its delays) and ``huth`` (HuthLab's
code: its trim, delays and alpha range in our convention). Each voxel chunk is solved by a
Ray task with ``scaling.resources_per_worker`` (default 1 CPU; 1 GPU each with
``scaling.use_gpu``); in a Tune trial ``scaling.num_workers`` of them run at once.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from polymodal.config import StrictModel

from .features import Trim

FEATURES = ("bow", "word2vec", "glove", "encoder", "mlm")


class AlphaGrid(StrictModel):
    """``logspace(log10_min, log10_max, num)``: the ridge penalties tried for every voxel."""

    log10_min: float = 0.0
    log10_max: float = 4.0
    num: int = Field(10, ge=1, le=200)

    @model_validator(mode="after")
    def _ordered(self) -> "AlphaGrid":
        if self.log10_max < self.log10_min:
            raise ValueError(f"log10_max ({self.log10_max}) is below log10_min ({self.log10_min})")
        return self

    @property
    def values(self) -> list[float]:
        return [float(a) for a in np.logspace(self.log10_min, self.log10_max, self.num)]


class FmriConfig(StrictModel):
    """Feature space, alignment and voxelwise-ridge settings of one encoding model."""

    feature: Literal["bow", "word2vec", "glove", "encoder", "mlm"] = Field(
        "bow", description="bow: bag-of-words over the training stories' vocabulary; word2vec / glove: "
                           "static vectors from `vectors`; encoder: a pretrained transformers encoder at "
                           "`encoder`; mlm: the encoder of a `fmri.mlm` run (its run folder or checkpoint "
                           "in `encoder`)")
    vectors: str | None = Field(None, description="word2vec binary (.bin) or GloVe text file, path or URI")
    encoder: str | None = Field(None, description="transformers encoder folder / URI, or an fmri.mlm run")
    layer: int = Field(-1, description="encoder hidden state used: -1 last layer, 0 the embeddings")
    context_words: int = Field(20, ge=0, description="preceding words the encoder sees with each word")
    bow_min_count: int = Field(1, ge=1, description="bag-of-words: a word needs this many training uses")
    delays: list[int] = Field(default_factory=lambda: [1, 2, 3, 4], min_length=1,
                              description="TR delays stacked by make_delayed (zero padding)")
    trim: Trim = Field(default_factory=Trim, description="TRs (or seconds) of each story's feature clock dropped "
                                                         "at its ends, from features and responses alike; TRs the "
                                                         "stored responses already lack are not cut from them again")
    interp_window: int = Field(3, ge=1, description="Lanczos window (lobes)")
    cutoff_mult: float = Field(1.0, gt=0, description="Lanczos cutoff as a multiple of the TR Nyquist rate")
    alphas: AlphaGrid = Field(default_factory=AlphaGrid)
    cv: int = Field(5, ge=2, description="folds over training stories (grouped by story)")
    score: Literal["correlation", "r2"] = "correlation"
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="ridge solver device; auto: CUDA if present")
    subjects: list[str] | None = Field(None, description="None: every subject under responses/")
    test_stories: list[str] | None = Field(
        None, description="held-out stories; None: test_fraction of the stories, picked with the run's seed")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    train_stories: list[str] | None = Field(None, description="None: every story not held out")

    @model_validator(mode="after")
    def _check(self) -> "FmriConfig":
        needs = {"word2vec": "vectors", "glove": "vectors", "encoder": "encoder", "mlm": "encoder"}
        field = needs.get(self.feature)
        if field and not getattr(self, field):
            raise ValueError(f"feature {self.feature!r} needs model.{field} (a path or URI)")
        if len(set(self.delays)) != len(self.delays):
            raise ValueError(f"delays {self.delays} repeat a value")
        if self.test_stories is not None and self.train_stories is not None:
            both = sorted(set(self.test_stories) & set(self.train_stories))
            if both:
                raise ValueError(f"stories {both} are in both train_stories and test_stories")
        return self


def tiny() -> dict[str, Any]:
    """Small runs and tests: three folds, a short alpha grid."""
    return {"feature": "bow", "cv": 3, "alphas": {"log10_min": 0.0, "log10_max": 4.0, "num": 6}}


def paper() -> dict[str, Any]:
    """The Stat 214 lab report's recipe: each story's features trimmed 5 s at the start and 10 s at
    the end (``ceil(seconds / TR)`` TRs of the feature clock after Lanczos resampling: 3 and 5 at
    TR 2 s), delays 1-4 TRs, and the same TRs cut from the responses. Source: the report's
    feature scripts (``n_skip_start = ceil(5 / TR)``, ``n_skip_end = ceil(10 / TR)``,
    ``make_delayed(X, [1, 2, 3, 4])``; see real-layouts.md, mission-anchors.md A5). The report's
    alpha grid is not in the sources we hold: ``logspace(0, 4, 10)`` is ours (10 alphas over the
    range that ridge on z-scored, delayed features needs here), as are the 5 folds grouped by
    story and the mean correlation over folds.

    On ds003020 the released responses already lack the clock's first 10 and last 5 TRs (the
    importer records ``response_start`` / ``response_end``); the trim counts clock TRs, so it
    cuts the features to those rows and nothing more from the responses
    (:func:`~polymodal.models.fmri.features.aligned_rows`).
    """
    return {"feature": "bow", "delays": [1, 2, 3, 4], "trim": {"unit": "s", "start": 5, "end": 10},
            "cv": 5, "alphas": {"log10_min": 0.0, "log10_max": 4.0, "num": 10}, "score": "correlation"}


#: HuthLab's ridge minimises ``||Xb - y||^2 + a^2 ||b||^2`` (``ridge_utils/ridge.py``: singular
#: values reweighted by ``S / (S^2 + a^2)``); ours, like sklearn and himalaya, ``+ a ||b||^2``. Its
#: ``np.logspace(1, 3, 10)`` is therefore ``logspace(2, 6, 10)`` here.
HUTH_ALPHAS = {"log10_min": 2.0, "log10_max": 6.0, "num": 10}


def huth() -> dict[str, Any]:
    """HuthLab's encoding code (HuthLab/deep-fMRI-dataset @ eaaa5cd ``encoding/encoding.py``
    defaults): ``--trim 5`` cuts the features ``[5 + trim : -trim]``, i.e. 10 TRs at the start and
    5 at the end (``encoding_utils.apply_zscore_and_hrf``); ``--ndelays 4`` gives delays 1-4 TRs
    (``make_delayed``, zero padding); ``alphas = np.logspace(1, 3, 10)`` in its squared
    convention, :data:`HUTH_ALPHAS` here; alphas chosen by R^2 (``use_corr`` is off by default).

    Ours differs in the resampling of the alpha search: 5 folds grouped by story instead of 50
    bootstraps holding out 125 random 40-TR chunks. On ds003020 the trim is exactly what the
    release already applied to the responses (recorded by the importer), so nothing more is cut
    from them; on responses that cover the whole clock both sides lose those TRs.
    """
    return {"feature": "bow", "delays": [1, 2, 3, 4], "trim": {"unit": "tr", "start": 10, "end": 5},
            "cv": 5, "alphas": dict(HUTH_ALPHAS), "score": "r2"}


PRESETS = {"tiny": tiny, "paper": paper, "huth": huth}
