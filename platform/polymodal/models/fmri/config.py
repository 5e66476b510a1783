"""The ``model:`` section of an fMRI encoding experiment, and its presets.

One run fits one feature space for every listed subject::

    task: fmri.encoding
    model: {preset: paper, feature: bow, test_stories: [wheretheressmoke]}
    data: {train: s3://bucket/fmri/ds003020}      # root written by `polymodal data import`

``data.train`` is the imported dataset root (``stories.json``, ``words/``, ``responses/``); the
model section says which stories train and which are held out. Each voxel chunk is solved by a
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
    """The Huth-lab recipe (and the Stat 214 report): delays 1-4 TRs, trim 10 / 5 TRs,
    5 folds grouped by story, alphas ``logspace(0, 4, 10)``, mean correlation over folds."""
    return {"feature": "bow", "delays": [1, 2, 3, 4], "trim": {"unit": "tr", "start": 10, "end": 5},
            "cv": 5, "alphas": {"log10_min": 0.0, "log10_max": 4.0, "num": 10}, "score": "correlation"}


PRESETS = {"tiny": tiny, "paper": paper}
