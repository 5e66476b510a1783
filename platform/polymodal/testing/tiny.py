"""Tiny random library models for tests and demos, written with ``save_pretrained`` to a local
folder that ``from_pretrained`` reads back the way it reads real weights.

Every writer seeds torch itself, so a given ``seed`` always writes the same weights. Writers of
text models first train a WordPiece vocabulary on ``texts`` (:func:`polymodal.text.train_tokenizer`)
into the same folder; a sequence is ``[CLS] text [SEP]``.

* :func:`write_tiny_llama`: ``LlamaForCausalLM``;
* :func:`write_tiny_opt`: ``OPTForCausalLM``, optionally trained briefly on ``texts``;
* :func:`write_tiny_bert`: ``BertForMaskedLM``;
* :func:`write_tiny_clip_vision`: ``CLIPVisionModel`` and its image processor;
* :func:`write_tiny_stable_diffusion`: a ``StableDiffusionPipeline`` (CLIP text encoder, UNet, VAE);
* :func:`write_tiny_vqgan`: a diffusers ``VQModel``.

A system composes these into its own layout (which texts, which widths, where they go).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from polymodal.text import train_tokenizer

PathLike = str | os.PathLike


def write_tiny_llama(out_dir: PathLike, texts: Sequence[str], *, seed: int = 0, hidden: int = 64, layers: int = 3,
                     heads: int = 4, init_std: float = 0.02, vocab_size: int = 256) -> str:
    """A random ``LlamaForCausalLM`` (``heads // 2`` key-value heads, 256 positions) and a lowercase
    WordPiece tokenizer of ``texts`` at ``out_dir``. Returns ``out_dir``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    train_tokenizer(texts, str(out_dir), vocab_size=vocab_size, lowercase=True)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                         max_position_embeddings=256, initializer_range=init_std, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return str(out_dir)


def write_tiny_opt(out_dir: PathLike, texts: Sequence[str], *, seed: int = 0, hidden: int = 64, layers: int = 2,
                   pretrain_steps: int = 0, vocab_size: int = 400) -> str:
    """A small ``OPTForCausalLM`` (4 heads, feed-forward ``2 * hidden``, no dropout) with a
    lowercase WordPiece vocabulary of ``texts``, trained for ``pretrain_steps`` AdamW steps
    (lr 3e-3, 32 texts of at most 96 tokens a step) as a causal LM on them: a real frozen LM
    knows its domain's language, a random one only noise. Returns ``out_dir``."""
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    texts = [str(t) for t in texts]
    train_tokenizer(texts, str(out_dir), vocab_size=vocab_size, lowercase=True)
    tok = AutoTokenizer.from_pretrained(out_dir)
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token  # a sequence is [CLS] text [SEP]
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, ffn_dim=2 * hidden,
                       num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=hidden,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                       dropout=0.0, attention_dropout=0.0)
    lm = OPTForCausalLM(config)
    if pretrain_steps:
        enc = tok(texts, padding=True, truncation=True, max_length=96, return_tensors="pt")
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
    return str(out_dir)


def write_tiny_bert(out_dir: PathLike, texts: Sequence[str], *, seed: int = 0, hidden: int = 32, layers: int = 2,
                    heads: int = 4, init_std: float = 0.25, vocab_size: int = 200) -> str:
    """A random ``BertForMaskedLM`` (feed-forward ``2 * hidden``, 64 positions, no dropout) and a
    lowercase WordPiece tokenizer of ``texts`` at ``out_dir``. Returns ``out_dir``.

    The weights start at std 0.25, not BERT's 0.02 (which suits 768 wide, pre-trained weights): at
    0.02 a random 32-wide encoder's attention is flat and its [CLS] state hardly depends on the
    other tokens, so heads fine-tuned on it start at a saddle (a synthetic video QA stayed at chance
    for 4000 steps; at 0.25 it passes 90 % within about 1000).
    """
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    train_tokenizer(texts, str(out_dir), vocab_size=vocab_size)
    vocab = len(AutoTokenizer.from_pretrained(out_dir))
    torch.manual_seed(seed)
    BertForMaskedLM(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=2 * hidden, vocab_size=vocab, max_position_embeddings=64,
                               initializer_range=init_std, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)).save_pretrained(out_dir)
    return str(out_dir)


def write_tiny_clip_vision(out_dir: PathLike, *, seed: int = 0, width: int = 32, image_size: int = 32) -> str:
    """A random ``CLIPVisionModel`` (2 layers, 4 heads, 4 x 4 patches, pooled width ``width``) and
    a CLIP image processor for ``image_size`` px images at ``out_dir``. Returns ``out_dir``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    try:  # transformers >= 5 without torchvision: the PIL backend, same numbers
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor as Processor
    torch.manual_seed(seed)
    # initializer_factor 5: at the default scale a random ViT's pooled [CLS] barely depends on the
    # image (feature spread across images 0.17 of its mean magnitude, 0.66 at 5), so a layer on top
    # would get a near-constant input; a trained CLIP's pooled feature is very image-specific.
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=4, image_size=image_size, patch_size=image_size // 4,
                              projection_dim=width, initializer_factor=5.0)
    CLIPVisionModel(config).save_pretrained(out_dir)
    processor = Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor.save_pretrained(out_dir)
    return str(out_dir)


def write_tiny_stable_diffusion(out_dir: PathLike, texts: Sequence[str], *, seed: int = 0, width: int = 32,
                                tokens: int = 16, image_size: int = 32, vocab_size: int = 300) -> str:
    """An SD-shaped ``StableDiffusionPipeline`` at ``out_dir``: a lowercase WordPiece tokenizer of
    ``texts`` (``tokens`` long), a CLIP text encoder (width ``width``), a 2-level UNet and VAE (block
    widths 32/64, as diffusers' own pipeline tests) for ``image_size`` px images, a PNDM scheduler.
    Returns ``out_dir``."""
    from pathlib import Path

    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tok_dir = Path(out_dir) / "_tokenizer"
    train_tokenizer(texts, str(tok_dir), vocab_size=vocab_size, lowercase=True, model_max_length=tokens)
    tok = AutoTokenizer.from_pretrained(tok_dir)
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
    return str(out_dir)


def write_tiny_vqgan(out_dir: PathLike, *, seed: int = 0, codes: int = 64, factor: int = 8, width: int = 32) -> str:
    """A random ``VQModel`` (VQ-GAN; downsampling ``factor``, ``codes`` codebook entries of 8
    dimensions) at ``out_dir``. Returns ``out_dir``."""
    from diffusers import VQModel

    levels = int(np.log2(factor)) + 1
    torch.manual_seed(seed)
    VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=(width,) * levels, layers_per_block=1,
            latent_channels=8, num_vq_embeddings=codes, vq_embed_dim=8, norm_num_groups=8).save_pretrained(out_dir)
    return str(out_dir)
