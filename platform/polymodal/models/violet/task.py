"""VIOLET's tasks, plugged into the spine: pre-training, text-to-video retrieval, open-ended and
multiple-choice video QA.

* ``violet.pretrain`` minimises VTM + MLM + MVM (:meth:`.model.Violet.pretrain_losses`) with BM+AM
  masking: each sample is masked blockwise or by attention, 50/50 (:func:`build_masks`). Metrics
  (fractions in [0, 1], :func:`.metrics.pretrain_metrics`): ``vtm_acc`` over every positive pair
  and one in-batch negative per video (primary), ``mlm_acc`` over the masked text tokens and
  ``mvm_acc`` over the masked patches (each only while its objective is switched on).
* ``violet.retrieval``: the VTM head as a cross-encoder, fine-tuned on each positive pair plus one
  in-batch negative per row whose text comes from another video (:func:`retrieval_negatives`).
  Evaluation scores every text of the split against every distinct video of it (the full N x V
  matrix, :meth:`RetrievalTask.finish_eval`); metrics (:func:`polymodal.metrics.ranking_metrics`):
  text-to-video ``r1`` (primary), ``r5``, ``r10`` as fractions, ``medr`` and ``meanr`` (1-based
  ranks), ties counted against the model. A pre-trained export as ``init`` retrieves zero-shot: its VTM head
  carries over.
* ``violet.oeqa``: cross-entropy over the answer vocabulary; rows whose answer is outside it
  (``answer == -1``) are left out of the loss but count as wrong in ``acc`` (a fraction, as every
  accuracy here).
* ``violet.mcqa``: one VTM score per ``question [SEP] option`` pair, cross-entropy over the options.

Collate has no model config, so it keeps frames as uint8 (B, T, S, S, 3) (the loop casts only
floats) and texts as zero-padded UTF-8 bytes; the hooks below normalise and tokenize with the
model's own tokenizer. A retrieval or QA model starts from a pre-trained export when its config has
``init``.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal import storage as st
from polymodal.errors import PolymodalError
from polymodal.task import Batch, Task

from . import masking
from .config import PRESETS, VioletConfig
from .data import FINETUNE_FRAMES, PRETRAIN_FRAMES, TASKS, frames_of, options_of
from .encode import SCORE_CHUNK, channels_first, cross_scores, normalise_frames, param_dtype, tokenize
from .metrics import accuracy, pretrain_metrics

#: synthetic rows per split at ``scale=1``
SYNTH_ROWS = {"train": 1024, "val": 256, "test": 256}
#: eval masks and VTM negatives come from this seed, so val metrics of two epochs are comparable
EVAL_SEED = 1234


# ----------------------------------------------------------------------------- helpers


def _net(model: nn.Module) -> nn.Module:
    """The Violet inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def _check_frames(net: nn.Module, frames: Tensor) -> None:
    cfg: VioletConfig = net.cfg
    if frames.shape[-1] != cfg.image_size or frames.shape[1] > cfg.max_frames:
        raise ValueError(f"the dataset's frames are {frames.shape[-1]} px x {frames.shape[1]} frames but the model "
                         f"expects image_size {cfg.image_size} and at most max_frames {cfg.max_frames}; ingest "
                         "with size=image_size or set model.image_size to the dataset's size")


def _texts(batch: Batch, key: str = "text_bytes") -> list[str]:
    from polymodal.text import decode_texts

    return decode_texts(batch[key])


def _step_generator() -> torch.Generator:
    """A CPU generator for this step's masks and negatives, seeded from torch's global RNG (which the
    loop seeds), so a run is reproducible and every step draws differently."""
    return torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,))))


def _collate_common(columns: dict[str, np.ndarray]) -> Batch:
    from polymodal.text import encode_texts

    return {"frames": torch.from_numpy(np.ascontiguousarray(frames_of(columns))),  # (B, T, S, S, 3) uint8
            "text_bytes": torch.from_numpy(encode_texts(columns["text"], max_bytes=1024))}


# ----------------------------------------------------------------------------- BM + AM masks


def build_masks(net: nn.Module, frames: Tensor, input_ids: Tensor, attention_mask: Tensor, vt_codes: Tensor,
                generator: torch.Generator) -> dict[str, Tensor]:
    """BM+AM masks of one batch, drawn per sample (:func:`masking.choose_strategy`).

    Parameters
    ----------
    net : a :class:`~.model.Violet`; its attention ranks the AM samples (a no-grad pass on clean inputs)
    frames : (B, T, 3, S, S) uint8, clean; masked patches become black pixels before normalisation
    input_ids, attention_mask : (B, L)
    vt_codes : (B, T, H', W') visual-token ids of the clean frames
    generator : every draw

    Returns
    -------
    dict: ``use_block`` (B,) bool, ``video_mask`` (B, T, H', W') bool, ``text_mask`` (B, L) bool,
    ``masked_frames`` (B, T, 3, S, S) uint8, ``masked_ids``, ``mlm_labels`` (B, L) and ``mvm_labels``
    (B, T, H', W') long (:data:`masking.IGNORE` where nothing is predicted).
    """
    cfg: VioletConfig = net.cfg
    B, T = frames.shape[:2]
    H = W = cfg.grid
    if tuple(vt_codes.shape) != (B, T, H, W):
        raise ValueError(f"vt_codes are {tuple(vt_codes.shape)} but the model's patch grid needs {(B, T, H, W)}; "
                         f"ingest with grid=({H}, {W}) or change image_size / patch_size")
    tok = net.tokenizer
    eligible = masking.mlm_eligible(input_ids, attention_mask, tok.all_special_ids)  # (B, L)
    use_block = masking.choose_strategy(B, generator=generator)  # (B,)
    video_mask = masking.blockwise_video_mask(B, T, H, W, generator=generator, ratio=cfg.mask_ratio,
                                              min_area=min(2, H * W))
    text_mask = masking.random_selection(eligible, generator=generator, prob=cfg.mask_ratio).cpu()
    attended = (~use_block).nonzero().flatten()
    if len(attended):
        idx = attended.to(input_ids.device)
        probs, vs, ts = net.attention_probs(normalise_frames(frames[idx], param_dtype(net), net.pixel_stats),
                                            input_ids[idx],
                                            attention_mask[idx])
        video_att, text_att = masking.cross_attention_scores(probs, vs, ts, text_valid=eligible[idx])
        video_mask[attended] = masking.attended_video_mask(video_att, ratio=cfg.mask_ratio).view(-1, T, H, W).cpu()
        text_mask[attended] = masking.attended_text_mask(text_att, eligible[idx], ratio=cfg.mask_ratio).cpu()
    video_mask, text_mask = video_mask.to(frames.device), text_mask.to(input_ids.device)
    masked_ids, mlm_labels = masking.mlm_mask(input_ids, attention_mask, mask_token_id=net.mask_token_id,
                                              vocab_size=net.bert_config.vocab_size, special_ids=tok.all_special_ids,
                                              generator=generator, selected=text_mask)
    return {"use_block": use_block, "video_mask": video_mask, "text_mask": text_mask,
            "masked_frames": masking.apply_video_mask(frames, video_mask, cfg.patch_size),
            "masked_ids": masked_ids, "mlm_labels": mlm_labels,
            "mvm_labels": masking.mvm_labels(vt_codes.to(frames.device), video_mask)}


# ----------------------------------------------------------------------------- shared task code


class _VioletTask(Task):
    """What every VIOLET task shares: the model (from a pre-trained export when ``init`` is set),
    frame and text handling, the synthetic data."""

    model_config_cls = VioletConfig
    #: the data kind (:data:`.data.KINDS`) and the ``head`` the model is built with
    kind: ClassVar[str]
    primary_metric = "acc"
    #: metrics that are fractions in [0, 1] (reports print them as %)
    fraction_metrics: ClassVar[frozenset[str]] = frozenset({"acc"})
    mode = "max"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            cls.name = TASKS[cls.kind]
            cls.presets = {name: cls._with_head(fn) for name, fn in PRESETS.items()}

    @classmethod
    def _with_head(cls, preset: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def values() -> dict[str, Any]:
            return {**preset(), "head": cls.kind, **cls.preset_extra(preset.__name__)}

        values.__name__ = preset.__name__
        values.__doc__ = preset.__doc__
        return values

    @classmethod
    def preset_extra(cls, preset: str) -> dict[str, Any]:
        """Task-specific values added to the shared preset ``preset``."""
        return {}

    def build_model(self, cfg: VioletConfig) -> nn.Module:
        from polymodal.cache import local_copy

        from .model import Violet

        if cfg.head != self.kind:
            raise ValueError(f"task {self.name} trains head {self.kind!r}, got model.head {cfg.head!r}; drop "
                             f"model.head (the preset sets it) or use task {TASKS.get(cfg.head, '?')}")
        init = getattr(cfg, "init", None)
        # with init the pre-trained run's backbone replaces the visual weights: they are not read
        model = Violet(cfg.model_copy(update={"bert": local_copy(cfg.bert)}), load_visual_weights=not init)
        if init:
            load_pretrained(model, init)
        return model

    def load_checkpoint(self, checkpoint_uri: str, opts: Any = None) -> tuple[Any, nn.Module]:
        """The shared loader, but the model is built without ``init``: the export holds every trained
        weight, so evaluating or serving a fine-tuned run neither reads nor needs its pre-training run."""
        from polymodal.train.checkpoint import load_trainable, read_export

        cfg, weights, _ = read_export(checkpoint_uri, opts)
        # the export holds the trained backbone too: visual_weights are neither read nor needed
        model = self.build_model(cfg.model.model_copy(update={"init": None, "visual_weights": None}))
        load_trainable(model, weights)
        return cfg, model.eval()

    def fit(self, cfg: Any, *, progress: bool = True, local: bool = False) -> dict[str, Any]:
        """The shared loop's fit, after checking that ``model.init`` (when set) leads to a checkpoint,
        so a wrong path fails here, naming it, before any worker starts."""
        from polymodal.runs import resolve_weights

        if getattr(cfg.model, "init", None):
            resolve_weights(cfg.model.init, cfg.storage)
        return super().fit(cfg, progress=progress, local=local)

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.bert={out['bert']}"]

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True) -> dict[str, str]:
        """Synthetic moving shapes (:mod:`.synth`) of this task's kind, plus a tiny BERT and VQ-GAN."""
        return write_synthetic(out_uri, self.kind, seed=seed, scale=scale, opts=storage, progress=progress)

    # -- serving (see .serving: retrieval for pretrain / retrieval checkpoints, QA for oeqa / mcqa) --

    def request_model(self, cfg: VioletConfig):
        from .serving import MODES

        return MODES[self.kind].request

    def response_model(self, cfg: VioletConfig):
        from .serving import MODES

        return MODES[self.kind].response

    def serve_predict(self, model: nn.Module, requests):
        from .serving import MODES

        return MODES[self.kind].predict(model, requests)

    def open_index(self, uri: str, opts=None):
        from .serving import open_index

        return open_index(uri, opts)

    def example_request(self, cfg, data_uri):
        """Retrieval: the first caption, searched in the index; QA: its question about its video, by
        ``vid`` (the index), with the options of a multiple-choice row."""
        from polymodal.shards import first_rows

        row = first_rows(data_uri, 1, cfg.storage)
        if self.kind in ("pretrain", "retrieval"):
            return {"text": str(row["text"][0]), "top_k": 3}
        body = {"question": str(row["text"][0]), "vid": str(row["video"][0])}
        if self.kind == "mcqa":
            body["options"] = options_of(str(row["options"][0]))
        return body


def load_pretrained(model: nn.Module, init: str) -> dict[str, list[str]]:
    """Copy the weights of a pre-trained run into ``model``.

    ``init`` is anything :func:`polymodal.runs.resolve_weights` takes: the pre-training run's folder
    (its best checkpoint), any checkpoint it wrote (Ray Train's ``checkpoint_*``, ``--local``'s
    ``checkpoints/epoch_NNNN``) or a ``model/`` export. Only the export is fetched, not the
    DeepSpeed state beside it. Weights whose name and shape match are loaded; the rest (e.g. the
    pre-training-only MVM head, or an answer head the export lacks) keep their fresh initialisation.
    Returns ``loaded`` and ``skipped`` names; an export sharing no weight with the model is an error.
    """
    from polymodal.cache import local_copy
    from polymodal.runs import resolve_weights
    from polymodal.train.checkpoint import export_uri, load_export

    export = export_uri(resolve_weights(init))
    _, weights, _ = load_export(local_copy(export), shown_as=export)
    params = dict(model.named_parameters())
    loaded = [n for n, w in weights.items() if n in params and params[n].shape == w.shape]
    if not loaded:
        raise PolymodalError(f"init {init!r} shares no weight with this VIOLET model (first export names: "
                             f"{sorted(weights)[:3]}); point init at a VIOLET export with the same bert and sizes")
    with torch.no_grad():
        for name in loaded:
            params[name].copy_(weights[name].to(params[name].dtype))
    return {"loaded": loaded, "skipped": sorted(set(weights) - set(loaded))}


# ----------------------------------------------------------------------------- pre-training


class PretrainTask(_VioletTask):
    """VTM + MLM + MVM with BM+AM masking on video-text pairs."""

    kind = "pretrain"
    primary_metric = "vtm_acc"
    fraction_metrics = frozenset({"vtm_acc", "mlm_acc", "mvm_acc"})

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        return {**_collate_common(columns),
                "vt_codes": torch.from_numpy(np.require(columns["vt_codes"], np.int64, ["C", "W"]))}

    def _inputs(self, net: nn.Module, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        frames = channels_first(batch["frames"])  # (B, T, 3, S, S) uint8
        _check_frames(net, frames)
        ids, attn = tokenize(net, _texts(batch))
        return frames, ids, attn

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        net = _net(model)
        frames, ids, attn = self._inputs(net, batch)
        g = _step_generator()
        m = build_masks(net, frames, ids, attn, batch["vt_codes"], g)
        dtype = param_dtype(net)
        losses = net.pretrain_losses(normalise_frames(frames, dtype, net.pixel_stats), ids, attn, generator=g,
                                     masked_frames=normalise_frames(m["masked_frames"], dtype, net.pixel_stats),
                                     masked_ids=m["masked_ids"], mlm_labels=m["mlm_labels"],
                                     mvm_labels=m["mvm_labels"])
        extra = {k: float(v.detach()) for k, v in losses.items() if k != "loss"}
        extra["block_share"] = float(m["use_block"].float().mean())
        return losses["loss"], extra

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: ``vtm_pos`` / ``vtm_neg`` (1 where the VTM head calls the true pair a match and the
        pair with another row's text a non-match; NaN for a one-row batch, which has no negative),
        ``mlm_hit`` / ``mlm_n`` and ``mvm_hit`` / ``mvm_n`` (correct and total masked items) for the
        switched-on objectives."""
        from .model import derangement

        net = _net(model)
        frames, ids, attn = self._inputs(net, batch)
        g = torch.Generator().manual_seed(EVAL_SEED)
        m = build_masks(net, frames, ids, attn, batch["vt_codes"], g)
        dtype, B = param_dtype(net), frames.shape[0]
        video = net.encode_video(normalise_frames(frames, dtype, net.pixel_stats))  # (B, Nv, D)
        pos = net.vtm_logits(net.fuse(video, ids, attn)["cls"]).argmax(-1) == 1
        neg = torch.full((B,), float("nan"))
        if B > 1:
            d = derangement(B, g).to(ids.device)
            neg = (net.vtm_logits(net.fuse(video, ids[d], attn[d])["cls"]).argmax(-1) == 0).float().cpu()
        out = net(normalise_frames(m["masked_frames"], dtype, net.pixel_stats), m["masked_ids"], attn)
        rows = {"vtm_pos": pos.float().cpu().numpy(), "vtm_neg": neg.numpy()}
        heads = [("mlm", net.cfg.use_mlm, net.mlm_logits, out["text"], m["mlm_labels"]),
                 ("mvm", net.cfg.use_mvm, net.mvm_logits, out["video"], m["mvm_labels"].flatten(1))]
        for name, _, head, states, labels in (h for h in heads if h[1]):  # a switched-off head is untrained
            logits = head(states)
            chosen = labels != masking.IGNORE
            rows[f"{name}_hit"] = ((logits.argmax(-1) == labels) & chosen).sum(1).cpu().numpy()
            rows[f"{name}_n"] = chosen.sum(1).cpu().numpy()
        return rows

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return pretrain_metrics(outputs)


# ----------------------------------------------------------------------------- retrieval


def retrieval_negatives(videos: list[str], texts: list[str], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One in-batch negative text per row, drawn uniformly among the rows that cannot describe its video.

    A row's text is a fair negative for video i only when it belongs to another video *and* differs
    from row i's own caption: two captions of one video (MSR-VTT has 20 per clip) or one caption
    shared by two clips would otherwise teach the VTM head to reject a true match. A row with no
    such partner (e.g. a batch that is all one video) gets no negative.

    Parameters
    ----------
    videos, texts : B video ids and B captions, row by row
    generator : the draws

    Returns
    -------
    (rows, negatives), each (M,) long on the CPU, M <= B: video ``rows[m]`` is paired with the text
    of row ``negatives[m]``.
    """
    if len(videos) != len(texts):
        raise ValueError(f"{len(videos)} video ids but {len(texts)} texts; give one of each per row")
    _, vid = np.unique(np.asarray(videos, dtype=str), return_inverse=True)
    _, txt = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    allowed = torch.from_numpy((vid[:, None] != vid[None, :]) & (txt[:, None] != txt[None, :]))  # (B, B)
    rows = allowed.any(1).nonzero().flatten()
    if not len(rows):
        return rows, rows.clone()
    negatives = torch.multinomial(allowed[rows].float(), 1, generator=generator).flatten()
    return rows, negatives


class RetrievalTask(_VioletTask):
    """Text-to-video retrieval with the VTM head as a cross-encoder (a match score per pair).

    Training is binary VTM, as in pre-training: each row's (video, text) is a match, and the video
    with one in-batch text of another video (:func:`retrieval_negatives`) is not. (The authors'
    released code instead scores all B x B pairs of a batch and takes a softmax over them: B times
    the passes through BERT per step.)

    Evaluation needs every text against every video of the split, which no batch holds: ``predict``
    keeps each row's encoded video tokens and padded text ids, and :meth:`finish_eval` scores the
    gathered split, N texts x V distinct videos.
    """

    kind = "retrieval"
    primary_metric = "r1"
    fraction_metrics = frozenset({"r1", "r5", "r10"})
    #: (text, video) pairs per pass through BERT when scoring the full matrix
    score_chunk: ClassVar[int] = SCORE_CHUNK

    @classmethod
    def preset_extra(cls, preset: str) -> dict[str, Any]:
        return {"frames": FINETUNE_FRAMES}

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        from polymodal.text import encode_texts

        # video ids travel as bytes (batches hold tensors only); texts of one clip share its id
        return {**_collate_common(columns),
                "video_bytes": torch.from_numpy(encode_texts(columns["video"], max_bytes=256))}

    def _inputs(self, net: nn.Module, batch: Batch) -> tuple[Tensor, list[str], Tensor, Tensor]:
        frames = channels_first(batch["frames"])  # (B, T, 3, S, S) uint8
        _check_frames(net, frames)
        texts = _texts(batch)
        ids, attn = tokenize(net, texts)
        return frames, texts, ids, attn

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        from .model import vtm_loss

        net = _net(model)
        frames, texts, ids, attn = self._inputs(net, batch)
        rows, negatives = retrieval_negatives(_texts(batch, "video_bytes"), texts, _step_generator())
        B, device = frames.shape[0], ids.device
        own = torch.arange(B, device=device)
        videos = torch.cat([own, rows.to(device)])  # positives first, then the negatives
        captions = torch.cat([own, negatives.to(device)])
        labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(len(rows), dtype=torch.long)]).to(device)
        # (B, Nv, D), each clip encoded once
        video = net.encode_video(normalise_frames(frames, param_dtype(net), net.pixel_stats))
        logits = net.vtm_logits(net.fuse(video[videos], ids[captions], attn[captions])["cls"])  # (B + M, 2)
        acc = accuracy(logits.argmax(-1).cpu().numpy(), labels.cpu().numpy())
        return vtm_loss(logits, labels), {"batch_acc": acc, "negatives": float(len(rows))}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: ``video`` (its id, str), ``video_tokens`` (Nv, D) float32 from
        ``encode_video``, ``input_ids`` / ``attention_mask`` (max_text_tokens,) int64 (padded to
        one length so batches concatenate)."""
        net = _net(model)
        frames, _, ids, attn = self._inputs(net, batch)
        pad = net.cfg.max_text_tokens - ids.shape[1]
        ids = F.pad(ids, (0, pad), value=net.tokenizer.pad_token_id or 0)
        attn = F.pad(attn, (0, pad), value=0)
        video = net.encode_video(normalise_frames(frames, param_dtype(net), net.pixel_stats))  # (B, Nv, D)
        return {"video": np.asarray(_texts(batch, "video_bytes"), dtype=str),
                "video_tokens": video.float().cpu().numpy(),
                "input_ids": ids.long().cpu().numpy(), "attention_mask": attn.long().cpu().numpy()}

    @torch.no_grad()
    def finish_eval(self, model: nn.Module, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score every text against every distinct video of the split.

        Videos are told apart by id; the tokens of a video's first row stand for it (its other rows
        decoded the same frames). Returns ``scores`` (N, V) float32, the match log-odds of text n
        and video v, and ``target`` (N,) int64, the index of each text's video, ordered by id.
        """
        net = _net(model)
        device, dtype = net.video_proj.weight.device, param_dtype(net)
        _, first, target = np.unique(outputs["video"], return_index=True, return_inverse=True)
        video = torch.from_numpy(outputs["video_tokens"][first]).to(device, dtype)  # (V, Nv, D)
        attn = torch.from_numpy(outputs["attention_mask"])
        L = max(1, int(attn.sum(1).max()))  # drop the padding columns no text uses
        ids = torch.from_numpy(outputs["input_ids"][:, :L]).to(device)
        scores = cross_scores(net, video, ids, attn[:, :L].to(device), chunk=self.score_chunk)
        return {"scores": scores.cpu().numpy(), "target": target.reshape(-1).astype(np.int64)}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        from polymodal.metrics import ranking_metrics

        if "scores" not in outputs:
            raise ValueError(f"violet.retrieval metrics read finish_eval's scores, got the keys {sorted(outputs)}; "
                             "call task.finish_eval(model, outputs) on the gathered predict outputs first")
        return ranking_metrics(outputs["scores"], outputs["target"])


# ----------------------------------------------------------------------------- QA


class OpenEndedQATask(_VioletTask):
    """Open-ended video QA: classify (video, question) into the train split's answer vocabulary."""

    kind = "oeqa"

    @classmethod
    def preset_extra(cls, preset: str) -> dict[str, Any]:
        # the synthetic QA asks for one of four directions
        # (the paper's datasets: the train split's 1000 most frequent answers, ingest's default top_k)
        return {"frames": FINETUNE_FRAMES, "num_answers": 4 if preset == "tiny" else 1000}

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        # a copy (torch.tensor): the column may be a read-only view of the Arrow buffer
        return {**_collate_common(columns), "answer": torch.tensor(columns["answer"], dtype=torch.int64)}

    def _logits(self, model: nn.Module, batch: Batch) -> Tensor:
        net = _net(model)
        frames = channels_first(batch["frames"])
        _check_frames(net, frames)
        ids, attn = tokenize(net, _texts(batch))
        pixels = normalise_frames(frames, param_dtype(net), net.pixel_stats)
        logits = net.oeqa_logits(pixels, ids, attn)  # (B, num_answers)
        top = int(batch["answer"].max()) if batch["answer"].numel() else -1
        if top >= logits.shape[1]:
            raise ValueError(f"answer index {top} is outside num_answers {logits.shape[1]}; "
                             "set model.num_answers to the dataset's manifest.meta['answer_vocab'] length")
        return logits

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits, answer = self._logits(model, batch), batch["answer"]
        known = answer >= 0
        # rows outside the vocabulary have no class to learn; an all-unknown batch still keeps the graph
        loss = F.cross_entropy(logits[known].float(), answer[known]) if bool(known.any()) else logits.sum() * 0.0
        acc = accuracy(logits.argmax(-1).cpu().numpy(), answer.cpu().numpy())
        return loss, {"batch_acc": acc}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: ``pred`` (answer index) and ``answer`` (-1: outside the vocabulary)."""
        return {"pred": self._logits(model, batch).argmax(-1).cpu().numpy(), "answer": batch["answer"].cpu().numpy()}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {"acc": accuracy(outputs["pred"], outputs["answer"])}


class MultipleChoiceQATask(_VioletTask):
    """Multiple-choice video QA: the VTM score of each ``question [SEP] option``, softmax over options."""

    kind = "mcqa"

    @classmethod
    def preset_extra(cls, preset: str) -> dict[str, Any]:
        # the synthetic QA offers the four directions; MSRVTT-MC has five candidates
        return {"frames": FINETUNE_FRAMES, "num_options": 4 if preset == "tiny" else 5}

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        from polymodal.text import encode_texts

        return {**_collate_common(columns), "options_bytes": torch.from_numpy(encode_texts(columns["options"],
                                                                                          max_bytes=4096)),
                "answer": torch.from_numpy(np.asarray(columns["answer"], np.int64))}

    def _scores(self, model: nn.Module, batch: Batch) -> Tensor:
        net = _net(model)
        K = net.cfg.num_options
        frames = channels_first(batch["frames"])
        _check_frames(net, frames)
        questions, options = _texts(batch), [options_of(o) for o in _texts(batch, "options_bytes")]
        too_many = [len(o) for o in options if len(o) > K]
        if too_many:
            raise ValueError(f"a row has {max(too_many)} options but model.num_options is {K}; raise num_options")
        # rows with fewer options are padded with empty ones whose score is -inf
        padded = [o + [""] * (K - len(o)) for o in options]
        ids, attn = tokenize(net, [q for q in questions for _ in range(K)], [a for o in padded for a in o])
        B = len(questions)
        pixels = normalise_frames(frames, param_dtype(net), net.pixel_stats)
        scores = net.mcqa_scores(pixels, ids.view(B, K, -1), attn.view(B, K, -1))
        real = torch.tensor([[k < len(o) for k in range(K)] for o in options], device=scores.device)
        return scores.float().masked_fill(~real, float("-inf"))  # (B, K)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        scores, answer = self._scores(model, batch), batch["answer"]
        return F.cross_entropy(scores, answer), {"batch_acc": accuracy(scores.argmax(-1).cpu().numpy(),
                                                                       answer.cpu().numpy())}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> dict[str, np.ndarray]:
        """Per row: ``pred`` (option index) and ``answer``."""
        return {"pred": self._scores(model, batch).argmax(-1).cpu().numpy(), "answer": batch["answer"].cpu().numpy()}

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        return {"acc": accuracy(outputs["pred"], outputs["answer"])}


# ----------------------------------------------------------------------------- synthetic data


def synthetic_corpus() -> list[str]:
    """Every caption, question and answer the synthetic clips can have: the tiny tokenizer learns from
    this fixed list, so every synthetic dataset (any kind, seed or scale) shares one vocabulary and a
    pre-trained export fits a QA model built on another synth's BERT."""
    from . import synth

    out = []
    for colour in synth.COLOURS:
        for shape in synth.SHAPES:
            out.append(synth.question(colour, shape))
            out += [synth.caption(colour, shape, d) for d in synth.DIRECTIONS]
    return out + list(synth.DIRECTIONS)


def write_synthetic(out_uri: str, kind: str, *, seed: int = 0, scale: float = 1.0, opts=None,
                    progress: bool = True) -> dict[str, str]:
    """``train`` / ``val`` / ``test`` datasets of ``kind`` at ``out_uri`` plus ``bert`` and ``vqgan``
    (``out_uri/backbones/...``), from :func:`~.importers.write_synthetic_videos` clips (64 px, the
    tiny preset's size). Pre-training and retrieval rows are captions (retrieval: read back from the
    MSR-VTT JSON, one caption per clip); QA rows ask which way the shape moves.

    Returns ``{train, val, test, bert, vqgan: uri}``.
    """
    from .importers import read_mcqa, read_msrvtt, read_oeqa, read_webvid, write_synthetic_videos
    from .ingest import ingest
    from polymodal.testing.tiny import write_tiny_bert, write_tiny_vqgan

    # kind -> (reader, the source file of write_synthetic_videos it reads)
    # (every synthetic MSR-VTT video is in the json's train split; the splits below are cut here)
    readers = {"pretrain": (read_webvid, "webvid"), "retrieval": (partial(read_msrvtt, split="train"), "msrvtt"),
               "oeqa": (read_oeqa, "oeqa"), "mcqa": (read_mcqa, "mcqa")}
    if kind not in readers:
        raise ValueError(f"no synthetic data for kind {kind!r}; use one of {', '.join(readers)}")
    reader, source = readers[kind]
    counts = {split: max(4, round(n * scale)) for split, n in SYNTH_ROWS.items()}
    n_frames = PRETRAIN_FRAMES if kind == "pretrain" else FINETUNE_FRAMES
    uris = {split: st.join(out_uri, split) for split in counts}
    uris.update(bert=st.join(out_uri, "backbones", "bert"), vqgan=st.join(out_uri, "backbones", "vqgan"))
    with tempfile.TemporaryDirectory(prefix="polymodal-violet-synth-") as tmp:
        # init std 0.25, not BERT's 0.02: at 0.02 the direction QA stayed at chance (see write_tiny_bert)
        bert = write_tiny_bert(os.path.join(tmp, "bert"), synthetic_corpus(), seed=seed, init_std=0.25)
        vqgan = os.path.join(tmp, "vqgan")
        write_tiny_vqgan(vqgan, seed=seed, codes=PRESETS["tiny"]()["visual_vocab"], factor=8)
        sources = write_synthetic_videos(os.path.join(tmp, "sources"), sum(counts.values()), seed=seed, size=64)
        records = reader(sources[source], sources["webvid_root" if kind == "pretrain" else "videos"]).records
        grid = PRESETS["tiny"]()["image_size"] // PRESETS["tiny"]()["patch_size"]
        answers, start = None, 0
        for split, n in counts.items():
            manifest = ingest(records[start:start + n], uris[split], kind=kind, split=split, n_frames=n_frames,
                              size=64, tokenizer_path=vqgan, grid=(grid, grid), answers=answers, use_ray=False,
                              meta={"synthetic": True, "seed": seed}, opts=opts, progress=progress)
            answers = manifest.meta.get("answer_vocab") if kind == "oeqa" else None
            start += n
        st.upload_dir(bert, uris["bert"], opts)
        st.upload_dir(vqgan, uris["vqgan"], opts)
    return uris

