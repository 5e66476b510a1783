"""Voxelwise ridge regression with a per-voxel alpha chosen by cross-validation.

Objective per voxel ``v``: ``||X b_v - y_v||^2 + alpha_v ||b_v||^2`` (alpha not squared, as in
sklearn and himalaya; Huth-lab ``ridge_utils`` squares it: its 100 is 1e4 here). No intercept:
callers z-score features and responses per story.

The work is organised around one decomposition per fold, ``X_train = U diag(s) V^T`` (a thin SVD,
or, when ``p <= n_train``, a float64 eigendecomposition of ``X_train^T X_train``), reused for every
alpha and every voxel:

* ``z = diag(s) U^T Y_train`` (r x v) is computed once per fold and voxel batch;
* validation predictions are never formed: their sums against ``y``, their means and their
  squared norms are linear in ``1 / (s^2 + alpha)`` (the squared norm after a partial-fraction
  split of ``M = (X_val V)^T (X_val V)``, see :func:`fold_scores`), so the whole alpha grid costs
  (n_alphas x r) @ (r x v) products per fold instead of one (n_val x r) @ (r x v) per alpha;
* the refit on all training data uses one more decomposition and gives each voxel its own alpha
  with a single ``V (d_{a_v} * U^T Y)`` product, whatever the number of distinct alphas.

Nothing is solved per voxel. Voxels are processed in batches (``voxel_chunk``) so memory is
bounded by the batch, not by the number of voxels; :class:`RidgeBasis` holds the X side alone
(picklable), so voxel batches can be solved anywhere, e.g. in Ray tasks sharing it through the
object store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch

Score = Literal["correlation", "r2"]
Method = Literal["auto", "svd", "gram"]
_TIE_BREAK = 1e-10  # added * log(alpha): equal scores (e.g. constant voxels) pick the larger alpha


# --------------------------------------------------------------------------- splits


def kfold_splits(n_samples: int, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contiguous, unshuffled K-fold (sklearn ``KFold``): the first ``n % k`` folds get one extra sample."""
    if not 2 <= n_splits <= n_samples:
        raise ValueError(f"cv={n_splits} needs 2 <= folds <= n_samples={n_samples}")
    sizes = np.full(n_splits, n_samples // n_splits)
    sizes[: n_samples % n_splits] += 1
    idx, out, start = np.arange(n_samples), [], 0
    for size in sizes:
        val = idx[start:start + size]
        out.append((np.concatenate([idx[:start], idx[start + size:]]), val))
        start += size
    return out


def group_kfold_splits(groups: Sequence, n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds that never split a group (story): largest groups first, each to the lightest fold."""
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < n_splits:
        raise ValueError(f"cv={n_splits} grouped folds need at least {n_splits} groups (stories), got {len(names)}")
    fold_of_group = np.empty(len(names), dtype=np.int64)
    load = np.zeros(n_splits, dtype=np.int64)
    for g in np.argsort(-counts, kind="stable"):
        fold = int(np.argmin(load))
        fold_of_group[g] = fold
        load[fold] += counts[g]
    fold_of_sample = fold_of_group[inverse]
    idx = np.arange(len(groups))
    return [(idx[fold_of_sample != k], idx[fold_of_sample == k]) for k in range(n_splits)]


def resolve_splits(cv: int | Iterable, n_samples: int, groups: Sequence | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(cv, (int, np.integer)):
        return group_kfold_splits(groups, int(cv)) if groups is not None else kfold_splits(n_samples, int(cv))
    splits = [(np.asarray(tr, dtype=np.int64), np.asarray(va, dtype=np.int64)) for tr, va in cv]
    if not splits:
        raise ValueError("cv gave no (train, val) splits")
    for k, (tr, va) in enumerate(splits):
        if len(tr) == 0 or len(va) == 0:
            raise ValueError(f"cv split {k} has an empty train or validation set")
        if max(tr.max(), va.max()) >= n_samples or min(tr.min(), va.min()) < 0:
            raise ValueError(f"cv split {k} indexes outside 0..{n_samples - 1}")
    return splits


# --------------------------------------------------------------------------- solver pieces


def _tensors_to(obj: Any, device: str | torch.device) -> dict[str, torch.Tensor]:
    return {f.name: getattr(obj, f.name).to(device) for f in dataclasses.fields(obj)
            if isinstance(getattr(obj, f.name), torch.Tensor)}


def _to_tensor(a, device: torch.device, dtype: torch.dtype, name: str) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x {'features' if name == 'X' else 'voxels'}), "
                         f"got shape {tuple(t.shape)}")
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t


@dataclass
class FoldBasis:
    """What one fold needs of X, for any voxels.

    ``X_train = U diag(s) V^T`` and ``K = X_val V``. For the per-alpha prediction norms
    (see :func:`fold_scores`), ``M = K^T K`` split into ``C = M_ij / (s_j^2 - s_i^2)`` over pairs
    with well-separated singular values, plus the few near-degenerate pairs kept explicitly.
    Shapes: ``s`` (r,), ``K`` (n_val, r), ``C`` (r, r), with r = min(n_train, p).

    Two routes to ``s`` and ``V`` (see :meth:`RidgeBasis.build`): the thin SVD of ``X_train``
    (``U`` (n_train, r) kept), or, when the folds partition the rows and ``p <= n_train``, the
    eigendecomposition of ``X_train^T X_train = X^T X - X_val^T X_val`` in float64 (``U`` is
    None and ``Vt`` (p, p) is kept: then ``diag(s) U^T Y_train = V^T X^T Y - K^T Y_val``).
    """

    train: np.ndarray
    val: np.ndarray
    U: torch.Tensor | None  # (n_train, r), SVD route only
    Vt: torch.Tensor | None  # (r, p), Gram route only
    s: torch.Tensor
    K: torch.Tensor
    M_diag: torch.Tensor    # (r,) float64
    C: torch.Tensor         # (r, r) float64, zero on the diagonal and on near-degenerate pairs
    pairs: torch.Tensor     # (n_pairs, 2) near-degenerate (i, j), i != j, both s > 0
    M_pairs: torch.Tensor   # (n_pairs,) float64

    def to(self, device: str | torch.device) -> "FoldBasis":
        return dataclasses.replace(self, **_tensors_to(self, device))

    @classmethod
    def build(cls, X: torch.Tensor, train: np.ndarray, val: np.ndarray,
              gram: torch.Tensor | None = None) -> "FoldBasis":
        """``gram``: ``X^T X`` in float64 to take the Gram route; None: SVD of ``X_train``."""
        tr = torch.as_tensor(train, device=X.device)
        va = torch.as_tensor(val, device=X.device)
        if gram is None:
            U, s, Vt = torch.linalg.svd(X[tr], full_matrices=False)
            V, Vt_kept = Vt.T, None
        else:
            Xv = X[va].double()
            s, V = _eig_svd(gram - Xv.T @ Xv)
            V = V.to(X.dtype)
            U, Vt_kept = None, V.T.contiguous()
        K = X[va] @ V
        K64, s2 = K.double(), s.double() ** 2
        M = K64.T @ K64
        gap = s2[None, :] - s2[:, None]                          # gap[i, j] = s_j^2 - s_i^2
        # float64 keeps M_ij / gap accurate down to gaps ~1e-9 of the spectrum; closer pairs
        # (and repeated singular values) are summed exactly, pair by pair
        close = gap.abs() <= 1e-9 * s2.max().clamp_min(1e-300)
        live = s2 > 1e-12 * s2.max().clamp_min(1e-300)           # s ~ 0: the filter zeroes them anyway
        degenerate = close & ~torch.eye(len(s), dtype=torch.bool, device=X.device) & live[:, None] & live[None, :]
        C = torch.where(close, torch.zeros_like(M), M / torch.where(close, torch.ones_like(gap), gap))
        pairs = degenerate.nonzero()
        return cls(train=train, val=val, U=U, Vt=Vt_kept, s=s, K=K, M_diag=M.diagonal().clone(), C=C, pairs=pairs,
                   M_pairs=M[pairs[:, 0], pairs[:, 1]])


def _eig_svd(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending, float64) and right singular vectors of X from ``X^T X``."""
    lam, V = torch.linalg.eigh(gram)
    lam, V = lam.flip(0), V.flip(1)
    return lam.clamp_min(0).sqrt(), V


def fold_scores(basis: FoldBasis, Y: torch.Tensor, alphas: torch.Tensor, score: Score = "correlation",
                XtY: torch.Tensor | None = None) -> torch.Tensor:
    """Validation scores (n_alphas, v) of every alpha for the voxels in ``Y`` (n_samples, v).

    With ``z = diag(s) U^T y_train`` and ``l_r(a) = 1 / (s_r^2 + a)``, the validation prediction
    is ``K diag(l(a)) z``. Its three sums need no per-alpha products with the data:

    * ``sum_t pred * y_c = l(a) . (z * K^T y_c)``;
    * ``sum_t pred = l(a) . (z * K^T 1)``;
    * ``sum_t pred^2 = sum_ij z_i z_j M_ij l_i l_j``, and by partial fractions
      ``l_i l_j = (l_i - l_j) / (s_j^2 - s_i^2)``, so it equals
      ``l(a) . (2 z * (C z)) + l(a)^2 . (M_ii z^2)`` (+ near-degenerate pairs, exactly).

    So each fold costs a few (r x v) products once, and each alpha only (r x v) element-wise work.
    ``XtY`` (p, v) is ``X^T Y``, required by a basis built on the Gram route (``basis.U`` None).
    """
    va = torch.as_tensor(basis.val, device=Y.device)
    Yv = Y[va]                                                      # (n_val, v)
    n_val = Yv.shape[0]
    KtY = basis.K.T @ Yv                                            # (r, v)
    if basis.U is None:  # Gram route: diag(s) U^T Y_train = V^T X_train^T Y_train
        if XtY is None:
            raise ValueError("this fold basis was built from X^T X: pass XtY = X^T Y")
        z = (basis.Vt @ XtY - KtY).double()                         # (r, v)
    else:
        tr = torch.as_tensor(basis.train, device=Y.device)
        z = (basis.s[:, None] * (basis.U.T @ Y[tr])).double()      # (r, v)
    y_mean = Yv.mean(0)
    y_mean64 = y_mean.double()
    ss_y = ((Yv - y_mean) ** 2).sum(0).double()                     # (v,)
    # K^T (Y_val - mean) without forming the centred copy
    cross_w = z * (KtY.double() - basis.K.double().sum(0)[:, None] * y_mean64[None, :])   # (r, v)
    mean_w = z * basis.K.double().mean(0)[:, None]                  # (r, v)
    sq_off = 2 * z * (basis.C @ z)                                  # (r, v)
    sq_diag = basis.M_diag[:, None] * z * z                         # (r, v)
    lam = 1.0 / (basis.s.double()[None, :] ** 2 + alphas.double()[:, None])  # (A, r)
    cross = lam @ cross_w                                           # (A, v) sum_t pred * y_c
    p_mean = lam @ mean_w                                           # (A, v)
    sum_p2 = lam @ sq_off + (lam * lam) @ sq_diag                   # (A, v)
    if len(basis.pairs):
        i, j = basis.pairs[:, 0], basis.pairs[:, 1]
        sum_p2 = sum_p2 + (lam[:, i] * lam[:, j]) @ (basis.M_pairs[:, None] * z[i] * z[j])
    sum_p2 = sum_p2.clamp_min(0)
    if score == "correlation":
        ss_p = (sum_p2 - n_val * p_mean * p_mean).clamp_min(0)
        denom = torch.sqrt(ss_p * ss_y)
        out = torch.where(denom > 0, cross / denom.clamp_min(1e-300), torch.zeros_like(cross))
    else:
        # sum (y - p)^2 with y = y_c + ybar: ss_y + sum p^2 - 2 ybar sum p + n ybar^2 - 2 sum p y_c
        sse = ss_y + sum_p2 - 2 * n_val * y_mean64 * p_mean + n_val * y_mean64 * y_mean64 - 2 * cross
        out = 1 - sse / ss_y.clamp_min(1e-300)
    return out.to(Y.dtype)


def best_alpha_index(mean_scores: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """(n_alphas, v) -> (v,): arg-max over alphas; exact ties go to the larger alpha."""
    return (mean_scores + _TIE_BREAK * torch.log(alphas)[:, None]).argmax(0)


def refit_weights(U: torch.Tensor, s: torch.Tensor, Vt: torch.Tensor, Y: torch.Tensor,
                  voxel_alphas: torch.Tensor) -> torch.Tensor:
    """(p, v) weights with each voxel's own alpha from the SVD of the full training design."""
    UtY = U.T @ Y                                                       # (r, v)
    d = s[:, None] / (s[:, None] ** 2 + voxel_alphas[None, :])          # (r, v)
    return Vt.T @ (d * UtY)


@dataclass
class RidgeBasis:
    """Everything ridge needs of X, computed once and reused for any set of voxels.

    One :class:`FoldBasis` per CV split plus the decomposition of the full design for the refit.
    Picklable (tensors), so it can be shared with Ray tasks through the object store; each task
    then solves its own voxel slice with :meth:`solve`, reading nothing else.

    Route (chosen in :meth:`build`): with ``p <= n_train`` in every fold and folds that partition
    the rows (KFold, GroupKFold), s and V come from float64 eigendecompositions of ``X^T X``
    minus each fold's ``X_val^T X_val``, and every product with Y goes through ``X^T Y`` (p, v),
    computed once per voxel batch: per fold that is ``V^T (X^T Y) - K^T Y_val`` instead of
    ``U^T Y_train``, and the refit is ``V d V^T (X^T Y)``. Otherwise thin SVDs (``U`` kept).
    """

    folds: list[FoldBasis]
    U: torch.Tensor | None  # (n, r) of the full design (SVD route)
    X: torch.Tensor | None  # (n, p) the design itself (Gram route)
    s: torch.Tensor        # (r,)
    Vt: torch.Tensor       # (r, p)
    alphas: torch.Tensor   # (n_alphas,)
    score: Score = "correlation"

    @classmethod
    def build(cls, X: torch.Tensor, splits: list[tuple[np.ndarray, np.ndarray]], alphas: torch.Tensor,
              score: Score = "correlation", method: Method = "auto") -> "RidgeBasis":
        n, p = X.shape
        partition = all(len(tr) + len(va) == n and len(np.union1d(tr, va)) == n for tr, va in splits)
        if method == "gram" and not partition:
            raise ValueError("method='gram' needs CV folds that partition the samples (each sample in exactly "
                             "one validation fold); use method='svd' or 'auto'")
        if method == "gram" or method == "auto" and partition and all(p <= len(tr) for tr, _ in splits):
            X64 = X.double()
            gram = X64.T @ X64                                   # (p, p), shared by every fold
            s, V = _eig_svd(gram)
            folds = [FoldBasis.build(X, tr, va, gram=gram) for tr, va in splits]
            return cls(folds, None, X, s.to(X.dtype), V.T.to(X.dtype).contiguous(), alphas, score)
        U, s, Vt = torch.linalg.svd(X, full_matrices=False)
        return cls([FoldBasis.build(X, tr, va) for tr, va in splits], U, None, s, Vt, alphas, score)

    @property
    def n_samples(self) -> int:
        return (self.U if self.U is not None else self.X).shape[0]

    def to(self, device: str | torch.device) -> "RidgeBasis":
        """A copy on ``device`` (the driver builds on its device; tasks move it to theirs)."""
        return dataclasses.replace(self, folds=[f.to(device) for f in self.folds], **_tensors_to(self, device))

    def solve(self, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Y (n, v) -> mean CV scores (n_alphas, v), best alpha index (v,), weights (p, v)."""
        Y = Y.to(device=self.s.device, dtype=self.s.dtype)
        XtY = self.X.T @ Y if self.X is not None else None                 # (p, v)
        scores = torch.zeros(len(self.alphas), Y.shape[1], dtype=Y.dtype, device=Y.device)
        for fold in self.folds:
            scores += fold_scores(fold, Y, self.alphas, self.score, XtY=XtY)
        scores /= len(self.folds)
        best = best_alpha_index(scores, self.alphas)
        voxel_alphas = self.alphas[best]
        if XtY is None:
            return scores, best, refit_weights(self.U, self.s, self.Vt, Y, voxel_alphas)
        # X^T X = V s^2 V^T: b = V diag(1 / (s^2 + a)) V^T X^T Y
        d = 1.0 / (self.s[:, None] ** 2 + voxel_alphas[None, :])             # (r, v)
        return scores, best, self.Vt.T @ (d * (self.Vt @ XtY))


# --------------------------------------------------------------------------- estimator


class RidgeCV:
    """Ridge with one alpha per voxel, chosen by (grouped) cross-validation; sklearn-style.

    Parameters
    ----------
    alphas : sequence of float
        Candidate penalties (> 0), e.g. ``np.logspace(0, 4, 10)``.
    cv : int or iterable of (train_idx, val_idx)
        An int is an unshuffled KFold, or a GroupKFold when ``fit`` gets ``groups`` (stories).
    score : {"correlation", "r2"}
        Per-voxel validation score; the best alpha maximises its mean over folds.
    device, dtype : where and how to compute; ``"float32"`` (default) or ``"float64"``.
    voxel_chunk : int, optional
        Voxels per batch (memory bound). Default: as many as keep the work arrays near 256 MB.
    method : {"auto", "svd", "gram"}
        How X is decomposed (see :class:`RidgeBasis`): ``gram`` (float64 eigendecompositions of
        ``X^T X``; folds must partition the samples), ``svd`` (thin SVDs), or ``auto``: ``gram``
        when it applies and ``p <= n_train``, else ``svd``. Results agree to float precision.

    Attributes (after ``fit``): ``best_alphas_`` (v,), ``coef_`` (p, v), ``cv_scores_`` (n_alphas, v).
    """

    def __init__(self, alphas=(1.0,), cv: int | Iterable = 5, score: Score = "correlation",
                 device: str | torch.device = "cpu", dtype: str = "float32", voxel_chunk: int | None = None,
                 method: Method = "auto"):
        self.alphas = np.asarray(alphas, dtype=np.float64).ravel()
        if self.alphas.size == 0 or not np.all(self.alphas > 0):
            raise ValueError(f"alphas must be a non-empty list of positive numbers, got {alphas!r}")
        if score not in ("correlation", "r2"):
            raise ValueError(f"score must be 'correlation' or 'r2', got {score!r}")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        if voxel_chunk is not None and voxel_chunk < 1:
            raise ValueError(f"voxel_chunk must be a positive integer, got {voxel_chunk!r}")
        if method not in ("auto", "svd", "gram"):
            raise ValueError(f"method must be 'auto', 'svd' or 'gram', got {method!r}")
        self.cv, self.score, self.voxel_chunk, self.method = cv, score, voxel_chunk, method
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype)

    def fit(self, X, Y, groups: Sequence | None = None) -> "RidgeCV":
        Xt = _to_tensor(X, self.device, self.dtype, "X")
        Yt = _to_tensor(Y, self.device, self.dtype, "Y")
        if Xt.shape[0] != Yt.shape[0]:
            raise ValueError(f"X has {Xt.shape[0]} samples (rows) but Y has {Yt.shape[0]}")
        basis = self.basis(Xt, groups)
        n_vox = Yt.shape[1]
        chunk = self.chunk_size(basis, n_vox)
        scores = np.empty((len(self.alphas), n_vox), dtype=np.float64)
        best = np.empty(n_vox, dtype=np.int64)
        coef = np.empty((Xt.shape[1], n_vox), dtype=np.float32 if self.dtype == torch.float32 else np.float64)
        for v0 in range(0, n_vox, chunk):
            sc, b, w = basis.solve(Yt[:, v0:v0 + chunk])
            scores[:, v0:v0 + chunk], best[v0:v0 + chunk], coef[:, v0:v0 + chunk] = \
                sc.cpu().numpy(), b.cpu().numpy(), w.cpu().numpy()
        self.cv_scores_, self.best_alphas_, self.coef_ = scores, self.alphas[best], coef
        self.n_features_in_ = Xt.shape[1]
        return self

    def basis(self, X, groups: Sequence | None = None) -> RidgeBasis:
        """The X-side decomposition for these settings (for solving voxels in separate chunks/tasks)."""
        Xt = _to_tensor(X, self.device, self.dtype, "X")
        if groups is not None and len(groups) != Xt.shape[0]:
            raise ValueError(f"groups has {len(groups)} entries but X has {Xt.shape[0]} samples")
        splits = resolve_splits(self.cv, Xt.shape[0], groups)
        alphas = torch.as_tensor(self.alphas, device=self.device, dtype=self.dtype)
        return RidgeBasis.build(Xt, splits, alphas, self.score, self.method)

    def chunk_size(self, basis: RidgeBasis, n_voxels: int) -> int:
        """Voxels per batch: ``voxel_chunk``, else as many as keep the float64 (r, v) work
        arrays (about 8 of them) near 256 MB."""
        if self.voxel_chunk:
            return self.voxel_chunk
        r = len(basis.s)
        budget = 256 * 2 ** 20 // (8 * 8 * max(r, len(self.alphas)))
        return max(1, min(n_voxels, budget))

    def predict(self, X) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError("RidgeCV is not fitted yet: call fit(X, Y) first")
        Xt = _to_tensor(X, self.device, self.dtype, "X")
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xt.shape[1]} features but the model was fitted with {self.n_features_in_}")
        coef = torch.as_tensor(self.coef_, device=self.device, dtype=self.dtype)
        return (Xt @ coef).cpu().numpy()
