"""Voxelwise ridge over Ray: one shared X basis, one task per stored voxel chunk.

The driver builds the :class:`~polymodal.models.fmri.ridge.RidgeBasis` (one SVD per fold plus
the full-design SVD) once and puts it in the object store. Each task reads only its voxel chunk
of the responses (:mod:`polymodal.models.fmri.data`), cuts it to the TRs of the design rows
and z-scores it per story exactly like the features, solves it, and writes
``<out>/chunks/<chunk>.safetensors`` with ``coef`` (p, v), ``best_alphas`` (v,) and
``cv_scores`` (n_alphas, v). Peak memory per task is the basis
plus one chunk, whatever the number of voxels. Chunks already written are skipped, so a rerun
after a failure only solves what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from polymodal import storage
from polymodal.storage import StorageOptions

from .data import ChunkInfo, read_chunk, read_index
from .features import Trim, aligned_rows, zscore
from .ridge import RidgeBasis, RidgeCV


@dataclass
class ResponseSelection:
    """Which rows of the stored responses line up with the design matrix, and how to prepare them."""

    root: str
    subject: str
    stories: list[str]          # in the order their rows are stacked in X
    tr: float
    trim: Trim
    #: story -> (TRs of the feature clock before the first response row, after the last one);
    #: a story not listed has responses on the whole clock, (0, 0)
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    def cut(self, story: str, responses: np.ndarray) -> np.ndarray:
        """The rows of one story's stored responses that line up with its design rows."""
        before, after = self.offsets.get(story, (0, 0))
        _, rows = aligned_rows(len(responses) + before + after, self.trim, self.tr, (before, after))
        return responses[rows]


def stack_responses(chunk: dict[str, np.ndarray], sel: ResponseSelection) -> np.ndarray:
    """Per story: cut to the design's TRs (:meth:`ResponseSelection.cut`), z-score; then stack
    in ``sel.stories`` order -> (n, v)."""
    return np.vstack([zscore(sel.cut(name, chunk[name])) for name in sel.stories]).astype(np.float32)


def _chunk_uri(out_uri: str, chunk: ChunkInfo) -> str:
    return storage.join(out_uri, "chunks", f"{chunk.name}.safetensors")


def solve_chunk(basis: RidgeBasis, sel: ResponseSelection, chunk: ChunkInfo, out_uri: str,
                opts: StorageOptions | None = None, device: str = "cpu") -> dict[str, Any]:
    """Read one chunk, solve it on ``device``, write its safetensors; return a small summary."""
    from safetensors.torch import save

    basis = basis.to(device)
    Y = stack_responses(read_chunk(sel.root, sel.subject, chunk, sel.stories, opts), sel)
    if Y.shape[0] != basis.n_samples:
        raise ValueError(f"chunk {chunk.name}: {Y.shape[0]} response rows after trimming, but the design "
                         f"has {basis.n_samples}; stories or trimming differ between X and Y")
    scores, best, coef = basis.solve(torch.from_numpy(Y).to(basis.s.dtype))
    best_scores = scores.gather(0, best[None]).squeeze(0)
    tensors = {"coef": coef.cpu().contiguous(), "best_alphas": basis.alphas[best].cpu().contiguous(),
               "cv_scores": scores.cpu().contiguous()}
    storage.write_bytes(_chunk_uri(out_uri, chunk), save(tensors, metadata={"start": str(chunk.start),
                                                                            "stop": str(chunk.stop)}), opts)
    return {"chunk": chunk.name, "voxels": chunk.stop - chunk.start, "mean_cv_score": float(best_scores.mean())}


def fit_ridge_ray(X: np.ndarray, groups: Sequence, sel: ResponseSelection, out_uri: str, *,
                  alphas: Sequence[float] = tuple(np.logspace(0, 4, 10)), cv: int = 5,
                  score: str = "correlation", dtype: str = "float32", device: str = "cpu",
                  opts: StorageOptions | None = None, resources: Mapping[str, float] | None = None,
                  use_ray: bool = True, progress: bool = False) -> dict[str, Any]:
    """Solve every voxel chunk of ``sel.subject``; write ``<out>/index.json``.

    With ``use_ray`` each chunk is a Ray task sharing the X basis through the object store, asking
    for ``resources`` as ``scaling.resources_per_worker`` spells them (:func:`task_options`);
    without it the chunks are solved one after another in this process (``polymodal train --local``).
    """
    index = read_index(sel.root, sel.subject, opts)
    missing = [s for s in sel.stories if s not in index.stories]
    if missing:
        raise ValueError(f"subject {sel.subject!r} has no responses for stories {missing}")
    todo = [c for c in index.chunks if not storage.exists(_chunk_uri(out_uri, c), opts)]
    summaries = []
    if todo:  # a finished run needs no decomposition of X
        basis = RidgeCV(alphas, cv=cv, scoring=score, dtype=dtype, device=device).basis(X, groups)
        summaries = list(_run_chunks(solve_chunk, basis, todo, (sel,), out_uri, opts, device, use_ray,
                                     resources, progress and f"ridge {sel.subject}"))
    result = {"subject": sel.subject, "n_voxels": index.n_voxels, "chunks": [c.model_dump() for c in index.chunks],
              "alphas": [float(a) for a in alphas], "score": score, "stories": sel.stories,
              "solved_now": sorted(s["chunk"] for s in summaries)}
    storage.write_text(storage.join(out_uri, "index.json"), json.dumps(result, indent=2), opts)
    return result


def task_options(resources: Mapping[str, float] | None, device: str) -> dict[str, Any]:
    """Ray task options for one chunk from ``scaling.resources_per_worker``-style ``resources``:
    ``CPU`` (default 1), ``GPU`` (default 1 when ``device`` is ``cuda``, else 0) and any custom
    resource (e.g. ``{CPU: 2, ridge_node: 1}`` keeps the chunks on the nodes that offer it)."""
    custom = dict(resources or {})
    cpus = custom.pop("CPU", 1.0)
    gpus = custom.pop("GPU", 1.0 if device == "cuda" else 0.0)
    return {"num_cpus": cpus, "num_gpus": gpus, "resources": custom}


def _run_chunks(fn, shared: Any, chunks: list[ChunkInfo], args: tuple, out_uri: str, opts, device: str,
                use_ray: bool, resources: Mapping[str, float] | None, progress: str | bool = False):
    """Yield ``fn(shared, *args, chunk, out_uri, opts, device)`` per chunk, as results arrive;
    ``progress``: a tqdm bar with this description."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), desc=str(progress), unit="chunk")
    try:
        for result in _chunk_results(fn, shared, chunks, args, out_uri, opts, device, use_ray, resources):
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if bar is not None:
            bar.close()


def _chunk_results(fn, shared, chunks, args, out_uri, opts, device, use_ray, resources):
    if not use_ray:
        for c in chunks:
            yield fn(shared, *args, c, out_uri, opts, device)
        return
    import ray

    from polymodal.logs import init_ray

    init_ray()
    shared_ref = ray.put(shared.to("cpu") if hasattr(shared, "to") else shared)
    remote = ray.remote(**task_options(resources, device))(fn)
    # one task name per chunk: the dashboard (and the node-loss test) tell the chunks apart; a task
    # lost with its node is retried elsewhere (Ray's max_retries); finished ones are not rerun
    pending = [remote.options(name=f"{fn.__name__}:{c.name}").remote(shared_ref, *args, c, out_uri, opts, device)
               for c in chunks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def evaluate_chunk(X_test: np.ndarray, sel: ResponseSelection, chunk: ChunkInfo, sol_uri: str,
                   opts: StorageOptions | None = None, device: str = "cpu") -> dict[str, Any]:
    """Held-out correlations of one solved chunk: read its weights and its test responses only.

    ``X_test`` stacks the test stories in ``sel.stories`` order. Returns ``r`` (v,) over all test
    TRs, ``story_r`` (n_stories, v) per story, ``cv_score`` (v,) at the chosen alpha and
    ``best_alphas`` (v,).
    """
    from safetensors.numpy import load

    from .metrics import voxel_correlations

    sol = load(storage.read_bytes(_chunk_uri(sol_uri, chunk), opts))
    raw = read_chunk(sel.root, sel.subject, chunk, sel.stories, opts)
    Y = stack_responses(raw, sel)
    if Y.shape[0] != X_test.shape[0]:
        raise ValueError(f"chunk {chunk.name}: {Y.shape[0]} test response rows after trimming, but the test "
                         f"design has {X_test.shape[0]}")
    pred = (torch.from_numpy(np.ascontiguousarray(X_test, dtype=np.float32)).to(device)
            @ torch.from_numpy(sol["coef"]).to(device)).cpu().numpy()       # (n_test, v)
    bounds = np.cumsum([0] + [len(sel.cut(name, raw[name])) for name in sel.stories])
    story_r = np.stack([voxel_correlations(pred[a:b], Y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    return {"chunk": chunk.name, "r": voxel_correlations(pred, Y).astype(np.float32),
            "story_r": story_r.astype(np.float32), "cv_score": sol["cv_scores"].max(0),
            "best_alphas": sol["best_alphas"]}


def evaluate_ray(X_test: np.ndarray, sel: ResponseSelection, sol_uri: str, *, opts: StorageOptions | None = None,
                 device: str = "cpu", resources: Mapping[str, float] | None = None, use_ray: bool = True,
                 progress: bool = False) -> dict[str, np.ndarray]:
    """:func:`evaluate_chunk` over every chunk of a solution, reassembled in voxel order."""
    meta = json.loads(storage.read_text(storage.join(sol_uri, "index.json"), opts))
    chunks = [ChunkInfo(**c) for c in meta["chunks"]]
    parts = {part["chunk"]: part for part in _run_chunks(evaluate_chunk, X_test, chunks, (sel,), sol_uri, opts, device,
                                                         use_ray, resources,
                                                         progress and f"evaluate {sel.subject}")}
    ordered = [parts[c.name] for c in chunks]
    return {key: np.concatenate([p[key] for p in ordered], axis=-1)
            for key in ("r", "story_r", "cv_score", "best_alphas")}


def load_solution(out_uri: str, opts: StorageOptions | None = None) -> dict[str, np.ndarray]:
    """Reassemble ``coef`` (p, V), ``best_alphas`` (V,), ``cv_scores`` (n_alphas, V) from the chunks."""
    from safetensors.numpy import load

    meta = json.loads(storage.read_text(storage.join(out_uri, "index.json"), opts))
    parts = [load(storage.read_bytes(_chunk_uri(out_uri, ChunkInfo(**c)), opts)) for c in meta["chunks"]]
    return {key: np.concatenate([p[key] for p in parts], axis=-1) for key in ("coef", "best_alphas", "cv_scores")}


__all__ = ["ResponseSelection", "evaluate_chunk", "evaluate_ray", "fit_ridge_ray", "load_solution", "solve_chunk",
           "stack_responses", "task_options"]
