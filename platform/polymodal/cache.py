"""Pretrained weights from anywhere: a local folder, an ``s3://`` folder (downloaded once per
version into the polymodal cache) or a Hugging Face hub id (passed through to ``from_pretrained``,
which downloads it into the standard Hugging Face cache unless ``HF_HUB_OFFLINE=1``; the test suite
and the demo set it and never reach the network). Large models load straight into their training
dtype and device (:func:`pretrained_kwargs`), never as a full fp32 copy on the host first."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from polymodal import storage
from polymodal.config import StorageOptions


def cache_root() -> Path:
    return Path(os.environ.get("POLYMODAL_CACHE", Path.home() / ".cache" / "polymodal"))


def _entry(uri: str, opts: StorageOptions | None) -> Path:
    """The cache folder of ``uri`` as it is now: keyed by the URI and the objects' fingerprint
    (sizes and ETags, one listing), so an object rewritten under the same URI (a retrained
    backbone, a fresh S3 server at the same address) is downloaded again, never served stale."""
    key = hashlib.sha1(f"{uri}\0{storage.fingerprint(uri, opts)}".encode()).hexdigest()[:16]
    return cache_root() / key


def local_copy(uri: str, opts: StorageOptions | None = None) -> str:
    """A local path for ``uri``: local paths and hub ids pass through, ``s3://`` folders are
    downloaded once per version (:func:`_entry`). Workers on one node may race here, so each
    downloads into its own temp folder and renames it into place; the loser discards its copy."""
    if not storage.is_s3(uri):
        return uri[len("file://"):] if uri.startswith("file://") else uri
    dest = _entry(uri, opts)
    if dest.is_dir():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    storage.download_dir(uri, str(tmp), opts)
    try:
        os.rename(tmp, dest)
    except OSError:  # another worker won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def local_file(uri: str, opts: StorageOptions | None = None) -> str:
    """A local path for the single file at ``uri`` (word-vector files, ...): ``s3://`` files are
    streamed once per version (:func:`_entry`) into the cache under their own name; local paths
    pass through."""
    if not storage.is_s3(uri):
        return uri[len("file://"):] if uri.startswith("file://") else uri
    folder = _entry(uri, opts)
    dest = folder / uri.rstrip("/").rsplit("/", 1)[-1]
    if dest.is_file():
        return str(dest)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dl-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, storage.open_uri(uri, "rb", opts) as src:
            shutil.copyfileobj(src, out, length=8 << 20)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return str(dest)


def pretrained_kwargs(dtype=None, device=None) -> dict:
    """``from_pretrained`` arguments that materialise the weights once, in ``dtype`` (default
    fp32) and on ``device`` (default the host): the model is built on the meta device and each
    tensor is read straight into place (``low_cpu_mem_usage``), so a 7B LLM meant for bf16 on a GPU
    never exists as a 27 GB fp32 copy in host memory."""
    import torch

    kwargs: dict = {"dtype": dtype or torch.float32, "low_cpu_mem_usage": True}
    if device is not None and torch.device(device).type != "cpu":
        kwargs["device_map"] = {"": torch.device(device)}
    return kwargs


def load_causal_lm(uri: str, opts: StorageOptions | None = None, dtype=None, device=None):
    """(frozen eval-mode ``AutoModelForCausalLM``, its tokenizer) from a ``save_pretrained`` folder
    (local or ``s3://``) or a hub id, loaded straight into ``dtype`` on ``device``
    (:func:`pretrained_kwargs`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = local_copy(uri, opts)
    lm = AutoModelForCausalLM.from_pretrained(path, **pretrained_kwargs(dtype, device))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return lm.requires_grad_(False).eval(), tokenizer
