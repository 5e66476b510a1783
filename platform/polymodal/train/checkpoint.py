"""Checkpoint layout, atomic publishing, and the small safetensors export of the trainable weights.

A checkpoint folder holds::

    deepspeed/        DeepSpeed engine state (each rank's ZeRO shards; frozen weights excluded)
    model/            the export that evaluate and serve load, no DeepSpeed needed:
      config.yaml       the experiment config that trained it
      trainable.safetensors   every parameter with requires_grad, full (ZeRO-3 gathered)
      export.json       task, epoch, global step, metrics
    state.json        loop position: epoch, global step, and (epoch_done false: a step checkpoint
                      within the epoch) the batches of the epoch trained on, with the seed and
                      batch size whose data order they count in

``state.json`` is the completion marker. A checkpoint is built in a local folder and copied
out by :func:`publish_checkpoint`, which writes the marker only after every other file
arrived (S3 has no rename; on disk a new folder is also renamed into place whole). Readers
(:func:`is_complete`, :func:`complete_checkpoints`) ignore folders without the marker, so a
crash in the middle of a write leaves the previous checkpoint as the newest complete one,
and ``summary.json``, written after the copy, never names a half-written "latest".
"""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from polymodal import storage
from polymodal.config import ExperimentConfig, StorageOptions, validate_config
from polymodal.errors import PolymodalError

DS_DIR = "deepspeed"
DS_TAG = "state"
MODEL_DIR = "model"
STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "epoch_"


def checkpoint_name(state: dict[str, Any]) -> str:
    """Folder name of a ``--local`` checkpoint from its ``state.json``: ``epoch_NNNN`` at the end of
    epoch NNNN, ``epoch_NNNN_step_SSSSSSSS`` for a step checkpoint within it (global step SSSSSSSS)."""
    name = f"{CHECKPOINT_PREFIX}{state['epoch']:04d}"
    return name if state.get("epoch_done", True) else f"{name}_step_{state['global_step']:08d}"


def checkpoint_order(name: str) -> tuple[int, float, str]:
    """Sort key of checkpoint folder names, oldest first: epoch NNNN's step checkpoints by step,
    then ``epoch_NNNN`` (its end), then epoch NNNN+1's. Other names sort first."""
    m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)(?:_step_(\d+))?", name)
    if m is None:
        return (-1, 0, name)
    return (int(m.group(1)), int(m.group(2)) if m.group(2) else math.inf, name)


def publish_checkpoint(local_dir: str | Path, uri: str, opts: StorageOptions | None = None) -> str:
    """Copy the finished checkpoint folder ``local_dir`` to ``uri`` (local or S3); return ``uri``.

    The folder must already hold :data:`STATE_FILE`. Any old marker at ``uri`` is deleted
    first and the new one written last, so ``uri`` counts as complete only once every file
    is in place; a crash part-way leaves it incomplete and ignored.
    """
    if not (Path(local_dir) / STATE_FILE).is_file():
        raise PolymodalError(f"{local_dir} has no {STATE_FILE}; write the loop state before publishing "
                             "the checkpoint (it is the marker that makes the checkpoint visible)")
    storage.upload_dir(str(local_dir), uri, opts, last=(STATE_FILE,))
    return uri


def is_complete(uri: str, opts: StorageOptions | None = None) -> bool:
    """True if checkpoint folder ``uri`` has its :data:`STATE_FILE` marker."""
    return storage.exists(storage.join(uri, STATE_FILE), opts)


def complete_checkpoints(root: str, opts: StorageOptions | None = None) -> list[str]:
    """URIs of the complete ``epoch_NNNN`` (and ``epoch_NNNN_step_SSSSSSSS``) checkpoints under
    ``root``, oldest first (:func:`checkpoint_order`).

    Folders without the marker (a write that crashed) and temporary folders are skipped.
    """
    if not storage.exists(root, opts):
        return []
    names = sorted((n for n in storage.listdir(root, opts) if n.startswith(CHECKPOINT_PREFIX)), key=checkpoint_order)
    uris = [storage.join(root, n) for n in names]
    return [u for u in uris if is_complete(u, opts)]


def latest_checkpoint(root: str, opts: StorageOptions | None = None) -> str | None:
    """The newest complete checkpoint under ``root``, or None."""
    done = complete_checkpoints(root, opts)
    return done[-1] if done else None


def trainable_state(model: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full CPU copies of every trainable parameter (collective under ZeRO-3: call on all ranks)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if zero_stage == 3:
        from polymodal.train.deepspeed_config import import_deepspeed

        deepspeed = import_deepspeed()

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


def write_export(path: Path, cfg: ExperimentConfig, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write the ``model/`` export into local folder ``path``, atomically.

    The files go into a hidden sibling folder that is renamed to ``path`` once all three
    are written; an existing export at ``path`` is replaced only then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        (tmp / "config.yaml").write_text(cfg.to_yaml())
        save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "trainable.safetensors"))
        (tmp / "export.json").write_text(json.dumps({"task": cfg.task, **info}, indent=2, default=float))
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:
                old.rename(path)  # keep the previous export rather than none
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_export(path: str | Path, shown_as: str | None = None
                ) -> tuple[ExperimentConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a local ``model/`` export: (config, trainable weights, info).

    ``shown_as``: the URI errors name instead of ``path`` (the export a temp folder was copied from)."""
    import yaml

    path = Path(path)
    if (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR
    where = (shown_as or str(path)).rstrip("/")
    missing = [f for f in ("config.yaml", "trainable.safetensors", "export.json") if not (path / f).exists()]
    if missing:
        raise PolymodalError(f"{where} is not a polymodal model export: missing {', '.join(missing)}")
    cfg = validate_config(yaml.safe_load((path / "config.yaml").read_text()), f"{where}/config.yaml")
    weights = read_weights(path / "trainable.safetensors", f"{where}/trainable.safetensors")
    info = json.loads((path / "export.json").read_text())
    return cfg, weights, info


def read_weights(file: Path, shown_as: str | None = None) -> dict[str, torch.Tensor]:
    """A safetensors file whose every float is finite; else PolymodalError naming the file
    (``shown_as``, if given) and tensor: a truncated upload, a damaged disk, or a run that
    diverged to NaN."""
    where = shown_as or str(file)
    try:
        weights = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types
        raise PolymodalError(f"{where}: cannot read the weights: {exc}") from None
    for name, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise PolymodalError(f"{where}: weight {name} holds NaN or inf (did training diverge?); "
                                 "use an earlier checkpoint")
    return weights


def export_uri(checkpoint: str, opts: StorageOptions | None = None) -> str:
    """The ``model/`` export inside a checkpoint folder, or the URI itself if it is the export."""
    checkpoint = checkpoint.rstrip("/")
    if not checkpoint.endswith("/" + MODEL_DIR) and storage.exists(storage.join(checkpoint, MODEL_DIR), opts):
        return storage.join(checkpoint, MODEL_DIR)
    return checkpoint


def read_config(checkpoint: str, opts: StorageOptions | None = None) -> ExperimentConfig:
    """Only the config of a checkpoint (one small file): enough to know its task, or to check an
    adapter at start-up. ``checkpoint``: a ``checkpoint_*`` folder, its ``model/`` export, or a
    run folder of a task that keeps its config there."""
    import yaml

    uri = storage.join(export_uri(checkpoint, opts), "config.yaml")
    if not storage.exists(uri, opts):
        raise PolymodalError(f"{checkpoint} is not a polymodal checkpoint: {uri} is missing")
    return validate_config(yaml.safe_load(storage.read_text(uri, opts)), uri)


def read_export(checkpoint: str, opts: StorageOptions | None = None
                ) -> tuple[ExperimentConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """:func:`load_export` of a checkpoint folder or its export, local or S3 (copied to a temp
    folder first); errors name the checkpoint's files, not the copy."""
    import tempfile

    source = export_uri(checkpoint, opts)
    with tempfile.TemporaryDirectory(prefix="polymodal-export-") as tmp:
        storage.download_dir(source, tmp, opts)
        return load_export(tmp, shown_as=source)


def load_trainable(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy exported weights into a freshly built model; every trainable name must match."""
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
    if unknown or missing:
        raise PolymodalError(
            f"export does not match the model: unknown {unknown[:5]}, missing {missing[:5]} "
            "(was it trained with another model config?)")
    with torch.no_grad():
        for name, value in weights.items():
            if params[name].shape != value.shape:
                raise PolymodalError(f"export weight {name} has shape {tuple(value.shape)}, "
                                     f"model expects {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))
