"""One place that turns a URI into bytes: plain paths, ``file://`` and ``s3://``.

Every helper takes ``opts: StorageOptions | None = None`` last. Unset options are filled
from the environment by :func:`resolve_options`; credentials always come from the standard
AWS chain (env vars, shared files, instance roles) and are never stored in a config.

Errors a user can cause come back typed:

* a missing file or object -> :class:`NotFoundError` (a ``FileNotFoundError``) naming the URI;
* an unreachable endpoint, missing credentials, denied access -> :class:`StorageError`
  naming the endpoint or URI and what to check;
* an endpoint that stays unreachable through every retry of a retried read ->
  :class:`StorageUnavailableError` naming the endpoint and the object.

Retries come in two layers. botocore retries every S3 call up to 3 times within a few
seconds (throttling, 5xx, dropped connections). Reads that a running epoch depends on (shard
reads, the pyarrow filesystem Ray Data reads through) add :class:`RetryPolicy`: exponential
backoff over tens of seconds, long enough to ride out an S3 server restart. Only transient
errors are retried (:func:`is_transient`); a missing object, denied access or corrupt data
fails at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import posixpath
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from polymodal.errors import PolymodalError, StorageError
from polymodal.schema import StorageOptions

__all__ = [
    "NotFoundError", "StorageUnavailableError", "RetryPolicy", "is_transient", "call_with_retry",
    "resolve_options", "is_s3", "get_fs", "to_pyarrow_fs", "join", "check_name",
    "read_bytes", "write_bytes", "read_text", "write_text", "exists", "makedirs", "listdir",
    "remove", "upload_dir", "download_dir", "open_uri", "clear_fs_cache",
]

_LOG = logging.getLogger(__name__)
T = TypeVar("T")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_NAME = 128


class NotFoundError(StorageError, FileNotFoundError):
    """A file or object does not exist. Catchable as ``FileNotFoundError`` or ``StorageError``."""


class StorageUnavailableError(StorageError):
    """The storage endpoint failed with transient errors through every attempt of a
    :class:`RetryPolicy`. ``endpoint`` and ``uri`` name the server and the object."""

    def __init__(self, message: str, *, endpoint: str, uri: str, attempts: int):
        super().__init__(message)
        self.endpoint = endpoint
        self.uri = uri
        self.attempts = attempts


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


def to_pyarrow_fs(uri: str, opts: StorageOptions | None = None, *,
                  retry: RetryPolicy | None = None) -> tuple[pafs.FileSystem, str]:
    """A picklable pyarrow filesystem and path for Ray Data / pyarrow readers.

    S3 goes through s3fs (``PyFileSystem(FSSpecHandler(...))``) so both stacks share one
    endpoint/credential setup; the path has no ``s3://`` because Ray requires a bare path
    whenever a filesystem object is given. With ``retry``, file listings, opens and every
    read of an opened S3 file are retried under that policy (the policy travels with the
    pickled filesystem to Ray workers).
    """
    uri = _check_uri(uri)
    if is_s3(uri):
        resolved = resolve_options(opts)
        fs = _s3_fs(resolved)
        if retry is None:
            return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), _s3_path(uri)
        endpoint = _endpoint_desc(uri, resolved)
        return pafs.PyFileSystem(_RetryingHandler(fs, endpoint, retry)), _s3_path(uri)
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


# --------------------------------------------------------------------------- retries

_ENV_ATTEMPTS = "POLYMODAL_S3_RETRY_ATTEMPTS"
_ENV_BASE = "POLYMODAL_S3_RETRY_BASE_S"
_ENV_MAX = "POLYMODAL_S3_RETRY_MAX_S"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for reads that must survive a storage outage.

    Attempt ``k`` (1-based) that fails with a transient error waits
    ``min(max_delay_s, base_delay_s * 2**(k-1))`` seconds, scaled by a random factor in
    [0.5, 1] so that many workers do not come back in lockstep, then tries again. The
    defaults (6 attempts, 1 s doubling, 8 s cap) wait 11.5-23 s in total; with botocore's
    own retries inside each attempt an outage of about 30 s is ridden out.
    :meth:`from_env` reads ``POLYMODAL_S3_RETRY_ATTEMPTS``, ``POLYMODAL_S3_RETRY_BASE_S``
    and ``POLYMODAL_S3_RETRY_MAX_S``.
    """

    attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise StorageError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        for name in ("base_delay_s", "max_delay_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise StorageError(f"retry {name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        """The defaults, overridden by the ``POLYMODAL_S3_RETRY_*`` variables that are set."""
        values: dict[str, Any] = {}
        for var, field, kind in ((_ENV_ATTEMPTS, "attempts", int), (_ENV_BASE, "base_delay_s", float),
                                 (_ENV_MAX, "max_delay_s", float)):
            raw = os.environ.get(var)
            if raw is None or not raw.strip():
                continue
            try:
                values[field] = kind(raw)
            except ValueError:
                raise StorageError(f"{var}={raw!r} is not a{'n integer' if kind is int else ' number'}; "
                                   f"unset it for the default ({getattr(cls, field)})") from None
        try:
            return cls(**values)
        except StorageError as exc:
            named = ", ".join(v for v in (_ENV_ATTEMPTS, _ENV_BASE, _ENV_MAX) if v in os.environ)
            raise StorageError(f"{exc} (from the environment: {named})") from None

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


# Error codes S3 and S3-compatible servers send for overload or a server-side fault.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "503",
})
_TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
})
# Never retried, wherever they sit in the chain: the object is missing or forbidden.
_TERMINAL = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _classify(exc: BaseException) -> bool | None:
    """True/False when ``exc`` alone decides transience, None to look at its cause."""
    if isinstance(exc, StorageUnavailableError):
        return False  # an inner loop already spent its budget; do not multiply it
    if isinstance(exc, _TERMINAL):
        return False
    try:
        import botocore.exceptions as bexc
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        bexc = None
    if bexc is not None:
        if isinstance(exc, bexc.ClientError):
            response = getattr(exc, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return code in _TRANSIENT_CODES or status == 429 or status >= 500
        if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)):
            return True
        if isinstance(exc, bexc.BotoCoreError):
            return False  # credentials, parameter validation, unknown endpoints
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        aiohttp = None
    if aiohttp is not None and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` (or what it was raised from) means "storage unreachable for now".

    Transient: refused/reset/closed connections, connect and read timeouts, HTTP 5xx and
    429, ``SlowDown``/``Throttling``/``ServiceUnavailable``. Not transient: missing objects
    (404/NoSuchKey), denied access, other 4xx, missing credentials, and anything that is not
    a storage error (a corrupt Parquet file, a bad schema).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify(current)
        if verdict is not None:
            return verdict
        # Explicit causes first; an implicit context only when it was not suppressed.
        current = current.__cause__ if current.__cause__ is not None else (
            None if current.__suppress_context__ else current.__context__)
    return False


_RETRY_RNG = random.Random()  # not the global RNG: training seeds that one


def _root_message(exc: BaseException) -> str:
    # Our own wrappers repeat hints the final error gives anyway; show what the backend said.
    while isinstance(exc, PolymodalError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


def call_with_retry(fn: Callable[[], T], *, uri: str, endpoint: str, policy: RetryPolicy,
                    what: str = "reading") -> T:
    """``fn()``, retried under ``policy`` while it fails with :func:`is_transient` errors.

    Other errors propagate at once. When the last attempt fails, raises
    :class:`StorageUnavailableError` naming ``endpoint`` and ``uri``, chained to the last error.
    """
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts:
                waited = time.monotonic() - started
                raise StorageUnavailableError(
                    f"S3 endpoint {endpoint} stayed unreachable while {what} {uri}: {policy.attempts} "
                    f"attempt(s) over {waited:.1f} s, last error: {_root_message(exc)}. Check that the "
                    "server is up and storage.endpoint_url / POLYMODAL_S3_ENDPOINT_URL; "
                    f"{_ENV_ATTEMPTS} and {_ENV_BASE} set the retry budget.",
                    endpoint=endpoint, uri=uri, attempts=policy.attempts) from exc
            pause = policy.delay(attempt, _RETRY_RNG)
            _LOG.warning("storage: %s %s at %s failed (attempt %d/%d: %s); retrying in %.1f s",
                         what, uri, endpoint, attempt, policy.attempts, _root_message(exc), pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class _RetryingReader:
    """A read-only fsspec file whose reads are retried; the file's position only moves on
    success, so a retried read returns the bytes the failed one would have."""

    def __init__(self, handle: Any, retry: Callable[[Callable[[], Any]], Any]):
        self._handle = handle
        self._retry = retry

    def read(self, length: int = -1) -> bytes:
        return self._retry(lambda: self._handle.read(length))

    def readinto(self, buffer: Any) -> int:
        data = self.read(memoryview(buffer).nbytes)
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        if name == "read_buffer":
            raise AttributeError(name)  # pyarrow would prefer it to read() and skip the retries
        return getattr(self._handle, name)


class _RetryingHandler(pafs.FSSpecHandler):
    """pyarrow filesystem handler over s3fs that retries listings, opens and reads."""

    def __init__(self, fs: fsspec.AbstractFileSystem, endpoint: str, policy: RetryPolicy):
        super().__init__(fs)
        self.endpoint = endpoint
        self.policy = policy

    def _retry(self, path: str, fn: Callable[[], T]) -> T:
        return call_with_retry(fn, uri=f"s3://{path}", endpoint=self.endpoint, policy=self.policy)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        parent = super()
        named = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
        return self._retry(named, lambda: parent.get_file_info(paths))

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        parent = super()
        return self._retry(selector.base_dir, lambda: parent.get_file_info_selector(selector))

    def _open(self, path: str) -> Any:
        import pyarrow as pa

        def open_file() -> Any:
            if not self.fs.isfile(path):
                raise FileNotFoundError(path)
            return self.fs.open(path, mode="rb")

        handle = self._retry(path, open_file)
        return pa.PythonFile(_RetryingReader(handle, lambda fn: self._retry(path, fn)), mode="r")

    def open_input_file(self, path: str) -> Any:
        return self._open(path)

    def open_input_stream(self, path: str) -> Any:
        return self._open(path)


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


def read_bytes(uri: str, opts: StorageOptions | None = None, *, retry: RetryPolicy | None = None) -> bytes:
    """Whole file/object as bytes.

    With ``retry``, transient S3 failures (see :func:`is_transient`) are retried under that
    policy and end in :class:`StorageUnavailableError`; without it, and for local files, a
    failure raises at once.
    """
    fs, path = get_fs(uri, opts)

    def read() -> bytes:
        with _translate(uri, opts):
            return fs.cat_file(path)

    if retry is None or fs is _LOCAL_FS:
        return read()
    return call_with_retry(read, uri=uri, endpoint=_endpoint_desc(uri, opts), policy=retry)


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


def _put_local(src_file: str, target: str) -> None:
    """Copy a file to ``target`` under a temporary name, then rename it into place."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex}")
    try:
        _LOCAL_FS.put_file(src_file, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_tree_local(src: str, dst: str, first: list[str], final: list[str]) -> None:
    if not os.path.lexists(dst):
        # A new folder appears whole or not at all: fill a hidden sibling, then rename it.
        parent, base = os.path.split(dst)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{base}.tmp-{uuid.uuid4().hex}")
        try:
            for rel in first + final:
                target = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _LOCAL_FS.put_file(os.path.join(src, rel), target)
            try:
                os.rename(tmp, dst)
                return
            except OSError:
                if not os.path.isdir(dst):
                    raise
                # another writer created dst meanwhile: merge into it file by file below
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for rel in final:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(dst, rel))
    for rel in first + final:
        _put_local(os.path.join(src, rel), os.path.join(dst, rel))


def upload_dir(local_dir: str, uri: str, opts: StorageOptions | None = None, *,
               last: Iterable[str] = ()) -> list[str]:
    """Copy every file below ``local_dir`` to ``uri`` (a folder or S3 prefix).

    Returns the relative paths copied, sorted.

    ``last`` names files (relative paths) whose presence marks the copy complete, such as a
    checkpoint's ``state.json``: their old copies at ``uri`` are deleted first and they are
    written only after every other file has arrived, so a reader that waits for them never
    sees a partial copy, on S3 as on disk. Locally, a new destination folder is filled under
    a hidden temporary name and renamed into place whole; into an existing folder each file
    is written under a temporary name and renamed.
    """
    src = _local_path(local_dir)
    if not os.path.isdir(src):
        raise NotFoundError(f"not a local folder: {local_dir}")
    rels = []
    for root, _dirs, files in os.walk(src):
        for name in files:
            rels.append(os.path.relpath(os.path.join(root, name), src).replace(os.sep, "/"))
    rels.sort()
    final = list(dict.fromkeys(last))
    missing = sorted(set(final) - set(rels))
    if missing:
        raise StorageError(f"{local_dir} has no {', '.join(missing)} to copy last; write the "
                           "marker file(s) into the folder before uploading it")
    first = [r for r in rels if r not in set(final)]
    fs, dst = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is _LOCAL_FS:
            _copy_tree_local(src, dst, first, final)
        elif rels:
            for rel in final:  # an old marker must not vouch for files being replaced
                fs.rm_file(f"{dst}/{rel}")
            if first:
                # Lists of paths make s3fs upload concurrently.
                fs.put([os.path.join(src, r) for r in first], [f"{dst}/{r}" for r in first])
            for rel in final:
                fs.put_file(os.path.join(src, rel), f"{dst}/{rel}")
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


def fingerprint(uri: str, opts: StorageOptions | None = None) -> str:
    """A digest of what is at ``uri`` now (a file or every file below a folder): relative paths,
    sizes and the store's version tags (S3 ETag and LastModified), from one listing, without reading
    the bytes. Equal fingerprints: the same objects; an object replaced under the same key changes it.
    A missing source is a :class:`NotFoundError`."""
    fs, src = get_fs(uri, opts)
    with _translate(uri, opts):
        if fs is not _LOCAL_FS:
            fs.invalidate_cache(src)
        found = fs.find(src, detail=True) if fs.isdir(src) else {src: fs.info(src)}
        if not found:
            raise FileNotFoundError(src)
    prefix = src.rstrip("/") + "/"
    digest = hashlib.sha1()
    for path in sorted(found):
        info = found[path]
        tag = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        digest.update(f"{path[len(prefix):] if path.startswith(prefix) else ''}\0{info.get('size')}\0{tag}\n".encode())
    return digest.hexdigest()


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
