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
    adapter_layers: list[int] | None = Field(
        None, description="0-based layers followed by an adapter, negative counting from the last (-1: the last "
                          "layer); None = all")
    fusion: Literal["sequence", "outer", "vector", "vector_cls"] = Field(
        "sequence", description="wander's fusion: sequence (low-rank CP sequence fusion, the paper's Wander); "
                                "ablations: outer (SF-OP, full outer-product weights), vector (SF-VF, mean-pooled "
                                "vectors fused and added to every token), vector_cls (vector fusion of the CLS "
                                "tokens, added to the CLS tokens)")
    nonlinearity: bool = Field(True, description="wander: the activation after Down (false: the ablation without it)")
    residual: bool = Field(True, description="wander: h + gate * fused (false: the ablation without the residual, "
                                             "gate * fused with the gate starting at 1)")
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
    """The paper's settings: R_h = R_t = 8 (every dataset), adapters after the last two blocks, a
    two-layer head of width 256, and the CMU-MOSI d (``rank``) = 16 of the authors' run script.

    The placement and head width are derived from Table 1's trainable counts (3.1 M at d = 64,
    4.9 M at d = 128 on ViT-B/16 + BERT-base, head included): docs/wander.md has the arithmetic.
    UPMC-Food101 sets ``down_dim: 64`` (jobs/configs/wander_paper_food101.yaml).
    """
    return {"method": "wander", "down_dim": 16, "rank_h": 8, "rank_t": 8, "rank_mode": "cp",
            "adapter_layers": [-2, -1], "head_hidden": 256}


PRESETS = {"tiny": tiny, "paper": paper}
