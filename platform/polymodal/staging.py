"""``polymodal models stage``: copy pretrained weights into a bucket, for clusters without internet.

A GPU cluster often cannot reach the Hugging Face hub. Staging copies a model once, from a machine
that can, to object storage the cluster reads; every pretrained-weights field then takes the
``s3://`` URI in place of the hub id (:func:`polymodal.cache.local_copy` downloads it once per
version on each node)::

    polymodal models stage meta-llama/Llama-2-7b-hf --out s3://bucket/models/llama-2-7b
    polymodal train --config jobs/configs/llavilo_paper.yaml --set model.llm=s3://bucket/models/llama-2-7b

The source is a hub id (downloaded into the standard Hugging Face cache first, so a second stage
costs no download; with ``HF_HUB_OFFLINE=1`` only a cached copy is used), a local folder or another
``s3://`` folder. ``polymodal_stage.json`` is written after every file has arrived: it names the
source, its revision and each file's size, so a reader can tell a complete copy from a partial one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from polymodal import storage
from polymodal.cache import local_copy
from polymodal.config import StorageOptions
from polymodal.errors import PolymodalError

MARKER = "polymodal_stage.json"


def _snapshot(repo_id: str, revision: str | None, allow: list[str] | None) -> tuple[str, str]:
    """(local folder, commit) of the hub model ``repo_id``, from the Hugging Face cache or the hub."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=allow)
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        why = ("HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache" if offline else
               "the hub cannot be reached and the model is not in the local Hugging Face cache")
        raise PolymodalError(f"models stage {repo_id!r}: {why}; stage it from a machine with internet, or give a "
                             f"local folder or s3:// URI ({exc.__class__.__name__})") from None
    except RepositoryNotFoundError:
        raise PolymodalError(f"models stage {repo_id!r}: no such model on the hub (or it is gated: log in with "
                             "`hf auth login` and accept its licence first)") from None
    except HfHubHTTPError as exc:
        raise PolymodalError(f"models stage {repo_id!r}: the hub answered {exc}") from None
    return folder, Path(folder).name  # snapshots/<commit>


def _is_hub_id(source: str) -> bool:
    return not storage.is_s3(source) and not os.path.exists(source) and not source.startswith(("/", ".", "file://"))


def stage(source: str, out: str, opts: StorageOptions | None = None, *, revision: str | None = None,
          allow: list[str] | None = None) -> dict[str, Any]:
    """Copy the model at ``source`` (hub id, local folder or ``s3://`` folder) to ``out``; returns
    the record written to ``out``/``polymodal_stage.json`` (written last)."""
    if _is_hub_id(source):
        folder, commit = _snapshot(source, revision, allow)
    else:
        if revision or allow:
            raise PolymodalError(f"models stage {source!r}: --revision and --include apply to hub ids only")
        folder, commit = local_copy(source, opts), None
        if not os.path.isdir(folder):
            raise PolymodalError(f"models stage {source!r}: not a folder (give a model folder, an s3:// folder "
                                 "or a hub id such as bert-base-uncased)")
    files = {}
    for root, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel != MARKER:
                files[rel] = os.path.getsize(path)  # hub snapshots are symlinks into blobs/: sizes of the targets
    if not files:
        raise PolymodalError(f"models stage {source!r}: {folder} holds no files")
    marker = storage.join(out, MARKER)
    if storage.exists(marker, opts):  # an old record must not vouch for the files being replaced
        storage.remove(marker, opts=opts)
    storage.upload_dir(folder, out, opts)
    record = {"source": source, "revision": commit or revision, "staged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
              "files": dict(sorted(files.items()))}
    storage.write_text(marker, json.dumps(record, indent=2) + "\n", opts)
    return record
