"""The task registry: the one place where the spine learns about a system.

A system (``polymodal.models.<system>``) subclasses :class:`Task` once per task it supports
and calls :func:`register_task`. Shared code asks the registry and never branches on a name.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from polymodal.errors import PolymodalError

Batch = dict[str, torch.Tensor]


class ServeInputError(PolymodalError, ValueError):
    """A serving request that parsed but does not fit the model (shape, dtype, range).

    ``field`` is the dotted path of the bad value (``inputs.m0``); the serving app answers 422.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


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

    @abstractmethod
    def build_model(self, cfg: BaseModel) -> nn.Module:
        """Build the model; frozen parts loaded through ``from_pretrained``.

        Parameters that must not train have ``requires_grad=False`` on return.
        """

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

    def synth(self, out_uri: str, *, seed: int = 0, scale: float = 1.0,
              storage: Any = None, progress: bool = True) -> dict[str, str]:
        """Write synthetic ``train``/``val``/``test`` datasets with a planted signal.

        Returns ``{split: uri}``. ``scale`` multiplies the default row counts.
        """
        raise NotImplementedError(f"task {self.name} has no synthetic generator")

    # ------------------------------------------------------------------ own fitting (optional)
    # A task that is not trained by gradient steps (e.g. closed-form ridge) sets ``trains_itself``
    # and overrides the four methods below; `polymodal train/evaluate/report`, jobs, Tune trials
    # and serving then call them instead of the Ray Train loop and the checkpoint export.

    #: True: :meth:`fit` replaces the Ray Train + DeepSpeed loop for this task
    trains_itself: ClassVar[bool] = False

    def fit(self, cfg: Any, *, progress: bool = True, local: bool = False) -> dict[str, Any]:
        """Fit ``cfg`` and return the run summary (``summary.json``: checkpoints and metrics).

        ``local``: no Ray (``polymodal train --local``). Rerunning a run resumes it.
        """
        raise NotImplementedError(f"task {self.name} is trained by the shared train loop")

    def evaluate_run(self, cfg: Any, split: str = "test", progress: bool = True) -> tuple[dict[str, Any], str]:
        """Evaluate a fitted run on ``split``: (result, URI of the written JSON)."""
        raise NotImplementedError(f"task {self.name} is evaluated by polymodal.evaluate")

    def write_report(self, cfg: Any, compare: list[str] | None = None) -> str:
        """Write the run's Markdown report (and plots); return its URI. ``compare``: other runs."""
        raise NotImplementedError(f"task {self.name} is reported by polymodal.report")

    def load_checkpoint(self, checkpoint_uri: str, opts: Any = None) -> tuple[Any, nn.Module]:
        """(experiment config, eval-mode model) of a fitted run, for serving."""
        raise NotImplementedError(f"task {self.name} is loaded from the train loop's model export")

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


_TASKS: dict[str, Task] = {}
_SYSTEMS = ("wander", "fmri", "llavilo", "cheffusion", "violet")  # subpackages of polymodal.models that register tasks on import


def register_task(task: Task) -> Task:
    """Add a task instance to the registry; a duplicate name is an error."""
    if task.name in _TASKS:
        raise ValueError(
            f"task {task.name!r} is already registered by {type(_TASKS[task.name]).__module__}; "
            "give the new task a different name")
    for preset in ("tiny", "paper"):
        if preset not in task.presets:
            raise ValueError(f"task {task.name!r} must define a {preset!r} preset")
    _TASKS[task.name] = task
    return task


def _load_systems() -> None:
    for system in _SYSTEMS:
        importlib.import_module(f"polymodal.models.{system}")


def get_task(name: str) -> Task:
    _load_systems()
    if name not in _TASKS:
        raise KeyError(name)
    return _TASKS[name]


def task_names() -> list[str]:
    _load_systems()
    return sorted(_TASKS)
