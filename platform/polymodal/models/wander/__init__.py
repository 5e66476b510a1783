"""Wander: low-rank, CP-decomposed, token-level multimodal adapters for frozen backbones.

Seed paper: Guo et al., 'A Wander Through the Multimodal Landscape'.
"""

from polymodal.models.wander.backbone import load_backbone, save_tiny_backbone
from polymodal.models.wander.config import PRESETS, WanderConfig
from polymodal.models.wander.fusion import SequenceFusion
from polymodal.models.wander.model import WanderModel

# importing the task module registers wander.classification / .regression / .retrieval
from polymodal.models.wander import task  # noqa: E402,F401

__all__ = ["SequenceFusion", "WanderConfig", "WanderModel", "PRESETS", "load_backbone", "save_tiny_backbone"]
