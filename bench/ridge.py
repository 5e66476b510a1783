"""Voxelwise ridge CV: polymodal's RidgeCV against himalaya's, same splits, alphas and score.

    python bench/ridge.py                 # n=3000 TRs, p=1200, 20,000 voxels, 10 alphas, 5 grouped folds
    python bench/ridge.py --scale         # also 95,000 voxels x 30,000 TRs streamed in voxel chunks
    python bench/ridge.py --scale-only    # just that

Prints wall time of each, the speed ratio (himalaya / polymodal), how many voxels got the same
alpha, and for the scale run the peak RSS of the process (the goal: under 8 GB).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch


def _problem(n: int, p: int, v: int, n_stories: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p), dtype=np.float32)
    # a few hundred latent directions drive the voxels at varied SNR, so alphas spread out
    W = rng.standard_normal((p, v), dtype=np.float32) / np.sqrt(p)
    snr = np.exp(rng.uniform(np.log(0.02), np.log(2.0), v)).astype(np.float32)
    Y = X @ W * np.sqrt(snr) + rng.standard_normal((n, v), dtype=np.float32)
    groups = np.repeat(np.arange(n_stories), int(np.ceil(n / n_stories)))[:n]
    return X, Y, groups


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def compare(n: int, p: int, v: int, n_alphas: int, folds: int, n_stories: int) -> None:
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import correlation_score

    from polymodal.models.fmri.ridge import RidgeCV, group_kfold_splits

    X, Y, groups = _problem(n, p, v, n_stories)
    alphas = np.logspace(0, 4, n_alphas)
    splits = group_kfold_splits(groups, folds)
    print(f"problem: n={n} TRs, p={p} features, {v} voxels, {n_alphas} alphas, {folds} grouped folds "
          f"({n_stories} stories); torch {torch.__version__}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    ours = RidgeCV(alphas, cv=splits, scoring="correlation").fit(X, Y)
    t_ours = time.perf_counter() - t0
    print(f"polymodal RidgeCV (torch, float32):  {t_ours:8.2f} s")

    set_backend("torch")
    t0 = time.perf_counter()
    ref = HimalayaRidgeCV(alphas=alphas, cv=splits, solver_params={"score_func": correlation_score}).fit(X, Y)
    t_ref = time.perf_counter() - t0
    print(f"himalaya RidgeCV  (torch, float32):  {t_ref:8.2f} s")

    same = np.isclose(ours.best_alphas_, np.asarray(ref.best_alphas_)).mean()
    print(f"same best alpha on {same:.2%} of voxels")
    # weights of 20 random voxels against a float64 normal-equations solve with their alpha
    X64, rng = X.astype(np.float64), np.random.default_rng(1)
    gram, errs = X64.T @ X64, {"polymodal": [], "himalaya": []}
    for v in rng.choice(v, 20, replace=False):
        want = np.linalg.solve(gram + ours.best_alphas_[v] * np.eye(p), X64.T @ Y[:, v].astype(np.float64))
        for name, coef in (("polymodal", ours.coef_[:, v]), ("himalaya", np.asarray(ref.coef_)[:, v])):
            errs[name].append(np.abs(coef - want).max() / np.abs(want).max())
    print("max relative weight error vs float64 solve (20 voxels): "
          + ", ".join(f"{k} {max(e):.1e}" for k, e in errs.items()))
    print(f"RATIO speed (himalaya / polymodal): {t_ref / t_ours:.2f}x")


def scale(n: int, p: int, v: int, n_alphas: int, folds: int, n_stories: int, chunk: int) -> None:
    """Stream ``v`` voxels in chunks through one shared X basis; Y is never whole in memory."""
    from polymodal.models.fmri.ridge import RidgeCV

    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, p), dtype=np.float32)
    groups = np.repeat(np.arange(n_stories), int(np.ceil(n / n_stories)))[:n]
    model = RidgeCV(np.logspace(0, 4, n_alphas), cv=folds)
    t0 = time.perf_counter()
    basis = model.basis(X, groups)
    alpha_counts = np.zeros(n_alphas, dtype=np.int64)
    for v0 in range(0, v, chunk):
        w = rng.standard_normal((p, min(chunk, v - v0)), dtype=np.float32) / np.sqrt(p)
        Y = torch.from_numpy(X @ w + rng.standard_normal((n, w.shape[1]), dtype=np.float32))  # "read" a chunk
        _, best, coef = basis.solve(Y)
        alpha_counts += np.bincount(best.numpy(), minlength=n_alphas)
        del Y, coef
    dt = time.perf_counter() - t0
    print(f"scale: n={n} TRs, p={p}, {v} voxels in chunks of {chunk}: {dt:.1f} s, "
          f"peak RSS {_peak_rss_gb():.2f} GB (goal < 8 GB); alpha histogram {alpha_counts.tolist()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--p", type=int, default=1200)
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--alphas", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--stories", type=int, default=20)
    parser.add_argument("--scale", action="store_true", help="also run 95,000 voxels x 30,000 TRs, streamed")
    parser.add_argument("--scale-p", type=int, default=100, help="features in the scale run")
    parser.add_argument("--scale-chunk", type=int, default=2048, help="voxels per chunk in the scale run")
    parser.add_argument("--scale-only", action="store_true", help="only the scale run")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs")
    if args.scale or args.scale_only:  # first, so the peak RSS it reports is its own
        scale(30000, args.scale_p, 95000, args.alphas, args.folds, 100, args.scale_chunk)
    if not args.scale_only:
        compare(args.n, args.p, args.voxels, args.alphas, args.folds, args.stories)


if __name__ == "__main__":
    main()
