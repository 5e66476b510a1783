"""The task protocol: what a system implements for each task it supports.

A :class:`Task` supplies model, loss, metrics, synthetic data and serving hooks; its run lifecycle
(:meth:`Task.fit`, :meth:`Task.evaluate_run`, :meth:`Task.write_report`,
:meth:`Task.load_checkpoint` and the Tune hooks) defaults to the shared Ray Train + DeepSpeed
loop and its model export, and a task fitted another way overrides it. Systems register their
tasks through :mod:`polymodal.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from polymodal.errors import PolymodalError

Batch = dict[str, torch.Tensor]


class Task(ABC):
    """What a system plugs into the spine.

    The train loop calls, per step: ``collate`` (arrow table -> tensors),
    ``loss(model, batch)``; per evaluation: ``predict`` on every batch, ``finish_eval`` on the
    concatenated outputs of all workers, then ``metrics``.
    """

    #: registry key, ``<system>.<task>``, e.g. ``wander.classification``
    name: ClassVar[str]
    #: pydantic class of the ``model:`` section
    model_config_cls: ClassVar[type[BaseModel]]
    #: preset name -> function returning model-section values; ``tiny`` and ``paper`` at least
    presets: ClassVar[dict[str, Callable[[], dict[str, Any]]]]
    #: the metric that picks the best checkpoint and that Tune optimises
    primary_metric: ClassVar[str]
    mode: ClassVar[Literal["max", "min"]] = "max"
    #: metrics that are shares (accuracy, recall, BLEU, ...): stored as fractions in [0, 1] in every
    #: JSON, CSV and Tune result; reports print them as percentages, labelled
    fraction_metrics: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def build_model(self, cfg: BaseModel) -> nn.Module:
        """Build the model; frozen parts loaded through ``from_pretrained``.

        Parameters that must not train have ``requires_grad=False`` on return.
        """

    def reference_params(self, cfg: BaseModel) -> dict[str, int] | None:
        """Trainable-parameter counts the paper reports for the model section ``cfg``:
        ``{paper row: count}``, printed by ``polymodal params`` beside ours. None (the default):
        the paper states no count for this configuration."""
        return None

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        """Numpy columns (already shaped per the manifest) -> tensors. Override to pad."""
        return {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in columns.items()}

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss plus extra scalars to log."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per-row outputs (first axis = rows) that :meth:`metrics` needs, targets included."""

    def finish_eval(self, model: nn.Module, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Whole-split outputs -> what :meth:`metrics` reads. Default: ``outputs`` unchanged.

        For a metric that needs the model over the whole split rather than per batch, e.g. a
        cross-encoder scoring every text of the split against every video. Called after every
        worker's :meth:`predict` outputs are gathered, before :meth:`metrics` (and
        :meth:`prediction_rows`), with the model in eval mode under ``torch.no_grad``. In a
        multi-worker run every worker calls it with the same gathered ``outputs`` (so collective
        ops such as ZeRO-3 parameter gathers line up); it must give every worker the same result.
        """
        return outputs

    def prediction_rows(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]] | None:
        """Per-example predictions worth keeping (e.g. a benchmark's submission format), from the
        outputs :meth:`finish_eval` returns (by default the ``predict`` outputs); ``polymodal
        evaluate`` writes them as JSON lines. None: nothing."""
        return None

    @abstractmethod
    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics over a whole split from the concatenated :meth:`predict` outputs."""

    # ------------------------------------------------------------------ benchmark submissions
    # `polymodal evaluate` (the default :meth:`evaluate_run`) calls these two for every split it
    # evaluates; the defaults say "every split is labelled" and "no submission format".

    def has_labels(self, manifest: Any) -> bool:
        """Whether the dataset of ``manifest`` (a :class:`polymodal.shards.Manifest`) holds the
        targets :meth:`metrics` reads. ``polymodal evaluate`` skips the metrics of a split without
        them (a benchmark's withheld test labels), says so, and still writes its predictions and
        :meth:`submission_files`. Default: True."""
        return True

    def submission_files(self, cfg: Any, split: str,
                         predictions: Callable[[str], dict[str, np.ndarray]]) -> dict[str, str] | None:
        """The benchmark's own submission files for an evaluation of ``split``: ``{file name:
        text}``, which ``polymodal evaluate`` writes into ``<run>/eval/submission/``.

        ``predictions(s)`` gives the outputs :meth:`metrics` would read (after
        :meth:`finish_eval`) of the evaluated checkpoint on the configured split ``s``
        (``data.<s>``): the evaluated split's at no extra cost, another split's by predicting it,
        for benchmarks whose upload holds several splits. None (the default): this task's data has
        no submission format."""
        return None

    def synth(self, out_uri: str, *, seed: int = 0, scale: float = 1.0,
              storage: Any = None, progress: bool = True) -> dict[str, str]:
        """Write synthetic ``train``/``val``/``test`` datasets with a planted signal.

        Returns ``{split: uri}``. ``scale`` multiplies the default row counts.
        """
        raise NotImplementedError(f"task {self.name} has no synthetic generator")

    def synth_overrides(self, out: dict[str, str]) -> list[str]:
        """Config overrides (``dotted.key=value``) that point a run of this task at what
        :meth:`synth` wrote (``out``, its return value): the splits by default; a task whose model
        reads synthetic backbones adds their paths. ``polymodal data synth`` prints them."""
        return [f"data.{split}={out[split]}" for split in ("train", "val", "test") if split in out]

    # ------------------------------------------------------------------ run lifecycle
    # `polymodal train/evaluate/report`, jobs, Tune trials and Serve call these four methods for
    # every task. The defaults run the shared Ray Train + DeepSpeed loop and its model export; a
    # task fitted another way (e.g. closed-form ridge) overrides them with public spine modules
    # (``polymodal.runs``, ``polymodal.storage``) and its own code.

    def fit(self, cfg: Any, *, progress: bool = True, local: bool = False) -> dict[str, Any]:
        """Fit ``cfg`` and return the run summary (``summary.json``: checkpoints and metrics).

        ``local``: one process without Ray (``polymodal train --local``). Rerunning a run resumes it.
        """
        from polymodal.train import loop

        return (loop.train_local if local else loop.train_ray)(cfg, progress=progress)

    def evaluate_run(self, cfg: Any, split: str = "test", which: str = "best",
                     progress: bool = True) -> tuple[dict[str, Any], str]:
        """Evaluate a fitted run on ``split`` with its ``best`` or ``latest`` checkpoint: (result,
        URI of the written ``<run>/eval/<split>.json``)."""
        from polymodal.evaluate import evaluate_export_run

        return evaluate_export_run(self, cfg, split=split, which=which, progress=progress)

    def write_report(self, cfg: Any, compare: list[str] | None = None) -> str:
        """Write the run's Markdown report (and plots); return its URI. ``compare``: other runs."""
        from polymodal.report import write_training_report

        if compare:
            raise PolymodalError(f"--compare is not supported for {self.name} reports")
        return write_training_report(self, cfg)

    def load_checkpoint(self, checkpoint_uri: str, opts: Any = None) -> tuple[Any, nn.Module]:
        """(experiment config, eval-mode model) of a checkpoint (a ``checkpoint_*`` folder or its
        ``model/`` export), for serving and evaluation."""
        from polymodal.train.checkpoint import load_trainable, read_export

        cfg, weights, _ = read_export(checkpoint_uri, opts)
        model = self.build_model(cfg.model)
        load_trainable(model, weights)
        return cfg, model.eval()

    # ------------------------------------------------------------------ Tune trials

    def open_data(self, cfg: Any) -> dict[str, Any] | None:
        """Check the run's datasets before any Ray work (bad data fails once, not in every trial);
        return their manifests by split, or None when the task reads its data itself."""
        from polymodal.train.loop import open_splits

        return open_splits(cfg)

    def tune_metric_problem(self, cfg: Any, metric: str) -> str | None:
        """Why a Tune space may not optimise ``metric`` for this task (None: it may). Trials of the
        shared loop report the primary metric by its plain name and the others as ``val_<name>``
        (plus ``train_loss``)."""
        if metric == self.primary_metric or metric == "train_loss":
            return None
        if metric.startswith("val_"):
            return None if cfg.data.val else f"{metric!r} needs data.val in the config (trials report validation metrics)"
        return (f"trials report {self.primary_metric!r} and the validation metrics as 'val_<name>'; "
                f"use 'val_{metric}' instead of {metric!r}")

    def tune_resources(self, cfg: Any, driver: dict[str, float]) -> Any:
        """Ray resources of one trial: ``driver`` (the trial's own bundle) by default; Ray Train
        reserves its workers itself."""
        return driver

    def tune_trial(self, cfg: Any, manifests: dict[str, Any] | None) -> None:
        """Run one Tune trial of ``cfg`` (its own run folder), reporting metrics to Tune."""
        from ray.tune.integration.ray_train import TuneReportCallback

        from polymodal.train.loop import build_trainer, summarize_result

        trainer = build_trainer(cfg, progress=False, callbacks=[TuneReportCallback()], manifests=manifests)
        summarize_result(cfg, trainer.fit())

    def report_sections(self, cfg: Any, out_dir: Any) -> list[str]:
        """Extra Markdown lines for ``polymodal report`` (after the metric tables); files they
        link (e.g. PNG grids) are written into ``out_dir``, which is uploaded with the report."""
        return []

    # ------------------------------------------------------------------ serving (optional)
    # polymodal.serving calls these; a task that does not override them cannot be served.

    def request_model(self, cfg: BaseModel) -> type[BaseModel]:
        """Pydantic class of ONE inference request for a model built from ``cfg``."""
        raise NotImplementedError(f"task {self.name} does not support serving (no request_model)")

    def response_model(self, cfg: BaseModel) -> type[BaseModel]:
        """Pydantic class of ONE inference response."""
        raise NotImplementedError(f"task {self.name} does not support serving (no response_model)")

    def serve_predict(self, model: nn.Module, requests: list[BaseModel]) -> list[BaseModel]:
        """Batched inference: N requests -> N responses, in order.

        Shapes are checked against what ``model`` expects; a mismatch raises
        :class:`ServeInputError` naming the field (e.g. ``inputs.m0``), never a bare torch error.
        """
        raise NotImplementedError(f"task {self.name} does not support serving (no serve_predict)")

    def example_request(self, cfg: Any, data_uri: str) -> dict[str, Any]:
        """A valid request body (JSON-ready) about the first example of the dataset at
        ``data_uri`` (a split of this task), for a server whose ``index``, where the task has one
        (:meth:`open_index`), is that same dataset. Used by demos, docs and the registry-wide
        serving test."""
        raise NotImplementedError(f"task {self.name} does not support serving (no example_request)")

    def serve_media(self, response: BaseModel) -> tuple[bytes, str] | None:
        """A binary rendering of ``response`` (bytes, media type), e.g. a generated PNG, which the
        server returns instead of JSON when the request's ``Accept`` header asks for that type.
        None: this response has none (the server answers 406)."""
        return None

    def open_index(self, uri: str, opts: Any = None) -> Any:
        """What ``serve_predict`` may look request items up in (``model.serve_index``), read from
        the dataset at ``uri`` (serve args ``index``)."""
        raise NotImplementedError(f"task {self.name} has no serve index; drop `index` from the serve args")

    def adapter_key(self, cfg: BaseModel) -> str | None:
        """Id of the frozen base a model built from ``cfg`` shares with others, or None.

        Two configs with the same key build models whose frozen parameters are identical, so
        a server may keep one copy of them for all adapters. None: nothing can be shared.
        """
        raise NotImplementedError(f"task {self.name} does not define adapter_key")
