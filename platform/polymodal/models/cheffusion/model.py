"""ChefFusion: a frozen LM that reads food images and writes recipes and [IMG] tokens, whose
states a mapper turns into Stable Diffusion prompt embeddings (Li et al., CIKM 2024, on GILL).

One block per class:

* ``W_recipe`` (``nn.Linear``): CLIP pooled feature (B, d_clip) -> k LM input embeddings
  (B, k, e). Loss ``l_r`` (Eq. 1): NLL of the recipe after them.
* :class:`ImgTokens`: the m new rows ``[IMG1..IMGm]``, input embeddings (and output rows when
  the LM does not tie them), kept apart from the frozen vocabulary so that it cannot change.
  Loss ``l_p`` (Eq. 2): NLL of ``[IMG1]`` right after the recipe (where the LM would end it).
* :class:`Mapper` ``f_w``: the [IMG] tokens' last hidden states with their input embeddings
  -> r -> encoder/decoder transformer with L learned queries -> (B, L, d_sd). Loss ``l_g``
  (Eq. 3): regression to ``T_psi(recipe)``, the SD text encoder's prompt embeddings.

Token ids live in one combined space: ``0..V-1`` the rows of the LM's embedding, ``V..V+m-1``
the [IMG] tokens. V is the embedding's row count, which may exceed the tokenizer's length (OPT-6.7B:
50272 rows, 50265 tokens), so an [IMG] id can never name an existing row; the rows past the
tokenizer have no text and are never generated. The [IMG] tokens are not in the tokenizer: a text
that spells ``[IMG1]`` is tokenized as the characters it is, and only the model places [IMG]
tokens (:meth:`ChefFusion.with_img_tokens`). Text is tokenized here, not in ``Task.collate``,
which has no tokenizer; collate passes UTF-8.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import CheffusionConfig

MODES = ("t2t", "i2t", "t2i", "it2t", "t2ti")


class ImgTokens(nn.Module):
    """The m trainable token rows.

    ``forward(ids=...)`` embeds combined-space ids ``>= vocab`` (others give zeros);
    ``forward(hidden=...)`` gives their output logits (B, ..., m). One module, so ZeRO-3
    gathers the rows for both uses (it gathers parameters only around a module's forward).
    """

    def __init__(self, m: int, in_dim: int, out_dim: int, vocab: int, tied: bool, init_std: float):
        super().__init__()
        self.vocab = vocab
        self.input = nn.Parameter(torch.randn(m, in_dim) * init_std)
        self.output = None if tied else nn.Parameter(torch.randn(m, out_dim) * init_std)

    def forward(self, ids: Tensor | None = None, hidden: Tensor | None = None) -> Tensor:
        if hidden is not None:
            weight = self.input if self.output is None else self.output
            return hidden @ weight.to(hidden.dtype).t()
        j = (ids - self.vocab).clamp(0, self.input.shape[0] - 1)
        return self.input[j] * (ids >= self.vocab)[..., None].to(self.input.dtype)


class Mapper(nn.Module):
    """``f_w``: (B, m, d_in) [IMG] features -> (B, L, d_sd) SD prompt embeddings.

    Encoder over the m projected tokens, decoder from L learned queries (GILL's GILLMapper shape:
    pre-norm, feed-forward 4r, no dropout)."""

    def __init__(self, in_dim: int, width: int, out_dim: int, n_queries: int, layers: int, heads: int):
        super().__init__()
        self.proj_in = nn.Linear(in_dim, width)
        # nn.Transformer's own encoder, built here only to say that it takes no nested tensors
        # (pre-norm layers cannot; left implicit, torch warns on every build). Same modules, same
        # parameter names, same initialisation.
        encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True),
            layers, nn.LayerNorm(width), enable_nested_tensor=False)
        self.transformer = nn.Transformer(d_model=width, nhead=heads, num_encoder_layers=layers,
                                          num_decoder_layers=layers, dim_feedforward=4 * width, dropout=0.0,
                                          batch_first=True, norm_first=True, custom_encoder=encoder)
        self.queries = nn.Parameter(torch.randn(n_queries, width) * 0.02)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        src = self.proj_in(x)  # (B, m, r)
        tgt = self.queries.to(src.dtype)[None].expand(src.shape[0], -1, -1)  # (B, L, r)
        return self.proj_out(self.transformer(src, tgt))  # (B, L, d_sd)


class _Frozen(dict):
    """Holder of the generation backbones: a deep copy of the model (an adapter clone) shares them."""

    def __deepcopy__(self, memo: dict) -> "_Frozen":
        return self


@dataclass
class Generation:
    """One ``generate`` result: ``items`` interleaves text (str) and images (PIL) in order."""

    mode: str
    items: list[Any] = field(default_factory=list)
    img_tokens: bool = False  # the LM produced (or was given) [IMG1..IMGm]
    stopped: bool = True  # False: the text ran to max_new_tokens without EOS or [IMG1]

    @property
    def text(self) -> str:
        return "".join(i for i in self.items if isinstance(i, str))

    @property
    def images(self) -> list[Any]:
        return [i for i in self.items if not isinstance(i, str)]


class ChefFusion(nn.Module):
    """The trainable parts around a frozen LM; CLIP and SD load on first use (generation only)."""

    def __init__(self, cfg: CheffusionConfig, lm: nn.Module, tokenizer: Any, opts: Any = None):
        super().__init__()
        self.cfg, self.opts = cfg, opts
        self.lm = lm.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        emb_in, emb_out = lm.get_input_embeddings(), lm.get_output_embeddings()
        #: V: rows of the LM's embedding; the [IMG] tokens are V..V+m-1
        self.vocab = emb_in.num_embeddings
        #: token ids the tokenizer can write and read (<= V; the rest are rows without text)
        self.n_text = len(tokenizer)
        if self.n_text > self.vocab or emb_out.out_features != self.vocab:
            raise ValueError(f"model.lm: the tokenizer has {self.n_text} tokens, the input embedding "
                             f"{self.vocab} rows and the output layer {emb_out.out_features}: every token "
                             "needs a row in both")
        e_in, e_out = emb_in.embedding_dim, emb_out.in_features
        tied = emb_out.weight is emb_in.weight
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        std = float(emb_in.weight.detach().float().std())
        self.w_recipe = nn.Linear(cfg.clip_dim, cfg.k * e_in)
        self.img = ImgTokens(cfg.m, e_in, e_out, self.vocab, tied, std)
        self.mapper = Mapper(e_out + e_in, cfg.mapper_dim, cfg.sd_dim, cfg.sd_tokens, cfg.mapper_layers,
                             cfg.mapper_heads)
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.base_model.forward).parameters else "past_key_values"
        self._aux = _Frozen()  # clip / sd, outside the parameter tree (never trained, never exported)

    def train(self, mode: bool = True) -> "ChefFusion":
        super().train(mode)
        self.lm.eval()  # frozen: no dropout
        return self

    # ------------------------------------------------------------------ text

    @property
    def device(self) -> torch.device:
        return self.w_recipe.weight.device

    def tokenize(self, texts: Sequence[str], *, eos: bool, max_tokens: int | None = None) -> tuple[Tensor, Tensor]:
        """B strings -> combined-space ids (B, T) and lengths (B,); ``bos text [eos]``, right-padded.

        Every id is a text token (< :attr:`n_text`), ``[IMG1]`` written in a text included;
        ``max_tokens`` cuts the text."""
        max_tokens = max_tokens or self.cfg.max_recipe_tokens
        enc = self.tokenizer([str(t) for t in texts], add_special_tokens=False, truncation=True,
                             max_length=max_tokens - 1 - int(eos)).input_ids
        rows = [([self.bos] if self.bos is not None else []) + list(ids) + ([self.eos] if eos else []) for ids in enc]
        lengths = torch.tensor([len(r) for r in rows])
        out = torch.full((len(rows), max(1, int(lengths.max()))), self.pad, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(self.device), lengths.to(self.device)

    def text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each whole text (no bos / eos, never cut)."""
        return [len(ids) for ids in self.tokenizer([str(t) for t in texts], add_special_tokens=False).input_ids]

    def decode(self, ids: Sequence[int]) -> str:
        text_ids = [i for i in ids if i < self.n_text and i not in (self.eos, self.pad, self.bos)]
        return self.tokenizer.decode(text_ids, skip_special_tokens=True).strip()

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) combined ids -> (B, T, e) input embeddings (frozen rows + [IMG] rows)."""
        emb = self.lm.get_input_embeddings()(ids.clamp_max(self.vocab - 1))
        is_img = (ids >= self.vocab)[..., None]
        return torch.where(is_img, self.img(ids=ids).to(emb.dtype), emb)

    def hidden(self, x: Tensor, mask: Tensor, **kw: Any):
        """The LM's last hidden states (after its final norm) for input embeddings ``x``."""
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        if kw.get(self._cache_kw) is not None:
            pos = pos[:, -x.shape[1]:]
        x = x.to(self.lm.get_input_embeddings().weight.dtype)  # a bf16 LM beside fp32 trainable parts
        return self.lm.base_model(inputs_embeds=x, attention_mask=mask, position_ids=pos, **kw)

    def logits(self, h: Tensor) -> Tensor:
        """(..., e) -> (..., V + m) over the combined vocabulary."""
        return torch.cat([self.lm.get_output_embeddings()(h), self.img(hidden=h)], dim=-1)

    def image_prefix(self, clip_image: Tensor) -> Tensor:
        """``W_recipe``: (B, d_clip) -> (B, k, e)."""
        e = self.lm.get_input_embeddings().embedding_dim
        w = self.w_recipe.weight
        return self.w_recipe(clip_image.to(w.device, w.dtype)).view(len(clip_image), self.cfg.k, e)

    # ------------------------------------------------------------------ losses

    def recipe_nll(self, clip_image: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """``l_r`` per row (B,): mean NLL of ``text + eos`` after ``[W_recipe(v); bos]``."""
        k = self.cfg.k
        x = torch.cat([self.image_prefix(clip_image), self.embed(ids)], dim=1)  # (B, k+T, e)
        t = ids.shape[1]
        real = torch.arange(t, device=ids.device)[None] < lengths[:, None]  # (B, T)
        mask = torch.cat([torch.ones(len(ids), k, dtype=torch.bool, device=ids.device), real], dim=1).long()
        h = self.hidden(x, mask).last_hidden_state[:, k:k + t - 1]  # predicts tokens 1..T-1
        nll = F.cross_entropy(self.logits(h).float().transpose(1, 2), ids[:, 1:], reduction="none")
        target = real[:, 1:].float()
        return (nll * target).sum(1) / target.sum(1).clamp_min(1)

    def with_img_tokens(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append ``[IMG1..IMGm]`` right after each row's last token: ids (B, T+m), mask, and
        positions (B, m) of the [IMG] tokens."""
        m = self.cfg.m
        b, t = ids.shape
        out = torch.cat([ids, torch.full((b, m), self.pad, dtype=ids.dtype, device=ids.device)], dim=1)
        pos = lengths[:, None] + torch.arange(m, device=ids.device)[None]  # (B, m)
        out.scatter_(1, pos, (self.vocab + torch.arange(m, device=ids.device))[None].expand(b, -1))
        mask = (torch.arange(t + m, device=ids.device)[None] < (lengths + m)[:, None]).long()
        return out, mask, pos

    def img_states(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """For texts (no eos) followed by the [IMG] tokens: logits (B, V+m) at the last text
        token (what comes next?) and the mapper output (B, L, d_sd)."""
        full, mask, pos = self.with_img_tokens(ids, lengths)
        x = self.embed(full)
        h = self.hidden(x, mask).last_hidden_state  # (B, T+m, e_out)
        last = h.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]  # (B, e_out)
        idx = pos[..., None]
        h_img = h.gather(1, idx.expand(-1, -1, h.shape[-1]))  # (B, m, e_out)
        e_img = x.gather(1, idx.expand(-1, -1, x.shape[-1]))  # (B, m, e_in)
        feats = torch.cat([h_img, e_img.to(h_img.dtype)], dim=-1).to(self.mapper.queries.dtype)
        return self.logits(last), self.mapper(feats)

    def gen_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """``l_g`` per row (B,): ``mse`` mean over (L, d) or ``l2`` per-token squared distance, averaged."""
        sq = (pred.float() - target.to(pred.device).float()) ** 2
        return sq.mean((1, 2)) if self.cfg.gen_loss == "mse" else sq.sum(-1).mean(-1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-row losses ``l_r``, ``l_p``, ``l_g`` (B,) and the weighted batch ``loss``.

        ``batch``: ``recipe_bytes`` (B, Lb) uint8, ``clip_image`` (B, d_clip), ``sd_target`` (B, L, d_sd)."""
        from polymodal.text import decode_texts

        texts = decode_texts(batch["recipe_bytes"])
        ids, lengths = self.tokenize(texts, eos=True)
        l_r = self.recipe_nll(batch["clip_image"], ids, lengths)
        # l_p / l_g: the same text without eos, [IMG1] must come where the recipe ends
        next_logits, pred = self.img_states(ids, lengths - 1)
        l_p = F.cross_entropy(next_logits.float(), torch.full_like(lengths, self.vocab), reduction="none")
        l_g = self.gen_loss(pred, batch["sd_target"])
        c = self.cfg
        loss = (c.w_recipe * l_r + c.w_img_token * l_p + c.w_gen * l_g).mean()
        return {"loss": loss, "l_r": l_r, "l_p": l_p, "l_g": l_g}

    # ------------------------------------------------------------------ generation

    def _backbone(self, name: str):
        if name not in self._aux:
            from .backbones import load_clip, load_sd

            dtype = torch.float32 if self.device.type == "cpu" else next(self.lm.parameters()).dtype
            if name == "sd":
                self._aux[name] = load_sd(self.cfg.sd, self.opts, dtype, self.device)
            else:
                self._aux[name] = load_clip(self.cfg.clip, self.opts, dtype, self.device)
        return self._aux[name]

    def clip_features(self, images: Sequence[Any]) -> Tensor:
        """``v_phi``: (N, d_clip) pooled CLIP features of N PIL images."""
        from .backbones import clip_image_features

        model, processor = self._backbone("clip")
        return clip_image_features(model, processor, images)

    @torch.no_grad()
    def greedy_text(self, ids: Tensor, lengths: Tensor, prefix: Tensor | None, *, allow_img: bool,
                    max_new_tokens: int) -> tuple[list[list[int]], list[bool]]:
        """Greedy continuation of ``[prefix; ids]`` (ids (B, T) right-padded as from :meth:`tokenize`;
        the batch runs left-padded, with a KV cache).

        Stops a row at eos, or at ``[IMG1]`` when ``allow_img`` (the other [IMG] tokens are never
        sampled: they are forced after [IMG1]). Returns the new ids per row (without the stop
        token) and whether each row stopped at ``[IMG1]``."""
        b, t = ids.shape
        k = 0 if prefix is None else prefix.shape[1]
        width = k + t
        # left-pad: row i's real tokens end at the last column
        x = torch.zeros(b, width, self.lm.get_input_embeddings().embedding_dim, device=self.device,
                        dtype=next(self.lm.parameters()).dtype)
        mask = torch.zeros(b, width, dtype=torch.long, device=self.device)
        emb = self.embed(ids)
        for i in range(b):
            n = int(lengths[i])
            if prefix is not None:
                x[i, width - n - k:width - n] = prefix[i].to(x.dtype)
            x[i, width - n:] = emb[i, :n]
            mask[i, width - n - k:] = 1
        out = self.hidden(x, mask, use_cache=True)
        cache = getattr(out, self._cache_kw)
        h = out.last_hidden_state[:, -1]
        new: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=self.device)
        to_img = [False] * b
        for _ in range(max_new_tokens):
            logits = self.logits(h).float()
            logits[:, self.n_text:self.vocab] = float("-inf")  # rows without text
            logits[:, self.vocab + (1 if allow_img else 0):] = float("-inf")
            nxt = logits.argmax(-1)
            for i in range(b):
                if done[i]:
                    continue
                tok = int(nxt[i])
                if tok == self.eos or tok == self.vocab:
                    to_img[i] = tok == self.vocab
                    done[i] = True
                else:
                    new[i].append(tok)
            if bool(done.all()):
                break
            nxt = torch.where(done, torch.full_like(nxt, self.pad), nxt)
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=mask.device)], dim=1)
            out = self.hidden(self.embed(nxt[:, None]), mask, use_cache=True, **{self._cache_kw: cache})
            cache = getattr(out, self._cache_kw)
            h = out.last_hidden_state[:, -1]
        return new, to_img

    @torch.no_grad()
    def sd_embeddings(self, texts: Sequence[str]) -> Tensor:
        """(B, L, d_sd): ``f_w`` of ``bos text [IMG1..IMGm]`` for B texts (the t2i path)."""
        ids, lengths = self.tokenize(texts, eos=False)
        return self.img_states(ids, lengths)[1]

    def _extend(self, ids: Tensor, lengths: Tensor, new: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Rows of ``ids`` (B, T) with ``new`` tokens appended after their ``lengths``."""
        rows = [ids[i, :int(lengths[i])].tolist() + new[i] for i in range(len(new))]
        out = torch.full((len(rows), max(len(r) for r in rows)), self.pad, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(self.device), torch.tensor([len(r) for r in rows], device=self.device)

    def _empty_prompt_embeds(self, pipe, length: int) -> Tensor:
        """(1, L, d_sd): the SD text encoder on "" (padded to L tokens), which the pipeline would
        otherwise recompute as the negative prompt on every call; cached (the encoder is frozen)."""
        key = f"empty{length}"
        if key not in self._aux:
            from .backbones import sd_text_targets

            self._aux[key] = sd_text_targets(pipe.tokenizer, pipe.text_encoder, [""]).to(pipe.unet.dtype)
        return self._aux[key]

    @torch.no_grad()
    def render(self, prompt_embeds: Tensor, seeds: Sequence[int], *, steps: int | None = None,
               guidance: float | None = None, output_type: str = "pil") -> list[Any]:
        """SD images from (B, L, d_sd) prompt embeddings, one seeded generator per row (a row's
        image does not depend on the batch it is in)."""
        pipe = self._backbone("sd")
        gens = [torch.Generator(device=pipe.device).manual_seed(int(s)) for s in seeds]
        scale = self.cfg.guidance if guidance is None else guidance
        negative = None
        if scale > 1:  # classifier-free guidance: the unconditional branch reads T_psi("")
            negative = self._empty_prompt_embeds(pipe, prompt_embeds.shape[1]).expand(len(prompt_embeds), -1, -1)
        out = pipe(prompt_embeds=prompt_embeds.to(pipe.unet.dtype), negative_prompt_embeds=negative,
                   num_inference_steps=steps or self.cfg.steps, guidance_scale=scale, generator=gens,
                   output_type=output_type)
        return list(out.images)

    @torch.no_grad()
    def generate(self, mode: str, *, texts: Sequence[str | None] | None = None, images: Sequence[Any] | None = None,
                 clip_image: Tensor | None = None, seeds: Sequence[int] | int = 0, steps: int | None = None,
                 guidance: float | None = None, max_new_tokens: int | None = None) -> list[Generation]:
        """One API for the five task types, batched (B rows of one ``mode``):

        * ``t2t``: text -> text; ``i2t``: image -> recipe; ``it2t``: image + text -> text;
        * ``t2i``: recipe -> image (``[IMG1..IMGm]`` forced after the text);
        * ``t2ti``: text -> text, and an image if the LM produces ``[IMG1]`` (the rest are forced).

        Images come as PIL ``images`` or precomputed ``clip_image`` (B, d_clip) features.
        ``seeds``: one per row or one for all; ``steps`` / ``guidance`` default to the config's.
        """
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        needs_image, needs_text = mode in ("i2t", "it2t"), mode in ("t2t", "t2i", "it2t", "t2ti")
        n = len(texts) if texts is not None else len(images) if images is not None else (
            len(clip_image) if clip_image is not None else 0)
        if n == 0:
            raise ValueError(f"generate({mode!r}) needs {'images and ' if needs_image else ''}"
                             f"{'texts' if needs_text else 'images'}")
        if needs_text and (texts is None or any(t is None or not str(t).strip() for t in texts)):
            raise ValueError(f"mode {mode!r} needs a non-empty text per row")
        if needs_image and images is None and clip_image is None:
            raise ValueError(f"mode {mode!r} needs an image per row (images= or clip_image=)")
        seeds = [int(seeds)] * n if isinstance(seeds, int) else [int(s) for s in seeds]
        prompts = [str(t) if t is not None else "" for t in (texts or [None] * n)]
        results = [Generation(mode) for _ in range(n)]
        if mode == "t2i":
            for r, img in zip(results, self.render(self.sd_embeddings(prompts), seeds, steps=steps, guidance=guidance)):
                r.items, r.img_tokens = [img], True
            return results
        prefix = None
        if needs_image:
            feats = clip_image if clip_image is not None else self.clip_features(images)
            prefix = self.image_prefix(feats.to(self.device))
        ids, lengths = self.tokenize(prompts, eos=False)
        new, to_img = self.greedy_text(ids, lengths, prefix, allow_img=mode == "t2ti",
                                       max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
        cap = max_new_tokens or self.cfg.max_new_tokens
        for r, toks, img in zip(results, new, to_img):
            text = self.decode(toks)
            r.items = [text] if text else []
            r.stopped = img or len(toks) < cap  # a row appends one token per step until it stops
        rows = [i for i in range(n) if to_img[i]]
        if rows:
            # the image reads the [IMG] states after the prompt and the text written so far
            full, full_len = self._extend(ids[rows], lengths[rows], [new[i] for i in rows])
            embeds = self.img_states(full, full_len)[1]
            imgs = self.render(embeds, [seeds[i] for i in rows], steps=steps, guidance=guidance)
            for i, img in zip(rows, imgs):
                results[i].items.append(img)
                results[i].img_tokens = True
        return results


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))
