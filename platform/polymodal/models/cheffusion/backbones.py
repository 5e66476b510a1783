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


def write_tiny_backbones(out_uri: str, texts: Sequence[str], *, seed: int = 0, lm_hidden: int = 64, lm_layers: int = 2,
                         pretrain_steps: int = 300, clip_width: int = 32, sd_width: int = 32, sd_tokens: int = 16,
                         image_size: int = 32, opts: StorageOptions | None = None) -> dict[str, str]:
    """Write ``lm/``, ``clip/`` and ``sd/`` under ``out_uri`` (writers of :mod:`polymodal.testing.tiny`):
    a small OPT trained for ``pretrain_steps`` on ``texts`` (a frozen LM that knows recipe language),
    a random CLIP vision encoder (pooled width ``clip_width``) and a random SD pipeline (text width
    ``sd_width``, ``sd_tokens`` tokens, ``image_size`` px images).
    Returns ``{"lm": uri, "clip": uri, "sd": uri}``."""
    from polymodal.testing import tiny

    texts = [str(t) for t in texts]
    out = {}
    with tempfile.TemporaryDirectory(prefix="polymodal-backbones-") as tmp:
        root = Path(tmp)
        tiny.write_tiny_opt(root / "lm", texts, seed=seed, hidden=lm_hidden, layers=lm_layers,
                            pretrain_steps=pretrain_steps, vocab_size=400)
        tiny.write_tiny_clip_vision(root / "clip", seed=seed + 1, width=clip_width, image_size=image_size)
        tiny.write_tiny_stable_diffusion(root / "sd", texts, seed=seed + 2, width=sd_width, tokens=sd_tokens,
                                         image_size=image_size, vocab_size=300)
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
