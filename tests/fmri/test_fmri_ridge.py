"""fMRI features and voxelwise ridge against hand-worked cases, direct solves and himalaya."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from polymodal.models.fmri import RidgeCV, lanczos_interp, make_delayed
from polymodal.models.fmri.features import Trim, lanczos_fun, zscore
from polymodal.models.fmri.ridge import group_kfold_splits, kfold_splits
from polymodal.models.fmri.synth import design, make_synthetic

# --------------------------------------------------------------------------- features


def test_lanczos_kernel_hand_values():
    t = np.array([0.0, 0.5, 1.0, 2.5, 3.0, 3.5, -0.5])
    # 3 sin(pi x) sin(pi x / 3) / (pi x)^2 at x = 0.5: 3 * 1 * 0.5 / (pi^2 / 4)
    half = 3 * 1.0 * 0.5 / (np.pi ** 2 / 4)
    want = [1.0, half, 0.0, 3 * np.sin(2.5 * np.pi) * np.sin(2.5 * np.pi / 3) / (np.pi * 2.5) ** 2, 0.0, 0.0, half]
    np.testing.assert_allclose(lanczos_fun(1.0, t, 3), want, atol=1e-12)
    # the cutoff scales time: cutoff 2 at t = 0.25 is x = 0.5
    np.testing.assert_allclose(lanczos_fun(2.0, np.array([0.25]), 3), [half])


def test_lanczos_interp_small_case_by_hand():
    # two words at 0.5 s and 1.0 s, TRs at 0, 2, 4 s: cutoff = 1/2 Hz
    data = np.array([[1.0, 0.0], [0.0, 2.0]])
    out = lanczos_interp(data, np.array([0.5, 1.0]), np.array([0.0, 2.0, 4.0]))

    def k(t):  # Lanczos, window 3, at x = t / 2
        x = t / 2
        return 1.0 if x == 0 else (0.0 if abs(x) > 3 else 3 * np.sin(np.pi * x) * np.sin(np.pi * x / 3) / (np.pi * x) ** 2)

    want = np.array([[k(tr - 0.5) * 1.0, k(tr - 1.0) * 2.0] for tr in (0.0, 2.0, 4.0)])
    np.testing.assert_allclose(out, want, atol=1e-12)
    # rows are not normalised (Huth lab): more words in a TR -> a larger vector
    assert not np.allclose(out.sum(1), 1.0)


def test_lanczos_interp_is_identity_on_its_own_grid():
    times = np.arange(10) * 2.0
    data = np.random.default_rng(0).standard_normal((10, 3))
    np.testing.assert_allclose(lanczos_interp(data, times, times), data, atol=1e-12)


def test_make_delayed_hand_case():
    X = np.array([[1, 10], [2, 20], [3, 30]])
    out = make_delayed(X, [1, 2])
    np.testing.assert_array_equal(out, [[0, 0, 0, 0], [1, 10, 0, 0], [2, 20, 1, 10]])
    np.testing.assert_array_equal(make_delayed(X, [0, -1]), [[1, 10, 2, 20], [2, 20, 3, 30], [3, 30, 0, 0]])
    with pytest.raises(ValueError, match=r"\(T, F\)"):
        make_delayed(np.zeros(3), [1])


def test_zscore_leaves_constant_columns_at_zero():
    X = np.array([[1.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(zscore(X), [[-1.0, 0.0], [1.0, 0.0]])


def test_trim_conventions():
    huth, lab = Trim(unit="tr", start=10, end=5), Trim(unit="s", start=5, end=10)
    assert huth.trs(2.0) == (10, 5)
    assert lab.trs(2.0) == (3, 5)        # ceil(5 / 2), ceil(10 / 2)
    assert lab.trs(2.5) == (2, 4)
    assert huth.apply(np.arange(20)[:, None], 2.0).ravel().tolist() == list(range(10, 15))
    with pytest.raises(ValueError, match="leaves nothing"):
        huth.apply(np.zeros((15, 1)), 2.0)


# --------------------------------------------------------------------------- splits


def test_kfold_matches_sklearn():
    from sklearn.model_selection import KFold

    for n, k in ((10, 3), (23, 5), (5, 5)):
        for (tr, va), (str_, sva) in zip(kfold_splits(n, k), KFold(k).split(np.zeros(n))):
            np.testing.assert_array_equal(tr, str_)
            np.testing.assert_array_equal(va, sva)


def test_group_kfold_never_splits_a_story_and_balances_sizes():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), rng.integers(20, 60, 12))
    splits = group_kfold_splits(groups, 5)
    seen = np.concatenate([va for _, va in splits])
    assert sorted(seen.tolist()) == list(range(len(groups)))
    for tr, va in splits:
        assert not set(groups[tr]) & set(groups[va])
    sizes = [len(va) for _, va in splits]
    assert max(sizes) - min(sizes) <= np.bincount(groups).max()
    with pytest.raises(ValueError, match="at least 5 groups"):
        group_kfold_splits(np.arange(4), 5)


# --------------------------------------------------------------------------- ridge


def _problem(seed=0, n=240, p=30, v=150):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = rng.standard_normal((p, v)) * (rng.random(v) > 0.3)
    Y = 0.1 * X @ W + rng.standard_normal((n, v)) * rng.uniform(0.5, 5, v)
    return X, Y, np.repeat(np.arange(8), n // 8)


def _degenerate(kind: str, X: np.ndarray) -> np.ndarray:
    """Designs whose training SVDs have repeated or zero singular values."""
    if kind == "repeated":   # stacked identities: X_train^T X_train is diagonal with repeated counts
        return np.tile(np.eye(8), (X.shape[0] // 8, 1)) * 3.0
    if kind == "rank-deficient":   # duplicated and all-zero columns (e.g. z-scored constant features)
        return np.hstack([X[:, :10], X[:, :5], np.zeros((X.shape[0], 3))])
    return X


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("score", ["correlation", "r2"])
@pytest.mark.parametrize("kind", ["generic", "repeated", "rank-deficient"])
def test_cv_scores_match_direct_solves(score, kind, method):
    """Every (alpha, voxel) CV score equals a plain normal-equations solve per fold."""
    X, Y, groups = _problem(v=20)
    X = _degenerate(kind, X)
    alphas = np.logspace(0, 4, 5)
    model = RidgeCV(alphas, cv=4, scoring=score, dtype="float64", method=method).fit(X, Y, groups=groups)
    splits = group_kfold_splits(groups, 4)
    want = np.zeros((len(alphas), Y.shape[1]))
    for tr, va in splits:
        for a, alpha in enumerate(alphas):
            B = np.linalg.solve(X[tr].T @ X[tr] + alpha * np.eye(X.shape[1]), X[tr].T @ Y[tr])
            P = X[va] @ B
            for v in range(Y.shape[1]):
                if score == "correlation":
                    want[a, v] += np.corrcoef(P[:, v], Y[va, v])[0, 1]
                else:
                    want[a, v] += 1 - ((Y[va, v] - P[:, v]) ** 2).sum() / ((Y[va, v] - Y[va, v].mean()) ** 2).sum()
    want /= len(splits)
    np.testing.assert_allclose(model.cv_scores_, want, atol=1e-9)
    np.testing.assert_array_equal(model.best_alphas_, alphas[want.argmax(0)])
    for v in range(Y.shape[1]):  # refit: each voxel with its own alpha on all data
        b = np.linalg.solve(X.T @ X + model.best_alphas_[v] * np.eye(X.shape[1]), X.T @ Y[:, v])
        np.testing.assert_allclose(model.coef_[:, v], b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("score", ["correlation", "r2"])
def test_agrees_with_himalaya(score, method):
    """Same CV splits and alphas: the same best alpha on >= 99% of voxels, predictions within 1e-4."""
    from himalaya.backend import set_backend
    from himalaya.ridge import RidgeCV as HimalayaRidgeCV
    from himalaya.scoring import correlation_score, r2_score

    set_backend("torch")
    X, Y, groups = _problem(seed=3, n=320, p=40, v=400)
    X, Y = X.astype(np.float32), Y.astype(np.float32)
    alphas = np.logspace(0, 4, 10)
    splits = group_kfold_splits(groups, 5)
    ours = RidgeCV(alphas, cv=splits, scoring=score, method=method).fit(X, Y)
    ref = HimalayaRidgeCV(alphas=alphas, cv=splits, solver_params={
        "score_func": correlation_score if score == "correlation" else r2_score}).fit(X, Y)
    same = np.isclose(ours.best_alphas_, np.asarray(ref.best_alphas_), rtol=1e-6)
    assert same.mean() >= 0.99, same.mean()
    p_ours, p_ref = ours.predict(X), np.asarray(ref.predict(X))
    assert np.abs(p_ours - p_ref).max() <= 1e-4 * np.abs(p_ref).max()


def test_float32_float64_chunks_and_torch_input_agree():
    import torch

    X, Y, groups = _problem(seed=5)
    alphas = np.logspace(0, 3, 6)
    ref = RidgeCV(alphas, cv=5, dtype="float64").fit(X, Y, groups=groups)
    chunked = RidgeCV(alphas, cv=5, dtype="float64", voxel_chunk=7).fit(X, Y, groups=groups)
    np.testing.assert_allclose(chunked.coef_, ref.coef_, rtol=1e-10, atol=1e-12)
    f32 = RidgeCV(alphas, cv=5).fit(torch.from_numpy(X), torch.from_numpy(Y), groups=groups)
    assert np.mean(f32.best_alphas_ == ref.best_alphas_) >= 0.98
    assert isinstance(f32.predict(X), np.ndarray)


def test_bad_input_is_a_clear_error():
    X, Y, _ = _problem()
    # parameters are stored as given and checked by fit (scikit-learn's contract)
    with pytest.raises(ValueError, match="positive"):
        RidgeCV([0.0, 1.0]).fit(X, Y)
    with pytest.raises(ValueError, match="scoring"):
        RidgeCV([1.0], scoring="mse").fit(X, Y)
    with pytest.raises(ValueError, match="240 samples .* but Y has 239"):
        RidgeCV([1.0]).fit(X, Y[:-1])
    bad = Y.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="Y contains NaN"):
        RidgeCV([1.0]).fit(X, bad)
    with pytest.raises(NotFittedError, match="not fitted"):
        RidgeCV([1.0]).predict(X)
    with pytest.raises(ValueError, match="features"):
        RidgeCV([1.0], cv=3).fit(X, Y).predict(X[:, :5])


def test_synthetic_recovers_the_known_correlation():
    """Held-out stories: signal voxels reach ~sqrt(snr / (1 + snr)); noise voxels centre on 0."""
    data = make_synthetic(n_stories=14, trs_per_story=160, n_voxels=240, dim=8, seed=7)
    names = sorted(data.stories)
    X_tr, Y_tr, g = design(data, names[:11])
    X_te, Y_te, _ = design(data, names[11:])
    model = RidgeCV(np.logspace(0, 4, 10), cv=5).fit(X_tr, Y_tr, groups=g)
    P = model.predict(X_te)
    r = np.array([np.corrcoef(P[:, v], Y_te[:, v])[0, 1] for v in range(Y_te.shape[1])])
    signal, noise = data.snr > 0, data.snr == 0
    expected = data.expected_corr
    # estimation error from ~1500 training TRs x 32 features costs a little correlation
    assert np.abs(r[signal] - expected[signal]).mean() < 0.05
    assert np.corrcoef(r[signal], expected[signal])[0, 1] > 0.9
    assert abs(r[noise].mean()) < 0.03 and np.abs(r[noise]).max() < 0.2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_solver_matches_cpu(dtype):
    """The torch backend on CUDA: same alphas, same weights and predictions as on the CPU."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data = make_synthetic(n_stories=10, trs_per_story=140, n_voxels=300, dim=12, seed=3)
    X, Y, groups = design(data, sorted(data.stories))
    alphas = np.logspace(0, 4, 10)
    cpu = RidgeCV(alphas, cv=5, dtype=dtype).fit(X, Y, groups=groups)
    gpu = RidgeCV(alphas, cv=5, device="cuda", dtype=dtype).fit(torch.as_tensor(X).cuda(), Y, groups=groups)
    assert (cpu.best_alphas_ == gpu.best_alphas_).mean() >= 0.99
    same = cpu.best_alphas_ == gpu.best_alphas_
    tol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(gpu.coef_[:, same], cpu.coef_[:, same], rtol=tol, atol=tol)
    assert isinstance(gpu.predict(X), np.ndarray)


def test_gram_route_needs_a_partition_and_auto_falls_back():
    """Folds that leave samples out cannot use X^T X - X_val^T X_val; auto then takes SVDs."""
    X, Y, _ = _problem(v=10)
    splits = [(np.arange(0, 100), np.arange(100, 140)), (np.arange(140, 240), np.arange(0, 40))]
    with pytest.raises(ValueError, match="partition"):
        RidgeCV([1.0, 10.0], cv=splits, method="gram").fit(X, Y)
    auto = RidgeCV([1.0, 10.0], cv=splits, dtype="float64").fit(X, Y)
    svd = RidgeCV([1.0, 10.0], cv=splits, dtype="float64", method="svd").fit(X, Y)
    np.testing.assert_allclose(auto.cv_scores_, svd.cv_scores_, atol=1e-12)
    assert auto.basis(X).U is not None
    wide = np.hstack([X, X[:, :5] ** 2, np.random.default_rng(0).standard_normal((240, 200))])   # p > n_train
    assert RidgeCV([1.0], cv=4).basis(wide).X is None
    assert RidgeCV([1.0], cv=4).basis(X).X is not None
