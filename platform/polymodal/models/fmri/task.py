"""``fmri.encoding``: the fMRI pipeline plugged into the spine.

It is fitted in closed form (voxelwise ridge), so it sets ``trains_itself`` and supplies its own
fit, evaluation, report and checkpoint loading; `polymodal train/evaluate/report`, jobs, Tune
trials and Serve reach it through the same commands as every other task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.registry import Task, register_task

from .config import PRESETS, FmriConfig


class EncodingTask(Task):
    name = "fmri.encoding"
    model_config_cls = FmriConfig
    presets = PRESETS
    #: mean over voxels of the cross-validated correlation on the training stories: Tune picks
    #: feature spaces and grids by it, so the held-out stories stay untouched by the search
    primary_metric = "cv_score"
    mode = "max"
    trains_itself = True
    #: none: correlations are r values, not shares
    fraction_metrics = frozenset()

    # ---- spine hooks
    def fit(self, cfg, *, progress=True, local=False):
        from . import pipeline

        return pipeline.fit(cfg, progress=progress, use_ray=not local)

    def evaluate_run(self, cfg, split="test", progress=True):
        from polymodal import storage

        from . import pipeline

        if split != "test":
            raise PolymodalError(f"fmri.encoding evaluates on its held-out stories (--split test), not {split!r}; "
                                 "choose them with model.test_stories")
        out = pipeline.evaluate(cfg, progress=progress, use_ray=True)
        return out, storage.join(cfg.run_uri, "eval", "test.json")

    def write_report(self, cfg, compare=None):
        from .report import write_report

        return write_report(cfg, compare)

    def load_checkpoint(self, checkpoint_uri, opts=None):
        from .serving import load_model

        return load_model(checkpoint_uri, opts)

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True) -> dict[str, str]:
        """Two subjects who heard the same stories, known SNR per voxel (``synth.subjects_for_task``)."""
        from .synth import subjects_for_task, write_dataset

        out = write_dataset(out_uri, subjects_for_task(seed, scale), chunk=128, opts=storage, progress=progress)
        return {"train": out["root"], "vectors": out["vectors"]}

    # ---- the shared train loop never runs this task
    def build_model(self, cfg):
        raise PolymodalError("fmri.encoding is fitted in closed form; load a fitted run with load_checkpoint")

    def loss(self, model, batch):
        raise PolymodalError("fmri.encoding has no gradient loss")

    def predict(self, model, batch):
        raise PolymodalError("fmri.encoding predicts through serving or pipeline.evaluate")

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        raise PolymodalError("fmri.encoding computes its metrics in pipeline.evaluate")

    # ---- serving
    def request_model(self, cfg):
        from .serving import EncodeRequest

        return EncodeRequest

    def response_model(self, cfg):
        from .serving import EncodeResponse

        return EncodeResponse

    def serve_predict(self, model, requests: list[Any]):
        from .serving import serve_predict

        return serve_predict(model, requests)


register_task(EncodingTask())
