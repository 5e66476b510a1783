"""Evaluate a trained export on a dataset split, without Ray or DeepSpeed."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from polymodal import runs, shards, storage
from polymodal.config import ExperimentConfig, StorageOptions
from polymodal.errors import PolymodalError
from polymodal.registry import get_task


def load_model(checkpoint_uri: str, opts: StorageOptions | None = None, device: str | torch.device = "cpu"):
    """(config, task, eval-mode model) from a checkpoint, local or S3, through its task's
    :meth:`~polymodal.task.Task.load_checkpoint`."""
    from polymodal.train.checkpoint import read_config

    task = get_task(read_config(checkpoint_uri, opts).task)
    cfg, model = task.load_checkpoint(checkpoint_uri, opts)
    return cfg, task, model.to(device).eval()


@torch.no_grad()
def predict_split(task, model, data_uri: str, *, device: torch.device, opts: StorageOptions | None = None,
                  batch_size: int = 64, progress: bool = True) -> tuple[dict[str, np.ndarray], shards.Manifest]:
    """(the task's finished outputs -- :meth:`~polymodal.task.Task.predict` on every batch, then
    :meth:`~polymodal.task.Task.finish_eval` -- and the manifest) of ``model`` (on ``device``) on
    the dataset at ``data_uri``."""
    manifest = shards.open_dataset(data_uri, opts)
    if manifest.task != task.name:
        raise PolymodalError(f"dataset {data_uri} is for task {manifest.task!r}, the model for {task.name!r}")
    outputs: list[dict[str, np.ndarray]] = []
    batches = shards.iter_local_batches(data_uri, batch_size, manifest=manifest, shuffle=False,
                                        shuffle_buffer=0, opts=opts)
    if progress:
        from polymodal.progress import bar

        batches = bar(batches, total=-(-manifest.num_rows // batch_size), desc="evaluate", unit="batch")
    for cols in batches:
        batch = {k: v.to(device) for k, v in task.collate(cols).items()}
        outputs.append(task.predict(model, batch))
    return task.finish_eval(model, {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}), manifest


@torch.no_grad()
def evaluate(checkpoint_uri: str, data_uri: str, *, opts: StorageOptions | None = None,
             batch_size: int = 64, device: str | None = None, progress: bool = True,
             with_rows: bool = False) -> dict[str, float] | tuple[dict[str, float], list[dict[str, Any]] | None]:
    """Metrics of the checkpoint's model on the dataset at ``data_uri`` (with ``with_rows``,
    also the task's :meth:`~polymodal.task.Task.prediction_rows`)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _, task, model = load_model(checkpoint_uri, opts, dev)
    merged, _ = predict_split(task, model, data_uri, device=dev, opts=opts, batch_size=batch_size, progress=progress)
    if with_rows:
        return task.metrics(merged), task.prediction_rows(merged)
    return task.metrics(merged)


def evaluate_run(cfg: ExperimentConfig, split: str = "test", which: str = "best",
                 progress: bool = True) -> tuple[dict[str, Any], str]:
    """Evaluate a fitted run on ``split`` the way its task does (:meth:`Task.evaluate_run`):
    (result, URI of the written ``<run>/eval/<split>.json``)."""
    return get_task(cfg.task).evaluate_run(cfg, split=split, which=which, progress=progress)


def evaluate_export_run(task, cfg: ExperimentConfig, split: str = "test", which: str = "best",
                        progress: bool = True) -> tuple[dict[str, Any], str]:
    """Evaluate a run of the shared train loop: its checkpoint's model export on one of its
    configured splits; write ``<run>/eval/<split>.json`` (and the task's prediction rows).

    A split without labels (:meth:`Task.has_labels` is False, e.g. a benchmark's withheld test
    set) gets no metrics: the result says why under ``metrics_skipped``. Either way the task's
    :meth:`Task.submission_files` (the benchmark's own upload format, if it has one) are written
    into ``<run>/eval/submission/`` and listed under ``submission``."""
    data_uri = getattr(cfg.data, split, None)
    if not data_uri:
        raise PolymodalError(f"data.{split} is not set in the config; set it or pick another --split")
    if isinstance(data_uri, list):
        raise PolymodalError(f"data.{split} mixes {len(data_uri)} datasets; evaluate one of them as the test split "
                             f"(--set data.test=<its uri>) or pick another --split")
    ckpt = runs.find_checkpoint(cfg, which)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _, _, model = load_model(ckpt, cfg.storage, device)
    kwargs = {"device": device, "opts": cfg.storage, "batch_size": cfg.optim.batch_size, "progress": progress}
    outputs, manifest = predict_split(task, model, data_uri, **kwargs)
    out: dict[str, Any] = {"split": split, "checkpoint": ckpt, "data": data_uri, "metrics": {}}
    if task.has_labels(manifest):
        out["metrics"] = task.metrics(outputs)
    else:
        out["metrics_skipped"] = (f"split {split!r} ({data_uri}) has no labels (a benchmark's withheld split): "
                                  "no metrics; its predictions are written for the benchmark's own evaluation")
    rows = task.prediction_rows(outputs)
    if rows is not None:
        out["predictions"] = runs.eval_uri(cfg.run_uri, split, "_predictions.jsonl")
        storage.write_text(out["predictions"], "".join(json.dumps(r) + "\n" for r in rows), cfg.storage)
    done = {split: outputs}

    def predictions(other: str) -> dict[str, np.ndarray]:
        if other not in done:
            uri = getattr(cfg.data, other, None)
            if not uri:
                raise PolymodalError(f"the {task.name} submission for split {split!r} also needs predictions on "
                                     f"{other!r}: set data.{other} in the config")
            done[other] = predict_split(task, model, uri, **kwargs)[0]
        return done[other]

    files = task.submission_files(cfg, split, predictions)
    if files:
        out["submission"] = {}
        for name, text in files.items():
            out["submission"][name] = storage.join(cfg.run_uri, "eval", "submission", name)
            storage.write_text(out["submission"][name], text, cfg.storage)
    out_uri = runs.eval_uri(cfg.run_uri, split)
    storage.write_text(out_uri, json.dumps(out, indent=2), cfg.storage)
    return out, out_uri
