"""The ``model:`` section of a ChefFusion experiment, and its presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from polymodal.config import StrictModel


class CheffusionConfig(StrictModel):
    """Hyper-parameters of a :class:`~polymodal.models.cheffusion.model.ChefFusion`.

    Backbones are ``save_pretrained`` folders (local or ``s3://``) or hub ids a user has cached;
    nothing is downloaded at run time. ``polymodal data synth`` writes tiny random ones.
    """

    lm: str = Field(..., description="frozen causal LM with its tokenizer (the paper: facebook/opt-6.7b)")
    clip: str = Field(..., description="frozen CLIP vision encoder with its image processor "
                                       "(the paper: openai/clip-vit-large-patch14)")
    sd: str = Field(..., description="Stable Diffusion pipeline folder; its text encoder T_psi gives the "
                                     "regression targets (the paper: runwayml/stable-diffusion-v1-5)")
    clip_dim: int = Field(1024, ge=1, description="width of the `clip_image` column (CLIP pooled output)")
    sd_dim: int = Field(768, ge=1, description="width of the SD text encoder (the `sd_target` column's last axis)")
    sd_tokens: int = Field(77, ge=1, description="L: tokens of the SD text embedding (learned mapper queries)")
    k: int = Field(4, ge=1, description="LM input embeddings W_recipe makes from one CLIP feature")
    m: int = Field(8, ge=1, description="[IMG1..IMGm] tokens added to the tokenizer")
    mapper_dim: int = Field(512, ge=8, description="r: width of the mapper f_w")
    mapper_layers: int = Field(4, ge=1, description="encoder layers and decoder layers of f_w (each)")
    mapper_heads: int = Field(4, ge=1, description="attention heads of f_w (must divide mapper_dim)")
    w_recipe: float = Field(1.0, ge=0.0, description="weight of l_r: recipe NLL given the image (Eq. 1)")
    w_img_token: float = Field(1.0, ge=0.0, description="weight of l_p: NLL of [IMG1] after the recipe (Eq. 2)")
    w_gen: float = Field(1.0, ge=0.0, description="weight of l_g: f_w output vs T_psi(recipe) (Eq. 3)")
    gen_loss: Literal["mse", "l2"] = Field("mse", description="l_g: mse = mean squared error over all "
                                           "elements; l2 = per-token squared L2 distance, averaged (GILL)")
    max_recipe_tokens: int = Field(128, ge=4, description="recipe tokens the LM sees (longer ones are cut)")
    max_new_tokens: int = Field(64, ge=1, description="generate(): text tokens before giving up on EOS")
    steps: int = Field(50, ge=1, description="generate(): diffusion steps")
    guidance: float = Field(7.5, ge=0.0, description="generate(): classifier-free guidance scale (<= 1: off)")
    eval_images: int = Field(16, ge=0, description="evaluation: the first rows of each batch that also get an image "
                                                   "drawn from their recipe (for clip_sim); 0: text metrics only")
    eval_steps: int = Field(10, ge=1, description="evaluation: diffusion steps of those images")

    @model_validator(mode="after")
    def _heads_divide(self) -> "CheffusionConfig":
        if self.mapper_dim % self.mapper_heads:
            raise ValueError(f"mapper_heads {self.mapper_heads} must divide mapper_dim {self.mapper_dim}")
        return self


def tiny() -> dict[str, Any]:
    """Small settings for tests and the demo (the synth's 64-wide OPT, 32-wide CLIP and SD)."""
    return {"clip_dim": 32, "sd_dim": 32, "sd_tokens": 16, "k": 4, "m": 4, "mapper_dim": 64, "mapper_layers": 1,
            "mapper_heads": 4, "max_recipe_tokens": 48, "max_new_tokens": 64, "steps": 4, "guidance": 1.0,
            "eval_images": 8, "eval_steps": 2}


def paper() -> dict[str, Any]:
    """Li et al. (2024) on GILL: OPT-6.7B, CLIP ViT-L/14 (pooled 1024), SD 1.5 (77 x 768),
    k = 4, m = 8, mapper r = 512 with 4 + 4 layers and 77 queries, l_r + l_p + l_g with weight 1."""
    return {"clip_dim": 1024, "sd_dim": 768, "sd_tokens": 77, "k": 4, "m": 8, "mapper_dim": 512, "mapper_layers": 4,
            "mapper_heads": 4}


PRESETS = {"tiny": tiny, "paper": paper}
