"""The three frozen backbones: load them (``from_pretrained``, never a download) or write tiny
random ones for tests and the demo.

* the causal LM and its tokenizer (:func:`load_lm`): any ``AutoModelForCausalLM``;
* the CLIP vision encoder and its image processor (:func:`load_clip`); ``v_phi`` is its pooled
  output (:func:`clip_image_features`);
* the Stable Diffusion pipeline (:func:`load_sd`); its text encoder ``T_psi`` gives the mapper's
  regression targets (:func:`sd_text_targets`), exactly as the pipeline encodes a prompt.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal import storage as st
from polymodal.cache import load_causal_lm, local_copy
from polymodal.config import StorageOptions

__all__ = ["load_lm", "load_clip", "load_sd", "load_sd_text_encoder", "clip_image_features", "sd_text_targets",
           "decode_image", "image_to_png", "write_tiny_backbones"]


def load_lm(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32):
    """(causal LM, tokenizer); the LM is frozen and in eval mode (:func:`polymodal.cache.load_causal_lm`)."""
    return load_causal_lm(uri, opts, dtype)


def load_clip(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32):
    """(CLIPVisionModel, image processor), frozen, eval mode."""
    from transformers import AutoImageProcessor, CLIPVisionModel

    path = local_copy(uri, opts)
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True, dtype=dtype)
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    return model.requires_grad_(False).eval(), processor


def load_sd(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32):
    """A ``StableDiffusionPipeline`` without safety checker, every module frozen."""
    from diffusers import StableDiffusionPipeline

    path = local_copy(uri, opts)
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    return pipe


def decode_image(data: bytes, where: str = "image"):
    """Encoded image bytes (JPEG, PNG, ...) -> RGB ``PIL.Image``; undecodable -> ValueError naming ``where``."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a decodable image ({type(exc).__name__}: {exc})") from None
    return img.convert("RGB")


@torch.no_grad()
def clip_image_features(model, processor, images: Sequence[Any]) -> torch.Tensor:
    """``v_phi``: (N, d_clip) pooled CLIP outputs of N PIL images."""
    device = next(model.parameters()).device
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    return model(pixel_values=pixels.to(device, next(model.parameters()).dtype)).pooler_output


def load_sd_text_encoder(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32):
    """(tokenizer, text encoder) of an SD pipeline folder, without its UNet and VAE (feature extraction)."""
    from transformers import AutoTokenizer, CLIPTextModel

    path = local_copy(uri, opts)
    encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
    return tokenizer, encoder.requires_grad_(False).eval()


@torch.no_grad()
def sd_text_targets(tokenizer, text_encoder, texts: Sequence[str]) -> torch.Tensor:
    """``T_psi``: (N, L, d_sd) last hidden states of the SD text encoder, the prompt embeddings
    the pipeline itself makes from ``texts`` (max-length padding, truncation, no clip skip)."""
    ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


# --------------------------------------------------------------------------- tiny random backbones


def _tiny_lm(texts: Sequence[str], out_dir: Path, *, seed: int, hidden: int, layers: int, pretrain_steps: int) -> None:
    """A small OPT with a WordPiece vocabulary of ``texts``, briefly trained as a causal LM on
    them (a real frozen LM knows recipe language; a random one would only know noise)."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from polymodal.models.fmri.mlm import train_tokenizer

    train_tokenizer(texts, str(out_dir), vocab_size=400, lowercase=True)
    tok = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token  # a sequence is [CLS] text [SEP]
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=2 * hidden,
                       num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=hidden,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                       dropout=0.0, attention_dropout=0.0)
    lm = OPTForCausalLM(config)
    if pretrain_steps:
        enc = tok(list(texts), padding=True, truncation=True, max_length=96, return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        lm.train()
        for _ in range(pretrain_steps):
            idx = torch.randint(0, len(labels), (32,), generator=gen)
            loss = lm(input_ids=enc.input_ids[idx], attention_mask=enc.attention_mask[idx], labels=labels[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    lm.eval().save_pretrained(out_dir)


def _tiny_clip(out_dir: Path, *, seed: int, width: int, image_size: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:  # transformers >= 5 without torchvision: the PIL backend, same numbers
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor as Processor
    torch.manual_seed(seed)
    # initializer_factor 5: at the default scale a random ViT's pooled [CLS] barely depends on the
    # image (feature spread across images 0.17 of its mean magnitude, 0.66 at 5), so W_recipe
    # would get a near-constant input; a trained CLIP's pooled feature is very image-specific.
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=image_size // 4, projection_dim=width,
                              initializer_factor=5.0)
    CLIPVisionModel(config).save_pretrained(out_dir)
    Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}).save_pretrained(out_dir)


def _tiny_sd(texts: Sequence[str], out_dir: Path, *, seed: int, width: int, tokens: int, image_size: int) -> None:
    """SD-shaped pipeline: WordPiece tokenizer (``tokens`` long), CLIP text encoder, 2-level UNet
    and VAE (block widths 32/64, as diffusers' own pipeline tests), PNDM scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from polymodal.models.fmri.mlm import train_tokenizer

    tok_dir = out_dir / "_tokenizer"
    train_tokenizer(texts, str(tok_dir), vocab_size=300, lowercase=True, model_max_length=tokens)
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokens, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=image_size // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=width, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=image_size)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir)


def write_tiny_backbones(out_uri: str, texts: Sequence[str], *, seed: int = 0, lm_hidden: int = 64, lm_layers: int = 2,
                         pretrain_steps: int = 300, clip_width: int = 32, sd_width: int = 32, sd_tokens: int = 16,
                         image_size: int = 32, opts: StorageOptions | None = None) -> dict[str, str]:
    """Write ``lm/``, ``clip/`` and ``sd/`` under ``out_uri``: a small OPT trained for
    ``pretrain_steps`` on ``texts``, a random CLIP vision encoder (pooled width ``clip_width``) and a
    random SD pipeline (text width ``sd_width``, ``sd_tokens`` tokens, ``image_size`` px images).
    Returns ``{"lm": uri, "clip": uri, "sd": uri}``."""
    texts = [str(t) for t in texts]
    out = {}
    with tempfile.TemporaryDirectory(prefix="polymodal-backbones-") as tmp:
        root = Path(tmp)
        _tiny_lm(texts, root / "lm", seed=seed, hidden=lm_hidden, layers=lm_layers, pretrain_steps=pretrain_steps)
        _tiny_clip(root / "clip", seed=seed + 1, width=clip_width, image_size=image_size)
        _tiny_sd(texts, root / "sd", seed=seed + 2, width=sd_width, tokens=sd_tokens, image_size=image_size)
        for name in ("lm", "clip", "sd"):
            out[name] = st.join(out_uri, name)
            st.upload_dir(str(root / name), out[name], opts)
    return out


def image_to_png(image) -> bytes:
    """PIL image or (H, W, 3) uint8 array -> PNG bytes."""
    import io

    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
