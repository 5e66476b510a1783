"""Wander: low-rank, CP-decomposed, token-level multimodal adapters for frozen backbones.

Seed paper: Guo et al., 'A Wander Through the Multimodal Landscape'.

Modules: ``config`` (``WanderConfig`` and presets), ``backbone`` (frozen per-modality encoders;
a tiny random one for tests), ``adapter`` / ``fusion`` / ``model`` (the CP-decomposed adapters,
sequence fusion and ``WanderModel`` with its three heads), ``data`` (the dataset schema: modality
columns, ``label``, tasks per head), ``importers`` (MMSA, IEMOCAP, UPMC-Food101, MSR-VTT with MMT
experts) and ``synth`` (planted cross-modal targets), ``metrics`` (classification, multilabel and MOSI
regression; retrieval is the spine's), ``task`` (``wander.classification``, ``wander.regression``,
``wander.retrieval``, ``wander.multilabel`` and ``wander.pretrain``), ``pretrain`` (the
backbone's self-supervised pre-training and its export), ``serving``, ``commands`` and ``demo``.
"""

from polymodal.models.wander.backbone import load_backbone, save_tiny_backbone
from polymodal.models.wander.config import PRESETS, WanderConfig
from polymodal.models.wander.fusion import SequenceFusion
from polymodal.models.wander.model import WanderModel

__all__ = ["SequenceFusion", "WanderConfig", "WanderModel", "PRESETS", "load_backbone", "register",
           "save_tiny_backbone"]


def register(registry) -> None:
    """Entry point ``polymodal.systems: wander``: the classification, regression, retrieval,
    multilabel and backbone pre-training tasks, the ``mmsa``, ``food101``, ``iemocap`` and ``msrvtt-mmt`` import formats, the
    demo step and the Serve app."""
    from polymodal.registry import ServeApp

    from . import commands, demo, task

    for t in (task.ClassificationTask(), task.RegressionTask(), task.RetrievalTask(), task.MultiLabelTask(),
              task.PretrainTask()):
        registry.add_task(t)
    registry.add_import_format(commands.MMSA)
    registry.add_import_format(commands.FOOD101)
    registry.add_import_format(commands.IEMOCAP)
    registry.add_import_format(commands.MSRVTT_MMT)
    registry.add_demo_step(demo.STEP)
    registry.add_serve_app(ServeApp("wander", "config.yaml", "serve.wander_app:app_builder"), __name__)
