"""One place that turns a URI into bytes: plain paths, ``file://`` and ``s3://``.

Every helper takes ``opts: StorageOptions | None = None`` last. Unset options are filled
from the environment by :func:`resolve_options`; credentials always come from the standard
AWS chain (env vars, shared files, instance roles) and are never stored in a config.

Errors a user can cause come back typed:

* a missing file or object -> :class:`NotFoundError` (a ``FileNotFoundError``) naming the URI;
* an unreachable endpoint, missing credentials, denied access -> :class:`StorageError`
  naming the endpoint or URI and what to check.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError, StorageError

__all__ = [
    "NotFoundError", "resolve_options", "is_s3", "get_fs", "to_pyarrow_fs", "join", "check_name",
    "read_bytes", "write_bytes", "read_text", "write_text", "exists", "makedirs", "listdir",
    "remove", "upload_dir", "download_dir", "open_uri", "clear_fs_cache",
]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_NAME = 128


class NotFoundError(StorageError, FileNotFoundError):
    """A file or object does not exist. Catchable as ``FileNotFoundError`` or ``StorageError``."""


# --------------------------------------------------------------------------- options & URIs


def resolve_options(opts: StorageOptions | None) -> StorageOptions:
    """Return a copy of ``opts`` with unset fields filled from the environment.

    ``endpoint_url`` <- ``POLYMODAL_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``;
    ``region`` <- ``AWS_DEFAULT_REGION`` or ``AWS_REGION``.
    """
    base = opts if opts is not None else StorageOptions()
    updates: dict[str, Any] = {}
    if not base.endpoint_url:
        env_ep = os.environ.get("POLYMODAL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if env_ep:
            updates["endpoint_url"] = env_ep
    if not base.region:
        env_region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if env_region:
            updates["region"] = env_region
    return base.model_copy(update=updates)


def _scheme(uri: str) -> str | None:
    m = _SCHEME_RE.match(uri)
    return m.group(1).lower() if m else None


def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/key`` URIs."""
    return _scheme(uri) == "s3"


def _check_uri(uri: str) -> str:
    if not isinstance(uri, (str, os.PathLike)):
        raise StorageError(f"expected a path or URI string, got {type(uri).__name__}: {uri!r}")
    uri = os.fspath(uri)
    if not uri:
        raise StorageError("empty path or URI; give a folder, file:// path or s3://bucket/key")
    scheme = _scheme(uri)
    if scheme not in (None, "file", "s3"):
        raise StorageError(f"unsupported URI scheme {scheme!r} in {uri}; use a local path, file:// or s3://")
    if scheme == "s3" and not uri[5:].split("/", 1)[0]:
        raise StorageError(f"{uri} has no bucket; write s3://<bucket>/<prefix>")
    return uri


def _local_path(uri: str) -> str:
    if _scheme(uri) == "file":
        uri = uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def _s3_path(uri: str) -> str:
    # s3fs and pyarrow both want "bucket/key" without the scheme; drop trailing slashes so
    # "s3://b/dir/" and "s3://b/dir" name the same prefix.
    return uri[len("s3://"):].rstrip("/")


# --------------------------------------------------------------------------- filesystems

_FS_CACHE: dict[tuple[Any, ...], fsspec.AbstractFileSystem] = {}
_FS_LOCK = threading.Lock()
_LOCAL_FS = LocalFileSystem()


def clear_fs_cache() -> None:
    """Forget cached S3 filesystems (e.g. after credentials or endpoints changed in env)."""
    with _FS_LOCK:
        _FS_CACHE.clear()


def _s3_fs(opts: StorageOptions) -> fsspec.AbstractFileSystem:
    # pid in the key: an s3fs instance owns an event-loop thread that a forked child must
    # not share.
    key = (os.getpid(), opts.endpoint_url, opts.region, opts.profile, opts.anon)
    with _FS_LOCK:
        fs = _FS_CACHE.get(key)
        if fs is None:
            try:
                import s3fs
            except ImportError as exc:  # pragma: no cover - s3fs is a hard dependency
                raise StorageError("s3:// URIs need the s3fs package: pip install s3fs") from exc
            client_kwargs: dict[str, Any] = {}
            config_kwargs: dict[str, Any] = {
                # Fail in seconds, not minutes, when an endpoint is down; standard-mode
                # retries still ride out throttling and transient 5xx.
                "connect_timeout": 10,
                "read_timeout": 120,
                "retries": {"max_attempts": 3, "mode": "standard"},
            }
            if opts.endpoint_url:
                client_kwargs["endpoint_url"] = opts.endpoint_url
                # S3-compatible servers (MinIO, moto, Ceph) rarely do virtual-host buckets.
                config_kwargs["s3"] = {"addressing_style": "path"}
            if opts.region:
                client_kwargs["region_name"] = opts.region
            # No listings cache: other processes (Ray workers, other runs) write the same
            # prefixes, and a stale listing would hide their files.
            kwargs: dict[str, Any] = {"anon": opts.anon, "client_kwargs": client_kwargs,
                                      "config_kwargs": config_kwargs, "use_listings_cache": False}
            if opts.profile:
                kwargs["profile"] = opts.profile
            fs = s3fs.S3FileSystem(**kwargs)
            _FS_CACHE[key] = fs
        return fs


def get_fs(uri: str, opts: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and in-filesystem path for ``uri``.

    Local: ``LocalFileSystem`` and an absolute path (``file://`` stripped).
    S3: a cached ``s3fs.S3FileSystem`` for the resolved options and ``bucket/key``.
    """
    uri = _check_uri(uri)
    if is_s3(uri):
        return _s3_fs(resolve_options(opts)), _s3_path(uri)
    return _LOCAL_FS, _local_path(uri)


def to_pyarrow_fs(uri: str, opts: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """A picklable pyarrow filesystem and path for Ray Data / pyarrow readers.

    S3 goes through s3fs (``PyFileSystem(FSSpecHandler(...))``) so both stacks share one
    endpoint/credential setup; the path has no ``s3://`` because Ray requires a bare path
    whenever a filesystem object is given.
    """
    uri = _check_uri(uri)
    if is_s3(uri):
        return pafs.PyFileSystem(pafs.FSSpecHandler(_s3_fs(resolve_options(opts)))), _s3_path(uri)
    return pafs.LocalFileSystem(), _local_path(uri)


def _endpoint_desc(uri: str, opts: StorageOptions | None) -> str:
    o = resolve_options(opts)
    if o.endpoint_url:
        return o.endpoint_url
    return f"the default AWS S3 endpoint (region {o.region or 'unset'})"


@contextlib.contextmanager
def _translate(uri: str, opts: StorageOptions | None) -> Iterator[None]:
    """Turn backend exceptions into NotFoundError / StorageError that name the URI."""
    try:
        yield
    except PolymodalError:
        raise
    except FileNotFoundError as exc:
        raise NotFoundError(f"not found: {uri}") from exc
    except PermissionError as exc:
        hint = " (check the AWS credentials/profile and bucket policy)" if is_s3(uri) else ""
        raise StorageError(f"permission denied for {uri}{hint}: {exc}") from exc
    except Exception as exc:
        try:
            import botocore.exceptions as bexc
        except ImportError:  # pragma: no cover
            bexc = None
        if bexc is not None and isinstance(exc, bexc.NoCredentialsError):
            raise StorageError(
                f"no AWS credentials found for {uri}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "an AWS profile, or storage.anon: true for public buckets") from exc
        if bexc is not None and isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError)):
            raise StorageError(
                f"cannot reach S3 endpoint {_endpoint_desc(uri, opts)} while accessing {uri}: {exc}. "
                "Check storage.endpoint_url / POLYMODAL_S3_ENDPOINT_URL and that the server is up "
                "(`polymodal s3 serve` for a local one)") from exc
        if isinstance(exc, OSError) or (bexc is not None and isinstance(exc, bexc.BotoCoreError)):
            raise StorageError(f"storage error for {uri}: {exc}") from exc
        raise


# --------------------------------------------------------------------------- path safety


def join(base: str, *parts: str) -> str:
    """Append relative ``parts`` to ``base`` with ``/``.

    Each part may hold several ``/``-separated components, but none may be empty, ``.``,
    ``..``, or contain a backslash or NUL, and no part may be absolute: user-supplied names
    must never escape ``base``.
    """
    out = os.fspath(base)
    for part in parts:
        if not isinstance(part, str):
            raise StorageError(f"path part must be a string, got {type(part).__name__}: {part!r}")
        if part.startswith("/") or _scheme(part) or re.match(r"^[A-Za-z]:[\\/]", part):
            raise StorageError(f"path part {part!r} is absolute; give a path relative to {base}")
        for comp in part.split("/"):
            if comp in ("", ".", ".."):
                raise StorageError(
                    f"path part {part!r} has an empty, '.' or '..' component; "
                    f"give a plain relative path inside {base}")
            if "\\" in comp or "\x00" in comp:
                raise StorageError(f"path part {part!r} contains a backslash or NUL byte; use '/' only")
        out = out.rstrip("/") + "/" + part
    return out


def check_name(name: str, what: str = "name") -> str:
    """Validate a dataset/run name (one path component); return it unchanged."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > _MAX_NAME:
        raise StorageError(
            f"invalid {what} {name!r}: use letters, digits, '_', '.', '-', start with a letter "
            f"or digit, at most {_MAX_NAME} characters")
    return name


# --------------------------------------------------------------------------- helpers


def read_bytes(uri: str, opts: StorageOptions | None = None) -> bytes:
    """Whole file/object as bytes."""
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        return fs.cat_file(path)


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None) -> None:
    """Write ``data`` to ``uri``; parent folders are created.

    Local writes go to a temp file in the same folder and are renamed into place, so a
    reader never sees a half-written file. S3 object PUTs are atomic by themselves.
    """
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is _LOCAL_FS:
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            fs.pipe_file(path, bytes(data))


def read_text(uri: str, opts: StorageOptions | None = None) -> str:
    """Whole file/object decoded as UTF-8."""
    data = read_bytes(uri, opts)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(f"{uri} is not UTF-8 text: {exc}") from None


def write_text(uri: str, text: str, opts: StorageOptions | None = None) -> None:
    """Write ``text`` as UTF-8 (atomically for local files)."""
    write_bytes(uri, text.encode("utf-8"), opts)


def exists(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if a file, folder or S3 prefix exists at ``uri``."""
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        return bool(fs.exists(path))


def makedirs(uri: str, opts: StorageOptions | None = None) -> None:
    """Create a local folder (and parents). A no-op on S3, where folders are key prefixes."""
    fs, path = get_fs(uri, opts)
    if fs is _LOCAL_FS:
        with _translate(uri, opts):
            os.makedirs(path, exist_ok=True)


def listdir(uri: str, opts: StorageOptions | None = None) -> list[str]:
    """Sorted names (not paths) of the entries directly below folder/prefix ``uri``."""
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is _LOCAL_FS:
            if not os.path.isdir(path):
                raise FileNotFoundError(path)
            return sorted(os.listdir(path))
        # Listings are cached by s3fs; a writer elsewhere may have changed the prefix.
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=False)
        names = {posixpath.basename(e.rstrip("/")) for e in entries}
        names.discard("")
        return sorted(names)


def remove(uri: str, recursive: bool = False, opts: StorageOptions | None = None) -> None:
    """Delete a file, or with ``recursive=True`` a whole folder/prefix."""
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is not _LOCAL_FS:
            fs.invalidate_cache(path)
        if not fs.exists(path):
            raise FileNotFoundError(path)
        if fs.isdir(path) and not recursive:
            raise StorageError(f"{uri} is a folder; pass recursive=True to delete it and its contents")
        fs.rm(path, recursive=recursive)
        if fs is not _LOCAL_FS:
            fs.invalidate_cache(path)


def _safe_rel(rel: str, where: str) -> str:
    # Object keys like "a/../b" must not write outside the target folder.
    try:
        join("x", rel)
    except StorageError as exc:
        raise StorageError(f"refusing to copy {rel!r} from {where}: {exc}") from None
    return rel


def upload_dir(local_dir: str, uri: str, opts: StorageOptions | None = None) -> list[str]:
    """Copy every file below ``local_dir`` to ``uri`` (a folder or S3 prefix).

    Returns the relative paths copied, sorted.
    """
    src = _local_path(local_dir)
    if not os.path.isdir(src):
        raise NotFoundError(f"not a local folder: {local_dir}")
    rels = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            rels.append(os.path.relpath(os.path.join(root, name), src).replace(os.sep, "/"))
    rels.sort()
    fs, dst = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is _LOCAL_FS:
            for rel in rels:
                target = os.path.join(dst, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.put_file(os.path.join(src, rel), target)
        elif rels:
            # Lists of paths make s3fs upload concurrently.
            fs.put([os.path.join(src, r) for r in rels], [f"{dst}/{r}" for r in rels])
            fs.invalidate_cache(dst)
    return rels


def download_dir(uri: str, local_dir: str, opts: StorageOptions | None = None) -> list[str]:
    """Copy every file below folder/prefix ``uri`` into ``local_dir`` (created if needed).

    Returns the relative paths copied, sorted. A missing or empty source is a
    :class:`NotFoundError`.
    """
    fs, src = get_fs(uri, opts)
    dst = _local_path(local_dir)
    with _translate(uri, opts):
        if fs is not _LOCAL_FS:
            fs.invalidate_cache(src)
        found = fs.find(src) if fs.isdir(src) else []
        if not found:
            raise FileNotFoundError(src)
        prefix = src.rstrip("/") + "/"
        rels = sorted(_safe_rel(f[len(prefix):] if f.startswith(prefix) else posixpath.basename(f), uri)
                      for f in found)
        for rel in rels:
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        if fs is _LOCAL_FS:
            for rel in rels:
                fs.get_file(prefix + rel, os.path.join(dst, rel))
        else:
            fs.get([prefix + r for r in rels], [os.path.join(dst, r) for r in rels])
    return rels


def open_uri(uri: str, mode: str = "rb", opts: StorageOptions | None = None) -> IO[Any]:
    """Open ``uri`` like :func:`open` (``rb``, ``wb``, ``r``, ``w``, ...).

    Local files opened for writing get their parent folders created. Unlike
    :func:`write_bytes`, writes through this handle are not atomic on local disk.
    """
    fs, path = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is _LOCAL_FS and any(c in mode for c in "wax"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        if fs is not _LOCAL_FS and "r" in mode:
            fs.invalidate_cache(path)
        kwargs: dict[str, Any] = {"encoding": "utf-8"} if "b" not in mode else {}
        return fs.open(path, mode, **kwargs)
