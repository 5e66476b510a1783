"""A Markdown report with metric tables and a PNG training curve for one run.

Metrics are logged as fractions in [0, 1] (see :mod:`polymodal.metrics`); the tables print the
task's ``fraction_metrics`` as percentages, each cell labelled ``%``, for the human reader."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from polymodal import runs, storage, tracking
from polymodal.config import ExperimentConfig


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


def _speed_section(rows: list[dict[str, str]]) -> list[str]:
    """Throughput and data wait per epoch (the rows of epoch ends; runs from before ``data_wait_s``
    show throughput only)."""
    keys = [k for k in ("epoch", "samples_per_s", "data_wait_s", "data_wait_frac") if k in rows[0]]
    epochs = [r for r in rows if r.get("samples_per_s") not in (None, "")]
    if "samples_per_s" not in keys or not epochs:
        return []
    return ["### Speed", "",
            "`data_wait_s`: seconds the train loop waited for batches in the epoch; `data_wait_frac`: its share "
            "of the epoch (a high share means the data path, not the model, sets the pace).", "",
            runs.markdown_table(epochs, keys, {"data_wait_frac"}), ""]


def write_report(cfg: ExperimentConfig, compare: list[str] | None = None) -> str:
    """The run's report, written by its task (:meth:`Task.write_report`); return its URI.

    ``compare``: other runs of the same task shown beside this one, where the task supports it."""
    from polymodal.registry import get_task

    return get_task(cfg.task).write_report(cfg, compare=compare)


def write_training_report(task, cfg: ExperimentConfig) -> str:
    """Write ``<run>/report/report.md`` and ``curves.png`` of a run of the shared train loop (the
    per-epoch ``logs/metrics.csv``, the ``eval/`` results, the task's own sections); return the
    report URI."""
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
    percent = task.fraction_metrics
    if percent:
        lines += ["Accuracies, recalls and other shares are shown in percent (%); `logs/metrics.csv` and "
                  "`eval/<split>.json` hold them as fractions in [0, 1].", ""]
    lines += [runs.markdown_table(rows, keys, percent), ""]
    lines += _speed_section(rows)
    evals = []
    for split in ("val", "test"):
        uri = runs.eval_uri(cfg.run_uri, split)
        if storage.exists(uri, opts):
            evals.append(json.loads(storage.read_text(uri, opts)))
    if evals:
        lines += ["## Evaluation", ""]
        metric_keys = sorted({k for e in evals for k in e["metrics"]})
        lines += [runs.markdown_table([{"split": e["split"], **e["metrics"]} for e in evals], ["split", *metric_keys],
                                      percent), ""]
        lines += [f"Checkpoint: `{evals[0]['checkpoint']}`", ""]
    with tempfile.TemporaryDirectory() as tmp:
        lines += task.report_sections(cfg, Path(tmp))
        plot_curves(rows, Path(tmp) / "curves.png")
        (Path(tmp) / "report.md").write_text("\n".join(lines))
        storage.upload_dir(tmp, out_uri, opts)
        tracking.log_report(cfg, Path(tmp))  # into the run's MLflow run, when tracking is on
    return storage.join(out_uri, "report.md")
