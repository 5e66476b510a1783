"""shards: writer/reader round trips (local and S3), manifest integrity, shuffling, ranks,
and every bad-input path naming the shard/column at fault."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polymodal import shards as sh
from polymodal.errors import ShardError

COLUMNS = {
    "id": sh.ColumnSpec(dtype="int64"),
    "image": sh.ColumnSpec(dtype="float32", shape=[2, 3, 4]),
    "mask": sh.ColumnSpec(dtype="bool", shape=[5]),
    "tokens": sh.ColumnSpec(dtype="int32", shape=[-1]),
    "frames": sh.ColumnSpec(dtype="float16", shape=[-1, 3]),
    "caption": sh.ColumnSpec(dtype="string"),
}


def make_rows(n: int, seed: int = 0, start: int = 0) -> dict:
    """``n`` rows of every column kind; variable-length rows include empty ones."""
    rng = np.random.default_rng(seed)
    return {
        "id": np.arange(start, start + n, dtype=np.int64),
        "image": rng.normal(size=(n, 2, 3, 4)).astype(np.float32),
        "mask": rng.random((n, 5)) > 0.5,
        "tokens": [rng.integers(0, 1000, size=rng.integers(0, 7)).astype(np.int32) for _ in range(n)],
        "frames": [rng.normal(size=(rng.integers(0, 4), 3)).astype(np.float16) for _ in range(n)],
        "caption": [f"row {start + i} ✓" for i in range(n)],
    }


def take(rows: dict, idx) -> dict:
    return {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in rows.items()}


def write(uri: str, rows: dict, *, rows_per_shard: int = 16, chunks=(None,), **kw) -> sh.Manifest:
    """Write ``rows`` in ``chunks`` (row boundaries) so batches straddle shard boundaries."""
    n = len(rows["id"])
    bounds = [0, *[c for c in chunks if c is not None], n]
    with sh.ShardWriter(uri, task="demo.task", split="train", columns=COLUMNS,
                        rows_per_shard=rows_per_shard, progress=False, **kw) as w:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            w.write(take(rows, list(range(lo, hi))))
    return w.close()


def collect(batches) -> dict:
    """Concatenate batches; variable-length columns become lists of unpadded rows."""
    out: dict[str, list] = {}
    for b in batches:
        for name, spec in COLUMNS.items():
            if spec.variable:
                lens = b[f"{name}__len"]
                assert b[name].shape[1] == (lens.max() if len(lens) else 0)  # padded to the batch max
                out.setdefault(name, []).extend(b[name][i, :lens[i]] for i in range(len(lens)))
                # padding is zeros
                mask = np.arange(b[name].shape[1])[None, :] >= lens[:, None]
                assert not b[name][mask].any()
            else:
                out.setdefault(name, []).extend(b[name])
    return out


def assert_rows_equal(got: dict, want: dict) -> None:
    for name, spec in COLUMNS.items():
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype or spec.dtype == "string", (name, g.dtype, w.dtype)
            assert g.shape == w.shape and np.array_equal(g, w), name


@pytest.fixture(params=["local", "s3"])
def dataset_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "ds")
    return request.getfixturevalue("s3_bucket_uri") + "/ds"


# --------------------------------------------------------------------------- round trips


def test_round_trip_every_column_kind(dataset_uri):
    rows = make_rows(50)
    manifest = write(dataset_uri, rows, chunks=(7, 30))
    assert manifest.num_rows == 50 and [s.rows for s in manifest.shards] == [16, 16, 16, 2]
    again = sh.open_dataset(dataset_uri, verify="checksum")
    assert again == manifest
    got = collect(sh.iter_local_batches(dataset_uri, 9, shuffle=False))
    assert_rows_equal(got, rows)
    text = sh.describe(dataset_uri)
    for needle in ("demo.task", "train", "50", "float32[2, 3, 4]", "float16[N, 3]", "caption"):
        assert needle in text


def test_manifest_counts_and_checksums_match_files(tmp_path):
    uri = str(tmp_path / "ds")
    manifest = write(uri, make_rows(35), rows_per_shard=10, chunks=(3, 4, 21), meta={"source": "unit"})
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert raw["num_rows"] == 35 and raw["schema_version"] == sh.SCHEMA_VERSION
    assert raw["meta"] == {"source": "unit"}
    assert [s["rows"] for s in raw["shards"]] == [10, 10, 10, 5]
    assert sorted(os.listdir(tmp_path / "ds")) == ["manifest.json"] + [f"part-0000{i}.parquet" for i in range(4)]
    for info in raw["shards"]:
        data = (tmp_path / "ds" / info["path"]).read_bytes()
        assert info["bytes"] == len(data)
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert pq.ParquetFile(tmp_path / "ds" / info["path"]).metadata.num_rows == info["rows"]
    assert manifest.shards[0].sha256 == raw["shards"][0]["sha256"]


def test_stored_arrow_types():
    assert sh.ColumnSpec(dtype="float32", shape=[2, 3]).arrow_type() == pa.list_(pa.float32(), 6)
    assert sh.ColumnSpec(dtype="int64").arrow_type() == pa.int64()
    assert sh.ColumnSpec(dtype="int32", shape=[-1]).arrow_type() == pa.list_(pa.int32())
    assert sh.ColumnSpec(dtype="uint8", shape=[-1, 2, 2]).arrow_type() == pa.list_(pa.list_(pa.uint8(), 4))


def test_padded_input_with_lengths_round_trips(tmp_path):
    """What table_to_numpy returns can be written back as is."""
    uri, copy = str(tmp_path / "a"), str(tmp_path / "b")
    rows = make_rows(20)
    write(uri, rows)
    batch = next(sh.iter_local_batches(uri, 20, shuffle=False))
    with sh.ShardWriter(copy, task="demo.task", split="train", columns=COLUMNS, progress=False) as w:
        w.write(batch)
    assert_rows_equal(collect(sh.iter_local_batches(copy, 8, shuffle=False)), rows)


def test_rewrite_replaces_manifest_and_stale_shards(tmp_path):
    uri = str(tmp_path / "ds")
    write(uri, make_rows(40), rows_per_shard=10)
    write(uri, make_rows(5), rows_per_shard=10)
    assert sorted(os.listdir(uri)) == ["manifest.json", "part-00000.parquet"]
    assert sh.open_dataset(uri, verify="checksum").num_rows == 5


def test_crashed_writer_leaves_no_manifest(tmp_path):
    uri = str(tmp_path / "ds")
    with pytest.raises(RuntimeError):
        with sh.ShardWriter(uri, task="t", split="train", columns=COLUMNS, rows_per_shard=4, progress=False) as w:
            w.write(make_rows(10))
            raise RuntimeError("boom")
    assert any(p.startswith("part-") for p in os.listdir(uri))
    assert not (Path(uri) / "manifest.json").exists()
    with pytest.raises(ShardError, match=r"no manifest\.json at .*ds.*polymodal data synth"):
        sh.open_dataset(uri)


def test_a_crashed_writer_continues_after_its_flushed_shards(tmp_path):
    """An importer cuts shards with flush() at its own checkpoints; a rerun hands the shards of the
    interrupted run to the new writer, which numbers its own after them and lists all of them."""
    uri = str(tmp_path / "ds")
    rows = make_rows(10)
    first = {k: v[:3] for k, v in rows.items()}
    with pytest.raises(RuntimeError):
        with sh.ShardWriter(uri, task="t", split="train", columns=COLUMNS, rows_per_shard=4, progress=False) as w:
            w.write(first)
            w.flush()  # 3 rows: a short shard at the checkpoint
            kept = w.shards
            w.write({k: v[3:5] for k, v in rows.items()})
            raise RuntimeError("boom")
    assert [s.rows for s in kept] == [3]
    with sh.ShardWriter(uri, task="t", split="train", columns=COLUMNS, rows_per_shard=4, progress=False,
                        shards=kept) as w:
        w.write({k: v[3:] for k, v in rows.items()})
    manifest = sh.open_dataset(uri, verify="checksum")
    assert [s.path for s in manifest.shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [s.rows for s in manifest.shards] == [3, 4, 3] and manifest.num_rows == 10
    got = np.concatenate([b["id"] for b in sh.iter_local_batches(uri, 10, shuffle=False)])
    assert np.array_equal(got, rows["id"])


# --------------------------------------------------------------------------- shuffling & ranks


@pytest.fixture
def ids_dataset(tmp_path) -> str:
    uri = str(tmp_path / "ids")
    write(uri, make_rows(100), rows_per_shard=10)
    return uri


def epoch_ids(uri: str, **kw) -> np.ndarray:
    ids = [b["id"] for b in sh.iter_local_batches(uri, 7, shuffle_buffer=16, **kw)]
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)  # a rank may get no rows


def test_shuffle_is_deterministic_per_seed_and_epoch(ids_dataset):
    e0 = epoch_ids(ids_dataset, seed=3, epoch=0)
    assert np.array_equal(e0, epoch_ids(ids_dataset, seed=3, epoch=0))
    e1 = epoch_ids(ids_dataset, seed=3, epoch=1)
    other_seed = epoch_ids(ids_dataset, seed=4, epoch=0)
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, other_seed)
    for ids in (e0, e1, other_seed):
        assert np.array_equal(np.sort(ids), np.arange(100))  # each epoch sees every row once
    assert not np.array_equal(e0, np.arange(100))
    assert np.array_equal(epoch_ids(ids_dataset, shuffle=False), np.arange(100))


@pytest.mark.parametrize("world_size", [1, 3, 4, 16])  # 16 > 10 shards: rows are split instead
def test_ranks_cover_disjoint_rows(ids_dataset, world_size):
    parts = [epoch_ids(ids_dataset, seed=1, epoch=2, rank=r, world_size=world_size) for r in range(world_size)]
    union = np.concatenate(parts)
    assert len(union) == 100 and np.array_equal(np.sort(union), np.arange(100))


def test_drop_last_and_batch_sizes(ids_dataset):
    sizes = [len(b["id"]) for b in sh.iter_local_batches(ids_dataset, 30, seed=0)]
    assert sizes == [30, 30, 30, 10]
    sizes = [len(b["id"]) for b in sh.iter_local_batches(ids_dataset, 30, seed=0, drop_last=True)]
    assert sizes == [30, 30, 30]


# --------------------------------------------------------------------------- corrupt datasets


def _shard(uri: str, i: int = 1) -> Path:
    return Path(uri) / f"part-{i:05d}.parquet"


@pytest.fixture
def small_dataset(tmp_path) -> str:
    uri = str(tmp_path / "ds")
    write(uri, make_rows(30), rows_per_shard=10)
    return uri


def test_missing_shard(small_dataset):
    _shard(small_dataset).unlink()
    with pytest.raises(ShardError, match="part-00001.parquet.*missing"):
        sh.open_dataset(small_dataset)
    with pytest.raises(ShardError, match="part-00001.parquet.*missing"):
        list(sh.iter_local_batches(small_dataset, 8, shuffle=False))


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_sliced_from_whole_tables_equal_batches_converted_one_by_one(drop_last):
    """iter_local_batches converts each (shuffled) shard once and slices it when no column is
    variable-length; its batches equal converting each batch's rows on their own, across tables
    shorter than a batch, a batch straddling three tables, and a string column."""
    cols = {"id": sh.ColumnSpec(dtype="int64"), "x": sh.ColumnSpec(dtype="float32", shape=[2, 3]),
            "name": sh.ColumnSpec(dtype="string")}
    sizes, start, tables = [5, 2, 1, 9, 0, 7, 3], 0, []
    for n in sizes:
        ids = np.arange(start, start + n)
        tables.append(pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(
            pa.array(np.repeat(ids, 6).astype(np.float32)), 6), "name": pa.array([f"r{i}" for i in ids], pa.string())}))
        start += n
    whole = pa.concat_tables(tables)
    for batch_size in (1, 4, 6, 27, 40):
        got = list(sh._sliced_batches(iter(tables), cols, batch_size, drop_last))
        ends = range(0, whole.num_rows, batch_size)
        want = [sh.table_to_numpy(whole.slice(i, batch_size), cols) for i in ends
                if not drop_last or i + batch_size <= whole.num_rows]
        assert len(got) == len(want), batch_size
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in w:
                assert g[k].shape == w[k].shape and g[k].dtype == w[k].dtype and np.array_equal(g[k], w[k]), k


def test_a_read_task_reads_ahead_on_threads_in_order(small_dataset):
    """A Ray read task's body (``_read_shards``) with read-ahead threads yields its shards whole,
    in its order, and a bad shard raises where its turn comes, naming it."""
    from polymodal import storage

    manifest = sh.Manifest.load(small_dataset)
    uris = sh.shard_uris(manifest, small_dataset)[::-1]
    opts, retry = storage.resolve_options(None), storage.RetryPolicy.from_env()
    for threads in (1, 2, 8):
        blocks = list(sh._read_shards(uris, manifest.columns, opts, retry, threads))
        assert [b.column("id").to_pylist() for b in blocks] == [list(range(20, 30)), list(range(10, 20)),
                                                               list(range(10))]
    _shard(small_dataset, 0).write_bytes(b"not parquet")
    got = sh._read_shards(uris, manifest.columns, opts, retry, 2)
    assert next(got).num_rows == next(got).num_rows == 10  # the shards before the bad one arrive
    with pytest.raises(ShardError, match="part-00000.parquet.*not a readable Parquet"):
        next(got)


def test_truncated_shard(small_dataset):
    path = _shard(small_dataset)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ShardError, match="part-00001.parquet.* bytes") as info:
        sh.open_dataset(small_dataset)
    assert info.value.shard.endswith("part-00001.parquet")
    with pytest.raises(ShardError, match="part-00001.parquet.*not a readable Parquet"):
        list(sh.iter_local_batches(small_dataset, 8, shuffle=False))


def test_corrupt_bytes_caught_by_checksum(small_dataset):
    path = _shard(small_dataset)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, footer intact: only the checksum can tell
    path.write_bytes(bytes(data))
    sh.open_dataset(small_dataset, verify="footer")
    with pytest.raises(ShardError, match="part-00001.parquet.*sha256"):
        sh.open_dataset(small_dataset, verify="checksum")


def test_corrupt_footer_caught_by_footer_check(small_dataset):
    path = _shard(small_dataset, 2)
    data = bytearray(path.read_bytes())
    data[-12:-4] = b"\x00" * 8  # break the footer, keep the size
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="part-00002.parquet.*not a readable Parquet"):
        sh.open_dataset(small_dataset)


def _replace_shard(uri: str, i: int, table: pa.Table) -> None:
    """Rewrite one shard and patch the manifest's size/checksum so only the schema is off."""
    path = _shard(uri, i)
    pq.write_table(table, path)
    data = path.read_bytes()
    mpath = Path(uri) / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["shards"][i].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    mpath.write_text(json.dumps(raw))


def test_schema_mismatched_shard(small_dataset):
    table = pq.read_table(_shard(small_dataset, 1))
    bad = table.set_column(table.schema.get_field_index("id"), "id", table.column("id").cast(pa.float64()))
    _replace_shard(small_dataset, 1, bad)
    for call in (lambda: sh.open_dataset(small_dataset, verify="checksum"),
                 lambda: list(sh.iter_local_batches(small_dataset, 8, shuffle=False))):
        with pytest.raises(ShardError, match=r"part-00001\.parquet, column 'id': has arrow type double") as info:
            call()
        assert info.value.column == "id"


def test_shard_without_a_column(small_dataset):
    table = pq.read_table(_shard(small_dataset, 0)).drop_columns(["caption"])
    _replace_shard(small_dataset, 0, table)
    with pytest.raises(ShardError, match=r"part-00000\.parquet, column 'caption': missing"):
        sh.open_dataset(small_dataset)


@pytest.mark.parametrize("text, match", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 2}', "schema_version 2"),
    ('{"schema_version": 1, "task": "t"}', "invalid"),
])
def test_bad_manifest_names_it(small_dataset, text, match):
    (Path(small_dataset) / "manifest.json").write_text(text)
    with pytest.raises(ShardError, match=match) as info:
        sh.Manifest.load(small_dataset)
    assert str(Path(small_dataset) / "manifest.json") in str(info.value)


def test_manifest_rejects_paths_outside_the_dataset(small_dataset):
    mpath = Path(small_dataset) / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["shards"][0]["path"] = "../elsewhere.parquet"
    mpath.write_text(json.dumps(raw))
    with pytest.raises(ShardError, match=r"shards\.0\.path"):
        sh.open_dataset(small_dataset)


# --------------------------------------------------------------------------- bad writes


def _writer(tmp_path, columns=None) -> sh.ShardWriter:
    return sh.ShardWriter(str(tmp_path / "w"), task="t", split="train", columns=columns or COLUMNS, progress=False)


def test_wrong_shape_on_write(tmp_path):
    rows = make_rows(4)
    rows["image"] = np.zeros((4, 2, 3, 5), dtype=np.float32)
    with pytest.raises(ShardError, match=r"column 'image': expected per-row shape \[2, 3, 4\], got \[2, 3, 5\]"):
        _writer(tmp_path).write(rows)
    rows = make_rows(4)
    rows["frames"][2] = np.zeros((2, 4), dtype=np.float16)
    with pytest.raises(ShardError, match=r"column 'frames': row 2: .*got \[2, 4\]"):
        _writer(tmp_path).write(rows)


def test_unknown_and_missing_columns_on_write(tmp_path):
    rows = make_rows(4)
    with pytest.raises(ShardError, match="column 'extra': unknown column"):
        _writer(tmp_path).write({**rows, "extra": np.zeros(4)})
    del rows["caption"]
    with pytest.raises(ShardError, match="column 'caption': missing"):
        _writer(tmp_path).write(rows)


def test_casts_refuse_to_lose_information(tmp_path):
    cols = {"label": sh.ColumnSpec(dtype="int32"), "x": sh.ColumnSpec(dtype="float32", shape=[2])}
    w = _writer(tmp_path, cols)
    # int64 -> int32 in range and float64 -> float32 are fine
    w.write({"label": np.array([1, 2]), "x": np.ones((2, 2))})
    with pytest.raises(ShardError, match="column 'label': cannot store float64 values in a int32 column"):
        w.write({"label": np.array([1.5, 2.0]), "x": np.ones((2, 2))})
    with pytest.raises(ShardError, match="column 'label': values range .* does not fit int32"):
        w.write({"label": np.array([2**40, 0]), "x": np.ones((2, 2))})
    with pytest.raises(ShardError, match="column 'x'"):
        w.write({"label": np.array([1, 2]), "x": np.array([[2**30 + 1, 0], [0, 0]])})  # not exact in float32
    with pytest.raises(ShardError, match="different row counts"):
        w.write({"label": np.array([1, 2, 3]), "x": np.ones((2, 2))})
    assert w.close().num_rows == 2


def test_bad_column_specs():
    with pytest.raises(ValueError, match="only the first dimension may be -1"):
        sh.ColumnSpec(dtype="float32", shape=[3, -1])
    with pytest.raises(ValueError, match="scalar per row"):
        sh.ColumnSpec(dtype="string", shape=[2])
    with pytest.raises(ValueError):
        sh.ColumnSpec(dtype="complex64")
    assert sh.ColumnSpec(dtype="uint8", shape=(3, 4)).shape == [3, 4]


def test_table_to_numpy_errors_name_shard_and_column():
    table = pa.table({"x": pa.array([1.0, 2.0])})
    with pytest.raises(ShardError, match=r"shard s3://b/p\.parquet, column 'y': missing"):
        sh.table_to_numpy(table, {"y": sh.ColumnSpec(dtype="int64")}, shard="s3://b/p.parquet")
    with pytest.raises(ShardError, match=r"shard p, column 'x': has arrow type double"):
        sh.table_to_numpy(table, {"x": sh.ColumnSpec(dtype="int64")}, shard="p")


# --------------------------------------------------------------------------- Ray Data


def test_ray_read_plan_comes_from_the_manifest_alone(s3_bucket_uri, tmp_path, monkeypatch):
    """ray_dataset's read tasks are the manifest's shards, planned without a request to S3 (no
    listing, no footer); reading sends no listing either, one GET per shard (after s3fs's HEAD for
    the object size, as in iter_local_batches); the rows are the dataset's, and the
    shard order is a fresh, reproducible permutation per execution (epoch). The tasks run here, in
    this process, so no Ray cluster is needed."""
    import types

    import s3fs

    from polymodal import storage

    uri = s3_bucket_uri + "/plan"
    rows = make_rows(45)
    manifest = write(uri, rows, rows_per_shard=10)  # 5 shards
    calls: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def spy(self, method, *args, **kwargs):
        calls.append(method)
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", spy)
    source = sh._manifest_datasource(uri, manifest, storage.resolve_options(None), seed=3, shuffle=True,
                                     retry=storage.RetryPolicy.from_env())
    plans = {i: source.get_read_tasks(100, data_context=types.SimpleNamespace(_execution_idx=i)) for i in (0, 1)}
    assert calls == []  # planning an epoch costs no request
    files = {i: [t.metadata.input_files[0] for t in tasks] for i, tasks in plans.items()}
    assert sorted(files[0]) == sh.shard_uris(manifest, uri) and files[0] != files[1]
    assert files[0] == [t.metadata.input_files[0] for t in source.get_read_tasks(
        100, data_context=types.SimpleNamespace(_execution_idx=0))]
    by_file = {sh.shard_uris(manifest, uri)[i]: s.rows for i, s in enumerate(manifest.shards)}
    assert [t.metadata.num_rows for t in plans[0]] == [by_file[f] for f in files[0]]
    assert sum(t.metadata.size_bytes for t in plans[0]) == source.estimate_inmemory_data_size()
    assert len(source.get_read_tasks(2)) == 2  # fewer tasks than shards: groups of shards

    def read_all(tasks: list, columns: dict) -> dict:
        got = collect([sh.table_to_numpy(block, columns) for task in tasks for block in task()])
        order = np.argsort(np.asarray(got["id"]))
        return {k: [v[i] for i in order] for k, v in got.items()}

    assert_rows_equal(read_all(plans[1], manifest.columns), rows)
    assert sorted(set(calls)) == ["get_object", "head_object"]
    assert calls.count("get_object") == calls.count("head_object") == len(manifest.shards)
    local = write(str(tmp_path / "local"), rows, rows_per_shard=10)  # a local folder reads the same way
    source = sh._manifest_datasource(str(tmp_path / "local"), local, storage.resolve_options(None), seed=3,
                                     shuffle=False, retry=storage.RetryPolicy.from_env())
    assert_rows_equal(read_all(source.get_read_tasks(100), local.columns), rows)


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    """The session's Ray cluster (see conftest); its workers see the S3 server's env."""
    return ray_cluster


def test_ray_dataset_reads_all_rows_from_s3(ray_local, s3_bucket_uri):
    uri = s3_bucket_uri + "/ray"
    rows = make_rows(45)
    manifest = write(uri, rows, rows_per_shard=10)
    ds = sh.ray_dataset(uri, manifest=manifest, seed=5, shards_per_task=3)  # tasks of 3 and 2 shards
    assert ds.count() == 45
    batches = [sh.table_to_numpy(t, manifest.columns) for t in ds.iter_batches(batch_format="pyarrow", batch_size=16)]
    got = collect(batches)
    order = np.argsort(np.asarray(got["id"]))
    assert_rows_equal({k: [v[i] for i in order] for k, v in got.items()}, rows)
    stats = ds.stats()  # the plan reads the manifest's shard list: no listing operator, no split blocks
    assert "ReadManifestShards" in stats and "ListFiles" not in stats and "SplitBlocks" not in stats, stats
    assert "2 tasks executed" in stats, stats
    with pytest.raises(ValueError, match="shards_per_task"):
        sh.ray_dataset(uri, manifest=manifest, shards_per_task=0)


def test_ray_dataset_hands_over_a_block_per_shard(ray_local, tmp_path):
    """Read tasks of several shards still hand each (fixed-shape) shard over as its own block, so
    an epoch's first batch waits for one shard, not a task's worth; the partial last shard too."""
    uri = str(tmp_path / "fixed")
    with sh.ShardWriter(uri, task="any", split="train", rows_per_shard=10, progress=False,
                        columns={"id": {"dtype": "int64"}, "x": {"dtype": "float32", "shape": [4]}}) as w:
        w.write({"id": np.arange(45), "x": np.ones((45, 4), np.float32)})
    for per_task in (None, 2, 5):
        ds = sh.ray_dataset(uri, seed=1, shards_per_task=per_task).materialize()
        sizes = sorted(len(t) for t in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
        assert sizes == [5, 10, 10, 10, 10], (per_task, sizes)
        assert sorted(ds.to_pandas()["id"]) == list(range(45))


def test_ray_dataset_in_memory_holds_every_shard_as_one_block(ray_local, s3_bucket_uri):
    """A small split read by the driver (Train's ``data.cache_below_mb`` path): one block per shard,
    every row decoded as a read task decodes it; a shard gone missing fails here, named, before any
    training starts."""
    from polymodal import storage

    uri = s3_bucket_uri + "/in-memory"
    rows = make_rows(45)
    manifest = write(uri, rows, rows_per_shard=10)
    ds = sh.ray_dataset_in_memory(uri, manifest=manifest, threads=2)
    assert ds.num_blocks() == len(manifest.shards) == 5 and ds.count() == 45
    got = collect(sh.table_to_numpy(t, manifest.columns)
                  for t in ds.iter_batches(batch_format="pyarrow", batch_size=16))
    order = np.argsort(np.asarray(got["id"]))
    assert_rows_equal({k: [v[i] for i in order] for k, v in got.items()}, rows)
    storage.remove(sh.shard_uris(manifest, uri)[3])
    with pytest.raises(ShardError, match="part-00003.parquet.*missing"):
        sh.ray_dataset_in_memory(uri, manifest=manifest)
