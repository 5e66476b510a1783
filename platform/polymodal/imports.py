"""Resumable imports: what an import depends on, and how far an interrupted run of it got.

An importer that writes a dataset chunk by chunk (:meth:`~polymodal.shards.ShardWriter.flush`
after each chunk) keeps ``import-progress.json`` beside its shards::

    progress = ImportProgress(out_uri, import_key(inputs, settings, opts), opts, resume=not restart)
    if (done := progress.finished()) is not None:
        return done                                   # same sources, same settings: nothing to do
    state = progress.resumed()                        # records done, their shards, counters
    with ShardWriter(out_uri, ..., meta={**meta, "import_key": progress.key}, shards=state.shards) as w:
        for each chunk after the first state.records records:
            write it; w.flush(); progress.save(records_done, w.shards, skipped=...)
    manifest = w.close(); progress.clear()

The key is stored in the manifest's meta (``import_key``), so a rerun of a finished import
returns its manifest untouched, and a changed source file or setting starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.errors import ShardError, StorageError
from polymodal.shards import Manifest, ShardInfo, open_dataset

__all__ = ["PROGRESS_NAME", "import_key", "Resumed", "ImportProgress"]

logger = logging.getLogger(__name__)

#: how far an unfinished import got, in its output folder (removed when the manifest is written)
PROGRESS_NAME = "import-progress.json"


def import_key(inputs: Iterable[str], settings: Mapping[str, Any], opts: StorageOptions | None = None) -> str:
    """What an import's output depends on: every setting (JSON) and each source URI as it is now
    (:func:`polymodal.storage.fingerprint`: paths, sizes and version tags, not the bytes)."""
    digest = hashlib.sha1(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for uri in inputs:
        digest.update(f"{uri}\0{storage.fingerprint(uri, opts)}\n".encode())
    return digest.hexdigest()


@dataclass
class Resumed:
    """Where an interrupted run stopped: records done, the shards they fill, named counters."""

    records: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)


class ImportProgress:
    """Progress of one import (``key``) into one dataset folder ``out_uri``.

    With ``resume=False`` it reports no finished dataset and no progress (the import starts
    over), but still saves and clears progress, so a later rerun can resume.
    """

    def __init__(self, out_uri: str, key: str, opts: StorageOptions | None = None, *, resume: bool = True) -> None:
        self.out_uri, self.key, self.opts, self.resume = out_uri, key, opts, resume
        self.uri = storage.join(out_uri, PROGRESS_NAME)

    def finished(self, *, quiet: bool = False) -> Manifest | None:
        """The manifest of a dataset at ``out_uri`` already complete with this key, else None
        (logged unless ``quiet``)."""
        if not self.resume:
            return None
        try:
            done = open_dataset(self.out_uri, self.opts)
        except (ShardError, StorageError, FileNotFoundError):
            return None
        if done.meta.get("import_key") != self.key:
            return None
        if not quiet:
            logger.warning("%s: already imported from the same sources and settings; nothing to do", self.out_uri)
        return done

    def resumed(self) -> Resumed:
        """How far an interrupted run of this import got; nothing when there is none, it was
        another import's, or one of its shards is gone."""
        if not self.resume:
            return Resumed()
        try:
            state = json.loads(storage.read_text(self.uri, self.opts))
        except (FileNotFoundError, ValueError):
            return Resumed()
        if not isinstance(state, dict) or state.get("key") != self.key:
            return Resumed()
        shards = [ShardInfo(**s) for s in state["shards"]]
        present = set(storage.listdir(self.out_uri, self.opts))
        if any(s.path not in present for s in shards):
            return Resumed()
        out = Resumed(int(state["records"]), shards, dict(state.get("counters", {})))
        if out.records:
            logger.warning("%s: resuming after %d records (%d shards) of an interrupted run", self.out_uri,
                           out.records, len(shards))
        return out

    def save(self, records: int, shards: Iterable[ShardInfo], **counters: Any) -> None:
        """Record that the first ``records`` records are written, in ``shards`` (all flushed)."""
        storage.write_text(self.uri, json.dumps(
            {"key": self.key, "records": records, "shards": [s.model_dump() for s in shards],
             "counters": counters}), self.opts)

    def clear(self) -> None:
        """Remove the progress file (the import is complete)."""
        with contextlib.suppress(FileNotFoundError):
            storage.remove(self.uri, opts=self.opts)
