"""storage: local and s3:// (embedded moto server over HTTP) behave the same; bad paths fail."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from polymodal import storage as st
from polymodal.config import StorageOptions
from polymodal.errors import StorageError
from polymodal.ports import free_port
from polymodal.s3server import EmbeddedS3


# --------------------------------------------------------------------------- options & paths


def test_resolve_options_fills_from_env_and_keeps_explicit(monkeypatch):
    monkeypatch.delenv("POLYMODAL_S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1111")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    got = st.resolve_options(None)
    assert (got.endpoint_url, got.region) == ("http://127.0.0.1:1111", "eu-west-1")
    # the polymodal-specific variable wins over the AWS one
    monkeypatch.setenv("POLYMODAL_S3_ENDPOINT_URL", "http://127.0.0.1:2222")
    assert st.resolve_options(None).endpoint_url == "http://127.0.0.1:2222"
    # explicit options win over env, and the caller's object is not modified
    mine = StorageOptions(endpoint_url="http://127.0.0.1:3333", region="us-west-2")
    got = st.resolve_options(mine)
    assert (got.endpoint_url, got.region) == ("http://127.0.0.1:3333", "us-west-2")
    empty = StorageOptions()
    st.resolve_options(empty)
    assert empty.endpoint_url is None


def test_scheme_detection_and_local_paths(tmp_path):
    assert st.is_s3("s3://bucket/key") and not st.is_s3("/tmp/x") and not st.is_s3("file:///tmp/x")
    fs, path = st.get_fs(f"file://{tmp_path}/a")
    assert path == f"{tmp_path}/a"
    _, rel = st.get_fs("relative/dir")
    assert os.path.isabs(rel) and rel.endswith("relative/dir")
    with pytest.raises(StorageError, match="gs"):
        st.get_fs("gs://bucket/x")
    with pytest.raises(StorageError, match="no bucket"):
        st.get_fs("s3:///key")


@pytest.mark.parametrize("part", ["..", "a/../b", "../escape", "/etc/passwd", "a//b", "", ".", "a/./b",
                                  "s3://other/x", "a\\..\\b"])
def test_join_rejects_escaping_parts(part):
    with pytest.raises(StorageError) as info:
        st.join("s3://bucket/root", part)
    assert repr(part) in str(info.value)


def test_join_accepts_plain_relative_parts():
    assert st.join("s3://bucket/root/", "a", "b/c.json") == "s3://bucket/root/a/b/c.json"
    assert st.join("/data", "x..y") == "/data/x..y"  # '..' inside a name is not a component


@pytest.mark.parametrize("name", ["run-1", "wander_tiny.v2", "A"])
def test_check_name_ok(name):
    assert st.check_name(name) == name


@pytest.mark.parametrize("name", ["", "..", ".hidden", "a/b", "-x", "a b", "x" * 200])
def test_check_name_rejects(name):
    with pytest.raises(StorageError, match="invalid name"):
        st.check_name(name)


# --------------------------------------------------------------------------- round trips


def _round_trip(root: str, opts: StorageOptions | None = None) -> None:
    """The same sequence of operations must behave identically on every backend."""
    blob = os.urandom(1000)
    st.write_bytes(st.join(root, "sub", "blob.bin"), blob, opts)
    st.write_text(st.join(root, "note.txt"), "héllo\n", opts)
    assert st.read_bytes(st.join(root, "sub", "blob.bin"), opts) == blob
    assert st.read_text(st.join(root, "note.txt"), opts) == "héllo\n"
    assert st.exists(st.join(root, "sub"), opts) and st.exists(st.join(root, "note.txt"), opts)
    assert not st.exists(st.join(root, "nope.txt"), opts)
    assert st.listdir(root, opts) == ["note.txt", "sub"]

    with st.open_uri(st.join(root, "stream.txt"), "w", opts) as f:
        f.write("line 1\nline 2\n")
    with st.open_uri(st.join(root, "stream.txt"), "r", opts) as f:
        assert f.read().splitlines() == ["line 1", "line 2"]

    missing = st.join(root, "missing.bin")
    for call in (lambda: st.read_bytes(missing, opts), lambda: st.open_uri(missing, "rb", opts),
                 lambda: st.remove(missing, opts=opts)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert missing in str(info.value)

    with pytest.raises(StorageError, match="recursive=True"):
        st.remove(st.join(root, "sub"), opts=opts)
    st.remove(st.join(root, "note.txt"), opts=opts)
    assert not st.exists(st.join(root, "note.txt"), opts)
    st.remove(root, recursive=True, opts=opts)
    assert not st.exists(root, opts)
    with pytest.raises(FileNotFoundError):
        st.listdir(root, opts)


def test_local_round_trip(tmp_path):
    _round_trip(str(tmp_path / "root"))
    _round_trip(f"file://{tmp_path}/root2")


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "f.json"
    st.write_text(str(target), "one")
    st.write_text(str(target), "two")  # replaces, never truncates in place
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["f.json"]


def test_s3_round_trip(s3_bucket_uri):
    _round_trip(s3_bucket_uri)


def test_s3_round_trip_with_explicit_options(s3_server, s3_bucket_uri):
    opts = StorageOptions(endpoint_url=s3_server.endpoint_url, region="us-east-1")
    _round_trip(s3_bucket_uri, opts)
    fs1, _ = st.get_fs(s3_bucket_uri, opts)
    fs2, path = st.get_fs(s3_bucket_uri + "/x", opts)
    assert fs1 is fs2  # one cached filesystem per options
    assert path == s3_bucket_uri[len("s3://"):] + "/x"


def test_upload_and_download_dir(tmp_path, s3_bucket_uri):
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    files = {"a.txt": b"a", "nested/b.bin": os.urandom(300), "nested/deeper/c.json": b"{}"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    assert st.upload_dir(str(src), s3_bucket_uri) == sorted(files)
    assert st.read_bytes(st.join(s3_bucket_uri, "nested/b.bin")) == files["nested/b.bin"]

    dst = tmp_path / "dst"
    assert st.download_dir(s3_bucket_uri, str(dst)) == sorted(files)
    for rel, data in files.items():
        assert (dst / rel).read_bytes() == data

    # local -> local goes through the same code
    assert st.upload_dir(str(src), str(tmp_path / "copy")) == sorted(files)
    assert (tmp_path / "copy" / "nested" / "deeper" / "c.json").read_bytes() == b"{}"

    with pytest.raises(FileNotFoundError, match="empty-prefix"):
        st.download_dir(s3_bucket_uri + "/empty-prefix", str(tmp_path / "none"))


def test_pyarrow_fs_reads_parquet_from_s3_and_pickles(s3_bucket_uri):
    table = pa.table({"x": np.arange(10, dtype=np.int64), "y": np.linspace(0, 1, 10)})
    uri = st.join(s3_bucket_uri, "t.parquet")
    with st.open_uri(uri, "wb") as f:
        pq.write_table(table, f)

    fs, path = st.to_pyarrow_fs(uri)
    assert isinstance(fs, pafs.FileSystem)
    assert not path.startswith("s3://") and path == uri[len("s3://"):]
    assert pq.read_table(path, filesystem=fs).equals(table)
    # Ray ships the filesystem to workers by pickling it
    fs2 = pickle.loads(pickle.dumps(fs))
    assert pq.read_table(path, filesystem=fs2).equals(table)

    local_fs, local_path = st.to_pyarrow_fs("file:///tmp/x.parquet")
    assert isinstance(local_fs, pafs.LocalFileSystem) and local_path == "/tmp/x.parquet"


def test_unreachable_endpoint_names_it(s3_server):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError) as info:
        st.read_bytes("s3://polymodal/x", StorageOptions(endpoint_url=endpoint))
    assert not isinstance(info.value, FileNotFoundError)
    assert endpoint in str(info.value)


def test_embedded_s3_env_and_busy_port(s3_server):
    env = s3_server.env()
    assert env["POLYMODAL_S3_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert env["AWS_ACCESS_KEY_ID"] == env["AWS_SECRET_ACCESS_KEY"] == "testing"
    busy = s3_server.port  # the session server holds this port
    with pytest.raises(StorageError, match=str(busy)):
        EmbeddedS3(port=busy).start()
