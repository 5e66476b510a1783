"""The ``model:`` section of a ChefFusion experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from polymodal.config import StrictModel


class CheffusionConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.cheffusion.model.ChefFusion`.

    Backbones are ``save_pretrained`` folders (local or ``s3://``) or hub ids (downloaded into the
    Hugging Face cache unless ``HF_HUB_OFFLINE=1``). ``polymodal data synth`` writes tiny random ones.
    """

    lm: str = Field(..., description="frozen causal LM with its tokenizer (the paper: facebook/opt-6.7b)")
    clip: str = Field(..., description="frozen CLIP vision encoder with its image processor "
                                       "(the paper: openai/clip-vit-large-patch14)")
    sd: str = Field(..., description="Stable Diffusion pipeline; its text encoder T_psi gives the regression "
                                     "targets (the paper: SD 1.5, stable-diffusion-v1-5/stable-diffusion-v1-5)")
    lm_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="dtype the frozen LM (and CLIP / SD for generation) load in, straight onto the "
                            "worker's device: auto = bf16 on CUDA, fp32 on CPU (what optim.precision auto trains in)")
    clip_dim: int = Field(1024, ge=1, description="width of the `clip_image` column (CLIP pooled output)")
    sd_dim: int = Field(768, ge=1, description="width of the SD text encoder (the `sd_target` column's last axis)")
    sd_tokens: int = Field(77, ge=1, description="L: tokens of the SD text embedding (learned mapper queries)")
    k: int = Field(4, ge=1, description="LM input embeddings W_recipe makes from one CLIP feature")
    m: int = Field(8, ge=1, description="[IMG1..IMGm] tokens: m trainable rows after the LM's embedding rows "
                                        "(never in the tokenizer: text that spells [IMG1] stays text)")
    mapper_dim: int = Field(512, ge=8, description="r: width of the mapper f_w")
    mapper_layers: int = Field(4, ge=1, description="encoder layers and decoder layers of f_w (each)")
    mapper_heads: int = Field(4, ge=1, description="attention heads of f_w (must divide mapper_dim)")
    w_recipe: float = Field(1.0, ge=0.0, description="weight of l_r: recipe NLL given the image (Eq. 1)")
    w_img_token: float = Field(1.0, ge=0.0, description="weight of l_p: NLL of [IMG1] after the recipe (Eq. 2)")
    w_gen: float = Field(1.0, ge=0.0, description="weight of l_g: f_w output vs T_psi(recipe) (Eq. 3)")
    gen_loss: Literal["mse", "l2"] = Field("mse", description="l_g: mse = mean squared error over all "
                                           "elements; l2 = per-token squared L2 distance, averaged (GILL)")
    max_recipe_tokens: int = Field(128, ge=4, description="recipe tokens the LM sees (longer ones are cut)")
    max_new_tokens: int = Field(64, ge=1, description="generate() outside evaluation (serving, report): text tokens "
                                                      "before giving up on EOS")
    steps: int = Field(50, ge=1, description="generate(): diffusion steps")
    guidance: float = Field(7.5, ge=0.0, description="generate(): classifier-free guidance scale (<= 1: off)")
    eval_max_new_tokens: int | None = Field(
        None, ge=1, description="evaluation: text tokens a recipe written from an image may take before giving up "
                                "on EOS; None: the longest reference of the evaluated batch (its LM tokens + EOS), so "
                                "whole recipes are written. The metrics record gen_at_cap (share of recipes that hit "
                                "the cap) and ref_over_cap (share of references longer than it)")
    eval_image_share: float = Field(
        1.0, ge=0.0, le=1.0, description="evaluation: share of rows that also get an image drawn from their recipe "
                                         "and scored by clip_sim; 1 = every row, less = a seeded sample by row id "
                                         "(eval_image_seed; the same rows whatever the batching); 0 = text metrics only. "
                                         "The metrics record clip_sim_rows")
    eval_image_seed: int = Field(0, ge=0, description="evaluation: seed of the clip_sim sample and of the images' noise")
    eval_steps: int = Field(10, ge=1, description="evaluation: diffusion steps of those images")

    @model_validator(mode="after")
    def _heads_divide(self) -> "CheffusionConfig":
        if self.mapper_dim % self.mapper_heads:
            raise ValueError(f"mapper_heads {self.mapper_heads} must divide mapper_dim {self.mapper_dim}")
        return self


def tiny() -> dict[str, Any]:
    """Small settings for tests and the demo (the synth's 64-wide OPT, 32-wide CLIP and SD); CLIP
    similarity on a fifth of the rows, so that each epoch's validation stays quick."""
    return {"clip_dim": 32, "sd_dim": 32, "sd_tokens": 16, "k": 4, "m": 4, "mapper_dim": 64, "mapper_layers": 1,
            "mapper_heads": 4, "max_recipe_tokens": 48, "max_new_tokens": 64, "steps": 4, "guidance": 1.0,
            "eval_image_share": 0.2, "eval_steps": 2}


def paper() -> dict[str, Any]:
    """Li et al. (2024) on GILL, as the authors' code runs it (their README command and main.py
    defaults): OPT-6.7B, CLIP ViT-L/14 (pooled 1024), SD 1.5 (77 x 768), k = 4, m = 8, mapper
    r = 512 with 4 + 4 layers, 4 heads and 77 queries, recipes cut at 300 tokens (``--max-len
    300``), generation up to 500 tokens (validate.py's ``num_words``), SD with 50 steps and
    guidance 7.5 (GILL). docs/cheffusion.md lists each value with its source."""
    return {"clip_dim": 1024, "sd_dim": 768, "sd_tokens": 77, "k": 4, "m": 8, "mapper_dim": 512, "mapper_layers": 4,
            "mapper_heads": 4, "max_recipe_tokens": 300, "max_new_tokens": 500, "steps": 50, "guidance": 7.5}


PRESETS = {"tiny": tiny, "paper": paper}
