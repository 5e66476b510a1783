"""Storage faults: S3 stopped and restarted while shards stream, S3 gone for good, and
checkpoint writes that crash half-way.

The server tests stop a private moto server (never the session one, which other tests
share) and carry the ``faults`` marker: each waits out a real outage of a few seconds
(``make test-faults``). Everything else runs in ``make test`` in well under a second each.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from support import wander_config

from polymodal import shards as sh
from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError, ShardError, StorageError
from polymodal.s3server import EmbeddedS3
from polymodal.storage import NotFoundError, RetryPolicy, StorageUnavailableError, call_with_retry, is_transient
from polymodal.train import checkpoint as ck

COLUMNS = {"id": sh.ColumnSpec(dtype="int64"), "x": sh.ColumnSpec(dtype="float32", shape=[3])}
ROWS_PER_SHARD = 8
N_SHARDS = 5
OUTAGE_S = 8.0  # longer than botocore's own 3 tries (0.7-4.6 s measured, at most 6 s of backoff), so our retry loop must carry the read


def client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised from ``inner``, as our and s3fs's translations do."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def write_dataset(uri: str, opts: StorageOptions | None = None) -> sh.Manifest:
    rows = ROWS_PER_SHARD * N_SHARDS
    with sh.ShardWriter(uri, task="demo.task", split="train", columns=COLUMNS, rows_per_shard=ROWS_PER_SHARD,
                        opts=opts, progress=False) as writer:
        writer.write({"id": np.arange(rows, dtype=np.int64),
                      "x": np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)})
    return writer.close()


# --------------------------------------------------------------------------- what is retried


@pytest.mark.parametrize("exc, transient", [
    (ConnectionRefusedError(111, "Connection refused"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (TimeoutError("timed out"), True),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
    (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True),
    (client_error("TooManyRequests", 429), True),
    (client_error("NoSuchKey", 404), False),
    (client_error("AccessDenied", 403), False),
    (client_error("InvalidRange", 416), False),
    (FileNotFoundError("s3://b/k"), False),
    (PermissionError("denied"), False),
    (ValueError("Parquet magic bytes not found"), False),
    # our translation of a refused connection, and s3fs's of a 503, keep the cause
    (wrapped(EndpointConnectionError(endpoint_url="http://h"), StorageError("cannot reach S3 endpoint")), True),
    (wrapped(client_error("ServiceUnavailable", 503), OSError(5, "Service Unavailable")), True),
    # a missing object stays missing, whatever happened on the way
    (wrapped(ConnectionResetError(), NotFoundError("not found: s3://b/k")), False),
    # an inner loop that gave up already spent the budget
    (StorageUnavailableError("down", endpoint="http://h", uri="s3://b/k", attempts=3), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


def test_retry_backs_off_exponentially_then_returns(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", sleeps.append)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return b"data"

    policy = RetryPolicy(attempts=6, base_delay_s=1.0, max_delay_s=3.0)
    assert call_with_retry(flaky, uri="s3://b/k", endpoint="http://h:1", policy=policy) == b"data"
    assert len(calls) == 4
    # 1, 2, then capped at 3 s, each scaled by a jitter factor in [0.5, 1]
    for pause, full in zip(sleeps, [1.0, 2.0, 3.0], strict=True):
        assert 0.5 * full <= pause <= full


def test_retry_gives_up_with_an_error_naming_endpoint_and_object(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    calls = []

    def down():
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/k")

    with pytest.raises(StorageUnavailableError) as info:
        call_with_retry(down, uri="s3://b/part-00003.parquet", endpoint="http://127.0.0.1:9",
                        policy=RetryPolicy(attempts=3))
    assert len(calls) == 3
    err = info.value
    assert (err.endpoint, err.uri, err.attempts) == ("http://127.0.0.1:9", "s3://b/part-00003.parquet", 3)
    assert "http://127.0.0.1:9" in str(err) and "s3://b/part-00003.parquet" in str(err)
    assert isinstance(err, StorageError) and isinstance(err, PolymodalError)
    assert isinstance(err.__cause__, EndpointConnectionError)


@pytest.mark.parametrize("exc", [client_error("NoSuchKey", 404), ValueError("corrupt"),
                                 NotFoundError("not found: s3://b/k")])
def test_permanent_errors_are_raised_at_once(exc, monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda s: pytest.fail("slept before a permanent error"))
    calls = []

    def broken():
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        call_with_retry(broken, uri="s3://b/k", endpoint="http://h", policy=RetryPolicy(attempts=5))
    assert len(calls) == 1


def test_retry_policy_from_env(monkeypatch):
    for var in ("POLYMODAL_S3_RETRY_ATTEMPTS", "POLYMODAL_S3_RETRY_BASE_S", "POLYMODAL_S3_RETRY_MAX_S"):
        monkeypatch.delenv(var, raising=False)
    assert RetryPolicy.from_env() == RetryPolicy()
    monkeypatch.setenv("POLYMODAL_S3_RETRY_ATTEMPTS", "2")
    monkeypatch.setenv("POLYMODAL_S3_RETRY_BASE_S", "0.25")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=2, base_delay_s=0.25)
    monkeypatch.setenv("POLYMODAL_S3_RETRY_ATTEMPTS", "many")
    with pytest.raises(StorageError, match="POLYMODAL_S3_RETRY_ATTEMPTS='many'"):
        RetryPolicy.from_env()
    monkeypatch.setenv("POLYMODAL_S3_RETRY_ATTEMPTS", "0")
    with pytest.raises(StorageError, match=r"got 0 \(from the environment: POLYMODAL_S3_RETRY_ATTEMPTS"):
        RetryPolicy.from_env()


def test_corrupt_or_missing_shard_fails_at_once_despite_retries(s3_bucket_uri):
    """A generous retry budget must not delay errors that retrying cannot fix."""
    manifest = write_dataset(s3_bucket_uri)
    shard_uris = sh.shard_uris(manifest, s3_bucket_uri)
    patient = RetryPolicy(attempts=6, base_delay_s=30.0, max_delay_s=30.0)
    started = time.monotonic()
    storage.remove(shard_uris[2])
    with pytest.raises(ShardError, match="part-00002.parquet.*missing"):
        list(sh.iter_local_batches(s3_bucket_uri, ROWS_PER_SHARD, manifest=manifest, shuffle=False, retry=patient))
    storage.write_bytes(shard_uris[1], b"not parquet at all")
    with pytest.raises(ShardError, match="part-00001.parquet.*not a readable Parquet file"):
        list(sh.iter_local_batches(s3_bucket_uri, ROWS_PER_SHARD, manifest=manifest, shuffle=False, retry=patient))
    assert time.monotonic() - started < 10  # nothing waited out a 30 s backoff


def test_retrying_pyarrow_fs_reads_and_pickles(s3_bucket_uri):
    import pickle

    write_dataset(s3_bucket_uri)
    fs, path = storage.to_pyarrow_fs(storage.join(s3_bucket_uri, "part-00000.parquet"),
                                     retry=RetryPolicy(attempts=2, base_delay_s=0.1))
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.handler.policy == RetryPolicy(attempts=2, base_delay_s=0.1)
    table = pq.read_table(path, filesystem=clone)
    assert table.column("id").to_pylist() == list(range(ROWS_PER_SHARD))
    with pytest.raises(FileNotFoundError):
        pq.read_table(path.replace("part-00000", "part-09999"), filesystem=fs)


# --------------------------------------------------------------------------- S3 outages


class Outage:
    """Takes a server down now and brings it back on the same port later.

    ``refuse``: nothing listens, connections are refused, and the server returns ``down_s``
    after the outage began. Otherwise a stand-in listener accepts each connection and resets
    it, and the server returns ``down_s`` after the first reader hit it: Ray Data takes a
    variable while to start its read tasks, and the outage must not end before they ran.
    """

    def __init__(self, server: EmbeddedS3, down_s: float, *, refuse: bool):
        self.server, self.down_s, self.refuse = server, down_s, refuse
        self.hits = 0
        self.first_hit: float | None = None
        self._cancel = threading.Event()
        server.stop()
        self._listener = None if refuse else socket.create_server(("127.0.0.1", server.port), reuse_port=False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.refuse:
            if self._cancel.wait(self.down_s):
                return
            self.server.start()
            return
        listener = self._listener
        listener.settimeout(0.05)
        with listener:
            while not self._cancel.is_set():
                if self.first_hit is not None and time.monotonic() - self.first_hit >= self.down_s:
                    break
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                self.hits += 1
                self.first_hit = self.first_hit or time.monotonic()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # linger 0: the client sees a reset, as from a crashing server
        if not self._cancel.is_set():
            self.server.start()

    def cancel(self) -> None:
        self._cancel.set()
        self._thread.join()


@pytest.fixture
def private_s3(s3_server):
    """A moto server of our own, which the test may take down; its objects survive a restart.

    The session server's endpoint stays in the environment, so every call names this one's
    endpoint explicitly through StorageOptions. Yields (server, dataset URI, options, outages).
    """
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    server = EmbeddedS3(port=0, buckets=(bucket,)).start()
    outages: list[Outage] = []
    opts = StorageOptions(endpoint_url=server.endpoint_url, region="us-east-1")
    try:
        yield server, f"s3://{bucket}/data", opts, outages
    finally:
        for outage in outages:
            outage.cancel()
        server.stop()


@pytest.mark.faults
def test_epoch_completes_when_s3_restarts_mid_stream(private_s3, caplog):
    server, uri, opts, outages = private_s3
    manifest = write_dataset(uri, opts)
    policy = RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=2.0)
    batches = sh.iter_local_batches(uri, ROWS_PER_SHARD, manifest=manifest, shuffle=False, shuffle_buffer=0,
                                    opts=opts, retry=policy)
    ids = list(next(batches)["id"])  # shard 0 is read; the server then goes away for OUTAGE_S
    started = time.monotonic()
    outages.append(Outage(server, OUTAGE_S, refuse=True))
    with caplog.at_level(logging.WARNING, logger="polymodal.storage"):
        for batch in batches:
            ids.extend(batch["id"])
    assert time.monotonic() - started >= OUTAGE_S - 0.5  # the reads really waited for the server
    assert sorted(ids) == list(range(ROWS_PER_SHARD * N_SHARDS))  # every row exactly once
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and "part-00001.parquet" in retries[0] and server.endpoint_url in retries[0]


@pytest.mark.faults
def test_s3_down_for_good_names_the_endpoint_within_the_budget(private_s3):
    server, uri, opts, _ = private_s3
    manifest = write_dataset(uri, opts)
    endpoint = server.endpoint_url
    batches = sh.iter_local_batches(uri, ROWS_PER_SHARD, manifest=manifest, shuffle=False, shuffle_buffer=0,
                                    opts=opts, retry=RetryPolicy(attempts=3, base_delay_s=0.2, max_delay_s=0.5))
    next(batches)
    server.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        next(batches)
    # 2 backoffs of at most 0.2 + 0.4 s, and botocore's 3 quick tries inside each of 3 attempts
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert endpoint in message and f"{uri}/part-00001.parquet" in message and "3 attempt(s)" in message
    assert info.value.endpoint == endpoint


@pytest.mark.faults
def test_pyarrow_fs_read_waits_for_a_restarting_server(private_s3):
    """The filesystem Ray Data reads through retries too: opens and reads alike."""
    server, uri, opts, outages = private_s3
    write_dataset(uri, opts)
    fs, path = storage.to_pyarrow_fs(storage.join(uri, "part-00003.parquet"), opts,
                                     retry=RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=2.0))
    outage = Outage(server, OUTAGE_S, refuse=False)
    outages.append(outage)
    table = pq.read_table(path, filesystem=fs)
    assert table.column("id").to_pylist() == list(range(3 * ROWS_PER_SHARD, 4 * ROWS_PER_SHARD))
    assert outage.hits >= 1


@pytest.mark.faults
def test_ray_dataset_survives_a_restarting_server(ray_cluster, private_s3):
    server, uri, opts, outages = private_s3
    manifest = write_dataset(uri, opts)
    ds = sh.ray_dataset(uri, manifest=manifest, opts=opts, shuffle=False,
                        retry=RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=2.0))
    outage = Outage(server, OUTAGE_S, refuse=False)
    outages.append(outage)
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == list(range(ROWS_PER_SHARD * N_SHARDS))
    assert outage.hits >= 1  # Ray's read tasks met the outage (and rode it out)


# --------------------------------------------------------------------------- atomic checkpoints


class SimulatedCrash(Exception):
    """Stands in for a process dying part-way through a checkpoint write."""


def crash_after(monkeypatch, uri: str, files: int) -> list[str]:
    """Let the next uploads to ``uri`` write ``files`` files, then crash; returns what arrived."""
    fs, _ = storage.get_fs(uri)
    real_put_file = fs.put_file
    written: list[str] = []

    def put_file(lpath, rpath, **kwargs):
        if len(written) >= files:
            raise SimulatedCrash(f"crashed before writing {rpath}")
        real_put_file(lpath, rpath, **kwargs)
        written.append(rpath)

    def put(lpaths, rpaths, **kwargs):
        for lpath, rpath in zip(lpaths, rpaths, strict=True):
            put_file(lpath, rpath)

    monkeypatch.setattr(fs, "put_file", put_file)
    if storage.is_s3(uri):
        monkeypatch.setattr(fs, "put", put)  # s3fs uploads lists without calling put_file
    return written


@pytest.fixture
def tiny_cfg(tmp_path):
    """A real experiment config; nothing reads the data paths it names."""
    fake = {k: f"s3://polymodal/unused/{k}" for k in ("backbone", "train", "val", "test")}
    return wander_config(fake, str(tmp_path / "runs"), "atomic", "checkpoint.num_to_keep=3")


def local_checkpoint(root: Path, cfg, epoch: int) -> Path:
    """What the train loop builds before publishing: DeepSpeed state, export, state.json."""
    folder = root / f"build-{epoch}"
    (folder / ck.DS_DIR / ck.DS_TAG).mkdir(parents=True)
    (folder / ck.DS_DIR / ck.DS_TAG / "mp_rank_00_model_states.pt").write_bytes(bytes([epoch]) * 4096)
    ck.write_export(folder / ck.MODEL_DIR, cfg, {"head.weight": torch.full((2, 3), float(epoch))},
                    {"epoch": epoch, "metrics": {}})
    (folder / ck.STATE_FILE).write_text(json.dumps({"epoch": epoch, "micro_step": 4 * (epoch + 1),
                                                    "global_step": 4 * (epoch + 1)}))
    return folder


def exported_epoch(ckpt_uri: str, tmp_path: Path) -> int:
    """Download a checkpoint's export, load it, return the epoch its weights were filled with."""
    dest = tmp_path / f"load-{uuid.uuid4().hex}"
    storage.download_dir(storage.join(ckpt_uri, ck.MODEL_DIR), str(dest))
    _, weights, info = ck.load_export(dest)
    assert torch.all(weights["head.weight"] == float(info["epoch"]))
    return info["epoch"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_crash_mid_publish_keeps_the_previous_checkpoint(where, tmp_path, tiny_cfg, request, monkeypatch):
    root = str(tmp_path / "ckpts") if where == "local" else request.getfixturevalue("s3_bucket_uri") + "/ckpts"
    for epoch in (0, 1):
        folder = local_checkpoint(tmp_path, tiny_cfg, epoch)
        ck.publish_checkpoint(folder, storage.join(root, f"epoch_{epoch:04d}"))
    arrived = crash_after(monkeypatch, root, files=2)
    with pytest.raises(SimulatedCrash):
        ck.publish_checkpoint(local_checkpoint(tmp_path, tiny_cfg, 2), storage.join(root, "epoch_0002"))
    monkeypatch.undo()
    assert len(arrived) == 2 and not any(p.endswith(ck.STATE_FILE) for p in arrived)
    assert not ck.is_complete(storage.join(root, "epoch_0002"))
    assert ck.complete_checkpoints(root) == [storage.join(root, "epoch_0000"), storage.join(root, "epoch_0001")]
    latest = ck.latest_checkpoint(root)
    assert latest == storage.join(root, "epoch_0001")
    assert exported_epoch(latest, tmp_path) == 1
    # on disk the failed copy left nothing behind; on S3 its first files are there, unmarked
    names = storage.listdir(root)
    if where == "local":
        assert names == ["epoch_0000", "epoch_0001"]
    else:
        assert "epoch_0002" in names


def test_republishing_drops_the_old_marker_before_overwriting(s3_bucket_uri, tmp_path, tiny_cfg, monkeypatch):
    """Rewriting a checkpoint in place must not leave the old marker vouching for new files."""
    uri = storage.join(s3_bucket_uri, "epoch_0000")
    ck.publish_checkpoint(local_checkpoint(tmp_path, tiny_cfg, 0), uri)
    crash_after(monkeypatch, uri, files=1)
    with pytest.raises(SimulatedCrash):
        ck.publish_checkpoint(local_checkpoint(tmp_path, tiny_cfg, 7), uri)
    monkeypatch.undo()
    assert not ck.is_complete(uri)


def test_half_written_checkpoint_without_marker_is_ignored(tmp_path, tiny_cfg):
    root = tmp_path / "ckpts"
    ck.publish_checkpoint(local_checkpoint(tmp_path, tiny_cfg, 0), str(root / "epoch_0000"))
    # what a hard kill in the middle of a copy can leave: payload, no state.json
    half = root / "epoch_0001"
    (half / ck.MODEL_DIR).mkdir(parents=True)
    (half / ck.MODEL_DIR / "trainable.safetensors").write_bytes(b"\0" * 10)
    assert ck.complete_checkpoints(str(root)) == [str(root / "epoch_0000")]
    assert ck.latest_checkpoint(str(root)) == str(root / "epoch_0000")
    with pytest.raises(PolymodalError, match="state.json"):
        ck.publish_checkpoint(half, str(root / "epoch_0002"))


def test_local_run_keeps_latest_loadable_when_a_checkpoint_write_crashes(tiny_cfg, tmp_path, monkeypatch):
    """The local harness end to end: summary.json and resume point stay on the last whole checkpoint."""
    from polymodal.runs import find_checkpoint
    from polymodal.train.loop import LocalReporter

    reporter = LocalReporter(tiny_cfg)
    reporter.report({"epoch": 0}, local_checkpoint(tmp_path, tiny_cfg, 0))
    first = find_checkpoint(tiny_cfg, "latest")
    assert first.endswith("epoch_0000")
    crash_after(monkeypatch, reporter.root, files=3)
    with pytest.raises(SimulatedCrash):
        reporter.report({"epoch": 1}, local_checkpoint(tmp_path, tiny_cfg, 1))
    monkeypatch.undo()
    assert find_checkpoint(tiny_cfg, "latest") == first
    assert exported_epoch(first, tmp_path) == 0
    with LocalReporter(tiny_cfg).restore() as restored:
        assert json.loads((restored / ck.STATE_FILE).read_text())["epoch"] == 0
    assert storage.listdir(reporter.root) == ["epoch_0000"]  # no partial folder, no temp leftovers


def test_write_export_replaces_an_export_only_when_whole(tiny_cfg, tmp_path, monkeypatch):
    path = tmp_path / "model"
    ck.write_export(path, tiny_cfg, {"w": torch.zeros(3)}, {"epoch": 0})

    def crash(*args, **kwargs):
        raise SimulatedCrash("crashed while writing the weights")

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(SimulatedCrash):
        ck.write_export(path, tiny_cfg, {"w": torch.ones(3)}, {"epoch": 1})
    monkeypatch.undo()
    _, weights, info = ck.load_export(path)
    assert info["epoch"] == 0 and torch.equal(weights["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
