"""Word-level feature spaces: bag-of-words and static word vectors (word2vec / GloVe via gensim).

Each turns a story's words (with times) into a (TRs, F) matrix on the TR clock through the same
Lanczos resampling (:func:`polymodal.models.fmri.features.lanczos_interp`). Out-of-vocabulary
words contribute zero vectors, as in the Huth-lab eng1000 model.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.storage import StorageOptions

from .features import lanczos_matrix


def normalise_word(word: str) -> str:
    return word.strip().lower()


class BagOfWords:
    """One dimension per word of the **training** stories (test-only words are out of vocabulary)."""

    def __init__(self, train_words: Iterable[Sequence[str]], min_count: int = 1):
        counts = Counter(normalise_word(w) for words in train_words for w in words)
        self.vocab = sorted(w for w, c in counts.items() if c >= min_count and w)
        if not self.vocab:
            raise PolymodalError("bag-of-words: the training stories have no words")
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def dim(self) -> int:
        return len(self.vocab)

    def on_trs(self, words: Sequence[str], word_times: np.ndarray, new_times: np.ndarray, window: int = 3,
               cutoff_mult: float = 1.0) -> np.ndarray:
        """(n_trs, vocab): Lanczos-resampled one-hot words, without building the (words, vocab) matrix."""
        sinc = lanczos_matrix(word_times, new_times, window, cutoff_mult)          # (n_trs, n_words)
        out = np.zeros((len(new_times), self.dim))
        cols = np.array([self.index.get(normalise_word(w), -1) for w in words], dtype=np.int64)
        known = cols >= 0
        # column j of the output sums the kernel weights of every occurrence of word j
        np.add.at(out.T, cols[known], sinc[:, known].T)
        return out


class WordVectors:
    """Static embeddings from a word2vec binary or a GloVe text file (path or URI), via gensim."""

    def __init__(self, vectors: Mapping[str, np.ndarray] | None = None, *, keyed=None):
        if keyed is not None:
            self._kv = keyed
            self.dim = int(keyed.vector_size)
        else:
            items = dict(vectors or {})
            if not items:
                raise PolymodalError("word vectors: empty vocabulary")
            self._kv = None
            self._table = {normalise_word(k): np.asarray(v, dtype=np.float32) for k, v in items.items()}
            self.dim = len(next(iter(self._table.values())))

    @classmethod
    def load(cls, source: str, fmt: Literal["word2vec", "glove", "auto"] = "auto",
             opts: StorageOptions | None = None) -> "WordVectors":
        """``fmt=auto``: ``*.bin`` is binary word2vec, anything else GloVe text (no header line)."""
        from gensim.models import KeyedVectors

        from polymodal.cache import local_file

        try:
            path = local_file(source, opts)
        except FileNotFoundError:
            raise PolymodalError(f"word vectors not found: {source}") from None
        if fmt == "auto":
            fmt = "word2vec" if path.endswith(".bin") else "glove"
        try:
            if fmt == "word2vec":
                kv = KeyedVectors.load_word2vec_format(path, binary=True)
            else:
                kv = KeyedVectors.load_word2vec_format(path, binary=False, no_header=True)
        except (ValueError, UnicodeDecodeError, EOFError) as exc:
            raise PolymodalError(f"{source}: not a readable {fmt} file ({exc})") from None
        return cls(keyed=kv)

    def lookup(self, word: str) -> np.ndarray | None:
        key = normalise_word(word)
        if self._kv is not None:
            for candidate in (word, key):
                if candidate in self._kv.key_to_index:
                    return np.asarray(self._kv[candidate], dtype=np.float32)
            return None
        return self._table.get(key)

    def embed(self, words: Sequence[str]) -> np.ndarray:
        """(n_words, dim); out-of-vocabulary words are zero rows."""
        out = np.zeros((len(words), self.dim), dtype=np.float32)
        for i, w in enumerate(words):
            vec = self.lookup(w)
            if vec is not None:
                out[i] = vec
        return out
