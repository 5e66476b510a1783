"""The ``model:`` section of a VIOLET experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from polymodal.config import StrictModel


VISUALS = ("swin", "swin3d_t", "swin3d_s", "swin3d_b")


class VioletConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.violet.model.Violet`.

    ``bert`` is a BERT with its tokenizer: a ``save_pretrained`` folder, an ``s3://`` one or a hub
    id (downloaded into the Hugging Face cache unless ``HF_HUB_OFFLINE=1``). ``visual`` picks the
    video backbone: torchvision's Video Swin ``swin3d_t / s / b`` (:mod:`.swin3d`, the paper's is
    Swin-B, optionally from ``visual_weights``) or ``swin``, the small one-stage Video Swin of
    :mod:`.swin` that tests and demos use.
    """

    bert: str = Field(..., description="BERT with its WordPiece tokenizer: a save_pretrained folder, an s3:// folder "
                                       "or a hub id; it gives the word embeddings, the cross-modal encoder and the "
                                       "MLM head (the paper: bert-base-uncased)")
    visual: Literal["swin", "swin3d_t", "swin3d_s", "swin3d_b"] = Field(
        "swin3d_b", description="video backbone: swin3d_t / swin3d_s / swin3d_b = torchvision's Video Swin (4 stages, "
                                "patch merging, shifted 3D windows, torchvision's parameter names) with one-frame "
                                "patches (no temporal down-sampling), its last stage's tokens (32 px each) the video "
                                "tokens; swin = a one-stage Video Swin on patch_size-px patches (tests, demos)")
    visual_weights: str | None = Field(
        None, description="swin3d_*: torchvision weights to start from: a .pth (read weights-only) or .safetensors "
                          "file, local or s3://, or a torchvision weights name (KINETICS400_V1; swin3d_b also "
                          "KINETICS400_IMAGENET22K_V1), downloaded into torch's hub cache unless HF_HUB_OFFLINE=1. "
                          "The 2-frame patch kernel is summed to one frame (same response to a still clip); frames "
                          "are standardised with the weights' Kinetics-400 statistics. Not read when init is set "
                          "(the pre-trained run holds the backbone). None = random")
    visual_drop_path: float = Field(0.1, ge=0.0, lt=1.0, description="swin3d_*: stochastic depth, rising linearly to "
                                                                     "this over the blocks (torchvision's 0.1)")
    swin3d_embed_dim: int | None = Field(None, ge=1, description="swin3d_*: narrower stage-1 width than the "
                                                                 "architecture's (reduced configs for tests)")
    swin3d_depths: tuple[int, int, int, int] | None = Field(None, description="swin3d_*: blocks per stage, if not "
                                                                               "the architecture's (reduced configs)")
    swin3d_heads: tuple[int, int, int, int] | None = Field(None, description="swin3d_*: heads per stage, if not the "
                                                                              "architecture's (reduced configs)")
    image_size: int = Field(224, ge=1, description="side of the square frames, px")
    patch_size: int = Field(32, ge=1, description="side of a video token, px (224 / 32: a 7 x 7 grid per frame); "
                                                  "swin3d_* needs 32 (4-px patches merged three times)")
    frames: int = Field(4, ge=1, description="T: frames sampled per video (the paper: 4 in pre-training, 5 when "
                                             "fine-tuning; an image is a one-frame video)")
    max_frames: int = Field(8, ge=1, description="temporal embeddings p_t: the most frames a video may have")
    swin_dim: int = Field(1024, ge=1, description="visual swin: width of the tokens")
    swin_depth: int = Field(24, ge=1, description="visual swin: blocks (alternating plain / shifted windows)")
    swin_heads: int = Field(32, ge=1, description="visual swin: attention heads (must divide swin_dim)")
    swin_window: tuple[int, int, int] = Field((8, 7, 7), description="(t, h, w) attention window of every block "
                                                                     "(torchvision's swin3d: (8, 7, 7)); an axis "
                                                                     "shorter than the window uses one window")
    swin_mlp_ratio: float = Field(4.0, gt=0.0, description="hidden width of a Swin MLP over its token width")
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
        if self.visual == "swin" and self.swin_dim % self.swin_heads:
            errors.append(f"swin_heads {self.swin_heads} must divide swin_dim {self.swin_dim}")
        if self.visual == "swin" and self.visual_weights:
            errors.append("visual_weights are torchvision swin3d weights; set visual to swin3d_t, swin3d_s or swin3d_b")
        if self.visual != "swin":
            if self.patch_size != 32:
                errors.append(f"visual {self.visual}'s tokens are 32 px (4-px patches merged three times); set "
                              f"patch_size 32, not {self.patch_size}")
            dim, heads = self.swin3d_embed_dim_resolved, self.swin3d_heads_resolved
            bad = [f"stage {i + 1}: {h} heads, width {dim * 2 ** i}" for i, h in enumerate(heads) if (dim * 2 ** i) % h]
            if bad:
                errors.append(f"swin3d heads must divide each stage's width ({'; '.join(bad)})")
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
        """H' = W': video tokens per side of a frame."""
        return self.image_size // self.patch_size

    @property
    def swin3d_embed_dim_resolved(self) -> int:
        """swin3d_*: the stage-1 width (``swin3d_embed_dim`` or the architecture's)."""
        from .swin3d import ARCHS

        return self.swin3d_embed_dim or ARCHS[self.visual].embed_dim

    @property
    def swin3d_heads_resolved(self) -> tuple[int, ...]:
        from .swin3d import ARCHS

        return self.swin3d_heads or ARCHS[self.visual].num_heads

    @property
    def visual_dim(self) -> int:
        """Width of the video tokens the backbone hands to the cross-modal encoder's projection."""
        if self.visual == "swin":
            return self.swin_dim
        return self.swin3d_embed_dim_resolved * 2 ** 3  # four stages, each merge doubles the width

    @property
    def pixel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) that frames in [0, 1] are standardised with: the visual weights' own statistics
        (torchvision's Kinetics-400 transforms for every swin3d checkpoint, :func:`.swin3d.pixel_stats`)."""
        from .swin3d import pixel_stats

        return pixel_stats(self.visual, self.visual_weights)


def tiny() -> dict[str, Any]:
    """Small settings for tests and the demo: 64 px frames (a 2 x 2 grid of 32 px patches), the
    one-stage ``swin`` backbone 32 wide with 2 blocks, and the tiny VQ-GAN's 64 codes."""
    return {"visual": "swin", "image_size": 64, "patch_size": 32, "frames": 4, "max_frames": 8, "swin_dim": 32,
            "swin_depth": 2, "swin_heads": 4, "swin_window": (2, 2, 2), "visual_vocab": 64, "max_text_tokens": 24}


def paper() -> dict[str, Any]:
    """Fu et al. (2021): Video Swin-B (torchvision's ``swin3d_b``) from its Kinetics-400 weights, with
    one-frame patches (the temporal down-sampling removed), 224 px frames, the last stage's 7 x 7
    tokens (32 px) per frame, window 8 x 7 x 7; T = 4 sampled frames in pre-training (fine-tuning
    configs set 5); VTM + MLM + MVM with equal weights, 15 % masking, DALL-E dVAE targets (8192);
    bert-base-uncased (``bert`` must be given).

    ``visual_weights`` names torchvision's Kinetics-400 Swin-B (ImageNet-1K-initialised); it is
    downloaded when online; offline, point it at the file (local or s3://). Stochastic depth 0.2
    is the authors' ``video_swin.py`` (the paper does not state it).

    Optimiser (for the training section, not this one): AdamW, betas (0.9, 0.98), weight decay
    1e-3, learning rate 2e-5 in pre-training and 1.2e-5 in fine-tuning.
    """
    return {"visual": "swin3d_b", "visual_weights": "KINETICS400_V1", "visual_drop_path": 0.2, "image_size": 224,
            "patch_size": 32, "frames": 4, "max_frames": 8, "swin_window": (8, 7, 7), "visual_vocab": 8192,
            "mask_ratio": 0.15}


PRESETS = {"tiny": tiny, "paper": paper}
