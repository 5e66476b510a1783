"""The ``model:`` section of a LLaViLo experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from polymodal.config import StrictModel

#: the caption prompt of Ma et al. (2023) in spirit: ask for the moment, answer with its windows
DEFAULT_INSTRUCTION = "find the moment in the video that matches the query and give its start and end in seconds"


class LLaViLoConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.llavilo.model.LLaViLoModel`."""

    llm: str = Field(..., description="a LlamaForCausalLM save_pretrained folder with its tokenizer: local, "
                                      "s3:// or a hub id (the paper: LLaMA-7B; `polymodal data synth` writes a "
                                      "tiny one)")
    video_dim: int = Field(2818, ge=1, description="width of the `video` column, tef included (QVHighlights "
                                                   "SlowFast 2304 + CLIP 512 + 2)")
    text_dim: int = Field(512, ge=1, description="width of the `text` column (CLIP text tokens: 512)")
    top_n: int = Field(..., ge=1, description="N: video is injected into the top N decoder layers")
    num_anchors: int = Field(10, ge=1, description="J: anchor queries, one predicted moment each")
    adapter_hidden: int = Field(256, ge=1, description="width of the video adapter (Eq. 1)")
    cross_layers: int = Field(2, ge=0, description="video-attends-to-text cross-attention layers")
    encoder_layers: int = Field(2, ge=0, description="transformer-encoder layers over the clips")
    heads: int = Field(8, ge=1, description="attention heads of the adapter (must divide adapter_hidden)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="adapter dropout")
    caption_weight: float = Field(1.0, ge=0.0, description="alpha: weight of the caption (LM) loss")
    moment_weight: float = Field(1.0, ge=0.0, description="beta: weight of the set-prediction loss")
    w_span: float = Field(10.0, ge=0.0, description="L1 weight on (center, width), loss and matcher")
    w_giou: float = Field(1.0, ge=0.0, description="gIoU weight, loss and matcher")
    w_class: float = Field(4.0, ge=0.0, description="fg/bg cross-entropy weight, loss and matcher")
    eos_coef: float = Field(0.1, ge=0.0, description="weight of the background class")
    saliency_weight: float = Field(0.0, ge=0.0, description="opt-in, not in LLaViLo's Eq. 6: weight of a per-clip "
                                   "relevance loss on the adapter output (Moment-DETR's saliency term, as BCE on "
                                   "clip-in-a-GT-window); 0 = off, no saliency head (pred_saliency_scores are 0)")
    aux_loss: bool = Field(True, description="set-prediction loss on every injected layer's anchors too")
    use_caption: bool = Field(True, description="train the caption objective (target windows as text)")
    use_instruction: bool = Field(True, description="prefix the query with `instruction` in the LLM input")
    instruction: str = Field(DEFAULT_INSTRUCTION, min_length=1)
    max_text_tokens: int = Field(64, ge=1, description="cap on the tokens of instruction + query")
    max_target_tokens: int | None = Field(None, ge=1, description="tokens of the caption target (also the "
                                          "generation budget); None = the longest caption of the training data, "
                                          "counted when training starts; a set value below that is refused")
    llm_dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="dtype the frozen LLM is loaded in, straight onto the worker's device (never as an fp32 "
                            "host copy first); auto = the run's precision (training sets it from optim.precision: "
                            "bf16 on CUDA, fp32 on CPU), else bf16 when CUDA is available, fp32 otherwise")
    gradient_checkpointing: bool = False
    nms_iou: float | None = Field(None, ge=0.0, le=1.0, description="inference: temporal NMS, drop a window whose "
                                  "IoU with a better-scored one exceeds this (None: off, as Moment-DETR's eval)")
    parse_generation: bool = Field(False, description="inference: also let the LLM write the windows (greedy, "
                                   "max_target_tokens) and report them as a second source (gen_valid, gen_r1_05)")


def tiny() -> dict[str, Any]:
    """Small settings for smoke runs and tests (with the tiny 64-wide LLM of the synth).

    Two weights differ from the paper's defaults, for a *random* frozen LLM: it cannot learn to
    write timestamps through a prefix, so the caption gradient is mostly a sample-independent
    push of the video tokens towards one constant direction (that shifts the LM towards digits
    and brackets), which erases the clip-to-clip differences the anchors need. Measured in
    process on the synthetic set, 600 steps, lr 2e-3 cosine: val R1@0.5 27-31 % with
    ``caption_weight=1`` (clip-token spread collapsing), 42-45 % with 0.1, 55 % with the caption
    loss off (jobs/configs/llavilo_tiny.yaml turns it off); random windows: 9.4 %. A higher
    ``saliency_weight`` (4 instead of 1) keeps the per-clip relevance in the tokens (at 1 their
    spread across clips fell 10x within 300 steps and the anchors never localised)."""
    return {"video_dim": 34, "text_dim": 32, "top_n": 2, "num_anchors": 6, "adapter_hidden": 64, "cross_layers": 1, "encoder_layers": 1,
            "heads": 4, "dropout": 0.0, "max_text_tokens": 64, "caption_weight": 0.1, "saliency_weight": 4.0}


def paper() -> dict[str, Any]:
    """Ma et al. (2023): LLaMA-7B (``llm`` must be given), top N = 8 layers, adapter width 256,
    2 cross-attention + 2 encoder layers, Moment-DETR's head (10 queries, costs/weights 10/1/4,
    background 0.1, auxiliary losses). The loss is Eq. 6 alone, ``caption_weight * L_cap +
    moment_weight * L_moment``: no saliency term (``saliency_weight`` 0; docs/llavilo.md lists
    every setting beside the paper's)."""
    return {"video_dim": 2818, "text_dim": 512, "top_n": 8, "num_anchors": 10, "adapter_hidden": 256, "cross_layers": 2, "encoder_layers": 2,
            "heads": 8, "dropout": 0.1, "gradient_checkpointing": True, "caption_weight": 1.0, "moment_weight": 1.0,
            "saliency_weight": 0.0}


PRESETS = {"tiny": tiny, "paper": paper}
