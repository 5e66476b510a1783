"""Checkpoint layout and the small safetensors export of the trainable weights.

A checkpoint folder holds::

    deepspeed/        DeepSpeed engine state (each rank's ZeRO shards; frozen weights excluded)
    model/            the export that evaluate and serve load, no DeepSpeed needed:
      config.yaml       the experiment config that trained it
      trainable.safetensors   every parameter with requires_grad, full (ZeRO-3 gathered)
      export.json       task, epoch, global step, metrics
    state.json        loop position: epoch finished, global step
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from polymodal.config import ExperimentConfig, validate_config
from polymodal.errors import PolymodalError

DS_DIR = "deepspeed"
DS_TAG = "state"
MODEL_DIR = "model"
STATE_FILE = "state.json"


def trainable_state(model: nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """Full CPU copies of every trainable parameter (collective under ZeRO-3: call on all ranks)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return {n: p.detach().float().cpu().clone() for n, p in named}
    return {n: p.detach().float().cpu().clone() for n, p in named}


def write_export(path: Path, cfg: ExperimentConfig, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(cfg.to_yaml())
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "trainable.safetensors"))
    (path / "export.json").write_text(json.dumps({"task": cfg.task, **info}, indent=2, default=float))


def load_export(path: str | Path) -> tuple[ExperimentConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a local ``model/`` export: (config, trainable weights, info)."""
    import yaml

    path = Path(path)
    if (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR
    missing = [f for f in ("config.yaml", "trainable.safetensors", "export.json") if not (path / f).exists()]
    if missing:
        raise PolymodalError(f"{path} is not a polymodal model export: missing {', '.join(missing)}")
    cfg = validate_config(yaml.safe_load((path / "config.yaml").read_text()), str(path / "config.yaml"))
    weights = load_file(str(path / "trainable.safetensors"))
    info = json.loads((path / "export.json").read_text())
    return cfg, weights, info


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
