"""The encoding-model report: tables per subject and per story, and the plots labs look at.

Plots (PNG, beside ``report.md`` in ``<run>/report/``):

* ``hist.png``: per-voxel held-out r, one histogram per feature space (this run and every
  ``--compare`` run), one panel per subject;
* ``stories.png``: the best- and the worst-predicted held-out story of each subject (the lab
  report's stability check: does one story carry the result?);
* ``subjects.png``: subject versus subject: the distribution of r per subject and its summaries;
* ``alphas.png``: how often each ridge penalty won, per subject.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from polymodal import storage
from polymodal.config import ExperimentConfig
from polymodal.errors import PolymodalError
from polymodal.runs import markdown_table

from .pipeline import load_subject_eval


def _load_eval(run_uri: str, opts) -> dict[str, Any]:
    uri = storage.join(run_uri, "eval", "test.json")
    if not storage.exists(uri, opts):
        raise PolymodalError(f"{run_uri} has no eval/test.json: fit it first (polymodal train)")
    return json.loads(storage.read_text(uri, opts))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _zero_line_legend(ax, title: str, xlabel: str) -> None:
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel="voxels")
    ax.legend(fontsize=7)


def plot_histograms(runs: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    """``runs``: label (feature space) -> subject -> per-voxel r."""
    plt = _plt()
    subjects = sorted({s for per in runs.values() for s in per})
    fig, axes = plt.subplots(1, len(subjects), figsize=(4.2 * len(subjects), 3.4), squeeze=False)
    for ax, subject in zip(axes[0], subjects):
        values = [r for per in runs.values() for s, r in per.items() if s == subject]
        lo, hi = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
        bins = np.linspace(lo, hi, 41)
        for label, per in runs.items():
            if subject in per:
                r = per[subject]
                ax.hist(r, bins=bins, histtype="step", linewidth=1.4, label=f"{label} (mean {r.mean():.3f})")
        _zero_line_legend(ax, f"subject {subject}", "held-out r per voxel")
    _save(plt, fig, path)


def plot_best_worst(story_r: dict[str, tuple[list[str], np.ndarray]], path: Path) -> None:
    """``story_r``: subject -> (story names, (stories, voxels) r)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(story_r), figsize=(4.2 * len(story_r), 3.4), squeeze=False)
    for ax, (subject, (names, r)) in zip(axes[0], sorted(story_r.items())):
        means = r.mean(axis=1)
        best, worst = int(np.argmax(means)), int(np.argmin(means))
        bins = np.linspace(float(r.min()), float(r.max()), 41)
        ax.hist(r[best], bins=bins, histtype="step", linewidth=1.4, label=f"best: {names[best]} ({means[best]:.3f})")
        ax.hist(r[worst], bins=bins, histtype="step", linewidth=1.4,
                label=f"worst: {names[worst]} ({means[worst]:.3f})")
        _zero_line_legend(ax, f"subject {subject}", "r per voxel within one story")
    _save(plt, fig, path)


def plot_subjects(r: dict[str, np.ndarray], summaries: dict[str, dict[str, float]], path: Path) -> None:
    plt = _plt()
    subjects = sorted(r)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].boxplot([r[s] for s in subjects], showfliers=False)
    axes[0].set_xticks(range(1, len(subjects) + 1), subjects)
    axes[0].axhline(0, color="grey", linewidth=0.8)
    axes[0].set(title="held-out r per voxel", ylabel="r")
    keys = ["mean", "median", "top5", "top1"]
    width = 0.8 / len(keys)
    x = np.arange(len(subjects))
    for i, k in enumerate(keys):
        axes[1].bar(x + i * width, [summaries[s][k] for s in subjects], width, label=k)
    axes[1].set_xticks(x + 0.4 - width / 2, subjects)
    axes[1].set(title="summaries per subject", ylabel="r")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    _save(plt, fig, path)


def plot_alphas(alphas: dict[str, np.ndarray], grid: list[float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(alphas)
    for i, (subject, a) in enumerate(sorted(alphas.items())):
        counts = [int(np.isclose(a, g, rtol=1e-4).sum()) for g in grid]
        ax.bar(np.arange(len(grid)) + i * width, counts, width, label=subject)
    ax.set_xticks(np.arange(len(grid)) + 0.4 - width / 2, [f"{g:.3g}" for g in grid], rotation=45, fontsize=7)
    ax.set(title="best ridge penalty per voxel", xlabel="alpha", ylabel="voxels")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def write_report(cfg: ExperimentConfig, compare: list[str] | None = None) -> str:
    """Write ``<run>/report/report.md`` with its PNGs; return the report URI."""
    opts = cfg.storage
    ev = _load_eval(cfg.run_uri, opts)
    subjects = sorted(ev["subjects"])
    evals = {s: load_subject_eval(cfg.run_uri, s, opts) for s in subjects}
    runs = {f"{ev['feature']} (this run)": {s: evals[s]["r"] for s in subjects}}
    compared = []
    for uri in compare or []:
        other = _load_eval(uri, opts)
        label = f"{other['feature']} ({uri.rstrip('/').rsplit('/', 1)[-1]})"
        runs[label] = {s: load_subject_eval(uri, s, opts)["r"] for s in other["subjects"]}
        compared.append({"run": uri, "feature": other["feature"], **other["metrics"]})
    m = cfg.model
    lines = [f"# fMRI encoding model `{cfg.name}`", "",
             f"- data: `{cfg.data.train}`; feature space: **{m.feature}**; delays {m.delays}; trim "
             f"{m.trim.start:g}/{m.trim.end:g} {m.trim.unit}; alphas logspace({m.alphas.log10_min:g}, "
             f"{m.alphas.log10_max:g}, {m.alphas.num}); {m.cv}-fold CV grouped by story, score {m.score}",
             f"- held-out stories: {', '.join(ev['test_stories'])}",
             f"- weights and alphas: `{cfg.run_uri}/subjects/<subject>/ridge/chunks/*.safetensors`", "",
             "## Held-out correlation per subject", "",
             "top1 / top5: mean r of the best 1% / 5% of voxels; cv_score: mean over voxels of the "
             "cross-validated score at each voxel's chosen alpha.", "",
             markdown_table([{"subject": s, **ev["subjects"][s]} for s in subjects],
                    ["subject", "voxels", "mean", "median", "top1", "top5", "cv_score", "median_alpha"]),
             "![held-out r per voxel](hist.png)", "", "## Subject versus subject", "", "![subjects](subjects.png)", ""]
    if compared:
        lines += ["## Compared runs", "",
                  markdown_table([{"run": cfg.run_uri, "feature": ev["feature"], **ev["metrics"]}, *compared],
                         ["run", "feature", "cv_score", "test_mean_r", "test_median_r", "test_top1_r",
                          "test_top5_r"]), ""]
    lines += ["## Per held-out story", "",
              "Each story's per-voxel r, computed within that story only: a result carried by one story "
              "shows up here.", "",
              markdown_table(ev["stories"], ["subject", "story", "mean", "median", "top1", "top5"]),
              "![best and worst story](stories.png)", "", "## Ridge penalties", "", "![alphas](alphas.png)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        plot_histograms(runs, out / "hist.png")
        plot_best_worst({s: (ev["test_stories"], evals[s]["story_r"]) for s in subjects}, out / "stories.png")
        plot_subjects({s: evals[s]["r"] for s in subjects}, ev["subjects"], out / "subjects.png")
        plot_alphas({s: evals[s]["best_alphas"] for s in subjects}, m.alphas.values, out / "alphas.png")
        (out / "report.md").write_text("\n".join(lines))
        storage.upload_dir(tmp, storage.join(cfg.run_uri, "report"), opts)
    return storage.join(cfg.run_uri, "report", "report.md")
