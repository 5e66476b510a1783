"""The ``model:`` section of a VIOLET experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from polymodal.config import StrictModel


class VioletConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.violet.model.Violet`.

    ``bert`` is a ``save_pretrained`` folder with its tokenizer; nothing is downloaded at run time.
    """

    bert: str = Field(..., description="BERT save_pretrained folder with its WordPiece tokenizer; it gives the word "
                                       "embeddings, the cross-modal encoder and the MLM head (the paper: "
                                       "bert-base-uncased)")
    image_size: int = Field(224, ge=1, description="side of the square frames, px")
    patch_size: int = Field(32, ge=1, description="side of a patch, px (224 / 32: a 7 x 7 grid per frame)")
    frames: int = Field(4, ge=1, description="T: frames sampled per video (the paper: 4 in pre-training, 5 when "
                                             "fine-tuning; an image is a one-frame video)")
    max_frames: int = Field(8, ge=1, description="temporal embeddings p_t: the most frames a video may have")
    swin_dim: int = Field(1024, ge=1, description="width of the Video Swin tokens")
    swin_depth: int = Field(24, ge=1, description="Video Swin blocks (alternating plain / shifted windows)")
    swin_heads: int = Field(32, ge=1, description="Video Swin attention heads (must divide swin_dim)")
    swin_window: tuple[int, int, int] = Field((8, 7, 7), description="(t, h, w) attention window; an axis "
                                                                     "shorter than the window uses one window")
    swin_mlp_ratio: float = Field(4.0, gt=0.0, description="hidden width of a Swin MLP over swin_dim")
    video_encoder: Literal["swin", "mean", "concat"] = Field(
        "swin", description="temporal modelling ablation: swin = Video Swin over T x H x W; mean = each frame "
                            "encoded alone, patch tokens averaged over time; concat = each frame encoded alone, "
                            "all frames' tokens side by side")
    use_vtm: bool = Field(True, description="pre-train with video-text matching")
    use_mlm: bool = Field(True, description="pre-train with masked language modelling")
    use_mvm: bool = Field(True, description="pre-train with masked visual-token modelling")
    vtm_weight: float = Field(1.0, ge=0.0, description="weight of the VTM loss")
    mlm_weight: float = Field(1.0, ge=0.0, description="weight of the MLM loss")
    mvm_weight: float = Field(1.0, ge=0.0, description="weight of the MVM loss")
    mask_ratio: float = Field(0.15, gt=0.0, lt=1.0, description="share of text tokens and video patches masked")
    visual_vocab: int = Field(8192, ge=2, description="MVM classes: the visual tokenizer's codebook size "
                                                      "(the paper: DALL-E's dVAE, 8192)")
    max_text_tokens: int = Field(32, ge=3, description="cap on the text tokens, [CLS] and [SEP] included")
    head: Literal["pretrain", "retrieval", "mcqa", "oeqa"] = Field(
        "pretrain", description="what the model is trained for: pretrain = VTM + MLM + MVM; retrieval = VTM head "
                                "as a cross-encoder; mcqa = one VTM score per 'question [SEP] option'; oeqa = "
                                "classification over num_answers answers")
    num_answers: int | None = Field(None, ge=2, description="oeqa: size of the answer vocabulary")
    num_options: int = Field(5, ge=2, description="mcqa: options per question")
    init: str | None = Field(None, description="fine-tuning: start from a pre-trained VIOLET run: its run folder "
                                               "(<storage_path>/<name>: the best checkpoint its summary.json names, "
                                               "else its newest complete one), any checkpoint it wrote (Ray Train's "
                                               "checkpoint_*, --local's checkpoints/epoch_NNNN) or a model/ export; "
                                               "weights whose name and shape match are loaded, the rest (e.g. a new "
                                               "answer head) start fresh")

    @model_validator(mode="after")
    def _consistent(self) -> "VioletConfig":
        errors = []  # every inconsistency at once, not the first one
        if self.image_size % self.patch_size:
            errors.append(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.swin_dim % self.swin_heads:
            errors.append(f"swin_heads {self.swin_heads} must divide swin_dim {self.swin_dim}")
        if self.frames > self.max_frames:
            errors.append(f"frames {self.frames} exceeds max_frames {self.max_frames}; raise max_frames")
        if any(w < 1 for w in self.swin_window):
            errors.append(f"swin_window {self.swin_window} must be >= 1 on every axis")
        if self.head == "oeqa" and self.num_answers is None:
            errors.append("head 'oeqa' needs num_answers (the size of the answer vocabulary)")
        if self.head == "pretrain" and not (self.use_vtm or self.use_mlm or self.use_mvm):
            errors.append("head 'pretrain' with use_vtm, use_mlm and use_mvm all false has nothing to learn")
        if self.head == "pretrain" and self.use_mvm and self.video_encoder == "mean":
            # Averaging over time leaves one token per spatial patch, not one per (frame, patch).
            errors.append("use_mvm needs a token per (frame, patch); video_encoder 'mean' has one per patch: "
                          "set use_mvm false or video_encoder 'swin' / 'concat'")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def grid(self) -> int:
        """H' = W': patches per side of a frame."""
        return self.image_size // self.patch_size


def tiny() -> dict[str, Any]:
    """Small settings for tests and the demo: 64 px frames (a 2 x 2 grid of 32 px patches), a 32-wide
    2-block Swin and the tiny VQ-GAN's 64 codes."""
    return {"image_size": 64, "patch_size": 32, "frames": 4, "max_frames": 8, "swin_dim": 32, "swin_depth": 2,
            "swin_heads": 4, "swin_window": (2, 2, 2), "visual_vocab": 64, "max_text_tokens": 24}


def paper() -> dict[str, Any]:
    """Fu et al. (2021): 224 px frames, 32 px patches, T = 4 sampled frames in pre-training (fine-tuning
    configs set 5), VTM + MLM + MVM with equal weights, 15 % masking, DALL-E dVAE targets (8192),
    bert-base-uncased (``bert`` must be given).

    The paper's Video Swin-B is hierarchical (4 stages, 2/2/18/2 blocks, widths 128..1024, window
    8 x 7 x 7). This backbone is a single stage on the 7 x 7 grid, so it takes Swin-B's last-stage
    width and heads (1024, 32), its total depth (24) and window.

    Optimiser (for the training section, not this one): AdamW, betas (0.9, 0.98), weight decay
    1e-3, learning rate 2e-5 in pre-training and 1.2e-5 in fine-tuning.
    """
    return {"image_size": 224, "patch_size": 32, "frames": 4, "max_frames": 8, "swin_dim": 1024, "swin_depth": 24,
            "swin_heads": 32, "swin_window": (8, 7, 7), "visual_vocab": 8192, "mask_ratio": 0.15}


PRESETS = {"tiny": tiny, "paper": paper}
