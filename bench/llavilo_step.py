"""Benchmark: one LLaViLo training step against a plain-PyTorch prefix-tuning anchor.

Both run on the same random-init frozen ``LlamaForCausalLM`` (any size), batch and sequence:

* ``llavilo``: :class:`~polymodal.models.llavilo.model.LLaViLoModel` (video adapter -> gated
  prefix attention in the top N layers via transformers' ``AttentionInterface`` -> J anchors ->
  moment head), full loss (set prediction + aux + saliency + caption), backward, AdamW step.
* ``anchor``: the plain reference the issue names: the same frozen model with trainable
  per-layer prefixes (``Lv + J`` vectors, as many as LLaViLo's prefix) concatenated in front of
  the hidden states of the top N layers; the lower layers run under ``torch.no_grad()``; LM loss
  on the text; backward only through the top N; AdamW step.

Reported per mode: step time, samples/s, tokens/s (text tokens of the LLM sequence), peak memory
(CUDA: ``max_memory_allocated``; CPU: process peak RSS, which includes everything before), and
the TFLOP/s the step needs, counted per token as ``2 P_all + 4 P_top + head + attention``
(``P``: decoder-layer parameters; head ``4 V H``: forward + backward of the LM head; attention
``4 L T H`` forward over all layers + ``8 N T H`` backward over the top N, context ``T`` = text
+ prefix), against a matmul ceiling measured in the same run (bf16 on CUDA, fp32 on CPU).
The last line is the ratio LLaViLo / anchor in tokens/s (the GPU target: >= 0.9).

Run: ``.venv/bin/python bench/llavilo_step.py [--size tiny|small|7b] [--top-n 8] [--device cuda]``
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn
from benchutil import matmul_ceiling, sync

SIZES = {  # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (64, 4, 4, 2, 128, 256),
    "small": (512, 8, 8, 8, 1376, 32000),
    "7b": (4096, 32, 32, 32, 11008, 32000),
}


def build_llm(size: str, dtype: torch.dtype, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      max_position_embeddings=4096, attn_implementation="sdpa")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            llm = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return llm.eval().requires_grad_(False)


def build_tokenizer(tmp: str):
    from transformers import AutoTokenizer

    from polymodal.text import train_tokenizer

    words = [f"w{i}" for i in range(200)]
    train_tokenizer([" ".join(words), "[[0, 1], [2, 3]] 0 1 2 3 4 5 6 7 8 9"], tmp, vocab_size=256, lowercase=True)
    return AutoTokenizer.from_pretrained(tmp, local_files_only=True)


def make_batch(args, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Synthetic LLaViLo batch whose prompt is about ``args.text_tokens`` tokens."""
    from polymodal.models.llavilo.model import encode_queries

    gen = torch.Generator().manual_seed(0)
    b, lv = args.batch, args.clips
    query = " ".join(f"w{i % 200}" for i in range(args.text_tokens))
    dur = 2.0 * lv
    windows = torch.tensor([[0.2 * dur, 0.4 * dur]]).expand(b, 1, 2).contiguous()
    batch = {"video": torch.randn(b, lv, args.video_dim, generator=gen), "video_mask": torch.ones(b, lv, dtype=torch.bool),
             "text": torch.randn(b, 16, args.text_dim, generator=gen), "text_mask": torch.ones(b, 16, dtype=torch.bool),
             "query_bytes": torch.from_numpy(encode_queries([query] * b)), "duration": torch.full((b,), dur),
             "n_clips": torch.full((b,), lv, dtype=torch.int32), "windows": windows,
             "n_windows": torch.ones(b, dtype=torch.int32), "qid": torch.arange(b)}
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}


class PrefixAnchor(nn.Module):
    """Plain prefix tuning in the top N layers of a frozen LLaMA (no polymodal code)."""

    def __init__(self, llm, top_n: int, n_prefix: int):
        super().__init__()
        self.llm, self.top_n = llm, top_n
        hidden = llm.config.hidden_size
        self.prefix = nn.Parameter(torch.randn(top_n, n_prefix, hidden, dtype=llm.dtype, device=llm.device) * 0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        model, layers = self.llm.model, self.llm.model.layers
        first = len(layers) - self.top_n
        n_prefix, t = self.prefix.shape[1], input_ids.shape[1]
        with torch.no_grad():
            h = model.embed_tokens(input_ids)
            pos = torch.arange(t, device=input_ids.device)[None]
            rope = model.rotary_emb(h, pos)
            for layer in layers[:first]:
                h = layer(h, attention_mask=None, position_embeddings=rope)  # sdpa, causal
        pos = torch.arange(n_prefix + t, device=input_ids.device)[None]
        rope = model.rotary_emb(h, pos)
        for i, layer in enumerate(layers[first:]):
            prefix = self.prefix[i].expand(h.shape[0], -1, -1)
            h = layer(torch.cat([prefix, h], dim=1), attention_mask=None, position_embeddings=rope)[:, n_prefix:]
        logits = self.llm.lm_head(model.norm(h))
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def needed_flops_per_token(llm, top_n: int, context: int) -> float:
    cfg = llm.config
    per_layer = sum(p.numel() for p in llm.model.layers[0].parameters())
    p_all, p_top = per_layer * cfg.num_hidden_layers, per_layer * top_n
    head = 4 * cfg.vocab_size * cfg.hidden_size
    attention = 4 * cfg.num_hidden_layers * context * cfg.hidden_size + 8 * top_n * context * cfg.hidden_size
    return 2 * p_all + 4 * p_top + head + attention





def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="LLaMA shape (7b: LLaMA-7B)")
    p.add_argument("--top-n", type=int, default=2, help="N injected layers (the paper: 8)")
    p.add_argument("--anchors", type=int, default=10, help="J")
    p.add_argument("--clips", type=int, default=75, help="video tokens per sample (QVHighlights: 75)")
    p.add_argument("--text-tokens", type=int, default=48, help="query words (the prompt adds the instruction)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--video-dim", type=int, default=2818)
    p.add_argument("--text-dim", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--count-only", action="store_true",
                   help="build the LLM on the meta device and print the trainable share only (any size, no memory)")
    args = p.parse_args(argv)

    import tempfile

    from polymodal.models.llavilo.config import LLaViLoConfig
    from polymodal.models.llavilo.model import LLaViLoModel
    from polymodal.models.llavilo.task import MomentRetrievalTask

    device = torch.device("meta" if args.count_only else args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    torch.manual_seed(0)
    llm = build_llm(args.size, dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer(tmp)
    cfg = LLaViLoConfig(llm="(in memory)", video_dim=args.video_dim, text_dim=args.text_dim, top_n=args.top_n,
                       num_anchors=args.anchors, max_text_tokens=args.text_tokens + 40,
                       gradient_checkpointing=args.gradient_checkpointing, dropout=0.0)
    model = LLaViLoModel(llm, tokenizer, args.video_dim, args.text_dim, cfg)
    if args.count_only:
        from polymodal.models.llavilo.injection import format_trainable_share

        print(f"# {args.size} LLaMA, N={args.top_n}, J={args.anchors}, adapter 256: {format_trainable_share(model)}")
        return
    for m in (model.adapter, model.head, model.saliency, model.injected.prefixes, model.injected.anchor_queries):
        if m is not None:  # no saliency head: the loss is Eq. 6 alone (saliency_weight 0)
            m.to(device, dtype)
    task = MomentRetrievalTask()
    batch = make_batch(args, device, dtype)
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    n_text = model.text_inputs(batch, with_target=True)["input_ids"].shape[1]

    def llavilo_step():
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    anchor = PrefixAnchor(llm, args.top_n, args.clips + args.anchors)
    anchor_opt = torch.optim.AdamW([anchor.prefix], lr=1e-4)
    ids = model.text_inputs(batch, with_target=True)["input_ids"]

    def anchor_step():
        loss = anchor(ids)
        anchor_opt.zero_grad(set_to_none=True)
        loss.backward()
        anchor_opt.step()

    ceiling = matmul_ceiling(device, dtype, 4096 if device.type == "cuda" else 1024)
    flops = needed_flops_per_token(llm, args.top_n, n_text + args.clips + args.anchors)
    n_all = sum(q.numel() for q in model.parameters())
    n_train = sum(q.numel() for q in trainable)
    print(f"# {args.size} LLaMA ({sum(q.numel() for q in llm.parameters()) / 1e6:.1f}M params), N={args.top_n}, "
          f"J={args.anchors}, batch {args.batch} x {n_text} text tokens + {args.clips} clips, {dtype}, {device}; "
          f"trainable {n_train:,} of {n_all:,} ({100 * n_train / n_all:.2f}%)")
    print(f"# matmul ceiling: {ceiling / 1e12:.2f} TFLOP/s; needed per token: {flops / 1e9:.3f} GFLOP")
    print("mode      step_ms  samples/s   tokens/s  needed_TFLOP/s  of_ceiling  peak_MB")
    rates = {}
    for name, step in (("anchor", anchor_step), ("llavilo", llavilo_step)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = statistics.median(time_steps(step, device, args.warmup, args.steps))
        tok = args.batch * n_text / t
        rates[name] = tok
        need = tok * flops
        print(f"{name:8s} {1e3 * t:8.1f} {args.batch / t:10.2f} {tok:10.0f} {need / 1e12:15.3f} "
              f"{100 * need / ceiling:10.1f}% {_peak_bytes(device) / 2**20:8.0f}")
    print(f"ratio llavilo/anchor (tokens/s): {rates['llavilo'] / rates['anchor']:.3f}")


if __name__ == "__main__":
    main()
