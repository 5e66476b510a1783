"""Run folders: what a fitted run leaves behind and how to find it again.

A run folder (``<storage_path>/<name>``) holds ``summary.json`` (the task, the latest and best
checkpoints, the final metrics), ``eval/<split>.json`` per evaluation and ``report/``. Every task
writes and reads these through this module, whichever way it is fitted.
"""

from __future__ import annotations

import json
from typing import Any, Collection

from polymodal import storage
from polymodal.errors import PolymodalError


def summary_uri(run_uri: str) -> str:
    return storage.join(run_uri, "summary.json")


def write_summary(cfg: Any, *, latest: str | None, best: str | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """``<run>/summary.json``: where the checkpoints are; evaluate and serve start from it. Metrics
    keep only plain values (numbers and strings)."""
    summary = {"task": cfg.task, "run": cfg.run_uri, "latest_checkpoint": latest, "best_checkpoint": best,
               "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
    storage.write_text(summary_uri(cfg.run_uri), json.dumps(summary, indent=2), cfg.storage)
    return summary


def read_summary(run_uri: str, opts: Any = None) -> dict[str, Any] | None:
    """The run's ``summary.json``, or None before its first checkpoint."""
    uri = summary_uri(run_uri)
    if not storage.exists(uri, opts):
        return None
    return json.loads(storage.read_text(uri, opts))


def find_checkpoint(cfg: Any, which: str = "best") -> str:
    """URI of the run's ``best`` or ``latest`` checkpoint, from ``<run>/summary.json``."""
    summary = read_summary(cfg.run_uri, cfg.storage)
    if summary is None:
        raise PolymodalError(f"no summary.json in {cfg.run_uri}: train the run first (polymodal train)")
    ckpt = summary.get(f"{which}_checkpoint") or summary.get("latest_checkpoint")
    if not ckpt:
        raise PolymodalError(f"{summary_uri(cfg.run_uri)} names no checkpoint")
    return ckpt


def resolve_checkpoint(uri: str, opts: Any = None) -> str:
    """A run folder (holding summary.json) -> its best checkpoint; anything else passes through."""
    uri = uri.rstrip("/")
    summary = read_summary(uri, opts)
    if summary is None:
        return uri
    ckpt = summary.get("best_checkpoint") or summary.get("latest_checkpoint")
    if not ckpt:
        raise PolymodalError(f"{summary_uri(uri)} names no checkpoint; train the run first")
    return ckpt.rstrip("/")


def resolve_weights(uri: str, opts: Any = None, which: str = "best") -> str:
    """The checkpoint (or export) to load weights from, for anything a run leaves behind.

    ``uri`` may be

    * a run folder with ``summary.json``: its ``best`` (or ``latest``) checkpoint, as the summary names it;
    * a checkpoint folder (``state.json`` or a ``model/`` export inside; Ray Train's ``checkpoint_*``
      and ``--local``'s ``checkpoints/epoch_NNNN`` alike) or a ``model/`` export itself: as it is;
    * a run folder without ``summary.json`` (a run stopped before writing it): its newest complete
      checkpoint, among ``checkpoint_*`` (Ray Train) and ``checkpoints/epoch_*`` (``--local``).

    Anything else raises a PolymodalError naming ``uri`` and what was looked for.
    """
    from polymodal.train.checkpoint import CHECKPOINT_PREFIX, MODEL_DIR, STATE_FILE, checkpoint_order

    uri = uri.rstrip("/")
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    summary = read_summary(uri, opts)
    if summary is not None:
        ckpt = summary.get(f"{which}_checkpoint") or summary.get("latest_checkpoint")
        if not ckpt:
            raise PolymodalError(f"{summary_uri(uri)} names no checkpoint; train the run first")
        return ckpt.rstrip("/")
    if any(storage.exists(storage.join(uri, name), opts) for name in (STATE_FILE, MODEL_DIR, "config.yaml")):
        return uri
    candidates: list[tuple[tuple, str]] = []  # (sort key, checkpoint URI): Ray's names, then --local's
    local = storage.join(uri, "checkpoints")
    candidates += [((0, n), storage.join(uri, n)) for n in _names(uri, opts) if n.startswith("checkpoint_")]
    candidates += [((1, checkpoint_order(n)), storage.join(local, n)) for n in _names(local, opts)
                   if n.startswith(CHECKPOINT_PREFIX)]
    done = [c for _, c in sorted(candidates) if storage.exists(storage.join(c, STATE_FILE), opts)]
    if done:
        return done[-1]
    what = "does not exist" if not storage.exists(uri, opts) else "holds no checkpoint"
    raise PolymodalError(f"{uri} {what}: expected a run folder (summary.json, or checkpoint_* / checkpoints/epoch_* "
                         "folders with state.json), a checkpoint folder (state.json, model/) or a model/ export "
                         "(config.yaml); point it at the pre-training run's folder, e.g. <storage_path>/<run name>")


def _names(uri: str, opts: Any) -> list[str]:
    """Entries below folder ``uri``; none when it is missing or a file."""
    try:
        return storage.listdir(uri, opts) if storage.exists(uri, opts) else []
    except (FileNotFoundError, NotADirectoryError):
        return []


def eval_uri(run_uri: str, split: str, suffix: str = ".json") -> str:
    """``<run>/eval/<split><suffix>``: where an evaluation of ``split`` is written."""
    return storage.join(run_uri, "eval", f"{split}{suffix}")


def markdown_table(rows: list[dict[str, Any]], keys: list[str], percent: Collection[str] = ()) -> str:
    """A Markdown table of ``rows`` with columns ``keys``; numbers to 4 significant digits. A key in
    ``percent`` (or ``val_`` + one) holds fractions, printed as percentages labelled ``%``."""
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    as_percent = [k in percent or (k.startswith("val_") and k[4:] in percent) for k in keys]
    body = "".join("| " + " | ".join(_fmt(r.get(k, ""), p) for k, p in zip(keys, as_percent)) + " |\n"
                   for r in rows)
    return head + body


def _fmt(v: Any, percent: bool = False) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if percent:
        return f"{100 * f:.4g} %"
    return str(int(f)) if f.is_integer() and abs(f) < 1e12 else f"{f:.4g}"
