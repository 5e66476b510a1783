"""Benchmark: one VIOLET pre-training step against the plain video-text architecture under it.

Both steps run on the same random-init model (a Video Swin and a BERT of ``--size``; see SIZES),
the same batch, device and dtype, and share the weights:

* ``violet``: the ``violet.pretrain`` task's ``loss`` exactly as the train loop calls it, on a
  batch in its collate format (uint8 frames (B, T, S, S, 3), caption bytes from
  ``polymodal.text.encode_texts``, random visual-token codes (B, T, H', W') in [0, visual_vocab)):
  tokenize; BM+AM masks, where the samples drawn for attended masking (half on average) first go
  through a no-grad pass with eager attention on the clean pair; VTM over B positives + B in-batch
  negatives (the video encoded once, BERT over 2B pairs); one pass with grad over the masked pair
  for MLM + MVM. Then backward and AdamW with the paper's settings (betas (0.9, 0.98), weight
  decay 1e-3).
* ``peer``: the same modules without VIOLET's objectives: Swin -> the same Linear -> BERT's encoder
  once over [video tokens, text] -> BERT's MLM head on the text positions, cross-entropy against
  the unmasked input ids at every real text token (nothing masked, no negatives, no attention
  pass); backward; AdamW with the same settings. It tokenizes and normalises frames with the same
  calls as the task, so data preparation costs the same on both sides.

Precision mirrors ``polymodal/train/loop.py``: with bf16 the weights themselves are cast, as
DeepSpeed's bf16 mode does (here a plain torch AdamW on the bf16 weights, without DeepSpeed's fp32
master copy); nothing runs under autocast. Batches hold only uint8 / int64 tensors, so the loop's
float cast does not touch them.

Each mode runs ``--warmup`` untimed steps, then ``--repeats`` timed steps interleaved peer,
violet, peer, ...; reported are the median step time, samples/s, the TFLOP/s the step needs and its
share of a matmul ceiling measured in the same run (bf16 4096^3 on CUDA, fp32 1024^3 on CPU), and
the peak memory (CUDA: ``max_memory_allocated`` over the mode's steps, which includes the weights
and both optimisers' states; CPU: the process peak RSS, one number for the whole run).

FLOPs are counted per sample, forward, as 2 per matmul weight (Linear, Conv3d) and token plus
4 N_keys C per token and attention layer; a step with grad costs 3 forwards. VIOLET per sample:
``a (swin + bert)`` (the attended pass, ``a`` the share of samples drawn for attended masking,
read from the task) ``+ 3 (swin + 2 bert + 2 vtm)`` (VTM) ``+ 3 (swin + bert + mlm + mvm)``
(masked pass); peer: ``3 (swin + bert + mlm)``. Their quotient is the expected ratio: what
VIOLET's extra passes cost if both steps ran at the same efficiency; the measured ratio below it
is overhead, above it is better use of the hardware.

Run: ``.venv/bin/python bench/violet_step.py [--size tiny|small|paper] [--batch B] [--frames T]``;
on a GPU: ``python bench/violet_step.py --size paper --device cuda --dtype bf16`` (batch 32).
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.violet.config import paper, tiny
from benchutil import matmul_ceiling, sync

#: size -> (BERT (hidden, layers, heads, intermediate, vocab; None: the tokenizer's), VIOLET config, batch)
SIZES: dict[str, tuple[tuple[int, int, int, int, int | None], dict[str, Any], int]] = {
    # the tiny preset (64 px, 2 x 2 grid, 32-wide Swin) and a BERT as small as write_tiny_bert's
    "tiny": ((32, 2, 4, 64, None), tiny(), 8),
    # paper frames and vocabularies (224 px: 196 video tokens; MLM over 30522, MVM over 8192),
    # narrow and shallow towers, so a CPU step takes about a second
    "small": ((256, 4, 4, 1024, 30522), {**paper(), "swin_dim": 128, "swin_depth": 4, "swin_heads": 4}, 8),
    # the paper: bert-base-uncased's shape (random init) and the Swin-B-sized single-stage backbone
    "paper": ((768, 12, 12, 3072, 30522), paper(), 32),
}
#: caption words; each is one token of the benchmark's tokenizer
WORDS = [f"w{i}" for i in range(300)]


def write_bert(size: str, out_dir: str, max_text_tokens: int) -> str:
    """A WordPiece tokenizer over WORDS and a random BertForMaskedLM of ``size``, saved at ``out_dir``.

    The tokenizer knows a few hundred tokens, but the paper and small BERTs keep bert-base's 30522
    rows: the MLM head's matmul over the full vocabulary is a real share of the step.
    """
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from polymodal.text import train_tokenizer

    hidden, layers, heads, inter, vocab = SIZES[size][0]
    train_tokenizer([" ".join(WORDS)] * 2, out_dir, vocab_size=len(WORDS) + 100)
    n_tokens = len(AutoTokenizer.from_pretrained(out_dir, local_files_only=True))
    BertForMaskedLM(BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=inter, vocab_size=vocab or n_tokens,
                               max_position_embeddings=max(64, max_text_tokens))).save_pretrained(out_dir)
    return out_dir


def make_batch(batch: int, cfg, gen: torch.Generator) -> dict[str, Tensor]:
    """A pre-training batch as ``PretrainTask.collate`` gives it: random pixels, captions of half to
    all of ``max_text_tokens``, random visual-token codes."""
    from polymodal.text import encode_texts

    T, S, L = cfg.frames, cfg.image_size, cfg.max_text_tokens
    lengths = torch.randint(L // 2, L - 1, (batch,), generator=gen).tolist()  # words; [CLS] and [SEP] make L
    captions = [" ".join(WORDS[j] for j in torch.randint(len(WORDS), (n,), generator=gen).tolist()) for n in lengths]
    return {"frames": torch.randint(0, 256, (batch, T, S, S, 3), dtype=torch.uint8, generator=gen),
            "text_bytes": torch.from_numpy(encode_texts(captions, max_bytes=1024)),
            "vt_codes": torch.randint(cfg.visual_vocab, (batch, T, cfg.grid, cfg.grid), generator=gen)}


class PlainPeer(nn.Module):
    """Swin -> Linear -> BERT encoder over [video, text], once -> MLM head on the text.

    Holds the Violet's own modules (shared weights), but none of its objectives: one pass, one
    cross-entropy against the input ids at the real text tokens.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.swin, self.proj = net.video_encoder.swin, net.video_proj
        self.embeddings, self.encoder, self.head = net.embeddings, net.encoder, net.mlm_head

    def forward(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Frames (B, T, 3, S, S), input_ids and attention_mask (B, L) -> the scalar loss."""
        video = self.proj(self.swin(frames)).flatten(1, 3)  # (B, Nv, D)
        text = self.embeddings(input_ids=input_ids)  # (B, L, D)
        x = torch.cat([video, text], dim=1)  # (B, Nv + L, D)
        keep = torch.cat([attention_mask.new_ones(video.shape[:2]), attention_mask], dim=1).to(x.dtype)
        # the padded captions still need a key mask; the same additive form VIOLET passes
        h = self.encoder(x, attention_mask=(1.0 - keep)[:, None, None, :] * torch.finfo(x.dtype).min)
        logits = self.head(h.last_hidden_state[:, video.shape[1]:])  # (B, L, vocab)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def matmul_weights(module: nn.Module) -> int:
    """Weights that multiply activations (Linear, Conv3d): forward FLOPs per token are twice this."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv3d)))


def forward_flops(net: nn.Module, frames: int, text_tokens: int) -> dict[str, float]:
    """Forward FLOPs of one sample's pieces: ``swin`` (patch embedding, blocks, the Linear to BERT's
    width), ``bert`` (encoder over Nv + L tokens), ``mlm`` (head over L), ``mvm`` (head over Nv),
    ``vtm`` (head on h_cls)."""
    from polymodal.models.violet.swin import resolve_window

    cfg, swin = net.cfg, net.video_encoder.swin
    nv = net.video_encoder.num_tokens(frames)
    window, _ = resolve_window((frames, cfg.grid, cfg.grid), cfg.swin_window, (0, 0, 0))
    keys = math.prod(window)  # tokens per attention window (padding, absent at these sizes, not counted)
    n, bc = nv + text_tokens, net.bert_config
    return {"swin": 2 * (matmul_weights(swin) + matmul_weights(net.video_proj)) * nv
                    + 4 * cfg.swin_depth * nv * keys * cfg.swin_dim,
            "bert": 2 * matmul_weights(net.encoder) * n + 4 * bc.num_hidden_layers * n * n * bc.hidden_size,
            "mlm": 2 * matmul_weights(net.mlm_head) * text_tokens,
            "mvm": 2 * matmul_weights(net.mvm_head) * nv,
            "vtm": 2 * matmul_weights(net.vtm_head)}


def step_flops(f: dict[str, float], attended: float) -> dict[str, float]:
    """Training FLOPs per sample of each mode (a step with grad: forward + backward = 3 forwards)."""
    return {"violet": attended * (f["swin"] + f["bert"]) + 3 * (f["swin"] + 2 * f["bert"] + 2 * f["vtm"])
                      + 3 * (f["swin"] + f["bert"] + f["mlm"] + f["mvm"]),
            "peer": 3 * (f["swin"] + f["bert"] + f["mlm"])}





def timed(step: Callable[[], Any], device: torch.device) -> tuple[float, Any, int]:
    """(seconds, the step's return value, CUDA peak bytes during the step; 0 on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = step()
    sync(device)
    seconds = time.perf_counter() - t0
    return seconds, out, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def adamw(params) -> torch.optim.AdamW:
    """The paper's optimiser (lr: pre-training's 2e-5; it does not change the cost)."""
    return torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.98), weight_decay=1e-3)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny", help="model shape (paper: bert-base + Swin-B-sized)")
    p.add_argument("--batch", type=int, default=None, help="B (default: 8 for tiny / small, 32 for paper)")
    p.add_argument("--frames", type=int, default=4, help="T (the paper pre-trains with 4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per mode, interleaved")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.repeats < 1:
        p.error(f"--warmup {args.warmup} and --repeats {args.repeats} must both be >= 1 (the first step "
                "allocates AdamW's state)")

    from polymodal.models.violet.config import VioletConfig
    from polymodal.models.violet.encode import channels_first, normalise_frames, tokenize
    from polymodal.models.violet.model import Violet
    from polymodal.models.violet.task import PretrainTask
    from polymodal.text import decode_texts

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    _, preset, default_batch = SIZES[args.size]
    batch_size = args.batch or default_batch
    if batch_size < 2:
        p.error(f"--batch {batch_size}: VTM's in-batch negatives need at least 2 samples")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="violet-step-") as tmp:
        values = {**preset, "frames": args.frames, "max_frames": max(preset["max_frames"], args.frames)}
        cfg = VioletConfig(bert=tmp, **values)
        write_bert(args.size, tmp, cfg.max_text_tokens)
        net = Violet(cfg)
    net.to(device=device, dtype=dtype)  # bf16: the weights themselves, as the train loop's DeepSpeed engine
    task, peer = PretrainTask(), PlainPeer(net)
    batch = {k: v.to(device) for k, v in make_batch(batch_size, cfg, torch.Generator().manual_seed(0)).items()}
    violet_opt, peer_opt = adamw(net.parameters()), adamw(peer.parameters())

    def violet_step() -> float:
        loss, extra = task.loss(net, batch)
        violet_opt.zero_grad(set_to_none=True)
        loss.backward()
        violet_opt.step()
        return 1.0 - extra["block_share"]  # share of samples masked by attention

    def peer_step() -> None:
        frames = normalise_frames(channels_first(batch["frames"]), dtype)
        ids, attn = tokenize(net, decode_texts(batch["text_bytes"]))
        loss = peer(frames, ids, attn)
        peer_opt.zero_grad(set_to_none=True)
        loss.backward()
        peer_opt.step()

    steps = {"peer": peer_step, "violet": violet_step}
    for name, step in steps.items():
        for _ in range(args.warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks = dict.fromkeys(steps, 0)
    attended = []
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds, out, peak = timed(step, device)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            if name == "violet":
                attended.append(out)

    ceiling = matmul_ceiling(device, dtype, 4096 if device.type == "cuda" else 1024)
    text_tokens = tokenize(net, decode_texts(batch["text_bytes"]))[0].shape[1]
    f = forward_flops(net, cfg.frames, text_tokens)
    a = statistics.fmean(attended)
    flops = step_flops(f, a)
    bc = net.bert_config
    n_swin = sum(q.numel() for q in net.video_encoder.parameters())
    n_bert = sum(q.numel() for q in (*net.embeddings.parameters(), *net.encoder.parameters()))
    n_all = sum(q.numel() for q in net.parameters())
    n_peer = sum(q.numel() for q in peer.parameters())
    nv = net.video_encoder.num_tokens(cfg.frames)
    print(f"# violet {args.size}: Video Swin {cfg.swin_dim} wide x {cfg.swin_depth} blocks ({n_swin / 1e6:.1f}M) + "
          f"BERT {bc.hidden_size} wide x {bc.num_hidden_layers} layers ({n_bert / 1e6:.1f}M, vocab {bc.vocab_size}); "
          f"{cfg.frames} frames of {cfg.image_size} px -> {nv} video tokens + {text_tokens} text tokens; "
          f"batch {batch_size}; {dtype} on {device}; parameters: violet {n_all:,}, peer {n_peer:,} (shared)")
    print(f"# matmul ceiling: {ceiling / 1e12:.3f} TFLOP/s; forward GFLOP per sample: "
          + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in f.items()))
    print(f"# passes per sample: violet = Swin 2 with grad + {a:.2f} without, BERT 3 with grad (B pairs + B "
          f"negatives + B masked) + {a:.2f} without; peer = Swin 1 + BERT 1 with grad; training GFLOP per "
          f"sample: violet {flops['violet'] / 1e9:.2f}, peer {flops['peer'] / 1e9:.2f}")
    if device.type == "cpu":
        print(f"# peak memory: process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB "
              "(the whole run: CPU torch has no allocator counter)")
    print("mode     step_ms  samples/s  needed_TFLOP/s  of_ceiling  peak_MB")
    rate = {}
    for name in steps:
        t = statistics.median(times[name])
        rate[name] = batch_size / t
        need = rate[name] * flops[name]
        peak = f"{peaks[name] / 2**20:8.0f}" if device.type == "cuda" else "       -"
        print(f"{name:7s} {1e3 * t:8.1f} {rate[name]:10.2f} {need / 1e12:15.4f} {100 * need / ceiling:10.1f}% {peak}")
    pairs = statistics.median(tp / tv for tp, tv in zip(times["peer"], times["violet"]))
    print(f"ratio violet/peer (samples/s): {rate['violet'] / rate['peer']:.3f} (per-pair median {pairs:.3f}); "
          f"expected from the FLOPs counted: {flops['peer'] / flops['violet']:.3f}")


if __name__ == "__main__":
    main()
