"""A sixth system that lives only in this folder: a linear probe on synthetic feature vectors.

It is what a separate package adds to polymodal: a ``register(registry)`` function named by an
entry point of the group ``polymodal.systems`` (see ``test_toy_system.py``, which installs that
entry point the way pip would), and nothing edited outside this folder.
"""

from __future__ import annotations

import argparse
import csv

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from polymodal import cliargs, storage
from polymodal.errors import ServeInputError
from polymodal.registry import Command
from polymodal.shards import ShardWriter
from polymodal.task import Task

DIM = 8
SPLIT_ROWS = {"train": 512, "val": 128, "test": 128}


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dim: int = Field(DIM, ge=1)
    hidden: int = Field(16, ge=1)


class ToyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: list[float]


class ToyResponse(BaseModel):
    label: int
    prob: float


def write_split(uri: str, x: np.ndarray, y: np.ndarray, split: str, opts=None) -> str:
    columns = {"x": {"dtype": "float32", "shape": [x.shape[1]]}, "label": {"dtype": "int64", "shape": []}}
    with ShardWriter(uri, task="toy.classify", split=split, columns=columns, opts=opts, progress=False) as w:
        w.write({"x": x.astype(np.float32), "label": y.astype(np.int64)})
    return uri


class ToyTask(Task):
    name = "toy.classify"
    model_config_cls = ToyConfig
    presets = {"tiny": lambda: {"hidden": 16}, "paper": lambda: {"hidden": 64}}
    primary_metric = "accuracy"
    fraction_metrics = frozenset({"accuracy"})

    def build_model(self, cfg):
        return nn.Sequential(nn.Linear(cfg.dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 2))

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"].float()), batch["label"]), {}

    def predict(self, model, batch):
        return {"pred": model(batch["x"].float()).argmax(-1).cpu().numpy(), "label": batch["label"].cpu().numpy()}

    def metrics(self, outputs):
        return {"accuracy": float(np.mean(outputs["pred"] == outputs["label"]))}

    def synth(self, out_uri, *, seed=0, scale=1.0, storage=None, progress=True):
        """The label is the sign of a fixed direction in feature space: a linear probe finds it."""
        rng = np.random.default_rng(seed)
        w = rng.normal(size=DIM)
        out = {}
        for split, n in SPLIT_ROWS.items():
            x = rng.normal(size=(max(int(n * scale), 16), DIM))
            out[split] = write_split(f"{out_uri.rstrip('/')}/{split}", x, (x @ w > 0).astype(int), split, storage)
        return out

    def request_model(self, cfg):
        return ToyRequest

    def response_model(self, cfg):
        return ToyResponse

    def serve_predict(self, model, requests):
        width = model[0].in_features
        for i, r in enumerate(requests):
            if len(r.x) != width:
                raise ServeInputError("x", f"expected {width} values, got {len(r.x)}")
        with torch.no_grad():
            probs = model(torch.tensor([r.x for r in requests], dtype=torch.float32)).softmax(-1)
        return [ToyResponse(label=int(p.argmax()), prob=float(p.max())) for p in probs]

    def example_request(self, cfg, data_uri):
        from polymodal.shards import first_rows

        return {"x": first_rows(data_uri, 1, cfg.storage)["x"][0].tolist()}


def _csv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="a CSV of x0..x7,label rows")
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument("--split", default="train")
    cliargs.add_config(p, required=False)


def _csv_run(args: argparse.Namespace) -> None:
    with open(args.source, newline="") as f:
        rows = list(csv.reader(f))
    data = np.array(rows[1:], dtype=np.float64)
    write_split(args.out, data[:, :-1], data[:, -1].astype(int), args.split, cliargs.storage_options(args))
    print(f"{args.split}: {args.out} ({len(data)} rows)")


def register(registry) -> None:
    registry.add_task(ToyTask())
    registry.add_import_format(Command("toy-csv", "the toy system's CSV of features and a label", _csv_args, _csv_run))
