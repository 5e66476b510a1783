"""fMRI responses stored voxel-chunked, so a worker reads one slice of voxels for every story.

Layout under a dataset root (local or ``s3://``)::

    responses/<subject>/index.json                story -> TRs, voxel count, chunk list
    responses/<subject>/v000000-004096/           one shard dataset per voxel chunk:
        manifest.json, part-*.parquet             rows = (story, tr); column y: float32[chunk voxels]

Reading chunk ``v000000-004096`` touches only that folder, so memory and I/O per worker scale
with the chunk, not with the ~95k voxels of a real subject.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from polymodal import storage
from polymodal.errors import PolymodalError
from polymodal.imports import ImportProgress
from polymodal.shards import ShardWriter, iter_local_batches, open_dataset
from polymodal.storage import StorageOptions

logger = logging.getLogger(__name__)

TASK = "fmri.encoding"
#: the encoder-pretraining task (:mod:`.mlm`); named here so that :mod:`.encoders` can check a
#: checkpoint's task without importing the task module (which reads stories through the pipeline)
MLM_TASK = "fmri.mlm"


class ChunkInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    start: int = Field(..., ge=0)
    stop: int = Field(..., ge=1)


class ResponseIndex(BaseModel):
    """``responses/<subject>/index.json``."""

    model_config = ConfigDict(extra="forbid")

    subject: str
    n_voxels: int = Field(..., ge=1)
    stories: dict[str, int] = Field(..., description="story -> number of TRs")
    chunks: list[ChunkInfo]


def subject_uri(root: str, subject: str) -> str:
    return storage.join(root, "responses", storage.check_name(subject, "subject"))


def write_responses(root: str, subject: str, responses: Mapping[str, np.ndarray], *, chunk: int = 4096,
                    opts: StorageOptions | None = None, progress: bool = False, key: str | None = None,
                    resume: bool = True) -> ResponseIndex:
    """Store ``story -> (TRs, voxels)`` arrays voxel-chunked; every story needs the same voxels.

    Values may be any array-like with ``.shape`` and 2-D slicing (numpy, memory-mapped ``.npy``,
    h5py datasets): each chunk reads only its columns. With a ``key`` (what the responses were
    read from, :func:`polymodal.imports.import_key`) each chunk's manifest records it, and
    (``resume``) a chunk already complete with the same key, e.g. from an interrupted import, is
    kept instead of rewritten; so is an identical ``index.json``."""
    if not responses:
        raise PolymodalError(f"subject {subject!r}: no stories to write")
    shapes = {name: np.shape(arr) for name, arr in responses.items()}
    bad = {n: s for n, s in shapes.items() if len(s) != 2}
    if bad:
        raise PolymodalError(f"subject {subject!r}: responses must be (TRs, voxels); got {bad}")
    n_voxels = {s[1] for s in shapes.values()}
    if len(n_voxels) != 1:
        raise PolymodalError(f"subject {subject!r}: stories have different voxel counts {shapes}")
    (n_vox,) = n_voxels
    base = subject_uri(root, subject)
    chunks, kept = [], 0
    for start in range(0, n_vox, chunk):
        stop = min(start + chunk, n_vox)
        info = ChunkInfo(name=f"v{start:06d}-{stop:06d}", start=start, stop=stop)
        columns = {"story": {"dtype": "string"}, "tr": {"dtype": "int32"},
                   "y": {"dtype": "float32", "shape": [stop - start]}}
        uri = storage.join(base, info.name)
        meta: dict[str, Any] = {"subject": subject, "voxel_start": start, "voxel_stop": stop}
        if key is not None:
            meta["import_key"] = key
            if resume and ImportProgress(uri, key, opts).finished(quiet=True) is not None:
                chunks.append(info)
                kept += 1
                continue
        with ShardWriter(uri, task=TASK, split=subject, columns=columns, rows_per_shard=8192, opts=opts,
                         progress=progress and f"{subject} {info.name}", meta=meta) as writer:
            for name, source in responses.items():
                # slice first: h5py datasets and memory-mapped .npy files read only these columns
                arr = np.asarray(source[:, start:stop], dtype=np.float32)
                if not np.isfinite(arr).all():
                    raise PolymodalError(f"subject {subject!r}, story {name!r}: NaN/inf in voxels {start}..{stop - 1}")
                writer.write({"story": np.array([name] * len(arr), dtype=object),
                              "tr": np.arange(len(arr), dtype=np.int32), "y": arr})
        chunks.append(info)
    index = ResponseIndex(subject=subject, n_voxels=n_vox, stories={n: s[0] for n, s in shapes.items()},
                          chunks=chunks)
    text, uri = index.model_dump_json(indent=2), storage.join(base, "index.json")
    if kept:
        logger.warning("subject %r: kept %d of %d voxel chunks already written from the same responses",
                       subject, kept, len(chunks))
        if kept == len(chunks) and storage.exists(uri, opts) and storage.read_text(uri, opts) == text:
            return index
    storage.write_text(uri, text, opts)
    return index


def read_index(root: str, subject: str, opts: StorageOptions | None = None) -> ResponseIndex:
    uri = storage.join(subject_uri(root, subject), "index.json")
    try:
        return ResponseIndex.model_validate(json.loads(storage.read_text(uri, opts)))
    except FileNotFoundError:
        raise PolymodalError(f"unknown subject {subject!r}: {uri} does not exist") from None


def read_chunk(root: str, subject: str, chunk: ChunkInfo, stories: list[str] | None = None,
               opts: StorageOptions | None = None) -> dict[str, np.ndarray]:
    """``story -> (TRs, chunk voxels)`` float32 for one voxel chunk (only its folder is read)."""
    uri = storage.join(subject_uri(root, subject), chunk.name)
    manifest = open_dataset(uri, opts)
    rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for batch in iter_local_batches(uri, 8192, manifest=manifest, shuffle=False, opts=opts):
        for name in np.unique(batch["story"]):
            keep = batch["story"] == name
            rows.setdefault(str(name), []).append((batch["tr"][keep], batch["y"][keep]))
    out = {}
    for name in stories if stories is not None else sorted(rows):
        if name not in rows:
            raise PolymodalError(f"subject {subject!r}: story {name!r} is not in {uri}")
        trs = np.concatenate([t for t, _ in rows[name]])
        ys = np.concatenate([y for _, y in rows[name]])
        out[name] = ys[np.argsort(trs, kind="stable")]
    return out
