"""LLaViLo: video adapter -> frozen LLaMA with gated injection -> DETR moment head.

Diagram of Ma et al. (ICCV-W 2023), one block per class:

* :class:`VideoAdapter` (Eq. 1): clip features (with Moment-DETR's temporal endpoint features)
  attend to the query's text-token features in ``cross_layers`` cross-attention layers, then
  ``encoder_layers`` transformer-encoder layers mix the clips, and a 3-layer MLP lifts them to
  the LLM width (ending in a LayerNorm: the injected prefix keys are not normed, so the tokens
  should have the scale of normed hidden states).
* :class:`~.injection.InjectedLlama`: the frozen LLM reads ``instruction + query (+ target)``
  as text, gets the video tokens in its top ``N`` layers, and ``J`` anchor queries.
* :class:`MomentHead`: per anchor a span MLP + sigmoid -> normalised ``(center, width)`` and a
  2-way fg/bg linear (class 0 = foreground); applied to the final anchors and, for the auxiliary
  losses, to each lower injected layer's anchors (after the LLM's frozen final norm).
* Saliency head, opt-in (``saliency_weight > 0``; not in the LLaViLo paper's diagram nor in its
  Eq. 6, so off in the ``paper`` preset): Moment-DETR's saliency term as BCE, a linear per-clip
  relevance logit on the video tokens. Without it the per-clip scores are 0.
* Caption objective: the LM loss of the frozen LLM on the target text (the GT windows in whole
  seconds, ``"[[82, 150], [160, 170]]"``), with the target hidden from the anchors.

Text is tokenized here rather than in ``Task.collate`` because collate has no access to the
model config (and so to the tokenizer); collate passes the query as UTF-8 bytes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from polymodal.text import decode_texts, encode_texts

from .config import LLaViLoConfig
from .injection import InjectedLlama


# ----------------------------------------------------------------------------- text


def format_windows(windows: np.ndarray) -> str:
    """(n, 2) windows in seconds -> ``"[[82, 150], [160, 170]]"`` (whole seconds, the caption target)."""
    return "[" + ", ".join(f"[{int(round(float(s)))}, {int(round(float(e)))}]" for s, e in windows) + "]"


# UTF-8 byte rows for queries (collate has no tokenizer): the shared helpers under LLaViLo's names
decode_queries = decode_texts
encode_queries = encode_texts


def target_token_count(tokenizer, caption: str) -> int:
    """Tokens of a caption target as :func:`build_text_inputs` writes it (eos not counted)."""
    return len(tokenizer(" " + caption, add_special_tokens=False)["input_ids"])


def build_text_inputs(tokenizer, prompts: Sequence[str], targets: Sequence[str] | None, *,
                      max_text_tokens: int, max_target_tokens: int | None) -> dict[str, Tensor]:
    """Token ids of ``bos + prompt [+ target + eos]``, right-padded.

    Prompts are cut to ``max_text_tokens``; a target is never cut: one longer than
    ``max_target_tokens`` (None: no limit) is refused, naming it and its length, since a cut
    caption teaches the LLM windows that are not the ground truth.

    Returns ``input_ids``, ``attention_mask`` (B, T); with ``targets`` also ``labels`` (B, T), -100
    everywhere but the target tokens (and eos), and ``hide_from_anchors`` (B, T) bool, True from
    the first target token on (padding included; the anchors never read it anyway).
    """
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    rows, n_prompt = [], []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][:max_text_tokens]
        ids = ([bos] if bos is not None else []) + ids
        n_prompt.append(len(ids))
        if targets is not None:
            tgt = tokenizer(" " + targets[i], add_special_tokens=False)["input_ids"]
            if max_target_tokens is not None and len(tgt) > max_target_tokens:
                raise ValueError(f"the caption target {targets[i]!r} is {len(tgt)} tokens, more than "
                                 f"model.max_target_tokens={max_target_tokens}; raise it (or leave it unset: "
                                 "training then counts the longest caption of its data)")
            ids = ids + tgt + ([eos] if eos is not None else [])
        rows.append(ids)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, :len(r)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention}
    if targets is not None:
        pos = torch.arange(T)[None, :]
        start = torch.tensor(n_prompt)[:, None]
        out["hide_from_anchors"] = pos >= start  # (B, T)
        out["labels"] = input_ids.masked_fill(~out["hide_from_anchors"] | (attention == 0), -100)
    return out


# ----------------------------------------------------------------------------- adapter


def sine_positions(n: int, dim: int, device=None) -> Tensor:
    """(n, dim) fixed sinusoidal embeddings of positions 0..n-1 (Vaswani et al.; Moment-DETR adds
    such embeddings to the clips): lets attention pick clips by where they are, which the two
    linear temporal endpoint features alone cannot."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


def _keep_one(mask: Tensor) -> Tensor:
    """Key-padding masks with an all-padding row make attention NaN; let such rows see key 0."""
    mask = mask.bool().clone()
    mask[:, 0] |= ~mask.any(dim=1)
    return mask


class CrossAttentionLayer(nn.Module):
    """Pre-norm block: video queries attend to text keys/values, then a feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        # A learnable extra key/value ("attend to nothing"): all tokens of a query share its topic,
        # so without it the softmax over text keys cancels how well a clip matches the query;
        # against a fixed key, the weight on the text grows with the clip-query match.
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True, add_bias_kv=True)
        self.ff = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(4 * hidden, hidden))
        self.drop = nn.Dropout(dropout)

    def forward(self, video: Tensor, text: Tensor, text_keep: Tensor) -> Tensor:
        """video (B, Lv, H), text (B, Lt, H), text_keep (B, Lt) bool -> (B, Lv, H)."""
        kv = self.norm_kv(text)
        att, _ = self.attn(self.norm_q(video), kv, kv, key_padding_mask=~text_keep, need_weights=False)
        video = video + self.drop(att)
        return video + self.drop(self.ff(self.norm_ff(video)))


class VideoAdapter(nn.Module):
    """Eq. 1: text-conditioned clip tokens at the LLM width.

    video (B, Lv, Dv), text (B, Lt, Dt) -> (B, Lv, llm_hidden).
    """

    def __init__(self, video_dim: int, text_dim: int, llm_hidden: int, cfg: LLaViLoConfig):
        super().__init__()
        h = cfg.adapter_hidden
        if h % cfg.heads:
            raise ValueError(f"model.heads={cfg.heads} must divide model.adapter_hidden={h}")
        self.video_in = nn.Linear(video_dim, h)
        self.text_in = nn.Linear(text_dim, h)
        self.cross = nn.ModuleList(CrossAttentionLayer(h, cfg.heads, cfg.dropout) for _ in range(cfg.cross_layers))
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(h, cfg.heads, 4 * h, cfg.dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(cfg.encoder_layers))
        self.project = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                     nn.Linear(h, llm_hidden), nn.LayerNorm(llm_hidden))

    def forward(self, video: Tensor, video_mask: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        x = self.video_in(video)  # (B, Lv, h)
        x = x + sine_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        t = self.text_in(text)  # (B, Lt, h)
        text_keep, video_keep = _keep_one(text_mask), _keep_one(video_mask)
        for layer in self.cross:
            x = layer(x, t, text_keep)
        for layer in self.encoder:
            x = layer(x, src_key_padding_mask=~video_keep)
        return self.project(x)  # (B, Lv, llm_hidden)


# ----------------------------------------------------------------------------- head


class MomentHead(nn.Module):
    """Anchor states (B, J, H) -> ``pred_spans`` (B, J, 2) cxw in [0, 1], ``pred_logits`` (B, J, 2)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.span = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2))
        self.cls = nn.Linear(hidden, 2)

    def forward(self, states: Tensor) -> dict[str, Tensor]:
        return {"pred_spans": self.span(states).sigmoid(), "pred_logits": self.cls(states)}


# ----------------------------------------------------------------------------- the model


class LLaViLoModel(nn.Module):
    """The whole LLaViLo model; only adapter, gates, anchors and head train.

    Parameters
    ----------
    llm : LlamaForCausalLM, frozen here
    tokenizer : its tokenizer (a plain attribute, not a module)
    video_dim, text_dim : widths of the ``video`` (tef included) and ``text`` columns
    cfg : the ``model:`` section
    """

    def __init__(self, llm, tokenizer, video_dim: int, text_dim: int, cfg: LLaViLoConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.injected = InjectedLlama(llm, cfg.top_n, cfg.num_anchors, cfg.gradient_checkpointing)
        hidden = llm.config.hidden_size
        self.adapter = VideoAdapter(video_dim, text_dim, hidden, cfg)
        self.head = MomentHead(hidden)
        # opt-in per-clip relevance from the video tokens: a direct signal for the adapter
        # (Moment-DETR's saliency head), so it learns to localise before the gates have opened
        self.saliency = nn.Linear(hidden, 1) if cfg.saliency_weight > 0 else None

    def prompts(self, queries: Sequence[str]) -> list[str]:
        return [f"{self.cfg.instruction} query: {q}" if self.cfg.use_instruction else q for q in queries]

    def text_inputs(self, batch: dict[str, Tensor], with_target: bool) -> dict[str, Tensor]:
        """Tokens for the LLM from ``query_bytes`` (+ ``windows``/``n_windows`` as the target)."""
        targets = None
        if with_target:
            windows = batch["windows"].float().cpu().numpy()
            n = batch["n_windows"].cpu().numpy()
            targets = [format_windows(windows[i, :int(n[i])]) for i in range(len(n))]
        out = build_text_inputs(self.tokenizer, self.prompts(decode_queries(batch["query_bytes"])), targets,
                                max_text_tokens=self.cfg.max_text_tokens,
                                max_target_tokens=self.cfg.max_target_tokens)
        return {k: v.to(batch["video"].device) for k, v in out.items()}

    def forward(self, batch: dict[str, Tensor], with_target: bool = False) -> dict[str, Any]:
        """batch: ``video`` (B, Lv, Dv), ``video_mask`` (B, Lv), ``text`` (B, Lt, Dt), ``text_mask``,
        ``query_bytes`` (B, Lq) uint8 [, ``windows`` (B, W, 2) s, ``n_windows`` (B,) for the target].

        Returns ``pred_spans``/``pred_logits`` (B, J, 2), ``saliency`` (B, Lv) clip logits, ``aux_outputs`` (one such dict per lower
        injected layer), ``logits`` (B, T, vocab) and ``caption_loss`` (scalar or None).
        """
        text = self.text_inputs(batch, with_target)
        tokens = self.adapter(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
        out = self.injected(text["input_ids"], text["attention_mask"], tokens, labels=text.get("labels"),
                            video_mask=_keep_one(batch["video_mask"]),
                            hide_from_anchors=text.get("hide_from_anchors"))
        # The frozen LLM may hold another dtype than the trained parts (model.llm_dtype): the
        # anchor states enter the head in the head's dtype.
        head_dtype = self.head.cls.weight.dtype
        saliency = (self.saliency(tokens).squeeze(-1) if self.saliency is not None
                    else tokens.new_zeros(tokens.shape[:2]))  # (B, Lv)
        result = {**self.head(out.anchor_states.to(head_dtype)), "logits": out.logits, "caption_loss": out.loss,
                  "saliency": saliency, "aux_outputs": []}
        if self.cfg.aux_loss:
            norm = self.injected.llm.model.norm  # frozen, shared by every layer's anchors
            result["aux_outputs"] = [self.head(norm(s).to(head_dtype)) for s in out.layer_anchor_states[:-1]]
        return result
