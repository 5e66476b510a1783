"""Generation metrics: SacreBLEU and ROUGE-2 of generated recipes against the references (fractions
in [0, 1], like every system's metrics: SacreBLEU's own 0-100 score / 100), and CLIP image-image
cosine similarity between generated and real images (the cosine, in [-1, 1])."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus SacreBLEU (13a tokenizer, one reference per row) as a fraction: ``score / 100``."""
    import sacrebleu

    _check(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(map(str, hypotheses)), [list(map(str, references))]).score) / 100.0


def rouge2(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-2 F1 over rows (``rouge-score``, no stemming), in [0, 1]."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=False)
    return float(np.mean([scorer.score(str(r), str(h))["rouge2"].fmeasure for h, r in zip(hypotheses, references)]))


def clip_similarity(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity in [-1, 1] of CLIP features (N, d) of generated and real images."""
    g, r = np.asarray(generated, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if g.shape != r.shape or g.ndim != 2:
        raise ValueError(f"need two (N, d) arrays of the same shape, got {g.shape} and {r.shape}")
    norm = np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1)
    return (g * r).sum(1) / np.maximum(norm, 1e-12)


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references) or not len(references):
        raise ValueError(f"need as many hypotheses as references (>= 1), got {len(hypotheses)} and {len(references)}")
