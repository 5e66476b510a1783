"""Metrics of a run in ``<run>/logs``: per epoch (and ``eval.every_steps``) a CSV row and TensorBoard
scalars; per optimizer step TensorBoard scalars under ``step/`` (loss, lr, grad_norm, samples_per_s);
both also to MLflow when ``tracking.mlflow`` is set (:mod:`polymodal.tracking`)."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from polymodal import storage
from polymodal.config import StorageOptions
from polymodal.tracking import STEP_PREFIX, MlflowRun


class MetricsLog:
    """Rank-0 writer. Rows are kept in memory (one per epoch and step evaluation) and the whole folder is
    uploaded after each row, so a local folder and S3 behave the same. Step scalars are written to the
    local event file only (no upload, no flush per step); the next row flushes and uploads them."""

    def __init__(self, run_uri: str, opts: StorageOptions | None, start_epoch: int = 0,
                 start_step: int | None = None, mlflow: MlflowRun | None = None):
        self.uri = storage.join(run_uri, "logs")
        self.opts, self.mlflow = opts, mlflow
        self.local = Path(tempfile.mkdtemp(prefix="polymodal-logs-"))
        self.rows: list[dict[str, Any]] = []
        csv_uri = storage.join(self.uri, "metrics.csv")
        if (start_epoch > 0 or start_step is not None) and storage.exists(csv_uri, opts):
            # resumed run: keep the rows that the checkpoint covers (up to its global step, if given)
            rows = list(csv.DictReader(io.StringIO(storage.read_text(csv_uri, opts))))
            self.rows = [r for r in rows if (int(r["global_step"]) <= start_step if start_step is not None
                                             else int(r["epoch"]) < start_epoch)]
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.local / "tensorboard"))

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars of one optimizer step (global ``step``), as TensorBoard tags ``step/<name>``."""
        for key, value in scalars.items():
            self.tb.add_scalar(STEP_PREFIX + key, value, step)
        if self.mlflow is not None:
            self.mlflow.log_step(step, scalars)

    def log(self, row: dict[str, Any]) -> None:
        """One metrics.csv row (an epoch's end or a step evaluation), at its ``global_step``."""
        self.rows.append(row)
        step = int(row.get("global_step", row["epoch"]))
        for key, value in row.items():
            if key not in ("epoch", "global_step") and isinstance(value, (int, float)):
                self.tb.add_scalar(key.replace(".", "/"), value, step)
        self.tb.flush()
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        (self.local / "metrics.csv").write_text(buf.getvalue())
        storage.upload_dir(str(self.local), self.uri, self.opts)
        if self.mlflow is not None:
            self.mlflow.log_row(row)

    def close(self) -> None:
        self.tb.close()
        if self.mlflow is not None:
            self.mlflow.finish(self.local)
