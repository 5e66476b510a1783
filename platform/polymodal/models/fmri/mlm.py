"""A small BERT trained from scratch with masked language modelling, through the shared train loop.

The lab trained its own encoder on the story transcripts (hidden 128, 2 layers, 2 heads,
feed-forward 256, 15 % masking, sequences of 256 tokens; AdamW lr 1e-4, weight decay 0.01,
batch 32, 200 epochs: the lab document's Table 1) and used its
hidden states as fMRI features (:meth:`polymodal.models.fmri.encoders.TransformerFeatures.from_checkpoint`).
This module is that task for the spine::

    task: fmri.mlm
    model: {preset: paper, tokenizer: s3://bucket/fmri/mlm/tokenizer}   # or bert-base-uncased
    data: {train: s3://bucket/fmri/mlm/train, val: s3://bucket/fmri/mlm/val}
    optim: {epochs: 200, lr: 1.0e-4, weight_decay: 0.01, batch_size: 32}

Datasets hold fixed-length rows ``input_ids`` / ``attention_mask`` (int32 / uint8, padded to
the row length). They come from :func:`write_mlm_dataset` (contiguous windows of the words of
an fMRI dataset's stories) or :meth:`MlmTask.synth` (text with a planted bigram signal). The
tokenizer is a WordPiece vocabulary from :func:`polymodal.text.train_tokenizer`, or a pretrained
one (``bert-base-uncased``; :func:`prepare_from_fmri` with ``tokenizer``).

Masking (BERT): 15 % of the tokens that are neither special nor padding are chosen; a chosen
token becomes ``[MASK]`` 80 % of the time, a random vocabulary id 10 %, and stays itself 10 %;
the loss and the metrics count chosen tokens only. ``Task.collate`` sees no split and no model
config, so masking happens in :meth:`MlmTask.loss` (fresh draws from a ``torch.Generator``
every step: dynamic masking) and in :meth:`MlmTask.predict`, where each row's generator is
seeded from the row's token ids, so validation metrics do not depend on batch size, worker
count or what ran before.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from polymodal import storage as st
from polymodal.config import StorageOptions, StrictModel
from polymodal.errors import PolymodalError
from polymodal.task import Batch, Task
from polymodal.shards import Manifest, ShardWriter, iter_local_batches
from polymodal.text import load_tokenizer, train_tokenizer

from .data import MLM_TASK as TASK

IGNORE = -100  # label of tokens that are not predicted (torch cross_entropy's ignore_index)
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1  # of the chosen tokens; the remaining 10 % stay as they are
Masked = tuple[torch.Tensor, torch.Tensor]  # (inputs, labels), both (B, T)


# --------------------------------------------------------------------------- config


class MlmConfig(StrictModel):
    """The ``model:`` section of an ``fmri.mlm`` run: a ``BertForMaskedLM`` built from scratch."""

    tokenizer: str = Field(..., description="folder or URI of a fast WordPiece tokenizer (the 'tokenizer' folder "
                                            "that `polymodal data mlm` or `data synth` writes), or a hub id of "
                                            "a pretrained one (bert-base-uncased)")
    hidden_size: int = Field(..., ge=1)
    num_layers: int = Field(..., ge=1)
    num_heads: int = Field(..., ge=1)
    intermediate_size: int = Field(..., ge=1, description="feed-forward width")
    max_length: int = Field(..., ge=3, description="longest row in tokens, [CLS]/[SEP] included (position table)")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="share of ordinary tokens chosen for prediction")
    dropout: float = Field(0.1, ge=0, lt=1, description="hidden and attention dropout")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "MlmConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


def tiny() -> dict[str, Any]:
    """Seconds on a CPU: tests and the synthetic demo (no dropout: the demo data are clean)."""
    return {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "max_length": 64,
            "mlm_probability": 0.15, "dropout": 0.0}


def paper() -> dict[str, Any]:
    """The lab's encoder: hidden 128, 2 layers, 2 heads, feed-forward 256, 15 % masking, 256 tokens.

    The lab trained it with AdamW, lr 1e-4, weight decay 0.01, batch 32 for 200 epochs (Table 1
    of the lab document); those live in the experiment's ``optim`` section (see
    jobs/configs/fmri_mlm_paper.yaml). Dropout 0.1 is BERT's default.
    """
    return {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 256, "max_length": 256,
            "mlm_probability": 0.15, "dropout": 0.1}


PRESETS = {"tiny": tiny, "paper": paper}


def encode_windows(tokenizer, windows: Sequence[Sequence[str]], max_length: int) -> dict[str, np.ndarray]:
    """Word lists -> ``input_ids`` (N, max_length) int32 and ``attention_mask`` (N, max_length) uint8.

    Each row is ``[CLS] tokens [SEP]`` padded on the right; a window longer than ``max_length``
    tokens is cut on the right.
    """
    enc = tokenizer([list(w) for w in windows], is_split_into_words=True, truncation=True,
                    max_length=max_length, padding="max_length", padding_side="right",
                    return_attention_mask=True)
    return {"input_ids": np.asarray(enc["input_ids"], dtype=np.int32),
            "attention_mask": np.asarray(enc["attention_mask"], dtype=np.uint8)}


def pack_words(tokenizer, words: Sequence[str], max_length: int) -> list[list[str]]:
    """Split a story into contiguous windows of whole words that fit ``max_length`` tokens.

    Windows are filled greedily in story order; a single word longer than the budget gets a
    window of its own (and is cut by :func:`encode_windows`).
    """
    budget = max_length - tokenizer.num_special_tokens_to_add()
    if budget < 1:
        raise PolymodalError(f"max_length {max_length} leaves no room for tokens beside the special ones")
    if not words:
        return []
    counts = [len(ids) for ids in tokenizer(list(words), add_special_tokens=False)["input_ids"]]
    windows: list[list[str]] = []
    current: list[str] = []
    used = 0
    for word, n in zip(words, counts):
        if current and used + n > budget:
            windows.append(current)
            current, used = [], 0
        current.append(word)
        used += n
    if current:
        windows.append(current)
    return windows


def _columns(max_length: int, with_story: bool) -> dict[str, dict[str, Any]]:
    cols: dict[str, dict[str, Any]] = {"input_ids": {"dtype": "int32", "shape": [max_length]},
                                       "attention_mask": {"dtype": "uint8", "shape": [max_length]}}
    if with_story:
        cols["story"] = {"dtype": "string"}
    return cols


def read_story_words(fmri_root: str, opts: StorageOptions | None = None) -> dict[str, list[str]]:
    """Story -> its words in time order, from an fMRI dataset root (see ``importers``)."""
    from .pipeline import load_stories

    return {name: story.words for name, story in load_stories(fmri_root, opts).items()}


def write_mlm_dataset(fmri_root: str, out_uri: str, *, tokenizer_dir: str, stories: Sequence[str] | None = None,
                      max_length: int = 256, split: str = "train", opts: StorageOptions | None = None,
                      progress: bool = True) -> Manifest:
    """The words of ``stories`` of an fMRI dataset root -> an ``fmri.mlm`` shard dataset at ``out_uri``.

    Every story is cut into contiguous windows of whole words (:func:`pack_words`); each window
    is a row of ``input_ids`` / ``attention_mask`` of ``max_length`` tokens, plus its ``story``.
    ``stories=None`` takes every story. Hold out the fMRI test stories here if the encoder's
    features will be scored on them.
    """
    tok = load_tokenizer(tokenizer_dir, opts)
    words = read_story_words(fmri_root, opts)
    names = sorted(words) if stories is None else list(stories)
    unknown = [s for s in names if s not in words]
    if unknown:
        raise PolymodalError(f"stories {unknown} are not in {fmri_root}; it has {sorted(words)}")
    if not names:
        raise PolymodalError("write_mlm_dataset: no stories given")
    meta = {"tokenizer": tokenizer_dir, "max_length": max_length, "source": fmri_root, "stories": names}
    with ShardWriter(out_uri, task=TASK, split=split, columns=_columns(max_length, with_story=True),
                     rows_per_shard=1024, meta=meta, opts=opts, progress=progress) as writer:
        for name in names:
            windows = pack_words(tok, words[name], max_length)
            if not windows:
                continue
            rows = encode_windows(tok, windows, max_length)
            writer.write({**rows, "story": np.array([name] * len(windows), dtype=object)})
    return writer.close()


def copy_tokenizer(source: str, out_uri: str, opts: StorageOptions | None = None) -> str:
    """A pretrained fast WordPiece tokenizer (hub id, local or ``s3://`` folder; checked by
    :func:`polymodal.text.load_tokenizer`: [PAD] and [MASK] needed) saved at ``out_uri``."""
    tok = load_tokenizer(source, opts)
    with tempfile.TemporaryDirectory(prefix="polymodal-tokenizer-") as tmp:
        tok.save_pretrained(tmp)
        st.upload_dir(tmp, out_uri, opts)
    return out_uri


def prepare_from_fmri(fmri_root: str, out_uri: str, *, exclude: Sequence[str] = (), val_stories: Sequence[str] = (),
                      vocab_size: int = 8000, max_length: int = 256, tokenizer: str | None = None,
                      opts: StorageOptions | None = None, progress: bool = True) -> dict[str, str]:
    """Tokenizer + ``train`` (+ ``val``) windows from an fMRI dataset root's transcripts.

    ``exclude``: stories kept out of both (the fMRI held-out stories, so the encoder never reads
    them); ``val_stories``: stories for the validation split. The tokenizer is trained on the
    training stories only, or, with ``tokenizer`` (a pretrained WordPiece tokenizer: a hub id such
    as ``bert-base-uncased``, a local or ``s3://`` folder), copied from there and not trained
    (``vocab_size`` is then unused). Either way it is saved under ``out_uri/tokenizer``, so the
    run reads it from the bucket. Returns ``{"tokenizer", "train"[, "val"]}`` URIs under ``out_uri``.
    """
    words = read_story_words(fmri_root, opts)
    unknown = sorted((set(exclude) | set(val_stories)) - set(words))
    if unknown:
        raise PolymodalError(f"stories {unknown} are not in {fmri_root}; it has {sorted(words)}")
    train = [s for s in sorted(words) if s not in set(exclude) | set(val_stories)]
    if not train:
        raise PolymodalError("no training stories left after --exclude and --val-stories")
    out = {"tokenizer": st.join(out_uri, "tokenizer")}
    if tokenizer is None:
        train_tokenizer((" ".join(words[s]) for s in train), out["tokenizer"], vocab_size=vocab_size,
                        model_max_length=max_length, opts=opts)
    else:
        copy_tokenizer(tokenizer, out["tokenizer"], opts)
    for split, names in (("train", train), ("val", list(val_stories))):
        if names:
            out[split] = st.join(out_uri, split)
            write_mlm_dataset(fmri_root, out[split], tokenizer_dir=out["tokenizer"], stories=names,
                              max_length=max_length, split=split, opts=opts, progress=progress)
    return out


# --------------------------------------------------------------------------- synthetic text

SYNTH_TOPICS, SYNTH_TOPIC_WORDS, SYNTH_FOLLOW, SYNTH_LENGTH = 8, 4, 0.9, 64
SYNTH_ROWS = {"train": 2048, "val": 256, "test": 256}


def synth_vocabulary(rng: np.random.Generator, n: int = SYNTH_TOPICS * SYNTH_TOPIC_WORDS) -> list[str]:
    """``n`` distinct two-syllable pseudo-words (``bako``, ``tisu``, ...)."""
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    picks = rng.choice(len(syllables) ** 2, size=n, replace=False)
    return [syllables[i // len(syllables)] + syllables[i % len(syllables)] for i in picks]


def sample_texts(rng: np.random.Generator, vocab: Sequence[str], rows: int, min_words: int, max_words: int,
                 topic_words: int = SYNTH_TOPIC_WORDS, follow: float = SYNTH_FOLLOW) -> list[list[str]]:
    """Rows of a two-level Markov chain over ``vocab`` cut into topics of ``topic_words`` words.

    A row picks one topic (``vocab[k * topic_words : (k + 1) * topic_words]``) and walks it:
    the next word is the topic's following word (cyclically) with probability ``follow``,
    otherwise a uniform word of the topic. The topic makes every word of a row predictable
    from the row as a whole (1 in ``topic_words``), the cycle from either neighbour.
    """
    n_topics = len(vocab) // topic_words
    out = []
    for _ in range(rows):
        n = int(rng.integers(min_words, max_words + 1))
        base = int(rng.integers(n_topics)) * topic_words
        pos = np.empty(n, dtype=np.int64)                     # position of each word within the topic
        pos[0] = rng.integers(topic_words)
        jumps = rng.random(n) >= follow
        randoms = rng.integers(topic_words, size=n)
        for t in range(1, n):
            pos[t] = randoms[t] if jumps[t] else (pos[t - 1] + 1) % topic_words
        out.append([vocab[base + p] for p in pos])
    return out


def write_synthetic(out_uri: str, *, seed: int = 0, scale: float = 1.0, opts: StorageOptions | None = None,
                    progress: bool = True) -> dict[str, str]:
    """``train``/``val``/``test`` datasets and a ``tokenizer`` folder under ``out_uri``.

    Text comes from :func:`sample_texts` over 32 pseudo-words in 8 topics of 4: a row stays
    in one topic and follows the topic's word cycle 90 % of the time. A masked word is thus
    1-in-4 predictable from the row's other words and about 0.9 predictable from a neighbour,
    against 1/32 for guessing among the words and 1/vocab for a uniform guess. The tiny preset
    at lr 3e-3 (batch 32) learns the topic in ~100 steps (accuracy ~0.25) and the neighbours
    after ~1000 (accuracy ~0.84 at 1500 steps), once attention finds the adjacent positions.
    Rows hold 16 to 62 words (every word is one WordPiece token), padded to ``SYNTH_LENGTH``
    = 64 tokens. Returns ``{split: uri, "tokenizer": uri}``.
    """
    rng = np.random.default_rng(seed)
    vocab = synth_vocabulary(rng)
    budget = SYNTH_LENGTH - 2  # [CLS] and [SEP]
    texts = {split: sample_texts(np.random.default_rng([seed, i]), vocab, max(1, int(round(n * scale))), 16, budget)
             for i, (split, n) in enumerate(SYNTH_ROWS.items())}
    tok_uri = st.join(out_uri, "tokenizer")
    # the vocabulary holds the alphabet, its ## continuations, merges and all 32 words
    train_tokenizer((" ".join(t) for t in texts["train"]), tok_uri, vocab_size=256,
                    model_max_length=SYNTH_LENGTH, opts=opts)
    tok = load_tokenizer(tok_uri, opts)
    out = {}
    meta = {"tokenizer": tok_uri, "max_length": SYNTH_LENGTH, "synthetic": True, "seed": seed,
            "follow": SYNTH_FOLLOW, "topics": SYNTH_TOPICS, "words": len(vocab)}
    for split, windows in texts.items():
        uri = st.join(out_uri, split)
        with ShardWriter(uri, task=TASK, split=split, columns=_columns(SYNTH_LENGTH, with_story=False),
                         rows_per_shard=1024, meta=meta, opts=opts, progress=progress) as writer:
            writer.write(encode_windows(tok, windows, SYNTH_LENGTH))
        out[split] = uri
    out["tokenizer"] = tok_uri
    return out


# --------------------------------------------------------------------------- masking


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, *, mask_id: int, vocab_size: int,
                probability: float = 0.15, generator: torch.Generator | None = None) -> Masked:
    """BERT masking. ``input_ids`` (B, T) int, ``maskable`` (B, T) bool -> (inputs, labels), both (B, T).

    Each maskable token is chosen with ``probability``; a chosen token becomes ``mask_id``
    (80 %), a uniform id below ``vocab_size`` (10 %) or stays (10 %). ``labels`` holds the
    original id at chosen positions and ``IGNORE`` (-100) elsewhere. Random numbers come from
    ``generator`` (a CPU generator) and are drawn on the CPU, so a seed gives the same masks
    on every device.
    """
    shape = input_ids.shape
    chosen = (torch.rand(shape, generator=generator) < probability).to(input_ids.device) & maskable
    action = torch.rand(shape, generator=generator).to(input_ids.device)
    randoms = torch.randint(vocab_size, shape, generator=generator).to(input_ids.device, input_ids.dtype)
    to_mask = chosen & (action < MASK_FRACTION)
    to_random = chosen & (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION)
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(to_random, randoms, inputs)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    return inputs, labels


def row_seed(row: torch.Tensor) -> int:
    """A 63-bit seed from a row's token ids (the same row always gets the same seed)."""
    data = row.detach().to("cpu", torch.int64).numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & (2**63 - 1)


@dataclass
class Masking:
    """What masking needs from the tokenizer, kept on the model as ``model.masking``."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    probability: float
    generator: torch.Generator  # training draws; evaluation seeds a generator per row

    def maskable(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) bool: attended tokens that are not special ([CLS], [SEP], [PAD], [UNK], [MASK])."""
        special = torch.isin(input_ids, torch.tensor(self.special_ids, device=input_ids.device))
        return attention_mask.bool() & ~special

    def for_training(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Masked:
        """Fresh draws from ``generator`` on every call (dynamic masking)."""
        return mask_tokens(input_ids, self.maskable(input_ids, attention_mask), mask_id=self.mask_id,
                           vocab_size=self.vocab_size, probability=self.probability, generator=self.generator)

    def for_evaluation(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Masked:
        """Each row's mask from a generator seeded by the row's ids: same row, same mask."""
        maskable = self.maskable(input_ids, attention_mask)
        rows = [mask_tokens(input_ids[i:i + 1], maskable[i:i + 1], mask_id=self.mask_id, vocab_size=self.vocab_size,
                            probability=self.probability,
                            generator=torch.Generator().manual_seed(row_seed(input_ids[i])))
                for i in range(input_ids.shape[0])]
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def _unwrap(model: nn.Module) -> nn.Module:
    """The ``BertForMaskedLM`` inside a DeepSpeed engine (or the model itself)."""
    return getattr(model, "module", model)


def _masking_of(model: nn.Module, input_ids: torch.Tensor) -> Masking:
    inner = _unwrap(model)
    limit = inner.config.max_position_embeddings
    if input_ids.shape[1] > limit:
        raise PolymodalError(f"rows have {input_ids.shape[1]} tokens but model.max_length is {limit}; "
                             f"set model.max_length >= {input_ids.shape[1]} or rebuild the dataset shorter")
    return inner.masking


def masked_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits, (B, T) labels -> (B, T) cross-entropy, 0 where the label is ``IGNORE``."""
    return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")


# --------------------------------------------------------------------------- the task


class MlmTask(Task):
    """Masked language modelling with a BERT encoder trained from random initialisation."""

    name = TASK
    model_config_cls = MlmConfig
    presets = PRESETS
    primary_metric = "masked_accuracy"
    mode = "max"
    #: metrics that are fractions in [0, 1] (reports print them as %)
    fraction_metrics = frozenset({"masked_accuracy"})

    def build_model(self, cfg: MlmConfig) -> nn.Module:
        from transformers import BertConfig, BertForMaskedLM

        tok = load_tokenizer(cfg.tokenizer)
        bert = BertConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                          num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                          max_position_embeddings=cfg.max_length, hidden_dropout_prob=cfg.dropout,
                          attention_probs_dropout_prob=cfg.dropout, pad_token_id=tok.pad_token_id)
        model = BertForMaskedLM(bert)  # random init from the torch seed the train loop set
        # the training draws follow the run's seed; ranks differ so their masks do too
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        generator = torch.Generator().manual_seed(torch.initial_seed() + 1_000_003 * rank)
        model.masking = Masking(mask_id=tok.mask_token_id, vocab_size=len(tok),
                                special_ids=tuple(sorted(set(tok.all_special_ids))),
                                probability=cfg.mlm_probability, generator=generator)
        return model

    def collate(self, columns: dict[str, np.ndarray]) -> Batch:
        missing = {"input_ids", "attention_mask"} - set(columns)
        if missing:
            raise PolymodalError(f"an {TASK} dataset needs columns input_ids and attention_mask, missing "
                                 f"{sorted(missing)}; write one with write_mlm_dataset or `polymodal data synth`")
        # embeddings index with int64; extra columns (story) stay behind
        return {k: torch.from_numpy(np.asarray(columns[k], dtype=np.int64)) for k in ("input_ids", "attention_mask")}

    def _forward(self, model: nn.Module, batch: Batch, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits on freshly masked inputs, and the (B, T) labels."""
        ids, attn = batch["input_ids"], batch["attention_mask"]
        masking = _masking_of(model, ids)
        inputs, labels = (masking.for_training if train else masking.for_evaluation)(ids, attn)
        logits = model(input_ids=inputs, attention_mask=attn).logits  # (B, T, V)
        return logits, labels

    def loss(self, model, batch):
        logits, labels = self._forward(model, batch, train=True)
        n = (labels != IGNORE).sum()
        # a batch without a chosen token (rare: short rows) contributes 0, not NaN
        return masked_nll(logits, labels).sum() / n.clamp(min=1), {}

    def predict(self, model, batch):
        logits, labels = self._forward(model, batch, train=False)
        chosen = labels != IGNORE
        correct = (logits.argmax(-1) == labels) & chosen
        return {"masked_tokens": chosen.sum(1).cpu().numpy(),                            # (B,)
                "masked_correct": correct.sum(1).cpu().numpy(),                          # (B,)
                "masked_nll": masked_nll(logits, labels).sum(1).double().cpu().numpy()}  # (B,)

    def metrics(self, outputs):
        n = float(outputs["masked_tokens"].sum())
        if n == 0:
            return {"masked_accuracy": float("nan"), "masked_loss": float("nan"), "perplexity": float("nan"),
                    "masked_tokens": 0.0}
        mean_nll = float(outputs["masked_nll"].sum()) / n
        return {"masked_accuracy": float(outputs["masked_correct"].sum()) / n, "masked_loss": mean_nll,
                "perplexity": math.exp(min(mean_nll, 700.0)), "masked_tokens": n}

    def synth_overrides(self, out):
        return [*super().synth_overrides(out), f"model.tokenizer={out['tokenizer']}"]

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True):
        return write_synthetic(out_uri, seed=seed, scale=scale, opts=storage, progress=progress)

