"""ChefFusion's generation metrics against independent computations: BLEU-4 and ROUGE-2 written
out here from their definitions, CLIP similarity against sklearn's cosine similarity."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from polymodal.models.cheffusion import metrics


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _reference_bleu(hypotheses: list[str], references: list[str], clip: bool = True) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) of whitespace-tokenised text, 0-1: matched and total
    n-gram counts summed over sentences, each hypothesis n-gram count clipped to its count in the
    reference, geometric mean of the four precisions, brevity penalty exp(1 - r/c) when c < r."""
    matched, total = [0] * 4, [0] * 4
    c = r = 0
    for hyp, ref in zip(hypotheses, references):
        h, t = hyp.split(), ref.split()
        c, r = c + len(h), r + len(t)
        for n in range(1, 5):
            hc, rc = _ngrams(h, n), _ngrams(t, n)
            matched[n - 1] += sum(min(k, rc[g]) if clip else (k if g in rc else 0) for g, k in hc.items())
            total[n - 1] += sum(hc.values())
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = 1.0 if c >= r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)


def _reference_rouge2(hypotheses: list[str], references: list[str]) -> float:
    """Mean over rows of the bigram-overlap F1 (lowercased, split on non-alphanumerics), 0-1."""
    def bigrams(text: str) -> Counter:
        return _ngrams(re.findall(r"[a-z0-9]+", text.lower()), 2)

    scores = []
    for hyp, ref in zip(hypotheses, references):
        h, t = bigrams(hyp), bigrams(ref)
        overlap = sum(min(k, t[g]) for g, k in h.items())
        if overlap == 0:
            scores.append(0.0)
            continue
        p, rec = overlap / sum(h.values()), overlap / sum(t.values())
        scores.append(2 * p * rec / (p + rec))
    return float(np.mean(scores))


# Lowercase words and single spaces only, so sacrebleu's 13a tokenizer leaves the text as split()
# does, and every n-gram order has a match in each corpus (so BLEU's smoothing never applies).
BLEU_CASES = {
    "short hypotheses (brevity penalty)": (
        ["the cat sat on the mat", "a quick brown fox jumps over the dog"],
        ["the cat sat on the red mat today", "the quick brown fox jumps over the lazy dog"]),
    "long hypothesis (no penalty)": (
        ["boil the tomato with water for ten minutes then season with salt and pepper"],
        ["boil the tomato with water for ten minutes and season with salt"]),
    "repeated words (clipping)": (
        ["the the the the cat sat on the mat", "bake the beet pie for twenty minutes"],
        ["the cat sat on the mat", "bake the pie for twenty minutes and let it cool"]),
}


@pytest.mark.parametrize("case", BLEU_CASES)
def test_bleu_equals_corpus_bleu4_from_its_definition(case: str) -> None:
    hyps, refs = BLEU_CASES[case]
    expected = _reference_bleu(hyps, refs)
    assert 0.0 < expected < 1.0
    assert metrics.bleu(hyps, refs) == pytest.approx(expected, abs=1e-11)


def test_bleu_cases_discriminate_corpus_counts_and_clipping() -> None:
    """The cases above would catch a sentence-averaged BLEU and a BLEU without clipping."""
    hyps, refs = BLEU_CASES["repeated words (clipping)"]
    score = metrics.bleu(hyps, refs)
    assert abs(np.mean([_reference_bleu([h], [r]) for h, r in zip(hyps, refs)]) - score) > 0.01
    assert abs(_reference_bleu(hyps, refs, clip=False) - score) > 0.01


def test_bleu_identical_is_1_and_disjoint_is_0() -> None:
    refs = ["slice the carrot and toss with oil", "chop the spinach then boil it with water"]
    assert metrics.bleu(refs, refs) == pytest.approx(1.0)
    assert metrics.bleu(["one two three four five", "six seven eight nine"], refs) == 0.0


def test_rouge2_equals_mean_bigram_f1() -> None:
    hyps = ["Tomato soup. Chop the tomato, boil the tomato!",     # case and punctuation
            "the the the the",                                    # repeated bigram, clipped to 1
            "carrot cake: mix the carrot with flour and eggs.",
            "nothing in common here",                             # F1 0
            "soup"]                                               # no bigram at all
    refs = ["tomato soup. ingredients: tomato, water. instructions: chop the tomato. boil the tomato with water.",
            "the the cat",
            "carrot cake. mix the carrot with eggs and flour, bake for 20 minutes.",
            "beet pie",
            "soup"]
    expected = _reference_rouge2(hyps, refs)
    assert 0.0 < expected < 1.0
    assert metrics.rouge2(hyps, refs) == pytest.approx(expected, abs=1e-11)
    assert metrics.rouge2(refs[:3], refs[:3]) == pytest.approx(1.0)


def test_clip_similarity_is_the_cosine_diagonal() -> None:
    rng = np.random.default_rng(0)
    gen, real = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    real[1] = 3.0 * gen[1]    # same direction: 1
    real[2] = -gen[2]         # opposite: -1
    gen[3] = 0.0              # a zero feature: 0, as sklearn
    got = metrics.clip_similarity(gen.astype(np.float32), real)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, np.diag(cosine_similarity(gen, real)), atol=1e-7)
    np.testing.assert_allclose(got[[1, 2, 3]], [1.0, -1.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("shapes", [((4, 3), (4, 2)), ((4, 3), (5, 3)), ((3,), (3,))])
def test_clip_similarity_rejects_mismatched_or_non_matrix_inputs(shapes) -> None:
    a, b = np.ones(shapes[0]), np.ones(shapes[1])
    with pytest.raises(ValueError, match="same shape"):
        metrics.clip_similarity(a, b)


@pytest.mark.parametrize("fn", [metrics.bleu, metrics.rouge2])
@pytest.mark.parametrize("hyps, refs", [([], []), (["a b c"], ["a b c", "d e f"]), (["a b", "c d"], ["a b"])])
def test_text_metrics_need_equal_nonempty_lists(fn, hyps, refs) -> None:
    with pytest.raises(ValueError, match=f"got {len(hyps)} and {len(refs)}"):
        fn(hyps, refs)
