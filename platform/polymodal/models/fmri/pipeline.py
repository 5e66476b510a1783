"""One encoding-model run: words -> features on the TR clock -> voxelwise ridge -> held-out r.

Run folder (``<storage_path>/<name>``, local or ``s3://``)::

    model/config.yaml, export.json, featurizer.json   what serving and evaluation load
    subjects/<subject>/ridge/chunks/<chunk>.safetensors  coef (p, v), best_alphas (v,), cv_scores
    subjects/<subject>/eval.safetensors                 r (V,), story_r (stories, V), cv_score, best_alphas
    eval/test.json                                      summaries per subject and per story
    summary.json                                        what `polymodal evaluate/serve/report` start from

The X side (features, SVDs) is computed on the driver; voxels are solved and evaluated chunk by
chunk as Ray tasks (:mod:`polymodal.models.fmri.distributed`), so a rerun after a failure only
solves the chunks that are missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal import shards, storage
from polymodal.config import ExperimentConfig
from polymodal.errors import ConfigError, PolymodalError
from polymodal.storage import StorageOptions

from .config import FmriConfig
from .distributed import ResponseSelection, evaluate_ray, fit_ridge_ray
from .features import lanczos_interp, story_design, tr_times
from .metrics import summarize

EXPORT_DIR = "model"


@dataclass
class Story:
    """One story's words (midpoint times, seconds), its TR clock, and where its stored
    responses sit on that clock (``response_start`` TRs after its start, ``response_end``
    before its end; ds003020: 10 and 5)."""

    words: list[str]
    times: np.ndarray
    n_trs: int
    tr: float
    start_time: float = 0.0
    response_start: int = 0
    response_end: int = 0

    @property
    def tr_times(self) -> np.ndarray:
        return tr_times(self.n_trs, self.tr, self.start_time)

    @property
    def response_offsets(self) -> tuple[int, int]:
        return self.response_start, self.response_end


def load_stories(root: str, opts: StorageOptions | None = None) -> dict[str, Story]:
    """``stories.json`` + ``words/`` of an imported dataset root -> story name -> :class:`Story`."""
    try:
        meta = json.loads(storage.read_text(storage.join(root, "stories.json"), opts))
    except FileNotFoundError:
        raise PolymodalError(f"{root} is not an fMRI dataset root (no stories.json); write one with "
                             "`polymodal data import --format huth|huth-pkl|fmri-plain`") from None
    words_uri = storage.join(root, "words")
    manifest = shards.open_dataset(words_uri, opts)
    rows: dict[str, list[tuple[float, str]]] = {name: [] for name in meta}
    for batch in shards.iter_local_batches(words_uri, 65536, manifest=manifest, shuffle=False, opts=opts):
        for story, word, start, end in zip(batch["story"], batch["word"], batch["start"], batch["end"]):
            if story not in rows:
                raise PolymodalError(f"{words_uri}: word {word!r} belongs to story {story!r}, which "
                                     f"{root}/stories.json lacks")
            rows[story].append(((float(start) + float(end)) / 2.0, str(word)))  # a word happens at its midpoint
    out = {}
    for name, m in meta.items():
        items = sorted(rows[name], key=lambda t: t[0])
        if not items:
            raise PolymodalError(f"{words_uri}: story {name!r} has no words")
        out[name] = Story([w for _, w in items], np.array([t for t, _ in items]), int(m["n_trs"]),
                          float(m["tr"]), float(m.get("start_time", 0.0)), int(m.get("response_start", 0)),
                          int(m.get("response_end", 0)))
    return out


def list_subjects(root: str, opts: StorageOptions | None = None) -> list[str]:
    base = storage.join(root, "responses")
    if not storage.exists(base, opts):
        raise PolymodalError(f"{root} has no responses/ folder: import responses first")
    return sorted(n for n in storage.listdir(base, opts) if storage.exists(storage.join(base, n, "index.json"), opts))


def split_stories(mcfg: FmriConfig, names: list[str], seed: int) -> tuple[list[str], list[str]]:
    """(train, test) story lists; unknown names are a :class:`ConfigError` naming the field."""
    errors = []
    for field in ("train_stories", "test_stories"):
        unknown = sorted(set(getattr(mcfg, field) or []) - set(names))
        if unknown:
            errors.append((f"model.{field}", f"unknown stories {unknown}; the dataset has {sorted(names)}"))
    if errors:
        raise ConfigError(errors)
    if mcfg.test_stories is not None:
        test = list(mcfg.test_stories)
    else:
        pool = sorted(set(names) - set(mcfg.train_stories or []))
        n_test = max(1, round(mcfg.test_fraction * len(names)))
        test = sorted(np.random.default_rng(seed).permutation(pool)[:n_test].tolist())
    train = list(mcfg.train_stories) if mcfg.train_stories is not None else sorted(set(names) - set(test))
    if len(train) < mcfg.cv:
        raise ConfigError([("model.cv", f"{mcfg.cv} folds need at least {mcfg.cv} training stories, have "
                                        f"{len(train)}; lower model.cv or hold out fewer stories")])
    if not test:
        raise ConfigError([("model.test_stories", "no held-out story to evaluate on")])
    return train, test


# --------------------------------------------------------------------------- feature spaces


class Featurizer:
    """A feature space: words of a story -> (n_trs, dim) on its TR clock (Lanczos resampled)."""

    def __init__(self, mcfg: FmriConfig, embed=None, bow=None):
        self.mcfg, self._embed, self.bow = mcfg, embed, bow
        self.dim = bow.dim if bow is not None else int(embed.dim)

    def on_trs(self, story: Story) -> np.ndarray:
        m = self.mcfg
        if self.bow is not None:
            return self.bow.on_trs(story.words, story.times, story.tr_times, m.interp_window, m.cutoff_mult)
        vectors = self._embed.embed(story.words)                        # (n_words, dim)
        return lanczos_interp(vectors, story.times, story.tr_times, m.interp_window, m.cutoff_mult)

    def state(self) -> dict[str, Any]:
        """What serving needs besides the config (the training vocabulary for bag-of-words)."""
        return {"feature": self.mcfg.feature, "dim": self.dim,
                "vocab": self.bow.vocab if self.bow is not None else None}


def build_featurizer(mcfg: FmriConfig, train_words: list[list[str]] | None = None, *,
                     vocab: list[str] | None = None, opts: StorageOptions | None = None) -> Featurizer:
    """The run's feature space. Bag-of-words takes its vocabulary from ``train_words`` (or a
    saved ``vocab``); the other spaces load from the paths in the config."""
    from .embeddings import BagOfWords, WordVectors

    if mcfg.feature == "bow":
        if vocab is not None:
            return Featurizer(mcfg, bow=BagOfWords([vocab]))
        return Featurizer(mcfg, bow=BagOfWords(train_words or [], min_count=mcfg.bow_min_count))
    if mcfg.feature in ("word2vec", "glove"):
        return Featurizer(mcfg, embed=WordVectors.load(mcfg.vectors, fmt=mcfg.feature, opts=opts))
    from .encoders import TransformerFeatures

    if mcfg.feature == "encoder":
        return Featurizer(mcfg, embed=TransformerFeatures(
            mcfg.encoder, layer=mcfg.layer, context_words=mcfg.context_words, opts=opts))
    from polymodal.runs import resolve_checkpoint

    return Featurizer(mcfg, embed=TransformerFeatures.from_checkpoint(
        resolve_checkpoint(mcfg.encoder), opts=opts, layer=mcfg.layer, context_words=mcfg.context_words))


def design(feat: Featurizer, stories: dict[str, Story], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked design (rows, dim * delays) float32 and the story index of every row."""
    m = feat.mcfg
    xs = [story_design(feat.on_trs(stories[n]), stories[n].tr, m.trim, m.delays,
                       stories[n].response_offsets).astype(np.float32) for n in names]
    groups = np.concatenate([np.full(len(x), i) for i, x in enumerate(xs)])
    return np.vstack(xs), groups


def _one_tr(stories: dict[str, Story]) -> float:
    trs = {s.tr for s in stories.values()}
    if len(trs) != 1:
        raise PolymodalError(f"stories have different TRs {sorted(trs)}; fit one TR per run")
    return trs.pop()


def chunk_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """What each voxel-chunk task asks Ray for: ``scaling.resources_per_worker`` (1 CPU by
    default, custom resources kept) with one GPU each under ``scaling.use_gpu``."""
    return {"CPU": 1.0, **({"GPU": 1.0} if cfg.scaling.use_gpu else {}), **cfg.scaling.resources_per_worker}


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError([("model.device", "cuda was asked for, but torch sees no GPU; use auto or cpu")])
    return device


# --------------------------------------------------------------------------- the run


@dataclass
class Prepared:
    """Everything a fit or an evaluation needs on the driver."""

    stories: dict[str, Story]
    train: list[str]
    test: list[str]
    subjects: list[str]
    featurizer: Featurizer
    tr: float

    def offsets(self, names: list[str]) -> dict[str, tuple[int, int]]:
        """story -> where its responses sit on its feature clock (see :class:`Story`)."""
        return {n: self.stories[n].response_offsets for n in names}


def prepare(cfg: ExperimentConfig, vocab: list[str] | None = None) -> Prepared:
    mcfg: FmriConfig = cfg.model
    root, opts = cfg.data.train, cfg.storage
    if not isinstance(root, str):
        raise ConfigError([("data.train", "fmri.encoding reads one dataset root (stories.json, words/, responses/); "
                                          "a list of datasets to mix is for tasks trained in batches")])
    stories = load_stories(root, opts)
    train, test = split_stories(mcfg, sorted(stories), cfg.seed)
    known = list_subjects(root, opts)
    subjects = mcfg.subjects or known
    unknown = sorted(set(subjects) - set(known))
    if unknown or not subjects:
        raise ConfigError([("model.subjects", f"unknown subjects {unknown}; {root} has {known}")])
    feat = build_featurizer(mcfg, [stories[n].words for n in train], vocab=vocab, opts=opts)
    return Prepared(stories, train, test, subjects, feat, _one_tr(stories))


def subject_uri(cfg: ExperimentConfig, subject: str) -> str:
    return storage.join(cfg.run_uri, "subjects", subject)


def fit(cfg: ExperimentConfig, *, progress: bool = True, use_ray: bool = True) -> dict[str, Any]:
    """Fit every subject's voxelwise ridge, evaluate on the held-out stories, write the export
    and ``summary.json``. Rerunning the same run skips the voxel chunks already solved."""
    mcfg: FmriConfig = cfg.model
    prep = prepare(cfg)
    device = resolve_device(mcfg.device)
    if progress:
        print(f"[polymodal] fmri.encoding: {mcfg.feature} features ({prep.featurizer.dim} x {len(mcfg.delays)} "
              f"delays), {len(prep.train)} training / {len(prep.test)} test stories, subjects {prep.subjects}",
              flush=True)
    X, groups = design(prep.featurizer, prep.stories, prep.train)
    for subject in prep.subjects:
        sel = ResponseSelection(cfg.data.train, subject, prep.train, prep.tr, mcfg.trim, prep.offsets(prep.train))
        fit_ridge_ray(X, groups, sel, storage.join(subject_uri(cfg, subject), "ridge"), alphas=mcfg.alphas.values,
                      cv=mcfg.cv, score=mcfg.score, dtype=mcfg.dtype, device=device, opts=cfg.storage,
                      resources=chunk_resources(cfg), use_ray=use_ray, progress=progress)
    _write_export(cfg, prep)
    result = evaluate(cfg, prep, progress=progress, use_ray=use_ray)
    from polymodal.runs import write_summary

    return write_summary(cfg, latest=cfg.run_uri, best=cfg.run_uri, metrics=result["metrics"])


def _write_export(cfg: ExperimentConfig, prep: Prepared) -> None:
    base, opts = storage.join(cfg.run_uri, EXPORT_DIR), cfg.storage
    storage.write_text(storage.join(base, "featurizer.json"), json.dumps(prep.featurizer.state()), opts)
    info = {"task": cfg.task, "subjects": prep.subjects, "train_stories": prep.train, "test_stories": prep.test,
            "tr": prep.tr, "data": cfg.data.train}
    storage.write_text(storage.join(base, "export.json"), json.dumps(info, indent=2), opts)
    storage.write_text(storage.join(base, "config.yaml"), cfg.to_yaml(), opts)  # last: marks a complete export


def read_export(run_uri: str, opts: StorageOptions | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(export.json, featurizer.json) of a fitted run."""
    base = storage.join(run_uri, EXPORT_DIR)
    try:
        return (json.loads(storage.read_text(storage.join(base, "export.json"), opts)),
                json.loads(storage.read_text(storage.join(base, "featurizer.json"), opts)))
    except FileNotFoundError:
        raise PolymodalError(f"{run_uri} holds no fitted fmri.encoding model ({base} is incomplete); "
                             "run `polymodal train` first") from None


def evaluate(cfg: ExperimentConfig, prep: Prepared | None = None, *, progress: bool = True,
             use_ray: bool = True) -> dict[str, Any]:
    """Per-voxel held-out r for every subject; writes ``eval.safetensors`` per subject and
    ``<run>/eval/test.json`` (per-subject and per-story summaries). Returns that JSON."""
    from safetensors.numpy import save

    mcfg: FmriConfig = cfg.model
    if prep is None:
        _, state = read_export(cfg.run_uri, cfg.storage)
        prep = prepare(cfg, vocab=state.get("vocab"))
    X_test, _ = design(prep.featurizer, prep.stories, prep.test)
    device = resolve_device(mcfg.device)
    per_subject, story_rows = {}, []
    for subject in prep.subjects:
        sel = ResponseSelection(cfg.data.train, subject, prep.test, prep.tr, mcfg.trim, prep.offsets(prep.test))
        res = evaluate_ray(X_test, sel, storage.join(subject_uri(cfg, subject), "ridge"), opts=cfg.storage,
                           device=device, resources=chunk_resources(cfg), use_ray=use_ray, progress=progress)
        storage.write_bytes(storage.join(subject_uri(cfg, subject), "eval.safetensors"),
                            save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in res.items()},
                                 metadata={"stories": json.dumps(prep.test)}), cfg.storage)
        per_subject[subject] = {"voxels": int(res["r"].size), **summarize(res["r"]),
                                "cv_score": float(res["cv_score"].mean()),
                                "median_alpha": float(np.median(res["best_alphas"]))}
        for name, r in zip(prep.test, res["story_r"]):
            story_rows.append({"subject": subject, "story": name, **summarize(r)})
    metrics = {"cv_score": _mean(per_subject, "cv_score"),
               **{f"test_{k}_r": _mean(per_subject, k) for k in ("mean", "median", "top1", "top5")}}
    out = {"split": "test", "checkpoint": cfg.run_uri, "data": cfg.data.train, "feature": mcfg.feature,
           "metrics": metrics, "subjects": per_subject, "stories": story_rows, "test_stories": prep.test}
    storage.write_text(storage.join(cfg.run_uri, "eval", "test.json"), json.dumps(out, indent=2), cfg.storage)
    return out


def _mean(per_subject: dict[str, dict[str, float]], key: str) -> float:
    vals = [s[key] for s in per_subject.values()]
    return float(np.mean(vals)) if vals else math.nan


def load_subject_eval(run_uri: str, subject: str, opts: StorageOptions | None = None) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(storage.read_bytes(storage.join(run_uri, "subjects", subject, "eval.safetensors"), opts))
