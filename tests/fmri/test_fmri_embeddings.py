"""Bag-of-words and static word vectors, checked against explicit one-hot / dict computations."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.errors import PolymodalError
from polymodal.models.fmri import lanczos_interp
from polymodal.models.fmri.embeddings import BagOfWords, WordVectors


def test_bag_of_words_vocab_from_training_stories_and_equals_one_hot_lanczos():
    bow = BagOfWords([["The", "cat", "sat"], ["the", "dog"]])
    assert bow.vocab == ["cat", "dog", "sat", "the"]
    words = ["the", "cat", "the", "unicorn"]           # "unicorn" only in a test story: no column
    times = np.array([0.4, 1.1, 2.5, 3.0])
    trs = np.array([0.0, 2.0, 4.0])
    one_hot = np.zeros((4, bow.dim))
    for i, w in enumerate(words):
        if w in bow.index:
            one_hot[i, bow.index[w]] = 1.0
    np.testing.assert_allclose(bow.on_trs(words, times, trs), lanczos_interp(one_hot, times, trs), atol=1e-12)
    with pytest.raises(PolymodalError, match="no words"):
        BagOfWords([[], [""]])


@pytest.mark.parametrize("fmt,suffix", [("word2vec", ".bin"), ("glove", ".txt")])
def test_word_vectors_load_both_formats(tmp_path, fmt, suffix):
    from gensim.models import KeyedVectors

    rng = np.random.default_rng(0)
    vocab = ["river", "boat", "sky"]
    vecs = rng.standard_normal((3, 5)).astype(np.float32)
    path = tmp_path / f"vectors{suffix}"
    if fmt == "word2vec":
        kv = KeyedVectors(vector_size=5)
        kv.add_vectors(vocab, vecs)
        kv.save_word2vec_format(str(path), binary=True)
    else:  # GloVe: "word v1 v2 ..." per line, no header
        path.write_text("".join(f"{w} {' '.join(repr(float(x)) for x in v)}\n" for w, v in zip(vocab, vecs)))
    wv = WordVectors.load(str(path))
    assert wv.dim == 5
    out = wv.embed(["Boat", "unknown", "sky"])
    np.testing.assert_allclose(out[0], vecs[1], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)          # out of vocabulary -> zeros
    np.testing.assert_allclose(out[2], vecs[2], rtol=1e-6)


def test_word_vectors_bad_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(PolymodalError, match="broken.bin"):
        WordVectors.load(str(bad))
