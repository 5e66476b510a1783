"""Refuse, at deploy time, a replica whose declared memory cannot hold what it will load.

A Serve deployment may declare ``ray_actor_options: {memory: BYTES}``: Ray schedules the
replica only where that much is free, and KubeRay sizes pods by it. A replica loads its
checkpoint's weights and, with ``args.index``, a whole dataset into memory
(:meth:`polymodal.task.Task.open_index`). When those alone exceed the declared memory the
replica would be OOM-killed after it was placed (and again for every replacement), so
:func:`check_replica_memory` refuses the deployment before anything starts, with both sizes.

The sizes are read without loading anything: the export's weight file size, and the index's
manifest and Parquet footers (within a few per cent of what the index takes once read). The
frozen backbone a model builds is not counted, nor Python's own overhead, so a refused
deployment does not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from polymodal.errors import PolymodalError
from polymodal.shards import Manifest

WEIGHTS_FILE = "trainable.safetensors"  # the export's weights (polymodal.train.checkpoint.write_export)


def manifest_memory_bytes(manifest: Manifest, uri: str, opts: Any = None) -> int:
    """Bytes the dataset at ``uri`` takes once read into memory (arrow's, within a few per cent).

    Fixed-shape numeric columns decode to exactly ``rows x prod(shape) x itemsize`` (the manifest
    says so); variable-length, string and binary columns count their uncompressed Parquet bytes,
    from each shard's footer (one small read per shard, no data read)."""
    import pyarrow.parquet as pq

    from polymodal import storage
    from polymodal.shards import shard_uris

    decoded, sized_by_footer = 0, []
    for name, spec in manifest.columns.items():
        if spec.variable or spec.dtype in ("string", "binary"):
            sized_by_footer.append(name)
        else:
            decoded += manifest.num_rows * math.prod(spec.shape) * np.dtype(spec.dtype).itemsize
    for shard in shard_uris(manifest, uri) if sized_by_footer else []:
        with storage.open_uri(shard, "rb", opts) as f:
            meta = pq.read_metadata(f)
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                if column.path_in_schema.split(".")[0] in sized_by_footer:
                    decoded += column.total_uncompressed_size
    return decoded


@dataclass(frozen=True)
class ReplicaFootprint:
    """What one replica holds in memory at least, by part (bytes)."""

    weights: int
    index: int

    @property
    def total(self) -> int:
        return self.weights + self.index


def replica_footprint(checkpoint: str, index: str | None, opts: Any = None) -> ReplicaFootprint:
    """Sizes of a checkpoint's exported weights and of an index dataset, from files only."""
    from polymodal import storage
    from polymodal.runs import resolve_checkpoint
    from polymodal.train.checkpoint import export_uri, read_config

    ckpt = resolve_checkpoint(checkpoint, opts)
    export = export_uri(ckpt, opts)
    fs, path = storage.get_fs(storage.join(export, WEIGHTS_FILE), opts)
    weights = int(fs.size(path)) if fs.exists(path) else 0
    if not index:
        return ReplicaFootprint(weights, 0)
    # the index is read with the checkpoint's storage settings, as the replica reads it
    index_opts = read_config(ckpt, opts).storage
    return ReplicaFootprint(weights, manifest_memory_bytes(Manifest.load(index, index_opts), index, index_opts))


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_replica_memory(checkpoint: str, index: str | None, memory: float | None, opts: Any = None) -> None:
    """Raise a PolymodalError when ``memory`` (a replica's declared bytes; None: undeclared, no
    check) is less than its checkpoint's weights plus its index (:func:`replica_footprint`)."""
    if not memory:
        return
    need = replica_footprint(checkpoint, index, opts)
    if need.total <= memory:
        return
    parts = [f"the weights of {checkpoint} take {_gib(need.weights)}"]
    if index:
        parts.append(f"the index {index} takes {_gib(need.index)} once loaded")
    raise PolymodalError(
        f"a replica would need at least {_gib(need.total)} but declares ray_actor_options.memory = "
        f"{_gib(memory)} ({int(memory)} bytes): {'; '.join(parts)}. It would be OOM-killed after "
        f"it starts; raise ray_actor_options.memory (and the worker pods' memory) to at least "
        f"{math.ceil(need.total * 1.25)} bytes, or serve a smaller index")
