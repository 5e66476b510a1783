"""Synthetic story-listening data with a known answer.

Stories are random word sequences with word timings; each word has a fixed random embedding.
Features follow the real pipeline (Lanczos to the TR clock, z-score per story, trim, delays),
and each signal voxel is a fixed random linear map of the delayed features, scaled to a chosen
signal-to-noise ratio, plus Gaussian noise. With signal variance ``snr / (1 + snr)`` and noise
variance ``1 / (1 + snr)``, a perfect model's held-out correlation for the voxel is
``sqrt(snr / (1 + snr))``; noise voxels (snr 0) have expected correlation 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import Trim, lanczos_interp, story_design, tr_times, zscore


@dataclass
class SynthStory:
    words: list[str]
    starts: np.ndarray      # (n_words,) seconds
    ends: np.ndarray        # (n_words,) seconds
    responses: np.ndarray   # (n_trs, n_voxels) float32, untrimmed


@dataclass
class SynthData:
    stories: dict[str, SynthStory]
    embeddings: dict[str, np.ndarray]   # word -> (dim,)
    weights: np.ndarray                 # (dim * n_delays, n_voxels) ground truth on z-scored delayed features
    snr: np.ndarray                     # (n_voxels,), 0 for noise voxels
    tr: float
    delays: list[int]
    trim: Trim = field(default_factory=Trim)

    @property
    def expected_corr(self) -> np.ndarray:
        """(n_voxels,): held-out correlation of the true model, ``sqrt(snr / (1 + snr))``."""
        return np.sqrt(self.snr / (1.0 + self.snr))


def story_features(data: SynthData, name: str) -> np.ndarray:
    """(n_trs_trimmed, dim * n_delays): the pipeline's design matrix for one story."""
    story = data.stories[name]
    vectors = np.stack([data.embeddings[w] for w in story.words])
    times = (story.starts + story.ends) / 2.0          # a word happens at its midpoint
    n_trs = story.responses.shape[0]
    on_trs = lanczos_interp(vectors, times, tr_times(n_trs, data.tr))
    return story_design(on_trs, data.tr, data.trim, data.delays)


def make_synthetic(n_stories: int = 10, trs_per_story: int = 150, n_voxels: int = 200, dim: int = 16,
                   vocab: int = 300, noise_fraction: float = 0.25, snr_range: tuple[float, float] = (0.25, 4.0),
                   tr: float = 2.0, delays: tuple[int, ...] = (1, 2, 3, 4), trim: Trim | None = None,
                   seed: int = 0, story_seed: int | None = None) -> SynthData:
    """Stories, ground-truth weights and per-voxel SNRs; see the module docstring.

    ``story_seed`` fixes the words, timings and embeddings apart from ``seed``: two subjects
    who heard the same stories are two calls with the same ``story_seed`` and different seeds.
    """
    rng = np.random.default_rng(seed)
    srng = rng if story_seed is None else np.random.default_rng(story_seed)
    trim = trim or Trim()
    words_vocab = [f"w{i:04d}" for i in range(vocab)]
    embeddings = {w: srng.standard_normal(dim) for w in words_vocab}
    n_noise = int(round(noise_fraction * n_voxels))
    snr = np.exp(rng.uniform(np.log(snr_range[0]), np.log(snr_range[1]), n_voxels))
    snr[rng.permutation(n_voxels)[:n_noise]] = 0.0
    n_features = dim * len(delays)
    weights = rng.standard_normal((n_features, n_voxels)) / np.sqrt(n_features)
    data = SynthData(stories={}, embeddings=embeddings, weights=weights, snr=snr, tr=tr,
                     delays=list(delays), trim=trim)
    for k in range(n_stories):
        duration = trs_per_story * tr
        # ~2.5 words per second, durations 0.2-0.6 s, starting after a short silence
        t, starts, ends = 1.0, [], []
        while True:
            length = srng.uniform(0.2, 0.6)
            if t + length > duration - 1.0:
                break
            starts.append(t)
            ends.append(t + length)
            t += length + srng.uniform(0.0, 0.2)
        words = [words_vocab[i] for i in srng.integers(0, vocab, len(starts))]
        name = f"story{k:02d}"
        data.stories[name] = SynthStory(words, np.asarray(starts), np.asarray(ends),
                                        np.zeros((trs_per_story, n_voxels), np.float32))
        X = story_features(data, name)                               # (n_trimmed, n_features)
        signal = zscore(X @ weights)                                 # unit variance per voxel
        noise = rng.standard_normal(signal.shape)
        Y = np.sqrt(snr / (1 + snr)) * signal + np.sqrt(1 / (1 + snr)) * noise
        start, end = trim.trs(tr)
        full = np.zeros((trs_per_story, n_voxels))
        full[start:trs_per_story - end] = Y
        # trimmed TRs hold pure noise: a pipeline that mis-trims sees its correlation drop
        full[:start] = rng.standard_normal((start, n_voxels))
        full[trs_per_story - end:] = rng.standard_normal((end, n_voxels))
        data.stories[name].responses = full.astype(np.float32)
    return data


def design(data: SynthData, names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked (X, Y, story index per row) for ``names``; Y trimmed exactly like X and z-scored per story."""
    xs, ys, gs = [], [], []
    for i, name in enumerate(names):
        X = story_features(data, name)
        Y = zscore(data.trim.apply(data.stories[name].responses, data.tr))
        xs.append(X)
        ys.append(Y)
        gs.append(np.full(len(X), i))
    return np.vstack(xs), np.vstack(ys), np.concatenate(gs)


def subjects_for_task(seed: int = 0, scale: float = 1.0) -> dict[str, SynthData]:
    """What ``polymodal data synth --task fmri.encoding`` writes: subjects S01 and S02 who heard
    the same ``12 * scale`` stories (150 TRs), 300 voxels each, a quarter of them noise."""
    n_stories = max(6, int(round(12 * scale)))
    return {f"S{i + 1:02d}": make_synthetic(n_stories=n_stories, trs_per_story=150, n_voxels=300, dim=16,
                                            seed=seed * 10 + i + 1, story_seed=seed) for i in range(2)}


def write_dataset(root: str, subjects: dict[str, SynthData], *, chunk: int = 4096, opts=None,
                  progress: bool = False) -> dict[str, Any]:
    """Write synthetic subjects as an imported fMRI dataset at ``root`` (local or ``s3://``).

    The layout is what ``polymodal data import`` writes (``stories.json``, ``words/``,
    ``responses/<subject>/``), plus ``vectors.txt``: the words' true embeddings in GloVe text
    format, so ``feature: glove`` can recover the planted model exactly. Every subject must
    have heard the same stories (``make_synthetic(..., story_seed=s)``).
    """
    from polymodal import storage

    from .data import write_responses
    from .importers import write_story_meta, write_words

    first = next(iter(subjects.values()))
    for name, data in subjects.items():
        if sorted(data.stories) != sorted(first.stories) or any(
                data.stories[s].words != first.stories[s].words for s in first.stories):
            raise ValueError(f"subject {name!r} heard other stories; build subjects with one story_seed")
    words = {name: list(zip(st.words, st.starts.tolist(), st.ends.tolist())) for name, st in first.stories.items()}
    meta = {name: {"n_trs": int(st.responses.shape[0]), "tr": first.tr, "start_time": 0.0}
            for name, st in first.stories.items()}
    write_words(root, words, opts)
    for subject, data in subjects.items():
        write_responses(root, subject, {n: st.responses for n, st in data.stories.items()}, chunk=chunk,
                        opts=opts, progress=progress)
    lines = [" ".join([w, *(f"{x:.6f}" for x in vec)]) for w, vec in first.embeddings.items()]
    storage.write_text(storage.join(root, "vectors.txt"), "\n".join(lines) + "\n", opts)
    write_story_meta(root, meta, opts)
    return {"root": root, "stories": sorted(meta), "subjects": sorted(subjects),
            "vectors": storage.join(root, "vectors.txt")}
