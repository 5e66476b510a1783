"""Benchmark: ChefFusion text-to-image against a plain diffusers call on the same pipeline.

Both paths draw ``--batch`` images with ``--steps`` denoising steps and classifier-free guidance
``--guidance`` from the very same ``StableDiffusionPipeline`` object (UNet, VAE, scheduler, text
encoder), one seeded generator per image, PIL output:

* ``polymodal``: ``ChefFusion.generate("t2i", texts=..., seeds=...)``: tokenize, the frozen LM
  over ``bos text [IMG1..IMGm]``, the mapper f_w -> (B, L, d_sd) ``prompt_embeds``, then the
  pipeline with ``prompt_embeds`` and the empty negative prompt's embedding, which
  ``ChefFusion.render`` computes once and caches.
* ``plain``: ``pipe(prompt=texts, ...)``: the pipeline's own CLIP text encoder on the prompts and
  on the empty negative prompt.

So the two differ only in the front end (LM + mapper vs the prompt's text encoding); the UNet
loop (2 x UNet per step when guidance > 1) and the VAE decode are shared. The calls alternate
(plain, polymodal, plain, ...) so that drift of this host hits both alike; each rate is the
median over ``--repeats`` calls, and the last line is polymodal / plain in images/s (the issue
asks for >= ~1); the line above it gives the spread of the per-pair ratios, i.e. the noise.
A breakdown times the front ends alone, to say where a gap comes from.

Sizes (the backbones are written to a temporary folder at start, random weights):

* ``tiny``: ``write_tiny_backbones`` as the tests use it: 64-wide 2-layer OPT, UNet (32, 64),
  16 x 16 latents (32 px images), 32-wide 2-layer text encoder, 16 tokens, mapper 64 wide.
* ``small``: the same tiny LM; an SD-1.5-shaped pipeline built here: UNet (64, 128, 256) with
  two cross-attention levels and 2 layers per block, 32 x 32 latents (256 px images), 4-level
  VAE, a 256-wide 4-layer text encoder over 77 tokens, and the paper's mapper (r = 512, 4 + 4
  layers, 77 queries). The UNet dominates, as in real SD.

Run: ``.venv/bin/python bench/sd_generate.py [--size tiny|small] [--batch 2] [--steps 10] [--device cuda]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from benchutil import sync

# Per size: text-encoder width and tokens (= the mapper's sd_dim / sd_tokens), mapper shape,
# diffusion steps by default. The SD modules of `small` are built in `write_small_sd`.
SIZES = {
    "tiny": {"sd_dim": 32, "sd_tokens": 16, "mapper_dim": 64, "mapper_layers": 1, "steps": 20},
    "small": {"sd_dim": 256, "sd_tokens": 77, "mapper_dim": 512, "mapper_layers": 4, "steps": 10},
}


def recipes(n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic recipe texts (``title. ingredients: ... instructions: ...``), what t2i reads."""
    from polymodal.models.cheffusion.data import format_recipe
    from polymodal.models.cheffusion.synth import COLOURS, DISHES, sample_recipe

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rec = sample_recipe(rng, str(rng.choice(list(COLOURS))), str(rng.choice(list(DISHES))))
        out.append(format_recipe(rec["title"], rec["ingredients"], rec["instructions"]))
    return out


def write_small_sd(tokenizer_dir: Path, out_dir: Path, *, width: int, seed: int = 0) -> None:
    """An SD-1.5-shaped pipeline at a CPU-friendly size, saved with ``save_pretrained``.

    UNet: SD's block layout (cross-attention in the two upper levels, a plain bottom level, 2
    layers per block) at widths (64, 128, 256) instead of (320, 640, 1280, 1280), 8 channels per
    head; VAE: 4 levels (8x down-sampling, as SD) at (32, 64, 128, 128); text encoder: CLIP,
    ``width`` wide, 4 layers; the tokenizer (and its length) of ``tokenizer_dir``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=4,
        num_attention_heads=width // 64, max_position_embeddings=tok.model_max_length,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id))
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=[32, 64, 128, 128], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        layers_per_block=1, sample_size=256)
    # SD 1.5's scheduler settings
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out_dir)


def build(size: str, root: Path, device: torch.device, dtype: torch.dtype):
    """(ChefFusion with its SD pipeline loaded, that pipeline) for ``size``, backbones under ``root``."""
    from polymodal.models.cheffusion.backbones import load_lm, write_tiny_backbones
    from polymodal.models.cheffusion.config import CheffusionConfig, tiny
    from polymodal.models.cheffusion.model import ChefFusion

    s = SIZES[size]
    # the LM is only read (no sampling in t2i), so its weights need no pretraining here
    uris = write_tiny_backbones(str(root), recipes(256), pretrain_steps=0, sd_width=s["sd_dim"],
                                sd_tokens=s["sd_tokens"])
    if size == "small":
        write_small_sd(Path(uris["sd"]) / "tokenizer", root / "sd_small", width=s["sd_dim"])
        uris["sd"] = str(root / "sd_small")
    cfg = CheffusionConfig(lm=uris["lm"], clip=uris["clip"], sd=uris["sd"], **{
        **tiny(), "sd_dim": s["sd_dim"], "sd_tokens": s["sd_tokens"], "mapper_dim": s["mapper_dim"],
        "mapper_layers": s["mapper_layers"]})
    lm, tokenizer = load_lm(cfg.lm)
    model = ChefFusion(cfg, lm, tokenizer).eval().to(device, dtype)
    # ChefFusion loads SD on first use; the plain path gets this very object
    pipe = model._backbone("sd").to(device, dtype)
    return model, pipe



def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny",
                   help="tiny (default): the test backbones; "
                        "small: an SD-1.5-shaped UNet and VAE that dominate, tiny LM")
    p.add_argument("--batch", type=int, default=2, help="images per call, one prompt and seed each (default 2)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: 20 tiny, 10 small)")
    p.add_argument("--guidance", type=float, default=7.5,
                   help="classifier-free guidance scale (default 7.5); > 1 runs the UNet on 2B latents per step")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per path, interleaved (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per path first; the sanity check is one (default 1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when there is one)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's, one per core); 1 is steadier on a shared host")
    args = p.parse_args(argv)

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    # recipes are longer than the SD tokenizer's window: the plain path warns about truncating
    # them on every call, which is noise here (ChefFusion reads the whole recipe with its LM)
    for lib in (diffusers_logging, transformers_logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    steps = args.steps or SIZES[args.size]["steps"]
    t_build = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as tmp:
        model, pipe = build(args.size, Path(tmp), device, dtype)
    t_build = time.perf_counter() - t_build
    texts = recipes(args.batch, seed=1)
    seeds = list(range(args.batch))

    def polymodal():
        return [g.images[0] for g in model.generate("t2i", texts=texts, seeds=seeds, steps=steps,
                                                     guidance=args.guidance)]

    def plain():
        gens = [torch.Generator(device=pipe.device).manual_seed(s) for s in seeds]
        return pipe(prompt=texts, num_inference_steps=steps, guidance_scale=args.guidance, generator=gens).images

    n_params = {k: sum(q.numel() for q in m.parameters()) / 1e6 for k, m in
                (("LM", model.lm), ("mapper", model.mapper), ("text encoder", pipe.text_encoder),
                 ("UNet", pipe.unet), ("VAE", pipe.vae))}
    print(f"# {args.size}: " + ", ".join(f"{k} {v:.2f}M" for k, v in n_params.items()) + f"; built in {t_build:.0f} s")
    print(f"# batch {args.batch}, {steps} steps, guidance {args.guidance}, {dtype}, {device}"
          + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""))

    with torch.inference_mode():
        # sanity: same number and size of images; and the pipeline given ChefFusion's embeddings
        # directly reproduces generate() exactly (same scheduler, seeds and decode)
        a, b = plain(), polymodal()
        if len(a) != len(b) or {im.size for im in a} != {im.size for im in b}:
            raise RuntimeError(f"image mismatch: plain {[im.size for im in a]} vs polymodal {[im.size for im in b]}")
        embeds = model.sd_embeddings(texts)
        gens = [torch.Generator(device=pipe.device).manual_seed(s) for s in seeds]
        direct = pipe(prompt_embeds=embeds.to(pipe.unet.dtype), num_inference_steps=steps,
                      guidance_scale=args.guidance, generator=gens).images
        same = all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(direct, b))
        print(f"# images: {len(a)} x {a[0].size[0]}x{a[0].size[1]} px from both; "
              f"generate() == pipe(prompt_embeds=f_w(...)): {same}")

        for _ in range(args.warmup - 1):  # the sanity calls above were one warm-up each
            plain()
            polymodal()
        times: dict[str, list[float]] = {"plain": [], "polymodal": []}
        for _ in range(args.repeats):
            times["plain"].append(timed(plain, device))
            times["polymodal"].append(timed(polymodal, device))

        # front ends alone: what differs between the two paths
        do_cfg = args.guidance > 1
        fronts = {
            "LM + mapper (sd_embeddings)": lambda: model.sd_embeddings(texts),
            "text encoder: prompt + negative (plain)": lambda: pipe.encode_prompt(texts, pipe.device, 1, do_cfg),
            "text encoder: negative only (cached by polymodal)": lambda: pipe.encode_prompt(
                None, pipe.device, 1, do_cfg, prompt_embeds=embeds),
        }
        front_ms = {k: 1e3 * statistics.median(timed(f, device) for _ in range(max(5, args.repeats)))
                    for k, f in fronts.items()}

    med = {k: statistics.median(v) for k, v in times.items()}
    print("path        call_s  images/s   (all calls, s)")
    for k in ("plain", "polymodal"):
        print(f"{k:10s} {med[k]:7.3f} {args.batch / med[k]:9.3f}   " + " ".join(f"{t:.3f}" for t in times[k]))
    print("front end, median ms (share of a plain call):")
    for k, v in front_ms.items():
        print(f"  {k:45s} {v:8.2f}  ({100 * v / (1e3 * med['plain']):.2f}%)")
    # each (plain, polymodal) pair ran back to back: its ratio cancels slower drift of the host
    pairs = sorted(a / b for a, b in zip(times["plain"], times["polymodal"]))
    q1, q2, q3 = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
    print(f"per-pair ratios: median {q2:.3f}, quartiles {q1:.3f}-{q3:.3f}, range {pairs[0]:.3f}-{pairs[-1]:.3f}")
    print(f"ratio polymodal/plain (images/s): {med['plain'] / med['polymodal']:.3f}")


if __name__ == "__main__":
    main()
