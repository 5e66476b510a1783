"""A Markdown report with metric tables and a PNG training curve for one run.

Metrics are logged as fractions in [0, 1] (see :mod:`polymodal.metrics`); the tables print the
task's ``fraction_metrics`` as percentages, each cell labelled ``%``, for the human reader."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from polymodal import storage
from polymodal.config import ExperimentConfig


def _table(rows: list[dict[str, str]], keys: list[str], percent: frozenset[str] = frozenset()) -> str:
    """A Markdown table of ``keys``; a key in ``percent`` (or ``val_`` + one) is a fraction printed as %."""
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    as_percent = [k in percent or (k.startswith("val_") and k[4:] in percent) for k in keys]
    body = "".join("| " + " | ".join(_fmt(r.get(k, ""), p) for k, p in zip(keys, as_percent)) + " |\n"
                   for r in rows)
    return head + body


def _fmt(v, percent: bool = False) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if percent:
        return f"{100 * f:.4g} %"
    return str(int(f)) if f.is_integer() and abs(f) < 1e12 else f"{f:.4g}"


def plot_curves(rows: list[dict[str, str]], path: Path) -> None:
    """One panel for the training loss, one for every validation metric, against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) + 1 for r in rows]
    val_keys = [k for k in rows[0] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    for k in val_keys:
        vals = [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows]
        axes[1].plot(epochs, vals, marker="o", label=k[4:])
    axes[1].set(title="validation", xlabel="epoch")
    if val_keys:
        axes[1].legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(cfg: ExperimentConfig, compare: list[str] | None = None) -> str:
    """Write ``<run>/report/report.md`` and ``curves.png``; return the report URI.

    ``compare``: other runs of the same task shown beside this one, for tasks that report
    themselves (:attr:`Task.trains_itself`)."""
    from polymodal.registry import get_task

    task = get_task(cfg.task)
    if task.trains_itself:
        return task.write_report(cfg, compare=compare)
    if compare:
        raise ValueError(f"--compare is not supported for {cfg.task} reports")
    opts = cfg.storage
    csv_uri = storage.join(cfg.run_uri, "logs", "metrics.csv")
    rows = list(csv.DictReader(io.StringIO(storage.read_text(csv_uri, opts))))
    if not rows:
        raise ValueError(f"{csv_uri} has no epochs yet")
    out_uri = storage.join(cfg.run_uri, "report")
    lines = [f"# Run `{cfg.name}`: {cfg.task}", "",
             f"- run folder: `{cfg.run_uri}`", f"- model: `{type(cfg.model).__name__}` "
             f"{json.dumps(cfg.model.model_dump(mode='json'))}",
             f"- optim: {json.dumps(cfg.optim.model_dump(mode='json'))}",
             f"- DeepSpeed ZeRO stage {cfg.deepspeed.zero_stage}, {cfg.scaling.num_workers} worker(s), "
             f"GPU: {cfg.scaling.use_gpu}", "", "## Training", "", "![training curves](curves.png)", ""]
    keys = [k for k in rows[0] if k in ("epoch", "global_step", "train_loss") or k.startswith("val_")]
    # a task without the declaration prints every metric in its logged units
    percent = frozenset(getattr(task, "fraction_metrics", ()))
    if percent:
        lines += ["Accuracies, recalls and other shares are shown in percent (%); `logs/metrics.csv` and "
                  "`eval/<split>.json` hold them as fractions in [0, 1].", ""]
    lines += [_table(rows, keys, percent), ""]
    evals = []
    for split in ("val", "test"):
        uri = storage.join(cfg.run_uri, "eval", f"{split}.json")
        if storage.exists(uri, opts):
            evals.append(json.loads(storage.read_text(uri, opts)))
    if evals:
        lines += ["## Evaluation", ""]
        metric_keys = sorted({k for e in evals for k in e["metrics"]})
        lines += [_table([{"split": e["split"], **e["metrics"]} for e in evals], ["split", *metric_keys], percent),
                  ""]
        lines += [f"Checkpoint: `{evals[0]['checkpoint']}`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        lines += task.report_sections(cfg, Path(tmp))
        plot_curves(rows, Path(tmp) / "curves.png")
        (Path(tmp) / "report.md").write_text("\n".join(lines))
        storage.upload_dir(tmp, out_uri, opts)
    return storage.join(out_uri, "report.md")
