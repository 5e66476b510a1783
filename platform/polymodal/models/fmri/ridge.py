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
import numbers
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

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
    """(train, val) index pairs from ``cv``: an int (KFold, or GroupKFold over ``groups``), a
    scikit-learn splitter (anything with ``split(X, y, groups)``, e.g. ``GroupKFold(5)``) or an
    iterable of (train_idx, val_idx)."""
    if isinstance(cv, (int, np.integer)):
        return group_kfold_splits(groups, int(cv)) if groups is not None else kfold_splits(n_samples, int(cv))
    if hasattr(cv, "split"):  # splitters only need the number of rows of X
        cv = cv.split(np.zeros((n_samples, 1)), None, groups)
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
    if t.is_complex():
        raise ValueError(f"Complex data not supported: {name} is {t.dtype}")
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
    # a copy: the fold indices may be a read-only array from the object store (a Ray task argument)
    va = torch.tensor(basis.val, device=Y.device)
    Yv = Y[va]                                                      # (n_val, v)
    n_val = Yv.shape[0]
    KtY = basis.K.T @ Yv                                            # (r, v)
    if basis.U is None:  # Gram route: diag(s) U^T Y_train = V^T X_train^T Y_train
        if XtY is None:
            raise ValueError("this fold basis was built from X^T X: pass XtY = X^T Y")
        z = (basis.Vt @ XtY - KtY).double()                         # (r, v)
    else:
        tr = torch.tensor(basis.train, device=Y.device)
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


@dataclass(frozen=True)
class _Settings:
    """:class:`RidgeCV`'s parameters, validated and resolved for one ``fit``/``predict``."""

    alphas: np.ndarray     # (n_alphas,) float64
    device: torch.device
    dtype: torch.dtype

    @property
    def np_dtype(self) -> type:
        return np.float32 if self.dtype == torch.float32 else np.float64


class RidgeCV(RegressorMixin, BaseEstimator):
    """Ridge with one alpha per voxel (target), chosen by (grouped) cross-validation.

    A scikit-learn regressor: parameters are stored as given and validated in :meth:`fit`, so it
    can be cloned, put in a ``Pipeline`` (e.g. after a ``StandardScaler``) and
    passed to ``cross_val_score``; :meth:`score` is the R^2 of :meth:`predict` averaged over
    targets (``RegressorMixin``). Inputs may be array-likes (validated by scikit-learn) or torch
    tensors (kept on their device, e.g. CUDA). No intercept: centre X and Y first.

    Parameters
    ----------
    alphas : sequence of float
        Candidate penalties (> 0), e.g. ``np.logspace(0, 4, 10)``.
    cv : int, splitter or iterable of (train_idx, val_idx)
        An int is an unshuffled KFold, or a GroupKFold when ``fit`` gets ``groups`` (stories);
        a scikit-learn splitter (``split(X, y, groups)``, e.g. ``GroupKFold(5)``) gets ``groups``
        too. Give fixed index splits as a list (it is read at every ``fit``).
    scoring : {"correlation", "r2"}
        Per-voxel validation score; the best alpha maximises its mean over folds. (Not named
        ``score``: that is the estimator's R^2 method.)
    device : str or torch.device
        Where to compute, e.g. ``"cpu"`` or ``"cuda"``.
    dtype : {"float32", "float64"}
        Compute precision (and that of ``coef_`` and of predictions).
    voxel_chunk : int, optional
        Voxels per batch (memory bound). Default: as many as keep the work arrays near 256 MB.
    method : {"auto", "svd", "gram"}
        How X is decomposed (see :class:`RidgeBasis`): ``gram`` (float64 eigendecompositions of
        ``X^T X``; folds must partition the samples), ``svd`` (thin SVDs), or ``auto``: ``gram``
        when it applies and ``p <= n_train``, else ``svd``. Results agree to float precision.

    Attributes (after ``fit``)
    --------------------------
    coef_ : (p, v) array, or (p,) when ``y`` was 1-D
    best_alphas_ : (v,) array, the alpha each target got (v = 1 for a 1-D ``y``)
    cv_scores_ : (n_alphas, v) array, mean validation score of every alpha and target
    n_features_in_ : int; ``feature_names_in_`` too when X had string column names
    """

    def __init__(self, alphas: Sequence[float] = (1.0,), cv: int | Iterable = 5, scoring: Score = "correlation",
                 device: str | torch.device = "cpu", dtype: str = "float32", voxel_chunk: int | None = None,
                 method: Method = "auto"):
        self.alphas = alphas
        self.cv = cv
        self.scoring = scoring
        self.device = device
        self.dtype = dtype
        self.voxel_chunk = voxel_chunk
        self.method = method

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True      # one alpha per target (voxel)
        tags.target_tags.single_output = True
        return tags

    # ------------------------------------------------------------------ validation

    def _settings(self) -> _Settings:
        """The parameters, checked together: one ValueError lists every bad one."""
        errors = []
        try:
            alphas = np.asarray(self.alphas, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            alphas = np.empty(0)
        if alphas.size == 0 or not np.all(np.isfinite(alphas) & (alphas > 0)):
            errors.append(f"alphas must be a non-empty list of positive numbers, got {self.alphas!r}")
        cv = self.cv
        if isinstance(cv, bool) or isinstance(cv, str) or (isinstance(cv, numbers.Integral) and cv < 2) or not (
                isinstance(cv, numbers.Integral) or hasattr(cv, "split") or hasattr(cv, "__iter__")):
            errors.append(f"cv must be an int >= 2, a splitter with split(X, y, groups) (e.g. sklearn's "
                          f"GroupKFold) or a list of (train_idx, val_idx), got {cv!r}")
        if not (isinstance(self.scoring, str) and self.scoring in ("correlation", "r2")):
            errors.append(f"scoring must be 'correlation' or 'r2', got {self.scoring!r}")
        device = None
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            errors.append(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {self.device!r}")
        if not (isinstance(self.dtype, str) and self.dtype in ("float32", "float64")):
            errors.append(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.voxel_chunk is not None and (isinstance(self.voxel_chunk, bool)
                                             or not isinstance(self.voxel_chunk, numbers.Integral)
                                             or self.voxel_chunk < 1):
            errors.append(f"voxel_chunk must be a positive integer or None, got {self.voxel_chunk!r}")
        if not (isinstance(self.method, str) and self.method in ("auto", "svd", "gram")):
            errors.append(f"method must be 'auto', 'svd' or 'gram', got {self.method!r}")
        if errors:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(errors))
        return _Settings(alphas, device, getattr(torch, self.dtype))

    def _check_X(self, X, st: _Settings, reset: bool | None) -> torch.Tensor:
        """X (n, p) as a tensor on ``st.device``. ``reset``: True (fit) records ``n_features_in_``
        (and column names), False (predict) checks X against them, None (basis) only validates."""
        if isinstance(X, torch.Tensor):  # kept on its device: no round trip through numpy
            Xt = _to_tensor(X, st.device, st.dtype, "X")
            if Xt.shape[1] == 0:
                raise ValueError(f"X has 0 features (shape {tuple(Xt.shape)}); at least 1 is required")
            if reset:
                self.n_features_in_ = Xt.shape[1]
                self.__dict__.pop("feature_names_in_", None)
            elif reset is False and Xt.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {Xt.shape[1]} features, but {type(self).__name__} is expecting "
                                 f"{self.n_features_in_} features as input")
            return Xt
        params = dict(dtype=st.np_dtype, order="C", ensure_min_samples=1 if reset is False else 2)
        if reset is None:
            A = check_array(X, input_name="X", estimator=self, **params)
        else:
            A = validate_data(self, X, reset=reset, **params)
        if not A.flags.writeable:  # e.g. a read-only memmap; torch wants writable memory
            A = A.copy()
        return torch.from_numpy(A).to(st.device)

    @staticmethod
    def _check_y(y, st: _Settings) -> tuple[torch.Tensor, bool]:
        """y (n,) or (n, v) -> (n, v) tensor on ``st.device`` and whether y was 1-D."""
        if y is None:
            raise ValueError("RidgeCV requires y to be passed, but the target y is None")
        if isinstance(y, torch.Tensor):
            one_target = y.ndim == 1
            return _to_tensor(y[:, None] if one_target else y, st.device, st.dtype, "Y"), one_target
        A = check_array(y, dtype=st.np_dtype, order="C", ensure_2d=False, input_name="Y")
        if A.ndim == 0:
            raise ValueError(f"y must be 1-D (samples) or 2-D (samples x voxels), got a scalar: {y!r}")
        one_target = A.ndim == 1
        A = A[:, None] if one_target else A
        if not A.flags.writeable:
            A = A.copy()
        return torch.from_numpy(A).to(st.device), one_target

    # ------------------------------------------------------------------ fit / predict

    def fit(self, X, y, groups: Sequence | None = None) -> "RidgeCV":
        """Choose every target's alpha by CV over ``cv`` and refit on all of X.

        X (n, p); y (n, v) voxel responses, or (n,) for one target; groups (n,) story labels:
        with an int ``cv`` the folds never split a story (GroupKFold), with a splitter they are
        passed to its ``split``. Returns self.
        """
        st = self._settings()
        Xt = self._check_X(X, st, reset=True)
        Yt, one_target = self._check_y(y, st)
        if Xt.shape[0] != Yt.shape[0]:
            raise ValueError(f"X has {Xt.shape[0]} samples (rows) but Y has {Yt.shape[0]}")
        basis = self._basis(Xt, groups, st)
        n_vox = Yt.shape[1]
        chunk = self.chunk_size(basis, n_vox)
        scores = np.empty((len(st.alphas), n_vox), dtype=np.float64)
        best = np.empty(n_vox, dtype=np.int64)
        coef = np.empty((Xt.shape[1], n_vox), dtype=st.np_dtype)
        for v0 in range(0, n_vox, chunk):
            sc, b, w = basis.solve(Yt[:, v0:v0 + chunk])
            scores[:, v0:v0 + chunk], best[v0:v0 + chunk], coef[:, v0:v0 + chunk] = \
                sc.cpu().numpy(), b.cpu().numpy(), w.cpu().numpy()
        self.cv_scores_, self.best_alphas_ = scores, st.alphas[best]
        self.coef_ = coef[:, 0].copy() if one_target else coef
        return self

    def basis(self, X, groups: Sequence | None = None) -> RidgeBasis:
        """The X-side decomposition for these settings (for solving voxels in separate chunks/tasks);
        needs no ``fit``."""
        st = self._settings()
        return self._basis(self._check_X(X, st, reset=None), groups, st)

    def _basis(self, Xt: torch.Tensor, groups: Sequence | None, st: _Settings) -> RidgeBasis:
        if groups is not None and len(groups) != Xt.shape[0]:
            raise ValueError(f"groups has {len(groups)} entries but X has {Xt.shape[0]} samples")
        splits = resolve_splits(self.cv, Xt.shape[0], groups)
        alphas = torch.as_tensor(st.alphas, device=st.device, dtype=st.dtype)
        return RidgeBasis.build(Xt, splits, alphas, self.scoring, self.method)

    def chunk_size(self, basis: RidgeBasis, n_voxels: int) -> int:
        """Voxels per batch: ``voxel_chunk``, else as many as keep the float64 (r, v) work
        arrays (about 8 of them) near 256 MB."""
        if self.voxel_chunk:
            return int(self.voxel_chunk)
        r = len(basis.s)
        budget = 256 * 2 ** 20 // (8 * 8 * max(r, len(basis.alphas)))
        return max(1, min(n_voxels, budget))

    def predict(self, X) -> np.ndarray:
        """X (n, p) -> predictions (n, v), or (n,) when ``fit`` got a 1-D y; a numpy array."""
        check_is_fitted(self, "coef_", msg="This %(name)s instance is not fitted yet: call fit(X, y) before predict.")
        st = self._settings()
        Xt = self._check_X(X, st, reset=False)
        coef = torch.as_tensor(self.coef_, device=st.device, dtype=st.dtype)
        return (Xt @ coef).cpu().numpy()
