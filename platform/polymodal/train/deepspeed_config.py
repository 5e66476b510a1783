"""Pure builders for the DeepSpeed config and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any, Literal

from polymodal.config import ExperimentConfig

DeviceType = Literal["cpu", "cuda"]


def resolve_precision(precision: str, device_type: DeviceType) -> Literal["fp32", "bf16", "fp16"]:
    """``auto`` is bf16 on CUDA and fp32 on CPU (gloo + torch Adam train in fp32 there)."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "fp16" and device_type == "cpu":
        raise ValueError("optim.precision=fp16 needs CUDA; use fp32 (or auto) on CPU")
    return precision  # type: ignore[return-value]


def build_deepspeed_config(cfg: ExperimentConfig, *, world_size: int, device_type: DeviceType) -> dict[str, Any]:
    """DeepSpeed JSON config for ``cfg`` on ``world_size`` data-parallel ranks.

    The optimizer is AdamW with ``torch_adam: true`` so DeepSpeed uses ``torch.optim.AdamW``
    instead of JIT-compiling its fused Adam (minutes on CPU, and it needs a compiler).
    CPU optimizer offload still uses DeepSpeedCPUAdam, which DeepSpeed builds on first use.
    """
    o, ds = cfg.optim, cfg.deepspeed
    precision = resolve_precision(o.precision, device_type)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=device_type == "cuda", contiguous_gradients=device_type == "cuda")
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": o.batch_size,
        "gradient_accumulation_steps": o.grad_accum,
        "train_batch_size": o.batch_size * o.grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": list(o.betas), "eps": 1e-8,
                       "weight_decay": o.weight_decay, "torch_adam": True},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 10**9,  # the loop logs; DeepSpeed's own prints are noise
        "wall_clock_breakdown": False,
    }
    if o.grad_clip > 0:
        config["gradient_clipping"] = o.grad_clip
    return config


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
                  steps_per_epoch: int = 1, step_size: int | None = None, gamma: float = 0.1) -> float:
    """Factor on the base lr at optimizer step ``step`` (0-based): linear warm-up, then
    constant, linear decay to 0, cosine decay to 0 at ``total_steps``, or ``step``: StepLR
    stepped once per epoch, ``gamma ** (epoch // step_size)`` with ``epoch = step // steps_per_epoch``
    (``steps_per_epoch`` counts optimizer steps)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        if step_size is None or step_size < 1:
            raise ValueError(f"schedule 'step' needs step_size >= 1 (epochs), got {step_size!r}")
        return gamma ** ((step // max(1, steps_per_epoch)) // step_size)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; choose constant, linear, cosine or step")
