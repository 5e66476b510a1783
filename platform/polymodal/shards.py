"""The dataset format: a folder (local or ``s3://``) of Parquet shards plus ``manifest.json``.

::

    <dataset>/part-00000.parquet
    <dataset>/part-00001.parquet
    <dataset>/manifest.json        # written last: task, split, columns, shards (+ sha256)

Columns are declared by :class:`ColumnSpec` (dtype + per-row shape) and stored so that
pyarrow and Ray Data read them without Python loops:

===============================  ==============================================
per-row shape                    arrow type
===============================  ==============================================
``[]`` (scalar)                  ``dtype``
``[d0, d1, ...]`` (fixed)        ``fixed_size_list<dtype>[d0*d1*...]`` (C order)
``[-1]`` (variable)              ``list<dtype>``
``[-1, d1, ...]`` (variable)     ``list<fixed_size_list<dtype>[d1*...]>``
string / binary                  ``string`` / ``binary`` (scalar only)
===============================  ==============================================
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polymodal import storage as st
from polymodal.config import StorageOptions
from polymodal.errors import ShardError, StorageError

__all__ = [
    "SCHEMA_VERSION", "MANIFEST_NAME", "ColumnSpec", "ShardInfo", "Manifest", "ShardWriter",
    "table_to_numpy", "open_dataset", "iter_local_batches", "shard_uris", "ray_dataset", "describe",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LEN_SUFFIX = "__len"

DType = Literal["float32", "float16", "float64", "int64", "int32", "uint8", "bool", "string", "binary"]

_ARROW_SCALAR: dict[str, pa.DataType] = {
    "float32": pa.float32(), "float16": pa.float16(), "float64": pa.float64(),
    "int64": pa.int64(), "int32": pa.int32(), "uint8": pa.uint8(), "bool": pa.bool_(),
    "string": pa.string(), "binary": pa.binary(),
}
_HINT_CREATE = "create one with `polymodal data synth` or `polymodal data import`"


# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ColumnSpec(_Strict):
    """Dtype and per-row shape of one column.

    ``shape=[]`` is a scalar per row; ``[3, 4]`` a fixed 3x4 tensor; a leading ``-1``
    (``[-1, 4]``) a variable number of fixed-shape items along the first axis.
    """

    dtype: DType
    shape: list[int] = Field(default_factory=list)

    @field_validator("shape", mode="before")
    @classmethod
    def _tuple_to_list(cls, v: Any) -> Any:
        # Strict mode rejects tuples and numpy ints; shapes commonly arrive as either.
        if isinstance(v, (tuple, np.ndarray)):
            v = list(v)
        if isinstance(v, list):
            v = [int(d) if isinstance(d, np.integer) else d for d in v]
        return v

    @model_validator(mode="after")
    def _check_shape(self) -> "ColumnSpec":
        for i, d in enumerate(self.shape):
            if d == -1 and i == 0:
                continue
            if d < 1:
                raise ValueError(f"shape {self.shape}: dimension {i} must be >= 1 "
                                 "(only the first dimension may be -1, meaning variable length)")
        if self.dtype in ("string", "binary") and self.shape:
            raise ValueError(f"{self.dtype} columns are scalar per row; use shape [] (got {self.shape})")
        return self

    @property
    def variable(self) -> bool:
        """True when the first axis has variable length."""
        return bool(self.shape) and self.shape[0] == -1

    @property
    def fixed_size(self) -> bool:
        """True when every row holds the same number of bytes: numeric, not variable-length."""
        return self.dtype not in ("string", "binary") and not self.variable

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Fixed trailing shape: ``shape`` for fixed columns, ``shape[1:]`` for variable ones."""
        return tuple(self.shape[1:]) if self.variable else tuple(self.shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype in ("string", "binary") else np.dtype(self.dtype)

    def arrow_type(self) -> pa.DataType:
        """The arrow type this column is stored as (see the module table)."""
        t = _ARROW_SCALAR[self.dtype]
        item = self.item_shape
        if item:
            t = pa.list_(t, math.prod(item))  # list_ with a size -> fixed_size_list
        if self.variable:
            t = pa.list_(t)
        return t

    def describe(self) -> str:
        if not self.shape:
            return self.dtype
        dims = ", ".join("N" if d == -1 else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


class ShardInfo(_Strict):
    """One Parquet file of a dataset."""

    path: str = Field(..., description="file name relative to the dataset folder")
    rows: int = Field(..., ge=0)
    bytes: int = Field(..., ge=0)
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        # A manifest must never point outside its own folder.
        try:
            st.join("dataset", v)
        except StorageError as exc:
            raise ValueError(str(exc)) from None
        return v


class Manifest(_Strict):
    """``manifest.json``: what a dataset holds and which shards hold it."""

    schema_version: int = SCHEMA_VERSION
    task: str
    split: str
    columns: dict[str, ColumnSpec]
    shards: list[ShardInfo]
    num_rows: int = Field(..., ge=0)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not supported (expected {SCHEMA_VERSION})")
        if not self.columns:
            raise ValueError("a dataset needs at least one column")
        for name in self.columns:
            _check_column_name(name)
        total = sum(s.rows for s in self.shards)
        if total != self.num_rows:
            raise ValueError(f"num_rows is {self.num_rows} but the shards hold {total} rows")
        paths = [s.path for s in self.shards]
        if len(set(paths)) != len(paths):
            raise ValueError("a shard path is listed twice")
        return self

    @staticmethod
    def uri_of(uri: str) -> str:
        """Manifest file URI for a dataset folder (or the URI itself if it names a .json)."""
        return uri if uri.rstrip("/").endswith(".json") else st.join(uri.rstrip("/") or uri, MANIFEST_NAME)

    @classmethod
    def load(cls, uri: str, opts: StorageOptions | None = None) -> "Manifest":
        """Read and validate the manifest of dataset folder ``uri``."""
        muri = cls.uri_of(uri)
        try:
            text = st.read_text(muri, opts)
        except FileNotFoundError:
            raise ShardError(f"no {MANIFEST_NAME} at {muri}; this is not a dataset folder ({_HINT_CREATE})") from None
        except StorageError as exc:
            raise ShardError(f"cannot read {muri}: {exc}") from exc
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ShardError(f"manifest {muri} is not valid JSON ({exc}); re-create the dataset") from None
        if not isinstance(raw, dict):
            raise ShardError(f"manifest {muri} must hold a JSON object, got {type(raw).__name__}")
        version = raw.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ShardError(
                f"manifest {muri} has schema_version {version!r}, this polymodal reads {SCHEMA_VERSION}; "
                "re-create the dataset or use a matching polymodal version")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
            raise ShardError(f"manifest {muri} is invalid: {problems}") from None

    def save(self, uri: str, opts: StorageOptions | None = None) -> str:
        """Write ``manifest.json`` into dataset folder ``uri`` (atomically on local disk)."""
        muri = self.uri_of(uri)
        try:
            text = json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ShardError(f"manifest meta for {muri} is not JSON-serialisable: {exc}; "
                             "use plain str/int/float/bool/list/dict values") from None
        st.write_text(muri, text + "\n", opts)
        return muri


def _check_column_name(name: str) -> None:
    if not isinstance(name, str) or not name or name.endswith(LEN_SUFFIX):
        raise ShardError(f"invalid column name {name!r}: use a non-empty name that does not end in "
                         f"{LEN_SUFFIX!r} (that suffix holds lengths of variable-length columns)", column=str(name))


def _coerce_columns(columns: Mapping[str, ColumnSpec | Mapping[str, Any]]) -> dict[str, ColumnSpec]:
    out: dict[str, ColumnSpec] = {}
    for name, spec in columns.items():
        _check_column_name(name)
        if isinstance(spec, ColumnSpec):
            out[name] = spec
            continue
        try:
            out[name] = ColumnSpec.model_validate(dict(spec))
        except (ValidationError, TypeError, ValueError) as exc:
            raise ShardError(f"bad column spec {spec!r}: {exc}", column=name) from None
    if not out:
        raise ShardError("a dataset needs at least one column")
    return out


def _arrow_schema(columns: dict[str, ColumnSpec]) -> pa.Schema:
    return pa.schema([pa.field(n, s.arrow_type(), nullable=False) for n, s in columns.items()])


# --------------------------------------------------------------------------- numpy -> arrow


def _cast_numeric(arr: np.ndarray, spec: ColumnSpec, name: str) -> np.ndarray:
    """Cast ``arr`` to the column dtype, refusing casts that change values."""
    dst = np.dtype(spec.dtype)
    src = arr.dtype
    if src == dst:
        return arr
    bad = ShardError(
        f"cannot store {src} values in a {dst} column without losing information; "
        f"convert explicitly (e.g. .round().astype('{dst}')) or declare the column as {src}", column=name)
    if src.kind not in "biuf":
        raise ShardError(f"expected numeric {dst} values, got array of {src}", column=name)
    if dst.kind == "b":
        raise bad
    if dst.kind in "iu":
        if src.kind == "f":
            raise bad
        if arr.size and src.kind != "b":
            info = np.iinfo(dst)
            lo, hi = arr.min(), arr.max()
            if lo < info.min or hi > info.max:
                raise ShardError(f"values range {lo}..{hi} does not fit {dst} "
                                 f"({info.min}..{info.max}); declare a wider dtype", column=name)
        return arr.astype(dst)
    # float destination
    out = arr.astype(dst)
    if src.kind in "iu":
        # Large integers are not exact in float16/float32; silently rounding labels or ids
        # would be a data bug, so require an exact round trip.
        if not np.array_equal(out.astype(src), arr):
            raise bad
    elif src.kind == "f" and dst.itemsize < src.itemsize:
        # Narrowing floats rounds (accepted, that is the point) but must not overflow to inf.
        if np.count_nonzero(np.isinf(out)) != np.count_nonzero(np.isinf(arr)):
            raise ShardError(f"values overflow {dst} (become inf); declare the column as {src}", column=name)
    return out


def _fixed_array(arr: np.ndarray, spec: ColumnSpec, name: str) -> pa.Array:
    """(rows, *item_shape) numpy -> scalar or fixed_size_list arrow array."""
    want = spec.item_shape
    if arr.shape[1:] != want:
        raise ShardError(f"expected per-row shape {list(want)}, got {list(arr.shape[1:])} "
                         f"(array shape {list(arr.shape)}, rows first)", column=name)
    arr = _cast_numeric(arr, spec, name)
    flat = pa.array(np.ascontiguousarray(arr).reshape(-1), type=_ARROW_SCALAR[spec.dtype])
    if not want:
        return flat
    return pa.FixedSizeListArray.from_arrays(flat, math.prod(want))


def _variable_array(value: Any, spec: ColumnSpec, name: str, lengths: Any | None) -> pa.Array:
    """Ragged rows -> ``list<...>`` arrow array.

    ``value`` is a sequence of per-row arrays shaped (len_i, *rest), or, when ``lengths`` is
    given, a padded (rows, max_len, *rest) array as :func:`table_to_numpy` returns it.
    """
    rest = spec.item_shape
    if lengths is not None:
        padded = np.asarray(value)
        lens = np.asarray(lengths)
        if lens.ndim != 1 or lens.dtype.kind not in "iu":
            raise ShardError(f"{name}{LEN_SUFFIX} must be a 1-D integer array", column=name)
        if padded.ndim != 2 + len(rest) or padded.shape[2:] != rest or padded.shape[0] != lens.shape[0]:
            raise ShardError(f"padded array must be (rows={lens.shape[0]}, max_len, *{list(rest)}), "
                             f"got {list(padded.shape)}", column=name)
        if lens.size and (lens.min() < 0 or lens.max() > padded.shape[1]):
            raise ShardError(f"{name}{LEN_SUFFIX} values must lie in 0..{padded.shape[1]}", column=name)
        mask = np.arange(padded.shape[1])[None, :] < lens[:, None]
        flat_items = padded[mask]  # (total, *rest), row-major keeps row order
        lens = lens.astype(np.int64)
    else:
        if isinstance(value, np.ndarray) and value.dtype != object:
            raise ShardError(f"variable-length column needs a list of per-row arrays shaped (len, *{list(rest)}) "
                             f"or a padded array plus '{name}{LEN_SUFFIX}'; got one array of shape {list(value.shape)}",
                             column=name)
        rows = [np.asarray(r) for r in value]
        for i, r in enumerate(rows):
            if r.ndim != 1 + len(rest) or r.shape[1:] != rest:
                raise ShardError(f"row {i}: expected per-row shape [-1, *{list(rest)}] i.e. (len, "
                                 f"{', '.join(map(str, rest))}), got {list(r.shape)}", column=name)
        lens = np.fromiter((r.shape[0] for r in rows), dtype=np.int64, count=len(rows))
        if rows:
            flat_items = np.concatenate([r.reshape((r.shape[0], *rest)) for r in rows], axis=0)
        else:
            flat_items = np.zeros((0, *rest), dtype=spec.numpy_dtype)
    if flat_items.dtype.kind == "O":
        raise ShardError("rows must be numeric arrays, got Python objects", column=name)
    items = _fixed_array(flat_items, spec.model_copy(update={"shape": list(rest)}), name)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise ShardError("more than 2**31 items in one write/shard; lower rows_per_shard", column=name)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), items)


def _text_array(value: Any, spec: ColumnSpec, name: str) -> pa.Array:
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ShardError(f"expected a 1-D array of {spec.dtype} (one per row), got shape {list(value.shape)}",
                             column=name)
        value = value.tolist()
    try:
        return pa.array(list(value), type=_ARROW_SCALAR[spec.dtype])
    except (pa.ArrowException, TypeError) as exc:
        py = "str" if spec.dtype == "string" else "bytes"
        raise ShardError(f"expected one {py} per row: {exc}", column=name) from None


def _batch_to_table(batch: Mapping[str, Any], columns: dict[str, ColumnSpec]) -> pa.Table:
    """Validate one user batch and convert it to an arrow table in column order."""
    if not isinstance(batch, Mapping):
        raise ShardError(f"write() takes a dict of column -> array, got {type(batch).__name__}")
    len_keys = {f"{n}{LEN_SUFFIX}" for n, s in columns.items() if s.variable}
    for key in batch:
        if key not in columns and key not in len_keys:
            raise ShardError(f"unknown column; the dataset declares {sorted(columns)}", column=str(key))
    arrays: dict[str, pa.Array] = {}
    for name, spec in columns.items():
        if name not in batch:
            raise ShardError(f"missing from the batch; every write must hold all of {sorted(columns)}",
                             column=name)
        value = batch[name]
        if spec.dtype in ("string", "binary"):
            arrays[name] = _text_array(value, spec, name)
        elif spec.variable:
            arrays[name] = _variable_array(value, spec, name, batch.get(f"{name}{LEN_SUFFIX}"))
        else:
            arr = np.asarray(value)
            if arr.ndim == 0:
                raise ShardError("expected an array with rows on the first axis, got a scalar", column=name)
            arrays[name] = _fixed_array(arr, spec, name)
    counts = {n: len(a) for n, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise ShardError(f"columns have different row counts {counts}; every column needs one entry per row")
    return pa.Table.from_arrays(list(arrays.values()), schema=_arrow_schema(columns))


# --------------------------------------------------------------------------- writer


def _shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class ShardWriter:
    """Write a dataset: buffered rows -> ``part-NNNNN.parquet`` shards -> ``manifest.json``.

    Any existing ``manifest.json`` in the folder is removed first and the new one is written
    by :meth:`close` after every shard, so readers never see a manifest listing shards that
    are missing or from another run. Leaving the ``with`` block on an exception writes no
    manifest.

    Parameters
    ----------
    uri
        Dataset folder (local path, ``file://`` or ``s3://``).
    columns
        Column name -> :class:`ColumnSpec` (or a dict like ``{"dtype": "float32", "shape": [3]}``).
    rows_per_shard
        Rows per Parquet file; the last shard may be shorter.
    progress
        Show a tqdm bar counting rows; a string sets its description.
    shards
        Shards already in the folder from an interrupted run of the same import (their
        :class:`ShardInfo` as :attr:`shards` listed them then): they are kept and new shards
        are numbered after them, so a resumed import writes only what is left.
    """

    def __init__(self, uri: str, *, task: str, split: str,
                 columns: Mapping[str, ColumnSpec | Mapping[str, Any]], rows_per_shard: int = 4096,
                 meta: dict[str, Any] | None = None, opts: StorageOptions | None = None,
                 progress: bool | str = True, shards: Sequence[ShardInfo] = ()) -> None:
        if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
            raise ShardError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
        self.uri = uri.rstrip("/") or uri
        self.task = task
        self.split = split
        self.columns = _coerce_columns(columns)
        self.rows_per_shard = rows_per_shard
        self.meta = dict(meta or {})
        self.opts = opts
        self._schema = _arrow_schema(self.columns)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._shards: list[ShardInfo] = [s if isinstance(s, ShardInfo) else ShardInfo(**s) for s in shards]
        self._manifest: Manifest | None = None
        self._closed = False
        muri = Manifest.uri_of(self.uri)
        if st.exists(muri, opts):
            st.remove(muri, opts=opts)
        st.makedirs(self.uri, opts)
        self._bar = None
        if progress:
            from polymodal.progress import bar

            desc = progress if isinstance(progress, str) else f"{split} -> {self.uri}"
            self._bar = bar(desc=desc, unit="rows")

    @property
    def rows_written(self) -> int:
        """Rows accepted so far (flushed or buffered)."""
        return sum(s.rows for s in self._shards) + self._pending_rows

    def write(self, batch: Mapping[str, np.ndarray | Sequence[Any]]) -> None:
        """Append rows. ``batch`` maps every column to an array with rows on the first axis.

        Variable-length columns take a list of per-row arrays ``(len_i, *rest)``, or a padded
        ``(rows, max_len, *rest)`` array plus ``"<name>__len"`` lengths.
        """
        if self._closed:
            raise ShardError(f"writer for {self.uri} is closed; open a new ShardWriter")
        table = _batch_to_table(batch, self.columns)
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._bar is not None:
            self._bar.update(table.num_rows)
        while self._pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    @property
    def shards(self) -> list[ShardInfo]:
        """The shards written so far (flushed; buffered rows are not in any yet)."""
        return list(self._shards)

    def flush(self) -> None:
        """Write the buffered rows as a shard now, even if fewer than ``rows_per_shard``: an
        importer cuts shards at its own checkpoints so that a rerun can resume after them."""
        if self._closed:
            raise ShardError(f"writer for {self.uri} is closed; open a new ShardWriter")
        if self._pending_rows:
            self._flush(self._pending_rows)

    def _flush(self, rows: int) -> None:
        buffered = pa.concat_tables(self._pending)
        head, tail = buffered.slice(0, rows), buffered.slice(rows)
        self._pending = [tail] if tail.num_rows else []
        self._pending_rows = tail.num_rows
        sink = io.BytesIO()
        pq.write_table(head, sink, compression="zstd")
        data = sink.getvalue()
        name = _shard_name(len(self._shards))
        st.write_bytes(st.join(self.uri, name), data, self.opts)
        self._shards.append(ShardInfo(path=name, rows=head.num_rows, bytes=len(data),
                                      sha256=hashlib.sha256(data).hexdigest()))

    def close(self) -> Manifest:
        """Flush the last shard, drop stale shards of an earlier run, write the manifest."""
        if self._manifest is not None:
            return self._manifest
        self._closed = True
        try:
            if self._pending_rows:
                self._flush(self._pending_rows)
            self._remove_stale_shards()
            manifest = Manifest(task=self.task, split=self.split, columns=self.columns,
                                shards=self._shards, num_rows=sum(s.rows for s in self._shards),
                                meta=self.meta)
            manifest.save(self.uri, self.opts)
            self._manifest = manifest
            return manifest
        finally:
            self._close_bar()

    def _remove_stale_shards(self) -> None:
        keep = {s.path for s in self._shards}
        try:
            names = st.listdir(self.uri, self.opts)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith("part-") and name.endswith(".parquet") and name not in keep:
                st.remove(st.join(self.uri, name), opts=self.opts)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            # No manifest: a half-written dataset must not look complete.
            self._closed = True
            self._close_bar()


# --------------------------------------------------------------------------- arrow -> numpy

_EQUIV = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}


def _normalise_type(t: pa.DataType) -> pa.DataType:
    # Readers (Ray, other writers) may hand back large_* variants; the values are the same.
    if pa.types.is_large_list(t):
        return pa.list_(_normalise_type(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_normalise_type(t.value_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_normalise_type(t.value_type), t.list_size)
    return _EQUIV.get(t, t)


def _flat_values(arr: pa.Array, spec: ColumnSpec, shard: str | None, name: str) -> np.ndarray:
    """Scalar arrow array -> numpy of the column dtype, no Python loop."""
    out = arr.to_numpy(zero_copy_only=False)
    if out.dtype != spec.numpy_dtype:
        raise ShardError(f"values decoded as {out.dtype}, expected {spec.numpy_dtype}", shard=shard, column=name)
    return out


def table_to_numpy(table: pa.Table, columns: Mapping[str, ColumnSpec], *,
                   shard: str | None = None) -> dict[str, np.ndarray]:
    """Arrow table -> ``{column: (rows, *shape) array}`` per the manifest columns.

    Variable-length columns come back zero-padded to ``(rows, max_len, *rest)`` with an
    extra int64 ``"<name>__len"`` array of shape (rows,). String/binary columns are object
    arrays of str/bytes. Extra table columns are ignored.
    """
    rows = table.num_rows
    out: dict[str, np.ndarray] = {}
    for name, spec in columns.items():
        if name not in table.column_names:
            raise ShardError(f"missing; the table has {table.column_names}", shard=shard, column=name)
        arr = table.column(name).combine_chunks()
        want = spec.arrow_type()
        if _normalise_type(arr.type) != want:
            raise ShardError(f"has arrow type {arr.type}, the manifest declares {spec.describe()} "
                             f"stored as {want}; re-create the shard", shard=shard, column=name)
        if arr.null_count:
            raise ShardError(f"holds {arr.null_count} null values; polymodal shards have none",
                             shard=shard, column=name)
        item = spec.item_shape
        per_item = math.prod(item)
        if spec.dtype in ("string", "binary"):
            out[name] = arr.to_numpy(zero_copy_only=False)
        elif not spec.variable:
            flat = _flat_values(arr.flatten() if item else arr, spec, shard, name)
            if flat.size != rows * per_item:
                raise ShardError(f"holds {flat.size} values for {rows} rows of shape {list(item)} "
                                 f"(expected {rows * per_item})", shard=shard, column=name)
            out[name] = flat.reshape((rows, *item))
        else:
            offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
            lens = np.diff(offsets)
            inner = arr.flatten()  # items of the sliced rows only
            flat = _flat_values(inner.flatten() if item else inner, spec, shard, name)
            total = int(lens.sum())
            if flat.size != total * per_item:
                raise ShardError(f"holds {flat.size} values for {total} items of shape {list(item)} "
                                 f"(expected {total * per_item})", shard=shard, column=name)
            max_len = int(lens.max()) if rows else 0
            padded = np.zeros((rows, max_len, *item), dtype=spec.numpy_dtype)
            mask = np.arange(max_len)[None, :] < lens[:, None]
            padded[mask] = flat.reshape((total, *item))
            out[name] = padded
            out[f"{name}{LEN_SUFFIX}"] = lens
    return out


# --------------------------------------------------------------------------- opening / checking


def shard_uris(manifest: Manifest, dataset_uri: str) -> list[str]:
    """Full URIs of the manifest's shards, in manifest order."""
    base = dataset_uri.rstrip("/") or dataset_uri
    return [st.join(base, s.path) for s in manifest.shards]


def _check_shard(uri: str, info: ShardInfo, columns: dict[str, ColumnSpec], verify: str,
                 opts: StorageOptions | None) -> None:
    fs, path = st.get_fs(uri, opts)
    try:
        size = fs.info(path)["size"]
    except FileNotFoundError:
        raise ShardError(f"listed in {MANIFEST_NAME} but missing; re-create the dataset ({_HINT_CREATE})",
                         shard=uri) from None
    except Exception as exc:
        raise ShardError(f"cannot stat: {exc}", shard=uri) from exc
    if size != info.bytes:
        raise ShardError(f"is {size} bytes but {MANIFEST_NAME} records {info.bytes} "
                         "(truncated or overwritten); re-create the dataset", shard=uri)
    try:
        # "none": fetch only the footer ranges, not s3fs's default multi-MB read-ahead block.
        with fs.open(path, "rb", cache_type="none") as f:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
            rows = pf.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ShardError(f"is not a readable Parquet file ({exc}); re-create the dataset", shard=uri) from None
    for name, spec in columns.items():
        idx = schema.get_field_index(name)
        if idx < 0:
            raise ShardError(f"missing from the Parquet file (it has {schema.names})", shard=uri, column=name)
        got = schema.field(idx).type
        if _normalise_type(got) != spec.arrow_type():
            raise ShardError(f"has arrow type {got}, the manifest declares {spec.describe()} stored as "
                             f"{spec.arrow_type()}", shard=uri, column=name)
    if rows != info.rows:
        raise ShardError(f"holds {rows} rows but {MANIFEST_NAME} records {info.rows}", shard=uri)
    if verify == "checksum":
        try:
            digest = hashlib.sha256(st.read_bytes(uri, opts)).hexdigest()
        except StorageError as exc:
            raise ShardError(f"cannot read: {exc}", shard=uri) from exc
        if digest != info.sha256:
            raise ShardError(f"sha256 {digest} does not match {MANIFEST_NAME} ({info.sha256}); "
                             "the file is corrupt, re-create the dataset", shard=uri)


def open_dataset(uri: str, opts: StorageOptions | None = None,
                 verify: Literal["footer", "checksum"] = "footer") -> Manifest:
    """Load the manifest and check every shard before anything trains on it.

    ``footer``: each shard exists with the recorded size and its Parquet footer has the
    manifest's columns, arrow types and row count. ``checksum``: also its sha256.
    The first problem (in shard order) raises one :class:`ShardError` naming the shard.
    """
    if verify not in ("footer", "checksum"):
        raise ShardError(f"verify must be 'footer' or 'checksum', got {verify!r}")
    manifest = Manifest.load(uri, opts)
    uris = shard_uris(manifest, uri)
    if not uris:
        return manifest
    # Footers are tiny; on S3 the cost is round trips, so overlap them.
    workers = min(16, len(uris)) if st.is_s3(uri) else min(4, len(uris))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_check_shard, u, info, manifest.columns, verify, opts)
                   for u, info in zip(uris, manifest.shards)]
        for fut in futures:
            fut.result()  # raises the first failing shard in manifest order
    return manifest


# --------------------------------------------------------------------------- local reader


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) % (2**64) for k in keys]))


def _read_shard(uri: str, columns: dict[str, ColumnSpec], opts: StorageOptions | None,
                retry: st.RetryPolicy) -> pa.Table:
    try:
        data = st.read_bytes(uri, opts, retry=retry)  # one GET per shard on S3
    except FileNotFoundError:
        raise ShardError(f"listed in {MANIFEST_NAME} but missing ({_HINT_CREATE})", shard=uri) from None
    except st.StorageUnavailableError:
        raise  # already names the endpoint and this shard; its type tells callers to retry later
    except StorageError as exc:
        raise ShardError(f"cannot read: {exc}", shard=uri) from exc
    try:
        table = pq.read_table(pa.BufferReader(data), columns=list(columns))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ShardError(f"is not a readable Parquet file ({exc}); re-create the dataset", shard=uri) from None
    # Check types here, where the shard is known: later batches mix rows of several shards.
    for name, spec in columns.items():
        if name not in table.column_names:
            raise ShardError(f"missing from the Parquet file (it has {table.column_names})", shard=uri, column=name)
        got = table.schema.field(name).type
        if _normalise_type(got) != spec.arrow_type():
            raise ShardError(f"has arrow type {got}, the manifest declares {spec.describe()} stored as "
                             f"{spec.arrow_type()}", shard=uri, column=name)
    return table


def iter_local_batches(uri: str, batch_size: int, *, manifest: Manifest | None = None, epoch: int = 0,
                       seed: int = 0, shuffle: bool = True, shuffle_buffer: int = 256, rank: int = 0,
                       world_size: int = 1, drop_last: bool = False, opts: StorageOptions | None = None,
                       retry: st.RetryPolicy | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream numpy batches with pure pyarrow (no Ray), one shard in memory at a time.

    Shard order is shuffled per epoch from (seed, epoch), identically on every rank; rank
    ``r`` reads ``files[r::world_size]``, or, with fewer files than ranks, its contiguous
    row slice of every file. Rows of each shard are shuffled together with a carried-over
    buffer of ``shuffle_buffer`` rows (seeded by seed, epoch, rank), so rows also mix across
    shard boundaries. Batches come from :func:`table_to_numpy`.

    Each shard is one GET, retried under ``retry`` (default :meth:`RetryPolicy.from_env`)
    while S3 is unreachable, so an epoch survives a storage restart and yields every row
    once; an outage longer than the budget raises :class:`~polymodal.storage.StorageUnavailableError`
    naming the endpoint and the shard. A missing or corrupt shard raises :class:`ShardError` at once.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    manifest = manifest or Manifest.load(uri, opts)
    retry = retry or st.RetryPolicy.from_env()
    uris = shard_uris(manifest, uri)
    order = _rng(seed, epoch).permutation(len(uris)) if shuffle else np.arange(len(uris))
    split_rows = len(uris) < world_size
    mine = order if split_rows else order[rank::world_size]
    row_rng = _rng(seed, epoch, rank)

    def ordered_tables() -> Iterator[pa.Table]:
        pool: pa.Table | None = None
        for i in mine:
            table = _read_shard(uris[i], manifest.columns, opts, retry)
            if split_rows:
                lo = table.num_rows * rank // world_size
                hi = table.num_rows * (rank + 1) // world_size
                table = table.slice(lo, hi - lo)
            if not shuffle:
                yield table
                continue
            merged = table if pool is None else pa.concat_tables([pool, table])
            perm = row_rng.permutation(merged.num_rows)
            keep = min(shuffle_buffer, merged.num_rows)
            emit = merged.num_rows - keep
            if emit:
                yield merged.take(pa.array(perm[:emit]))
            pool = merged.take(pa.array(perm[emit:])) if keep else None
        if pool is not None and pool.num_rows:
            yield pool.take(pa.array(row_rng.permutation(pool.num_rows)))

    if not any(spec.variable for spec in manifest.columns.values()):
        yield from _sliced_batches(ordered_tables(), manifest.columns, batch_size, drop_last)
        return
    # variable-length columns are padded to each batch's longest row: each batch converted on its own
    pending: list[pa.Table] = []
    pending_rows = 0
    for table in ordered_tables():
        pending.append(table)
        pending_rows += table.num_rows
        if pending_rows < batch_size:
            continue
        merged = pa.concat_tables(pending)
        start = 0
        while merged.num_rows - start >= batch_size:
            yield table_to_numpy(merged.slice(start, batch_size), manifest.columns)
            start += batch_size
        rest = merged.slice(start)
        pending = [rest] if rest.num_rows else []
        pending_rows = rest.num_rows
    if pending_rows and not drop_last:
        yield table_to_numpy(pa.concat_tables(pending), manifest.columns)


def _sliced_batches(tables: Iterator[pa.Table], columns: Mapping[str, ColumnSpec], batch_size: int,
                    drop_last: bool) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``batch_size`` rows over ``tables`` in order, each table converted whole by
    :func:`table_to_numpy` and sliced; a batch across two tables joins the end of one and the start
    of the next. The same arrays as converting each batch's rows, for columns whose conversion is
    row by row (fixed-shape, string, binary), in a call per table instead of per batch: the
    read-ahead thread's CPU went from 0.30 to 0.135 ms a batch (most of it now the shard's Parquet
    decode), beside a training thread whose forward ran 1-2 ms slower next to the per-batch
    conversion (bench/RESULTS.md, 2026-12-07)."""
    rest: dict[str, np.ndarray] | None = None
    for table in tables:
        cols, n, start = table_to_numpy(table, columns), table.num_rows, 0
        if rest is not None:
            short = batch_size - len(next(iter(rest.values())))
            if n < short:
                rest = {k: np.concatenate([rest[k], v]) for k, v in cols.items()}
                continue
            yield {k: np.concatenate([rest[k], v[:short]]) for k, v in cols.items()}
            rest, start = None, short
        while n - start >= batch_size:
            yield {k: v[start:start + batch_size] for k, v in cols.items()}
            start += batch_size
        if start < n:
            rest = {k: v[start:] for k, v in cols.items()}
    if rest is not None and not drop_last:
        yield rest


# --------------------------------------------------------------------------- Ray Data


def first_rows(uri: str, n: int = 1, opts: StorageOptions | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` rows of a dataset, in stored order, as numpy columns."""
    return next(iter_local_batches(uri, n, shuffle=False, shuffle_buffer=0, opts=opts))


def _estimated_block_bytes(info: ShardInfo, columns: Mapping[str, ColumnSpec]) -> int:
    """Decoded (arrow) bytes of a shard: exact for fixed-shape numeric columns, the file size
    for the rest (variable and string columns are rarely compressed much further)."""
    fixed = 0
    for spec in columns.values():
        if not spec.fixed_size:
            return max(info.bytes, fixed)
        fixed += info.rows * math.prod(spec.item_shape) * spec.numpy_dtype.itemsize
    return max(fixed, 1)


def _read_shards(uris: list[str], columns: dict[str, ColumnSpec], opts: StorageOptions,
                 retry: st.RetryPolicy, threads: int = 1) -> Iterator[pa.Table]:
    """A Ray read task's body: each shard read whole (retried), decoded, checked, as one block,
    in the given order. With ``threads`` > 1 the next shards are fetched and decoded on threads
    while the current block is handed over (the GET and the decode release the GIL): one task
    keeps more than one core busy, at most ``threads`` decoded shards ahead of its output."""
    if threads <= 1 or len(uris) <= 1:
        for uri in uris:
            yield _read_shard(uri, columns, opts, retry)
        return
    pool = ThreadPoolExecutor(min(threads, len(uris)), thread_name_prefix="polymodal-read")
    try:
        ahead = [pool.submit(_read_shard, u, columns, opts, retry) for u in uris[:threads]]
        for uri in uris[threads:]:
            table = ahead.pop(0).result()
            ahead.append(pool.submit(_read_shard, uri, columns, opts, retry))
            yield table
        for fut in ahead:
            yield fut.result()
    finally:  # a consumer that stops early (or an error) leaves at most the in-flight reads
        pool.shutdown(wait=True, cancel_futures=True)


def _manifest_datasource(uri: str, manifest: Manifest, opts: StorageOptions, seed: int, shuffle: bool,
                         retry: st.RetryPolicy, read_threads: int = 1) -> Any:
    """A ``ray.data.Datasource`` whose read tasks are the manifest's shards (see :func:`ray_dataset`)."""
    import ray.data
    from ray.data.block import BlockMetadata

    uris = shard_uris(manifest, uri)
    columns = manifest.columns
    schema = _arrow_schema(columns)
    sizes = [_estimated_block_bytes(s, columns) for s in manifest.shards]
    rows = [s.rows for s in manifest.shards]

    class ManifestDatasource(ray.data.Datasource):
        def get_name(self) -> str:
            return "ManifestShards"

        def estimate_inmemory_data_size(self) -> int:
            return sum(sizes)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            # Planned afresh on every execution (each epoch): a permutation of the manifest's list,
            # no listing and no request to storage, so the cost does not grow with the run.
            execution = getattr(data_context, "_execution_idx", 0) if data_context is not None else 0
            order = (_rng(seed, execution).permutation(len(uris)) if shuffle else np.arange(len(uris))).tolist()
            groups = np.array_split(np.asarray(order, dtype=np.int64), max(1, min(parallelism, len(order))))
            tasks = []
            for group in groups:
                idx = group.tolist()
                meta = BlockMetadata(num_rows=sum(rows[i] for i in idx),
                                     size_bytes=int(sum(sizes[i] for i in idx)),
                                     input_files=[uris[i] for i in idx], exec_stats=None)
                group_uris = [uris[i] for i in idx]
                tasks.append(ray.data.ReadTask(
                    lambda u=group_uris: _read_shards(u, columns, opts, retry, read_threads), meta,
                    schema=schema, per_task_row_limit=per_task_row_limit))
            return tasks

    return ManifestDatasource()


def ray_dataset(uri: str, *, manifest: Manifest | None = None, opts: StorageOptions | None = None,
                seed: int = 0, shuffle: bool = True, retry: st.RetryPolicy | None = None,
                shards_per_task: int | None = None, read_threads: int = 2) -> Any:
    """A ``ray.data.Dataset`` over the manifest's shards and columns.

    The read is planned from the manifest alone (a ``ReadManifestShards`` operator): Ray read
    tasks of ``shards_per_task`` shards each and one block per shard, row counts and decoded sizes
    from the manifest, so there is no listing, no footer fetch and no metadata step before the
    first block, and every epoch re-plans without a request to storage. Each shard is read whole,
    as :func:`iter_local_batches` does (:func:`polymodal.storage.read_bytes`: on S3 one GET after
    s3fs's HEAD, retried under ``retry``, default :meth:`RetryPolicy.from_env` read on the
    driver), its manifest columns decoded and their arrow types checked. Storage options are
    resolved on the driver (endpoint override included); workers take S3 credentials from their
    own environment.

    A task reads up to ``read_threads`` of its shards at once and hands each over as it is ready
    (the GET and the decode release the GIL). Every read task costs Ray Data a task's scheduling
    and hand-over, and on 2 cores it ran tasks of one shard one after another, a core idle
    (bench/RESULTS.md, 2026-12-07: 0.62-0.90x raw pyarrow, against 1.00-1.23x with the default).
    So by default (``shards_per_task=None``) there are as many tasks as the cluster has CPUs, and
    no task holds more than 8 shards (``ceil(shards / 8)`` tasks when that is more).

    With ``shuffle`` the shard order is a permutation drawn from (``seed``, execution index): every
    execution (each epoch) gets a new, reproducible order, cut into the tasks' groups.
    """
    import ray
    import ray.data

    if shards_per_task is not None and (not isinstance(shards_per_task, int) or shards_per_task < 1):
        raise ValueError(f"shards_per_task must be None or a positive integer, got {shards_per_task!r}")
    if not isinstance(read_threads, int) or read_threads < 1:
        raise ValueError(f"read_threads must be a positive integer, got {read_threads!r}")
    manifest = manifest or Manifest.load(uri, opts)
    if not manifest.shards:
        raise ShardError(f"dataset {uri} has no shards (0 rows); nothing to read")
    source = _manifest_datasource(uri, manifest, st.resolve_options(opts), seed, shuffle,
                                  retry or st.RetryPolicy.from_env(), read_threads)
    # As many blocks asked for as there are tasks: with more, Ray would split every shard's table
    # into slivers (SplitBlocks), more objects for no gain.
    n = len(manifest.shards)
    if shards_per_task is None:
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
        tasks = min(n, max(-(-n // 8), cpus))
    else:
        tasks = -(-n // shards_per_task)
    ds = ray.data.read_datasource(source, override_num_blocks=tasks)
    # A block per shard: Ray joins a task's outputs up to target_max_block_size (128 MiB), so four
    # 17 MiB shards would arrive as one block, after the task's last shard (an epoch's first batch
    # 0.58 s instead of 0.26 s). With the limit just under the largest shard's decoded size, each
    # full shard is its own block. That size is exact only when every column has a fixed shape;
    # otherwise Ray's limit stays. A shard above the context's own limit is still split by Ray.
    if all(spec.fixed_size for spec in manifest.columns.values()):
        largest = max(_estimated_block_bytes(s, manifest.columns) for s in manifest.shards)
        ds.context.target_max_block_size = min(ds.context.target_max_block_size, max(1, largest - 1))
    return ds


def ray_dataset_in_memory(uri: str, *, manifest: Manifest | None = None, opts: StorageOptions | None = None,
                          retry: st.RetryPolicy | None = None, threads: int = 8) -> Any:
    """A materialised ``ray.data.Dataset`` of the manifest's shards, read by this process.

    Each shard is read whole, decoded and checked as a :func:`ray_dataset` read task does (on
    ``threads`` threads) and put into Ray's object store as one block, in the manifest's order
    (``ray.data.from_arrow_refs``); a shard read before its turn waits here, so this is for splits
    that fit in this process's memory (``data.cache_below_mb``). For small splits:
    ``ray_dataset(...).materialize()`` holds the same blocks but runs a Ray Data execution first,
    whose read tasks and Ray Data's own actors start in new worker processes (2-4 s on 2 cores
    before a Train run can start, bench/RESULTS.md, 2026-12-07); here the blocks' metadata takes
    one small Ray task each.
    """
    from concurrent.futures import ThreadPoolExecutor

    import ray
    import ray.data

    manifest = manifest or Manifest.load(uri, opts)
    if not manifest.shards:
        raise ShardError(f"dataset {uri} has no shards (0 rows); nothing to read")
    resolved, retry = st.resolve_options(opts), retry or st.RetryPolicy.from_env()
    with ThreadPoolExecutor(max(1, min(threads, len(manifest.shards))), thread_name_prefix="polymodal-shards") as pool:
        refs = [ray.put(t) for t in pool.map(lambda u: _read_shard(u, manifest.columns, resolved, retry),
                                               shard_uris(manifest, uri))]
    return ray.data.from_arrow_refs(refs)


# --------------------------------------------------------------------------- inspect


def describe(uri: str, opts: StorageOptions | None = None) -> str:
    """Human summary of a dataset for ``polymodal data inspect``."""
    m = Manifest.load(uri, opts)
    total_bytes = sum(s.bytes for s in m.shards)
    lines = [
        f"dataset  {uri}",
        f"task     {m.task}",
        f"split    {m.split}",
        f"rows     {m.num_rows}",
        f"shards   {len(m.shards)} ({_human_bytes(total_bytes)})",
        "columns:",
    ]
    width = max(len(n) for n in m.columns)
    for name, spec in m.columns.items():
        lines.append(f"  {name:<{width}}  {spec.describe()}")
    if m.meta:
        lines.append("meta:")
        for key, value in m.meta.items():
            text = json.dumps(value, default=str)
            lines.append(f"  {key}: {text if len(text) <= 100 else text[:97] + '...'}")
    return "\n".join(lines)


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover
