"""Voxelwise ridge over Ray: one shared X basis, one task per stored voxel chunk.

The driver builds the :class:`~polymodal.models.fmri.ridge.RidgeBasis` (one SVD per fold plus
the full-design SVD) once and puts it in the object store. Each task reads only its voxel chunk
of the responses (:mod:`polymodal.models.fmri.data`), trims and z-scores it per story exactly
like the features, solves it, and writes ``<out>/chunks/<chunk>.safetensors`` with ``coef``
(p, v), ``best_alphas`` (v,) and ``cv_scores`` (n_alphas, v). Peak memory per task is the basis
plus one chunk, whatever the number of voxels. Chunks already written are skipped, so a rerun
after a failure only solves what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from polymodal import storage
from polymodal.storage import StorageOptions

from .data import ChunkInfo, read_chunk, read_index
from .features import Trim, zscore
from .ridge import RidgeBasis, RidgeCV


@dataclass
class ResponseSelection:
    """Which rows of the stored responses line up with the design matrix, and how to prepare them."""

    root: str
    subject: str
    stories: list[str]          # in the order their rows are stacked in X
    tr: float
    trim: Trim


def stack_responses(chunk: dict[str, np.ndarray], sel: ResponseSelection) -> np.ndarray:
    """Per story: trim like the features, z-score; then stack in ``sel.stories`` order -> (n, v)."""
    return np.vstack([zscore(sel.trim.apply(chunk[name], sel.tr)) for name in sel.stories]).astype(np.float32)


def _chunk_uri(out_uri: str, chunk: ChunkInfo) -> str:
    return storage.join(out_uri, "chunks", f"{chunk.name}.safetensors")


def solve_chunk(basis: RidgeBasis, sel: ResponseSelection, chunk: ChunkInfo, out_uri: str,
                opts: StorageOptions | None = None) -> dict[str, Any]:
    """Read one chunk, solve it, write its safetensors; return a small summary."""
    from safetensors.torch import save

    Y = stack_responses(read_chunk(sel.root, sel.subject, chunk, sel.stories, opts), sel)
    if Y.shape[0] != basis.n_samples:
        raise ValueError(f"chunk {chunk.name}: {Y.shape[0]} response rows after trimming, but the design "
                         f"has {basis.n_samples}; stories or trimming differ between X and Y")
    scores, best, coef = basis.solve(torch.from_numpy(Y).to(basis.U.dtype))
    best_scores = scores.gather(0, best[None]).squeeze(0)
    tensors = {"coef": coef.contiguous(), "best_alphas": basis.alphas[best].contiguous(),
               "cv_scores": scores.contiguous()}
    storage.write_bytes(_chunk_uri(out_uri, chunk), save(tensors, metadata={"start": str(chunk.start),
                                                                            "stop": str(chunk.stop)}), opts)
    return {"chunk": chunk.name, "voxels": chunk.stop - chunk.start, "mean_cv_score": float(best_scores.mean())}


def fit_ridge_ray(X: np.ndarray, groups: Sequence, sel: ResponseSelection, out_uri: str, *,
                  alphas: Sequence[float] = tuple(np.logspace(0, 4, 10)), cv: int = 5,
                  score: str = "correlation", dtype: str = "float32", opts: StorageOptions | None = None,
                  num_cpus_per_task: float = 1.0, progress: bool = False) -> dict[str, Any]:
    """Solve every voxel chunk of ``sel.subject`` as a Ray task; write ``<out>/index.json``."""
    import ray

    index = read_index(sel.root, sel.subject, opts)
    missing = [s for s in sel.stories if s not in index.stories]
    if missing:
        raise ValueError(f"subject {sel.subject!r} has no responses for stories {missing}")
    todo = [c for c in index.chunks if not storage.exists(_chunk_uri(out_uri, c), opts)]
    pending = []
    if todo:  # a finished run needs no decomposition of X
        basis_ref = ray.put(RidgeCV(alphas, cv=cv, score=score, dtype=dtype).basis(X, groups))
        task = ray.remote(num_cpus=num_cpus_per_task)(solve_chunk)
        pending = [task.remote(basis_ref, sel, c, out_uri, opts) for c in todo]
    summaries = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pending), desc=f"ridge {sel.subject}", unit="chunk")
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        summaries.extend(ray.get(done))
        if bar:
            bar.update(len(done))
    if bar:
        bar.close()
    result = {"subject": sel.subject, "n_voxels": index.n_voxels, "chunks": [c.model_dump() for c in index.chunks],
              "alphas": [float(a) for a in alphas], "score": score, "stories": sel.stories,
              "solved_now": sorted(s["chunk"] for s in summaries)}
    storage.write_text(storage.join(out_uri, "index.json"), json.dumps(result, indent=2), opts)
    return result


def load_solution(out_uri: str, opts: StorageOptions | None = None) -> dict[str, np.ndarray]:
    """Reassemble ``coef`` (p, V), ``best_alphas`` (V,), ``cv_scores`` (n_alphas, V) from the chunks."""
    from safetensors.numpy import load

    meta = json.loads(storage.read_text(storage.join(out_uri, "index.json"), opts))
    parts = [load(storage.read_bytes(_chunk_uri(out_uri, ChunkInfo(**c)), opts)) for c in meta["chunks"]]
    return {key: np.concatenate([p[key] for p in parts], axis=-1) for key in ("coef", "best_alphas", "cv_scores")}


__all__ = ["ResponseSelection", "fit_ridge_ray", "load_solution", "solve_chunk", "stack_responses"]
