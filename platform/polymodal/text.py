"""Text helpers shared by systems.

* Texts through the tensor-only batch path: a task's ``collate`` (which has no tokenizer) turns
  strings into zero-padded UTF-8 byte rows (:func:`encode_texts`), and the model decodes
  (:func:`decode_texts`) and tokenizes them itself.
* Offline WordPiece tokenizers (:func:`train_tokenizer`, :func:`load_tokenizer`): the vocabulary
  of every tiny model in tests and demos (:mod:`polymodal.testing.tiny`) and of models trained
  from scratch.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from polymodal import storage as st
from polymodal.cache import local_copy
from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def encode_texts(texts: Sequence[str], max_bytes: int = 512) -> np.ndarray:
    """B strings -> (B, L) uint8 zero-padded UTF-8 (L = longest, at most ``max_bytes``)."""
    raw = [str(t).encode("utf-8")[:max_bytes] for t in texts]
    out = np.zeros((len(raw), max(1, max((len(r) for r in raw), default=1))), dtype=np.uint8)
    for i, r in enumerate(raw):
        out[i, :len(r)] = np.frombuffer(r, dtype=np.uint8)
    return out


def decode_texts(text_bytes: Tensor) -> list[str]:
    """(B, L) uint8, zero-padded UTF-8 -> B strings (inverse of :func:`encode_texts`)."""
    arr = text_bytes.detach().cpu().numpy().astype(np.uint8)
    return [bytes(row).rstrip(b"\0").decode("utf-8", errors="replace") for row in arr]


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 8000, *, min_frequency: int = 1,
                    lowercase: bool = True, model_max_length: int = 512,
                    opts: StorageOptions | None = None) -> str:
    """Train a BERT-style WordPiece tokenizer on ``texts``; save it as a
    ``PreTrainedTokenizerFast`` folder at ``out_dir`` (local or ``s3://``). Returns ``out_dir``.

    Special tokens are BERT's (``[PAD] [UNK] [CLS] [SEP] [MASK]``, ids 0-4); a sequence is
    encoded as ``[CLS] tokens [SEP]``. When every distinct word of ``texts`` fits in
    ``vocab_size`` (with its characters), the vocabulary is those words and characters in a fixed
    order (``min_frequency`` does not apply): the same texts give the same tokenizer in every
    process. A larger corpus gets the ``tokenizers`` library's WordPiece merges. Runs offline.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise PolymodalError("train_tokenizer: no text to learn a vocabulary from")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise PolymodalError(f"vocab_size {vocab_size} leaves no room beside the {len(SPECIAL_TOKENS)} special tokens")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    words = Counter(word for text in texts
                    for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    whole = sorted(w for w in words if len(w) > 1)
    if len(SPECIAL_TOKENS) + 2 * len(chars) + len(whole) <= vocab_size:
        # Every word fits: the vocabulary is the words themselves plus the characters (alone and as
        # ##-continuations, for unseen words), in a fixed order. The library's trainer would end at
        # the same coverage, but breaks ties between equally frequent pieces differently in every
        # process (its hash maps are randomly seeded), so the same texts would give another
        # tokenizer, and a seeded model other weights, on every run.
        vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars), *whole]
    else:
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS)))
        # a large corpus: the trainer's merges; ids renumbered in a fixed order all the same
        vocab = [*SPECIAL_TOKENS, *sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS),
                                         key=lambda t: (t.startswith("##"), t))]
    tok.model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=model_max_length)
    with tempfile.TemporaryDirectory(prefix="polymodal-tokenizer-") as tmp:
        fast.save_pretrained(tmp)
        st.upload_dir(tmp, out_dir, opts)
    return out_dir


def load_tokenizer(uri: str, opts: StorageOptions | None = None):
    """A fast tokenizer with ``[PAD]`` and ``[MASK]`` (as :func:`train_tokenizer` writes, or a
    pretrained one such as ``bert-base-uncased``) from a local folder, an ``s3://`` folder or a hub id."""
    from transformers import AutoTokenizer

    path = Path(local_copy(uri, opts))
    if path.exists() and not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        raise PolymodalError(f"tokenizer {uri!r}: {path} holds no tokenizer.json; make one with "
                             "polymodal.text.train_tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except OSError as exc:  # a hub id that is not cached while offline, a typo, no network
        raise PolymodalError(f"tokenizer {uri!r}: not a local folder, and the hub says: {exc}") from None
    if not getattr(tok, "is_fast", False) or tok.mask_token_id is None or tok.pad_token_id is None:
        raise PolymodalError(f"tokenizer {uri!r}: masked language modelling needs a fast tokenizer with "
                             "[PAD] and [MASK] tokens")
    return tok
