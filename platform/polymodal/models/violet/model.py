"""VIOLET: one BERT encoder over [video tokens, [CLS], text] (Fu et al., 'VIOLET: End-to-End
Video-Language Transformers with Masked Visual-token Modeling').

The diagram, one block each:

* :class:`VideoEncoder`: frames (B, T, 3, S, S) -> a grid of video tokens (B, T', H', W', C).
  The backbone (``model.visual``) is torchvision's Video Swin ``swin3d_t / s / b``
  (:mod:`.swin3d`, one-frame patches, its last stage's 32-px tokens; Kinetics-400 weights from
  ``visual_weights``) or the small one-stage :class:`.swin.VideoSwin` of tests and demos.
  ``video_encoder: swin`` runs it over the whole T x H x W clip; the ablations of the paper's
  temporal-modelling study (Table 3) encode each frame alone (the same backbone on a one-frame
  video, so no attention crosses frames) and then either average the frames (``mean``) or lay
  their tokens side by side (``concat``).
* :class:`Violet`: a Linear from the Swin width to BERT's, plus p_v = p_s + p_t (Eq. 2) and a
  LayerNorm, BERT's own embeddings for the text (word + position + type, giving ``w + p_x``), and
  BERT's encoder over the concatenation
  ``[v + p_v, CLS, w + p_x]``: every video token attends to every text token and back, in one
  transformer (not two towers). The text comes from the tokenizer as ``[CLS] w [SEP]``, so its first
  token is the [CLS] whose state ``h_cls`` feeds the VTM and downstream heads.
* Heads: VTM (match / no match on ``h_cls``), MLM (BERT's own prediction head, decoder tied to the
  word embeddings), MVM (a Linear over video token states into the visual tokenizer's codes), and the
  open-ended QA classifier. Retrieval and multiple-choice QA reuse the VTM head, so a pre-trained
  model already ranks texts, videos and options zero-shot.
* Losses are plain functions (:func:`vtm_loss`, :func:`mlm_loss`, :func:`mvm_loss`,
  :func:`combine_losses`); :func:`vtm_pairs` builds the in-batch negatives.

The masks themselves (MLM 80/10/10, blockwise / attended video masks, MVM targets) come from
:mod:`polymodal.models.violet.masking`; :meth:`Violet.attention_probs` gives the attention that
attended masking ranks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.models.violet.config import VioletConfig
from polymodal.models.violet.masking import IGNORE
from polymodal.models.violet import swin3d
from polymodal.models.violet.swin import VideoSwin

__all__ = ["VideoEncoder", "Violet", "derangement", "vtm_pairs", "vtm_loss", "mlm_loss", "mvm_loss",
           "masked_head_loss", "combine_losses"]


# ----------------------------------------------------------------------------- losses


def derangement(n: int, generator: torch.Generator) -> Tensor:
    """(n,) long permutation with no fixed point: ``d[i] != i`` for every i.

    A uniformly random n-cycle: visit 0..n-1 in a random order and send each to the next one
    visited. It needs no rejection loop and exists for every n >= 2.
    """
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}; in-batch negatives need a batch of >= 2")
    order = torch.randperm(n, generator=generator, device=generator.device).cpu()
    d = torch.empty(n, dtype=torch.long)
    d[order] = order.roll(-1)
    return d


def vtm_pairs(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """In-batch pairs for video-text matching: every positive plus one negative per video.

    Video i is paired with its own text (label 1) and with the text of sample ``d[i]`` of a random
    :func:`derangement` (label 0), so every negative pairs a video with another sample's text.

    Returns
    -------
    (video_index, text_index, labels), each (2 * batch,) long on the CPU: positives first.
    """
    videos = torch.arange(batch)
    texts = torch.cat([videos, derangement(batch, generator)])
    labels = torch.cat([torch.ones(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long)])
    return videos.repeat(2), texts, labels


def vtm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the VTM head: logits (N, 2) (class 1 = match), labels (N,) in {0, 1}."""
    return F.cross_entropy(logits.float(), labels)


def _masked_ce(logits: Tensor, labels: Tensor, name: str) -> Tensor:
    """Mean cross-entropy over the positions whose label is not :data:`IGNORE`; logits (..., K), labels (...)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)} "
                         "(labels must have the logits' shape without the class axis)")
    if not bool((labels != IGNORE).any()):
        # Nothing masked in the batch: torch's mean over zero items is NaN; a zero keeps the graph.
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE)


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """MLM: logits (B, L, vocab), labels (B, L) holding the original id at masked tokens, -100 elsewhere."""
    return _masked_ce(logits, labels, "mlm_loss")


def mvm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """MVM: logits (B, Nv, visual_vocab), labels (B, Nv) or (B, T, H', W') (as :func:`masking.mvm_labels`
    gives; flattened in (t, h, w) order, the order of the video tokens), the code at masked patches,
    -100 elsewhere."""
    return _masked_ce(logits, labels.flatten(1), "mvm_loss")


def masked_head_loss(head: nn.Module, states: Tensor, labels: Tensor, name: str) -> Tensor:
    """:func:`mlm_loss` / :func:`mvm_loss` of ``head(states)`` with the head run only where a label is.

    states (B, N, D), labels (B, N) (:data:`IGNORE` where nothing is predicted). Equal to the mean
    cross-entropy over the labelled positions of the full logits, without computing the ~85 % of
    (B, N, classes) logits that carry no label (the 8192-way MVM head over every patch costs half a
    small BERT).
    """
    if states.shape[:-1] != labels.shape:
        raise ValueError(f"{name}: states {tuple(states.shape)} do not match labels {tuple(labels.shape)}")
    chosen = labels != IGNORE
    if not bool(chosen.any()):
        return states.sum() * 0.0  # nothing masked: keep the graph, as _masked_ce does
    return F.cross_entropy(head(states[chosen]).float(), labels[chosen])


def combine_losses(losses: dict[str, Tensor], cfg: VioletConfig) -> Tensor:
    """Weighted sum of the switched-on objectives among ``vtm``, ``mlm`` and ``mvm`` present in ``losses``."""
    terms = [(name, weight) for name, on, weight in (("vtm", cfg.use_vtm, cfg.vtm_weight),
                                                     ("mlm", cfg.use_mlm, cfg.mlm_weight),
                                                     ("mvm", cfg.use_mvm, cfg.mvm_weight)) if on and name in losses]
    if not terms:
        raise ValueError(f"no switched-on objective among the losses {sorted(losses)}; turn on use_vtm, use_mlm "
                         "or use_mvm and compute its loss")
    return sum(weight * losses[name] for name, weight in terms)


# ----------------------------------------------------------------------------- video


class VideoEncoder(nn.Module):
    """Frames (B, T, 3, S, S) -> a grid of video tokens (B, T', H', W', visual_dim).

    The backbone is ``cfg.visual``: torchvision's ``swin3d_*`` layout (:mod:`.swin3d`, loaded from
    ``cfg.visual_weights`` unless ``load_weights`` is false) or the one-stage :class:`.swin.VideoSwin`.
    ``swin``: T' = T, the Video Swin over the whole clip. ``concat``: T' = T, each frame encoded
    alone (the same Swin on a one-frame video, so no attention crosses frames); :class:`Violet`'s
    temporal embedding is what tells the frames apart. ``mean``: T' = 1, each frame encoded alone
    then averaged, so the frame order cannot matter.
    """

    def __init__(self, cfg: VioletConfig, load_weights: bool = True):
        super().__init__()
        self.mode, self.max_frames, self.grid = cfg.video_encoder, cfg.max_frames, cfg.grid
        self.image_size = cfg.image_size
        if cfg.visual == "swin":
            self.swin = VideoSwin(cfg.swin_dim, cfg.swin_depth, cfg.swin_heads, image_size=cfg.image_size,
                                  patch_size=cfg.patch_size, window=cfg.swin_window, max_frames=cfg.max_frames,
                                  mlp_ratio=cfg.swin_mlp_ratio)
        else:
            self.swin = swin3d.build(cfg.visual, patch_size=swin3d.VIOLET_PATCH, embed_dim=cfg.swin3d_embed_dim,
                                     depths=cfg.swin3d_depths, num_heads=cfg.swin3d_heads,
                                     window_size=cfg.swin_window, stochastic_depth_prob=cfg.visual_drop_path)
            if cfg.visual_weights and load_weights:
                swin3d.load_torchvision_weights(self.swin, cfg.visual_weights, arch=cfg.visual)

    def backbone(self, frames: Tensor) -> Tensor:
        """(B, T, 3, S, S) -> (B, T, H', W', C) through the backbone, T kept."""
        if isinstance(self.swin, VideoSwin):
            return self.swin(frames)
        if frames.ndim != 5 or frames.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"frames must be (B, T, 3, {self.image_size}, {self.image_size}), got "
                             f"{tuple(frames.shape)}; resize/crop them to image_size")
        return self.swin.forward_features(frames.transpose(1, 2))  # torchvision's (B, C, T, H, W) in

    def num_tokens(self, frames: int) -> int:
        """Nv = T' * H' * W' for a video of ``frames`` frames."""
        return self.grid ** 2 * (1 if self.mode == "mean" else frames)

    def forward(self, frames: Tensor) -> Tensor:
        if self.mode == "swin":
            if frames.ndim != 5 or not 1 <= frames.shape[1] <= self.max_frames:
                raise ValueError(f"frames must be (B, T, 3, S, S) with 1 <= T <= max_frames={self.max_frames}, "
                                 f"got shape {tuple(frames.shape)}")
            return self.backbone(frames)  # (B, T, H', W', C)
        if frames.ndim != 5 or not 1 <= frames.shape[1] <= self.max_frames:
            raise ValueError(f"frames must be (B, T, 3, S, S) with 1 <= T <= max_frames={self.max_frames}, "
                             f"got shape {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        # Each frame a one-frame video: no attention across frames, and every frame gets the same p_t.
        x = self.backbone(frames.reshape(B * T, 1, *frames.shape[2:]))  # (B*T, 1, H', W', C)
        x = x.view(B, T, *x.shape[2:])  # (B, T, H', W', C)
        return x.mean(dim=1, keepdim=True) if self.mode == "mean" else x


# ----------------------------------------------------------------------------- model


def _mlp(width: int, out: int) -> nn.Sequential:
    """h_cls head: a hidden layer twice as wide, then the classes."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, out))


class Violet(nn.Module):
    """Video encoder + BERT over ``[video, CLS, text]`` + the VTM / MLM / MVM / answer heads.

    BERT and its tokenizer load from ``cfg.bert`` (``from_pretrained``: a local folder, or a hub id
    that is downloaded into the Hugging Face cache unless ``HF_HUB_OFFLINE=1``). The MLM head is
    ``BertForMaskedLM``'s (loaded from the checkpoint when it has one, its decoder tied to the word
    embeddings); the other heads start random. The video backbone loads ``cfg.visual_weights``
    unless ``load_visual_weights`` is false (a checkpoint about to overwrite it).
    """

    def __init__(self, cfg: VioletConfig, load_visual_weights: bool = True):
        super().__init__()
        from transformers import AutoTokenizer, BertForMaskedLM

        path = Path(cfg.bert)
        if path.is_absolute() or cfg.bert.startswith(".") or path.exists():
            if not path.is_dir():
                raise ValueError(f"model.bert {cfg.bert!r} is not a folder here; give a BERT save_pretrained folder "
                                 "with its tokenizer, an s3:// folder or a hub id (bert-base-uncased)")
        self.cfg = cfg
        try:
            bert = BertForMaskedLM.from_pretrained(cfg.bert)
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.bert)
        except OSError as exc:  # a hub id not cached while offline, a typo, no network
            raise ValueError(f"model.bert {cfg.bert!r}: not a local folder, and the hub says: {exc}") from None
        self.bert_config = bert.config
        if cfg.max_text_tokens > bert.config.max_position_embeddings:
            raise ValueError(f"max_text_tokens {cfg.max_text_tokens} exceeds BERT's max_position_embeddings "
                             f"{bert.config.max_position_embeddings}; lower max_text_tokens")
        if self.tokenizer.mask_token_id is None or self.tokenizer.cls_token_id is None:
            raise ValueError(f"the tokenizer in {cfg.bert!r} has no [MASK] or [CLS] token; use a BERT WordPiece "
                             "tokenizer")
        width = bert.config.hidden_size  # D
        self.embeddings = bert.bert.embeddings  # w + p_x (+ segment 0), LayerNorm, dropout
        self.encoder = bert.bert.encoder
        self.mlm_head = bert.cls  # BertOnlyMLMHead; decoder weight is embeddings.word_embeddings.weight
        self.video_encoder = VideoEncoder(cfg, load_weights=load_visual_weights)
        self.video_proj = nn.Linear(cfg.visual_dim, width)
        # p_v = p_s + p_t at the cross-modal encoder's input (Eq. 2), like p_x for the words: attention
        # there is otherwise blind to where and when a video token is.
        self.video_pos_spatial = nn.Parameter(torch.zeros(1, 1, cfg.grid, cfg.grid, width))  # (1, 1, H', W', D)
        self.video_pos_temporal = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, 1, width))  # (1, T_max, 1, 1, D)
        # and a LayerNorm, as BERT's text embeddings have: without one the projected video tokens start
        # ~10x smaller than the words and the encoder is slow to look at them.
        self.video_norm = nn.LayerNorm(width, eps=bert.config.layer_norm_eps)
        self.vtm_head = _mlp(width, 2)
        self.mvm_head = nn.Linear(width, cfg.visual_vocab)
        self.answer_head = _mlp(width, cfg.num_answers) if cfg.head == "oeqa" else None
        for module in (self.video_proj, self.vtm_head, self.mvm_head, self.answer_head):
            if module is not None:
                module.apply(self._init_like_bert)
        for pos in (self.video_pos_spatial, self.video_pos_temporal):
            nn.init.normal_(pos, std=self.bert_config.initializer_range)
        self.train()  # from_pretrained leaves BERT in eval mode; start uniform, callers pick the mode

    def _init_like_bert(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=self.bert_config.initializer_range)
            nn.init.zeros_(module.bias)

    @property
    def width(self) -> int:
        """D: BERT's hidden size."""
        return self.bert_config.hidden_size

    @property
    def pixel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) frames in [0, 1] are standardised with: the visual weights' own (``cfg.pixel_stats``)."""
        return self.cfg.pixel_stats

    @property
    def mask_token_id(self) -> int:
        return int(self.tokenizer.mask_token_id)

    # -- trunk -----------------------------------------------------------------------------------------

    def encode_video(self, frames: Tensor) -> Tensor:
        """Frames (B, T, 3, S, S) -> video tokens LayerNorm(v + p_v), (B, Nv, D) in (t, h, w) order."""
        v = self.video_proj(self.video_encoder(frames))  # (B, T', H', W', D)
        v = v + self.video_pos_spatial + self.video_pos_temporal[:, :v.shape[1]]
        return self.video_norm(v).flatten(1, 3)

    def fuse(self, video: Tensor, input_ids: Tensor, attention_mask: Tensor,
             output_attentions: bool = False) -> dict[str, Tensor]:
        """BERT's encoder over ``[video, CLS, text]``.

        Parameters
        ----------
        video : (B, Nv, D) from :meth:`encode_video`
        input_ids : (B, L) ``[CLS] w [SEP] [PAD]...`` token ids
        attention_mask : (B, L), 1 for real tokens, 0 for padding (video tokens are never padding)
        output_attentions : also return ``attentions`` (layers, B, heads, Nv + L, Nv + L)

        Returns
        -------
        dict: ``video`` (B, Nv, D), ``cls`` (B, D), ``text`` (B, L, D) (position 0 is [CLS]), and
        ``attentions`` when asked.
        """
        B, Nv, _ = video.shape
        if input_ids.ndim != 2 or input_ids.shape[0] != B or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (B={B}, L), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        if input_ids.shape[1] > self.bert_config.max_position_embeddings:
            raise ValueError(f"{input_ids.shape[1]} text tokens exceed BERT's max_position_embeddings "
                             f"{self.bert_config.max_position_embeddings}; truncate to max_text_tokens")
        text = self.embeddings(input_ids=input_ids)  # (B, L, D): w + p_x, positions counted from the [CLS]
        x = torch.cat([video.to(text.dtype), text], dim=1)  # (B, Nv + L, D)
        keep = torch.cat([attention_mask.new_ones(B, Nv), attention_mask], dim=1).to(x.dtype)  # (B, N)
        # Additive mask over keys, broadcast over heads and queries; the eager and SDPA kernels both add it.
        extended = (1.0 - keep)[:, None, None, :] * torch.finfo(x.dtype).min  # (B, 1, 1, N)
        with self._record_attention(output_attentions) as probs:
            h = self.encoder(x, attention_mask=extended).last_hidden_state  # (B, Nv + L, D)
        out = {"video": h[:, :Nv], "cls": h[:, Nv], "text": h[:, Nv:]}
        if output_attentions:
            out["attentions"] = torch.stack(probs)
        return out

    def forward(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor,
                output_attentions: bool = False) -> dict[str, Tensor]:
        """Frames (B, T, 3, S, S) + text (B, L) -> states; see :meth:`fuse`."""
        return self.fuse(self.encode_video(frames), input_ids, attention_mask, output_attentions)

    @contextlib.contextmanager
    def _record_attention(self, enabled: bool) -> Iterator[list[Tensor]]:
        """Collect each layer's (B, heads, N, N) attention probabilities while enabled.

        SDPA does not return probabilities, so the layers run eager attention for the duration (the
        attention modules read the implementation from the shared config on every call).
        """
        probs: list[Tensor] = []
        if not enabled:
            yield probs
            return
        previous = self.bert_config._attn_implementation
        self.bert_config._attn_implementation = "eager"
        hooks = [layer.attention.self.register_forward_hook(lambda _m, _i, out: probs.append(out[1]))
                 for layer in self.encoder.layer]
        try:
            yield probs
        finally:
            for hook in hooks:
                hook.remove()
            self.bert_config._attn_implementation = previous

    @torch.no_grad()
    def attention_probs(self, frames: Tensor, input_ids: Tensor,
                        attention_mask: Tensor) -> tuple[Tensor, slice, slice]:
        """Attention of a no-grad pass on unmasked inputs, for attended masking.

        Returns (probs (layers, B, heads, N, N), video_slice, text_slice): the slices locate the Nv
        video tokens and the L text tokens in the sequence (for :func:`masking.cross_attention_scores`).
        """
        out = self(frames, input_ids, attention_mask, output_attentions=True)
        Nv = out["video"].shape[1]
        return out["attentions"], slice(0, Nv), slice(Nv, Nv + input_ids.shape[1])

    # -- heads -----------------------------------------------------------------------------------------

    def vtm_logits(self, cls: Tensor) -> Tensor:
        """h_cls (..., D) -> (..., 2) logits, class 1 = the video and text match."""
        return self.vtm_head(cls)

    def match_score(self, cls: Tensor) -> Tensor:
        """h_cls (..., D) -> (...) log-odds of a match (monotone in p(match): ranks like it)."""
        logits = self.vtm_logits(cls)
        return logits[..., 1] - logits[..., 0]

    def mlm_logits(self, text: Tensor) -> Tensor:
        """Text states (B, L, D) -> (B, L, vocab)."""
        return self.mlm_head(text)

    def mvm_logits(self, video: Tensor) -> Tensor:
        """Video states (B, Nv, D) -> (B, Nv, visual_vocab)."""
        return self.mvm_head(video)

    # -- pre-training ----------------------------------------------------------------------------------

    def vtm_step(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor,
                 generator: torch.Generator) -> Tensor:
        """VTM loss over the batch's positives and one in-batch negative per video (:func:`vtm_pairs`).

        The video is encoded once and its tokens reused for both pairs.
        """
        videos, texts, labels = vtm_pairs(frames.shape[0], generator)
        device = input_ids.device
        videos, texts, labels = videos.to(device), texts.to(device), labels.to(device)
        out = self.fuse(self.encode_video(frames)[videos], input_ids[texts], attention_mask[texts])
        return vtm_loss(self.vtm_logits(out["cls"]), labels)

    def pretrain_losses(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor, *,
                        generator: torch.Generator, masked_frames: Tensor | None = None,
                        masked_ids: Tensor | None = None, mlm_labels: Tensor | None = None,
                        mvm_labels: Tensor | None = None) -> dict[str, Tensor]:
        """The switched-on objectives and their weighted sum ``loss``.

        VTM runs on the clean pair; MLM and MVM share one pass on the masked pair (``masked_ids`` /
        ``masked_frames`` default to the clean inputs when only the other modality is masked).

        Parameters
        ----------
        frames, input_ids, attention_mask : the clean batch, (B, T, 3, S, S), (B, L), (B, L)
        generator : draws the VTM negatives
        masked_frames : (B, T, 3, S, S), masked patches zeroed (:func:`masking.apply_video_mask`)
        masked_ids, mlm_labels : (B, L) from :func:`masking.mlm_mask`
        mvm_labels : (B, T, H', W') from :func:`masking.mvm_labels`
        """
        cfg, losses = self.cfg, {}
        if cfg.use_vtm:
            losses["vtm"] = self.vtm_step(frames, input_ids, attention_mask, generator)
        if cfg.use_mlm or cfg.use_mvm:
            missing = [name for name, on, value in (("mlm_labels", cfg.use_mlm, mlm_labels),
                                                    ("mvm_labels", cfg.use_mvm, mvm_labels)) if on and value is None]
            if missing:
                raise ValueError(f"pretrain_losses needs {', '.join(missing)} for the switched-on objectives; "
                                 "build them with polymodal.models.violet.masking or switch the objective off")
            out = self(frames if masked_frames is None else masked_frames,
                       input_ids if masked_ids is None else masked_ids, attention_mask)
            if cfg.use_mlm:
                losses["mlm"] = masked_head_loss(self.mlm_head, out["text"], mlm_labels, "mlm")
            if cfg.use_mvm:
                losses["mvm"] = masked_head_loss(self.mvm_head, out["video"], mvm_labels.flatten(1), "mvm")
        losses["loss"] = combine_losses(losses, cfg)
        return losses

    # -- downstream ------------------------------------------------------------------------------------

    def retrieval_scores(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor,
                         chunk: int = 64) -> Tensor:
        """Cross-encoder scores of every (text, video) pair: the VTM match log-odds.

        Parameters
        ----------
        frames : (V, T, 3, S, S) videos
        input_ids, attention_mask : (N, L) texts
        chunk : pairs per pass through BERT (memory)

        Returns
        -------
        (N, V) scores; row n ranks the videos for text n, column v the texts for video v.
        """
        video = self.encode_video(frames)  # (V, Nv, D), each video encoded once
        N, V = input_ids.shape[0], video.shape[0]
        texts = torch.arange(N, device=input_ids.device).repeat_interleave(V)  # (N*V,) text-major
        videos = torch.arange(V, device=input_ids.device).repeat(N)
        scores = []
        for start in range(0, N * V, chunk):
            t, v = texts[start:start + chunk], videos[start:start + chunk]
            scores.append(self.match_score(self.fuse(video[v], input_ids[t], attention_mask[t])["cls"]))
        return torch.cat(scores).view(N, V)

    def mcqa_scores(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """One VTM match score per option.

        Parameters
        ----------
        frames : (B, T, 3, S, S)
        input_ids, attention_mask : (B, K, L), option k tokenized as ``[CLS] question [SEP] option_k [SEP]``

        Returns
        -------
        (B, K) scores; train with ``F.cross_entropy(scores, answer)``.
        """
        if input_ids.ndim != 3 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"mcqa input_ids and attention_mask must both be (B, K, L), got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        B, K, L = input_ids.shape
        video = self.encode_video(frames).repeat_interleave(K, dim=0)  # (B*K, Nv, D), option-minor
        out = self.fuse(video, input_ids.reshape(B * K, L), attention_mask.reshape(B * K, L))
        return self.match_score(out["cls"]).view(B, K)

    def oeqa_logits(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Open-ended QA: (B, num_answers) logits over the answer vocabulary from h_cls of (video, question)."""
        if self.answer_head is None:
            raise ValueError(f"this model was built with head {self.cfg.head!r}; open-ended QA needs head 'oeqa' "
                             "and num_answers")
        return self.answer_head(self(frames, input_ids, attention_mask)["cls"])
