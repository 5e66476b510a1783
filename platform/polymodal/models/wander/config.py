"""The ``model:`` section of a Wander experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from polymodal.config import StrictModel


class WanderConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.wander.model.WanderModel`."""

    backbone: str = Field(..., description="local folder (or URI, fetched by the task) holding backbone.json")
    method: Literal["wander", "lora", "houlsby", "full", "none"] = Field(
        "wander", description="wander: cross-modal SF adapters; houlsby/lora: uni-modal PEFT; "
                              "full: fine-tune everything; none: frozen backbone + head")
    down_dim: int = Field(..., ge=1, description="d: width each modality is projected to before fusion")
    rank_h: int = Field(..., ge=1, description="R_h: CP rank of the feature-axis weight")
    rank_t: int = Field(..., ge=1, description="R_t: CP rank of the token-axis weight")
    rank_mode: Literal["cp", "paper"] = Field(
        "cp", description="cp: exact CP fusion; paper: literal Eq. 13 (collapses to rank 1)")
    adapter_layers: list[int] | None = Field(None, description="0-based layers followed by an adapter; None = all")
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    houlsby_dim: int = Field(32, ge=1, description="bottleneck width of the Houlsby adapter")
    num_classes: int = Field(2, ge=1)
    head_hidden: int = Field(0, ge=0, description="0: linear head; >0: MLP head with this hidden width")
    pooling: Literal["first", "mean"] = "first"
    query_modality: str | None = Field(None, description="retrieval only: the modality on the query (text) side")
    embed_dim: int = Field(64, ge=1, description="retrieval embedding width")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def tiny() -> dict[str, Any]:
    """Small settings for smoke runs and tests."""
    return {"method": "wander", "down_dim": 8, "rank_h": 4, "rank_t": 4, "rank_mode": "cp",
            "lora_r": 4, "lora_alpha": 8.0, "houlsby_dim": 8, "head_hidden": 0, "embed_dim": 32}


def paper() -> dict[str, Any]:
    """The paper's CMU-MOSI settings: d (``rank``) = 16, R_h (``drank``) = 8, R_t (``trank``) = 12.

    For Food101 the paper uses d = 64, R_h = 8, R_t = 12 (override ``down_dim: 64``).
    """
    return {"method": "wander", "down_dim": 16, "rank_h": 8, "rank_t": 12, "rank_mode": "cp"}


PRESETS = {"tiny": tiny, "paper": paper}
