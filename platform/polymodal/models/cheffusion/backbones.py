"""The three frozen backbones: load them (``from_pretrained`` from a local folder, an ``s3://``
folder or a hub id) or write tiny random ones for tests and the demo.

* the causal LM and its tokenizer (:func:`load_lm`): any ``AutoModelForCausalLM``;
* the CLIP vision encoder and its image processor (:func:`load_clip`); ``v_phi`` is its pooled
  output (:func:`clip_image_features`);
* the Stable Diffusion pipeline (:func:`load_sd`); its text encoder ``T_psi`` gives the mapper's
  regression targets (:func:`sd_text_targets`), exactly as the pipeline encodes a prompt.

Each pretrained field takes a local folder, an ``s3://`` folder (downloaded once into the polymodal
cache) or a hub id such as ``facebook/opt-6.7b`` (downloaded into the Hugging Face cache unless
``HF_HUB_OFFLINE=1``). Weights load straight into the requested dtype and device
(:func:`polymodal.cache.pretrained_kwargs`: meta-device init, each tensor read into place), so the
6.7B LM meant for bf16 on a GPU never exists as an fp32 copy on the host.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from polymodal import storage as st
from polymodal.cache import load_causal_lm, local_copy, pretrained_kwargs
from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError

__all__ = ["load_lm", "load_clip", "load_sd", "load_sd_text_encoder", "backbone_dims", "clip_image_features",
           "sd_text_targets", "decode_image", "image_to_png", "write_tiny_backbones", "resolve_backbone"]

T = TypeVar("T")


def _looks_like_path(uri: str) -> bool:
    """Whether ``uri`` can only be a local path (a hub id is ``name`` or ``owner/name``)."""
    return uri.startswith(("/", "./", "../", "~", "file://")) or uri.count("/") > 1


def resolve_backbone(field: str, uri: str, opts: StorageOptions | None = None) -> str:
    """What ``from_pretrained`` reads for the ``model.<field>`` value ``uri``: a local folder (an
    ``s3://`` folder is downloaded once, :func:`polymodal.cache.local_copy`) or a hub id, passed on.
    A path that is not a folder is a :class:`PolymodalError` naming the field and the value."""
    path = local_copy(uri, opts)
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or _looks_like_path(uri):
        raise PolymodalError(f"model.{field}: {uri!r} is not a folder (a pretrained-weights field takes a "
                             "save_pretrained folder, an s3:// folder or a hub id)")
    return path  # a hub id


def _loading(field: str, uri: str, load: Callable[[], T]) -> T:
    """``load()``, with the hub's answer for an id it cannot serve (not cached while offline, a
    typo, no network) turned into a :class:`PolymodalError` naming the field and the value."""
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise PolymodalError(f"model.{field}: cannot load {uri!r}: {exc}") from None


def load_lm(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32,
            device: str | torch.device | None = None):
    """(causal LM, tokenizer); the LM is frozen, in eval mode, and loaded straight into ``dtype``
    on ``device`` (:func:`polymodal.cache.load_causal_lm`)."""
    resolve_backbone("lm", uri, opts)
    return _loading("lm", uri, lambda: load_causal_lm(uri, opts, dtype, device))


def load_clip(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32,
              device: str | torch.device | None = None):
    """(CLIPVisionModel, image processor), frozen, eval mode, loaded straight into ``dtype`` on ``device``."""
    from transformers import AutoImageProcessor, CLIPVisionModel

    path = resolve_backbone("clip", uri, opts)
    model = _loading("clip", uri, lambda: CLIPVisionModel.from_pretrained(path, **pretrained_kwargs(dtype, device)))
    processor = _loading("clip", uri, lambda: AutoImageProcessor.from_pretrained(path))
    return model.requires_grad_(False).eval(), processor


def load_sd(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32,
            device: str | torch.device | None = None):
    """A ``StableDiffusionPipeline`` without safety checker, every module frozen, in ``dtype`` on
    ``device``. Each module is built empty and its weights read in ``dtype``
    (``low_cpu_mem_usage``); a pipeline takes no per-device ``device_map``, so the modules then
    move to ``device`` (SD 1.5 is 1 GB in half precision)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from polymodal import logs

    if logs.is_quiet():  # its "Loading pipeline components" bar belongs to the log, not the console
        diffusers_logging.disable_progress_bar()
    path = resolve_backbone("sd", uri, opts)
    pipe = _loading("sd", uri, lambda: StableDiffusionPipeline.from_pretrained(
        path, **pretrained_kwargs(dtype), safety_checker=None, feature_extractor=None, requires_safety_checker=False))
    if device is not None:
        pipe = pipe.to(device)
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


def load_sd_text_encoder(uri: str, opts: StorageOptions | None = None, dtype: torch.dtype = torch.float32,
                         device: str | torch.device | None = None):
    """(tokenizer, text encoder) of an SD pipeline folder or hub id, without its UNet and VAE
    (feature extraction); the encoder frozen, in ``dtype`` on ``device``."""
    from transformers import AutoTokenizer, CLIPTextModel

    path = resolve_backbone("sd", uri, opts)
    encoder = _loading("sd", uri, lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder",
                                                                        **pretrained_kwargs(dtype, device)))
    tokenizer = _loading("sd", uri, lambda: AutoTokenizer.from_pretrained(path, subfolder="tokenizer"))
    return tokenizer, encoder.requires_grad_(False).eval()


def backbone_dims(clip: str, sd: str, opts: StorageOptions | None = None) -> tuple[int, int, int]:
    """(d_clip, L, d_sd): CLIP's pooled width, the SD tokenizer's length and the SD text encoder's
    width, from the configs and the tokenizer alone (no weights are read)."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPVisionConfig

    clip_path, sd_path = resolve_backbone("clip", clip, opts), resolve_backbone("sd", sd, opts)
    width = _loading("clip", clip, lambda: CLIPVisionConfig.from_pretrained(clip_path).hidden_size)
    text = _loading("sd", sd, lambda: CLIPTextConfig.from_pretrained(sd_path, subfolder="text_encoder").hidden_size)
    tokens = _loading("sd", sd, lambda: AutoTokenizer.from_pretrained(sd_path, subfolder="tokenizer").model_max_length)
    return int(width), int(tokens), int(text)


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
