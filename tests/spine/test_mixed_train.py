"""Mixed training data: ``data.train`` as a list of ``{uri, weight}``, interleaved batch by batch.

Pure and fast: the config rules, :class:`polymodal.train.loop.MixedBatches` over counting fake
sources (weights, determinism, restarts), the local reader over real tiny shard datasets, and the
checks that refuse datasets which cannot be mixed. No Ray, no model; a whole run over a mixed list
is in the systems' tests (tests/violet/test_violet_mixed.py).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from polymodal import shards
from polymodal.config import validate_config
from polymodal.errors import ConfigError, PolymodalError
from polymodal.task import Task
from polymodal.train import loop


class Counting:
    """A BatchSource of ``n`` batches per pass, each ``{"src": name, "pass": epoch, "i": k}``."""

    def __init__(self, name: str, n: int):
        self.name, self.n, self.passes = name, n, []

    def epoch(self, epoch: int):
        self.passes.append(epoch)
        for k in range(self.n):
            yield {"src": self.name, "pass": epoch, "i": k}


def raw(train, **data) -> dict:
    return {"task": "wander.classification", "model": {"preset": "tiny", "backbone": "b"}, "data": {"train": train, **data}}


def test_data_train_takes_a_uri_or_weighted_entries():
    plain = validate_config(raw("s3://b/a")).data
    assert [(s.uri, s.weight) for s in plain.train_sources] == [("s3://b/a", 1.0)]
    mixed = validate_config(raw([{"uri": "s3://b/webvid", "weight": 3}, {"uri": "s3://b/cc3m"}]))
    assert [(s.uri, s.weight) for s in mixed.data.train_sources] == [("s3://b/webvid", 3.0), ("s3://b/cc3m", 1.0)]
    assert validate_config(mixed.to_dict()) == mixed  # round-trips through the saved config.yaml
    for bad, words in (([], "empty list"), ([{"uri": "a"}, {"uri": "a"}], "listed twice"),
                       ([{"uri": "a", "weight": 0}], "greater than 0"), ([{"uri": "a", "wieght": 2}], "unknown key")):
        with pytest.raises(ConfigError, match=words) as err:
            validate_config(raw(bad))
        assert all(path.startswith("data.train") for path, _ in err.value.errors)


def test_weights_are_respected_and_every_batch_is_whole():
    """20,000 draws at weights 3 : 1 : 0.5: each source's share is within 0.015 (over 5 standard
    deviations) of weight / sum; every batch is a batch of the source it was drawn from."""
    sources = [Counting("a", 7), Counting("b", 5), Counting("c", 3)]
    mix = loop.MixedBatches(sources, [3.0, 1.0, 0.5], steps=20_000, seed=0)
    batches = list(mix.epoch(0))
    assert len(batches) == 20_000
    share = Counter(b["src"] for b in batches)
    for name, w in zip("abc", (3.0, 1.0, 0.5)):
        assert abs(share[name] / 20_000 - w / 4.5) < 0.015, (name, share)
    # within a source, batches come in order and restart with a fresh pass when it runs out
    for src in sources:
        seen = [(b["pass"], b["i"]) for b in batches if b["src"] == src.name]
        assert [i for _, i in seen] == [k % src.n for k in range(len(seen))]
        assert len(set(src.passes)) == len(src.passes) == -(-len(seen) // src.n)  # distinct shuffles
        assert src.passes[0] == 0 and all(p % loop.MixedBatches.PASS_STRIDE == 0 for p in src.passes)


def test_mixing_is_deterministic_by_seed_and_epoch():
    def order(seed: int, epoch: int) -> list[tuple[str, int]]:
        mix = loop.MixedBatches([Counting("a", 4), Counting("b", 4)], [1.0, 1.0], steps=200, seed=seed)
        return [(b["src"], b["pass"]) for b in mix.epoch(epoch)]

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    with pytest.raises(PolymodalError, match=r"data.train\[1\].*no batches"):
        list(loop.MixedBatches([Counting("a", 2), Counting("b", 0)], [1.0, 1.0], steps=50, seed=0).epoch(0))


COLS = {"x": {"dtype": "float32", "shape": [2]}, "y": {"dtype": "int64"}}


def _dataset(uri: str, n: int, value: float, columns=COLS, task: str = "demo.task") -> str:
    x = columns["x"]
    with shards.ShardWriter(uri, task=task, split="train", columns=columns, rows_per_shard=8, progress=False) as w:
        w.write({"x": np.full((n, *x["shape"]), value, x["dtype"]), "y": np.arange(n)})
    return uri


def test_local_reader_mixes_real_datasets(tmp_path):
    """Two shard datasets (20 and 6 rows, batch 4): an epoch is one pass's worth of batches (5 + 2),
    each batch from one dataset, the small one restarting when drawn more often than it has batches."""
    a, b = _dataset(str(tmp_path / "a"), 20, 1.0), _dataset(str(tmp_path / "b"), 6, 2.0)
    cfg = validate_config({**raw([{"uri": a, "weight": 1}, {"uri": b, "weight": 3}]), "optim": {"batch_size": 4}})
    manifests = loop.open_splits(cfg)
    assert list(manifests) == loop.train_names(cfg) == ["train", "train_1"]
    steps = loop._train_steps(cfg, manifests, 1)
    assert steps == 5 + 2

    class Plain(Task):  # the default collate: numpy columns -> tensors
        name, model_config_cls, presets, primary_metric = "demo.task", None, {}, "acc"
        build_model = loss = predict = metrics = None

    sources = {n: loop.LocalBatches(u, Plain(), manifests[n], 4, 0, cfg.seed, train=True, opts=None)
               for n, u in loop.split_uris(cfg).items()}
    mixed = loop.mix_train(cfg, sources, steps)["train"]
    values = [set(batch["x"][:, 0].tolist()) for e in range(20) for batch in mixed.epoch(e)]
    assert len(values) == 20 * steps and all(len(v) == 1 for v in values)  # never two datasets in a batch
    share_b = sum(v == {2.0} for v in values) / len(values)
    assert 0.6 < share_b < 0.9  # weight 3 of 4: 0.75 (140 draws: sd 0.037)


def test_datasets_that_cannot_be_mixed_are_refused(tmp_path):
    a = _dataset(str(tmp_path / "a"), 4, 1.0)
    other_cols = _dataset(str(tmp_path / "b"), 4, 1.0, columns={"x": {"dtype": "int64", "shape": [2]},
                                                                 "y": {"dtype": "int64"}})
    other_task = _dataset(str(tmp_path / "c"), 4, 1.0, task="other.task")
    for bad, words in ((other_cols, "same columns of the same types"), (other_task, "of one task")):
        cfg = validate_config(raw([{"uri": a}, {"uri": bad}]))
        with pytest.raises(PolymodalError, match=rf"data.train\[1\] \({bad}\).*{words}"):
            loop.open_splits(cfg)
    # a different item shape is fine: each batch comes from one dataset
    wide = _dataset(str(tmp_path / "d"), 4, 1.0, columns={"x": {"dtype": "float32", "shape": [3]},
                                                          "y": {"dtype": "int64"}})
    assert set(loop.open_splits(validate_config(raw([{"uri": a}, {"uri": wide}])))) == {"train", "train_1"}
