"""Synthetic Wander data: shapes, determinism, and that the planted interaction is there."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from polymodal.metrics import retrieval_metrics
from polymodal.models.wander import synth as S

HIDDEN, SEQ = 32, 8


def _means(arrays: dict[str, np.ndarray], name: str, directions: dict[str, np.ndarray]) -> np.ndarray:
    """Token mean of a modality projected on its planted directions: (n, k)."""
    return arrays[name].mean(axis=1) @ directions[name]


# ---------------------------------------------------------------- pure samplers


def test_default_modalities_and_validation() -> None:
    assert S.default_modalities("classification") == ["m0", "m1"]
    assert S.default_modalities("regression") == ["m0", "m1", "m2"]
    assert S.default_modalities("retrieval") == ["m0", "m1", "text"]
    assert S.default_modalities("classification", 3) == ["m0", "m1", "m2"]
    with pytest.raises(ValueError, match="num_modalities >= 3"):
        S.default_modalities("retrieval", 2)
    with pytest.raises(ValueError, match="unknown head"):
        S.default_modalities("segmentation")  # type: ignore[arg-type]


def test_directions_are_orthonormal_and_seeded() -> None:
    d = S.make_directions(3, ["a", "b"], HIDDEN, 12)
    for a in d.values():
        assert a.shape == (HIDDEN, 12)
        np.testing.assert_allclose(a.T @ a, np.eye(12), atol=1e-10)
    again = S.make_directions(3, ["a", "b"], HIDDEN, 12)
    np.testing.assert_array_equal(d["a"], again["a"])
    assert not np.allclose(d["a"], S.make_directions(4, ["a", "b"], HIDDEN, 12)["a"])


def test_classification_shapes_balance_determinism() -> None:
    d = S.make_directions(0, ["m0", "m1"], HIDDEN)
    arrays, lat = S.sample_classification(np.random.default_rng(1), 4000, d, seq_len=SEQ)
    assert arrays["m0"].shape == (4000, SEQ, HIDDEN) and arrays["m0"].dtype == np.float32
    assert arrays["label"].dtype == np.int64 and lat["z"].shape == (4000, 2)
    np.testing.assert_array_equal(arrays["label"], (lat["z"][:, 0] * lat["z"][:, 1] > 0))
    assert abs(arrays["label"].mean() - 0.5) < 0.03
    again, _ = S.sample_classification(np.random.default_rng(1), 4000, d, seq_len=SEQ)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], again[key])


def test_classification_needs_fusion() -> None:
    d = S.make_directions(0, ["m0", "m1"], HIDDEN)
    arrays, _ = S.sample_classification(np.random.default_rng(2), 6000, d, seq_len=SEQ)
    y = arrays["label"]
    train, test = slice(0, 4000), slice(4000, None)
    # Additive: any linear function of both modalities' token means.
    additive = np.concatenate([arrays["m0"].mean(1), arrays["m1"].mean(1)], axis=1)
    clf = LogisticRegression(max_iter=2000).fit(additive[train], y[train])
    assert clf.score(additive[test], y[test]) < 0.62
    # Fused: the product of the two projected means separates the classes.
    product = _means(arrays, "m0", d) * _means(arrays, "m1", d)
    clf = LogisticRegression().fit(product[train], y[train])
    assert clf.score(product[test], y[test]) > 0.9


def test_regression_needs_fusion() -> None:
    names = S.default_modalities("regression")
    d = S.make_directions(0, names, HIDDEN)
    arrays, lat = S.sample_regression(np.random.default_rng(3), 6000, d, seq_len=SEQ)
    y = arrays["label"].astype(np.float64)
    assert arrays["label"].dtype == np.float32 and y.min() >= -3.0 and y.max() <= 3.0
    assert np.abs(y - lat["clean"]).mean() < 0.15  # only small target noise on top
    train, test = slice(0, 4000), slice(4000, None)
    additive = np.concatenate([arrays[n].mean(1) for n in names], axis=1)
    reg = LinearRegression().fit(additive[train], y[train])
    assert reg.score(additive[test], y[test]) < 0.05  # R^2 ~ 0
    z_hat = np.concatenate([_means(arrays, n, d) for n in names], axis=1)
    fused = 3 * np.tanh(z_hat[:, 0] * z_hat[:, 1] + 0.5 * z_hat[:, 1] * z_hat[:, 2])
    assert np.corrcoef(fused[test], y[test])[0, 1] > 0.9


def test_retrieval_needs_fusion() -> None:
    names = S.default_modalities("retrieval")
    d = S.make_directions(0, names, HIDDEN, 12)
    arrays, lat = S.sample_retrieval(np.random.default_rng(4), 512, d, seq_len=SEQ)
    np.testing.assert_array_equal(lat["w"], lat["z"][:, 0] * lat["z"][:, 1])
    text = _means(arrays, "text", d)
    v0, v1 = _means(arrays, "m0", d), _means(arrays, "m1", d)
    fused = retrieval_metrics(text @ (v0 * v1).T)
    additive = retrieval_metrics(text @ (v0 + v1).T)
    single = retrieval_metrics(text @ v0.T)
    assert fused["t2v_r1"] > 0.8 and fused["v2t_r1"] > 0.8
    # Chance R@1 is 1/512; allow a little luck but nothing like a real signal.
    assert additive["t2v_r1"] < 0.05 and single["t2v_r1"] < 0.05


def test_multilabel_needs_fusion() -> None:
    """Each of the K targets is the XOR of the modalities' signs for that target: a linear model of
    both modalities stays near chance, the product of the projected means recovers every target."""
    d = S.make_directions(0, ["m0", "m1"], HIDDEN, S.MULTILABEL_TARGETS)
    arrays, lat = S.sample_multilabel(np.random.default_rng(5), 3000, d, seq_len=SEQ)
    y = arrays["label"]
    assert y.shape == (3000, S.MULTILABEL_TARGETS) and y.dtype == np.int64
    np.testing.assert_array_equal(y, (lat["z"][:, 0] * lat["z"][:, 1] > 0).astype(np.int64))
    train, test = slice(0, 2000), slice(2000, None)
    additive = np.concatenate([arrays["m0"].mean(1), arrays["m1"].mean(1)], axis=1)
    product = _means(arrays, "m0", d) * _means(arrays, "m1", d)  # (n, K)
    for j in range(S.MULTILABEL_TARGETS):
        assert LogisticRegression(max_iter=2000).fit(additive[train], y[train, j]).score(additive[test], y[test, j]) < 0.62
        assert ((product[test, j] > 0) == y[test, j]).mean() > 0.9


# ---------------------------------------------------------------- writer


@pytest.mark.parametrize("head", ["classification", "regression", "retrieval"])
def test_write_synthetic_roundtrip(tmp_path, head: str) -> None:
    from polymodal.models.wander.backbone import read_spec
    from polymodal.shards import Manifest, iter_local_batches

    out = S.write_synthetic(str(tmp_path / "a"), head, seed=7, scale=0.01, progress=False)
    assert set(out) == {"train", "val", "test", "backbone"}
    names = S.default_modalities(head)
    assert read_spec(out["backbone"]).names() == names

    for split in ("train", "val", "test"):
        man = Manifest.load(out[split])
        assert man.num_rows == 64 and man.split == split
        assert man.task == f"wander.{head}"
        assert man.meta["head"] == head and man.meta["modalities"] == names
        batch = next(iter_local_batches(out[split], 64, shuffle=False))
        for name in names:
            assert batch[name].shape == (64, SEQ, HIDDEN) and batch[name].dtype == np.float32
        if head == "retrieval":
            assert man.meta["query_modality"] == "text" and "label" not in batch
        else:
            assert batch["label"].shape == (64,)
    if head == "classification":
        assert man.meta["num_classes"] == 2 and man.meta["planted"] == "label = [z0*z1 > 0]"

    # Same seed -> identical rows; another seed -> different rows.
    again = S.write_synthetic(str(tmp_path / "b"), head, seed=7, scale=0.01, progress=False)
    other = S.write_synthetic(str(tmp_path / "c"), head, seed=8, scale=0.01, progress=False)
    first = next(iter_local_batches(out["train"], 64, shuffle=False))
    second = next(iter_local_batches(again["train"], 64, shuffle=False))
    third = next(iter_local_batches(other["train"], 64, shuffle=False))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["m0"], third["m0"])


def test_write_synthetic_scale_and_validation(tmp_path) -> None:
    from polymodal.shards import Manifest

    out = S.write_synthetic(str(tmp_path), "classification", scale=0.05, progress=False)
    assert Manifest.load(out["train"]).num_rows == round(2048 * 0.05)
    assert Manifest.load(out["val"]).num_rows == 64  # 25.6 rows -> floor of 64
    with pytest.raises(ValueError, match="scale"):
        S.write_synthetic(str(tmp_path / "x"), "classification", scale=0)
