"""``fmri.encoding``: the fMRI pipeline plugged into the spine.

It is fitted in closed form (voxelwise ridge as Ray tasks), so it overrides the run lifecycle of
:class:`~polymodal.task.Task`: fit, evaluation, report, checkpoint loading and Tune trials;
`polymodal train/evaluate/report`, jobs, Tune and Serve reach it through the same methods as
every other task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.task import Task

from .config import PRESETS, FmriConfig


class EncodingTask(Task):
    name = "fmri.encoding"
    model_config_cls = FmriConfig
    presets = PRESETS
    #: mean over voxels of the cross-validated correlation on the training stories: Tune picks
    #: feature spaces and grids by it, so the held-out stories stay untouched by the search
    primary_metric = "cv_score"
    mode = "max"

    # ---- run lifecycle: a closed-form fit instead of the shared train loop
    def fit(self, cfg, *, progress=True, local=False):
        from . import pipeline

        return pipeline.fit(cfg, progress=progress, use_ray=not local)

    def evaluate_run(self, cfg, split="test", which="best", progress=True):
        """The held-out stories (``which`` is moot: a run has one fit)."""
        from polymodal import runs

        from . import pipeline

        if split != "test":
            raise PolymodalError(f"fmri.encoding evaluates on its held-out stories (--split test), not {split!r}; "
                                 "choose them with model.test_stories")
        out = pipeline.evaluate(cfg, progress=progress, use_ray=True)
        return out, runs.eval_uri(cfg.run_uri, "test")

    def write_report(self, cfg, compare=None):
        from .report import write_report

        return write_report(cfg, compare)

    def load_checkpoint(self, checkpoint_uri, opts=None):
        from .model import load_model

        return load_model(checkpoint_uri, opts)

    # ---- Tune: one fit per trial, reported once (the trial's only iteration)
    def open_data(self, cfg):
        return None  # data.train is the dataset root the pipeline reads itself, not a shard dataset

    def tune_metric_problem(self, cfg, metric):
        return None  # a trial reports every metric of the fit by its plain name

    def tune_resources(self, cfg, driver):
        """The ridge's Ray tasks run inside the trial's placement group: one bundle for the
        driver, one per scaling worker (that many voxel chunks are fitted at once per trial)."""
        from ray import tune

        from .pipeline import chunk_resources

        worker = chunk_resources(cfg)
        return tune.PlacementGroupFactory([{"CPU": driver["cpu"], "GPU": driver["gpu"]}]
                                          + [worker] * cfg.scaling.num_workers)

    def tune_trial(self, cfg, manifests):
        from ray import tune

        tune.report({**self.fit(cfg, progress=False)["metrics"], "epoch": 0})

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

    def synth_overrides(self, out):
        return [f"data.train={out['train']}", f"model.vectors={out['vectors']}"]

    # ---- serving
    def example_request(self, cfg, data_uri):
        """The first 200 words of the dataset's first story, for its first subject."""
        from .pipeline import list_subjects, load_stories

        name, story = next(iter(load_stories(data_uri, cfg.storage).items()))
        half = 0.15  # the dataset keeps word midpoints; a request gives each word a short span around it
        words = [{"word": w, "start": round(max(t - half, 0.0), 3), "end": round(t + half, 3)}
                 for w, t in zip(story.words[:200], story.times)]
        return {"subject": list_subjects(data_uri, cfg.storage)[0], "words": words, "top_k": 3}

    def request_model(self, cfg):
        from .serving import EncodeRequest

        return EncodeRequest

    def response_model(self, cfg):
        from .serving import EncodeResponse

        return EncodeResponse

    def serve_predict(self, model, requests: list[Any]):
        from .serving import serve_predict

        return serve_predict(model, requests)

