"""Pure builders for the DeepSpeed config and the learning-rate schedule, the merge of a
user's DeepSpeed file (``deepspeed.config``) under the computed config, and DeepSpeed's import
(:func:`import_deepspeed`)."""

from __future__ import annotations

import copy
import json
import math
import sys
from types import ModuleType
from typing import Any, Literal

from polymodal.config import ExperimentConfig
from polymodal.errors import ConfigError

DeviceType = Literal["cpu", "cuda"]


def import_deepspeed() -> ModuleType:
    """``import deepspeed``, without the MLflow import DeepSpeed makes on the way.

    ``import deepspeed`` imports its autotuner, which imports MLflow when it is installed, only to
    log autotuning experiments (the ``deepspeed --autotuning`` launcher, which polymodal never
    runs). MLflow's import scans every installed package's entry points: 1-3 s of CPU, most of
    DeepSpeed's own import, paid by every Train worker before its first step (and by the driver,
    which checks the DeepSpeed config). While DeepSpeed is imported ``mlflow`` reads as absent, so
    its autotuner records "no MLflow"; afterwards ``import mlflow`` works as before (MLflow
    tracking, ``tracking.mlflow``, imports it itself). Where MLflow is imported already, this is a
    plain ``import deepspeed``. Every polymodal import of DeepSpeed goes through here; a thread
    that imports MLflow for the first time while another thread is in here gets an ImportError.
    """
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
    try:
        import deepspeed
    finally:
        if hide and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed


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


# --------------------------------------------------------------------------- deepspeed.config pass-through

Path_ = tuple[str, ...]


def owned_keys(cfg: ExperimentConfig, *, world_size: int, device_type: DeviceType) -> dict[Path_, str]:
    """The DeepSpeed keys polymodal sets from its own config, each with the setting it comes from
    (``"optim.batch_size=4"``). A ``deepspeed.config`` file may repeat them only with the same value;
    every other key it holds passes through, and overrides polymodal's defaults for keys not listed
    here (``steps_per_print``, ``overlap_comm``, ``pin_memory``, ...)."""
    o, ds = cfg.optim, cfg.deepspeed
    precision = f"optim.precision={o.precision} ({resolve_precision(o.precision, device_type)} on {device_type})"
    return {
        ("train_micro_batch_size_per_gpu",): f"optim.batch_size={o.batch_size}",
        ("gradient_accumulation_steps",): f"optim.grad_accum={o.grad_accum}",
        ("train_batch_size",): (f"optim.batch_size x optim.grad_accum x {world_size} workers="
                                f"{o.batch_size * o.grad_accum * world_size}"),
        ("optimizer", "type"): "polymodal's optimizer=AdamW",
        ("optimizer", "params", "lr"): f"optim.lr={o.lr}",
        ("optimizer", "params", "betas"): f"optim.betas={list(o.betas)}",
        ("optimizer", "params", "weight_decay"): f"optim.weight_decay={o.weight_decay}",
        ("optimizer", "params", "eps"): "polymodal's AdamW eps=1e-08",
        ("optimizer", "params", "torch_adam"): "polymodal's torch_adam=true",
        ("gradient_clipping",): f"optim.grad_clip={o.grad_clip}",
        ("bf16", "enabled"): precision,
        ("fp16", "enabled"): precision,
        ("zero_optimization", "stage"): f"deepspeed.zero_stage={ds.zero_stage}",
        ("zero_optimization", "offload_optimizer", "device"): "deepspeed.offload_optimizer=true (device cpu)",
        ("zero_optimization", "offload_param", "device"): "deepspeed.offload_params=true (device cpu)",
    }


# sections that would fight the loop: it hands DeepSpeed its own lr schedule (optim.schedule)
REFUSED = {"scheduler": "the learning-rate schedule is optim.schedule / optim.warmup_steps (the loop passes it "
                        "to DeepSpeed); remove the scheduler section"}


def _leaves(tree: dict[str, Any], prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _leaves(v, prefix + (str(k),))
        else:
            out.append((prefix + (str(k),), v))
    return out


def _get(tree: dict[str, Any], path: Path_) -> tuple[bool, Any]:
    node: Any = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):  # true is not 1 in a config
        return type(a) is type(b) and a == b
    return a == b


def _merge_over(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` written over it, section by section."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge_over(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def merge_deepspeed_config(computed: dict[str, Any], user: dict[str, Any], cfg: ExperimentConfig, *,
                           world_size: int, device_type: DeviceType, source: str | None = None) -> dict[str, Any]:
    """``user`` (a DeepSpeed config) merged with ``computed`` (:func:`build_deepspeed_config`).

    The fields polymodal computes from its own settings (:func:`owned_keys`) hold: ``user`` may repeat
    them with the same value, and another value is a conflict. Its other keys pass through, and
    replace polymodal's defaults where it computes one (``steps_per_print``, ``overlap_comm``,
    ``offload_*.pin_memory``, ...). A key polymodal leaves out (an offload it is not asked for,
    ``gradient_clipping`` with ``optim.grad_clip: 0``) comes from ``user``. An owned key set to
    ``"auto"`` (as in the DeepSpeed files written for Hugging Face's Trainer) takes polymodal's value.
    one :class:`~polymodal.errors.ConfigError` (naming ``source``) lists every conflict, refused
    section and DeepSpeed validation error (:func:`check_deepspeed_config`) at once.
    """
    where = "deepspeed.config"
    errors: list[tuple[str, str]] = [(where, f"{k}: {why}") for k, why in REFUSED.items() if k in user]
    owned = owned_keys(cfg, world_size=world_size, device_type=device_type)
    user = copy.deepcopy(user)
    for path, value in _leaves(user):
        present, ours = _get(computed, path)
        if path in owned and value == "auto":  # Hugging Face's "fill it in": ours is used
            _get(user, path[:-1])[1].pop(path[-1])
        elif path in owned and present and not _same(ours, value):
            errors.append((where, f"{'.'.join(path)}={json.dumps(value)} conflicts with {owned[path]}: "
                                  "set it in one place"))
    merged = _merge_over(computed, user)  # owned keys are equal by now; the rest is the user's
    if not errors:
        errors += check_deepspeed_config(merged)
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)), source)
    return merged


def check_deepspeed_config(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Validate a whole DeepSpeed config with DeepSpeed's own classes (no process group needed):
    ``DeepSpeedZeroConfig`` for ``zero_optimization`` (ZeRO-3 offload of parameters and optimizer
    state included: device none/cpu/nvme, nvme_path, pin_memory, buffer sizes; unknown keys refused),
    then ``DeepSpeedConfig`` for the rest. Returns ``(deepspeed.config, message)`` errors."""
    import_deepspeed()
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from pydantic import ValidationError

    where = "deepspeed.config"

    def pydantic_errors(exc: ValidationError, section: str) -> list[tuple[str, str]]:
        out = []
        for err in exc.errors():
            key = ".".join([section] * bool(section) + [str(p) for p in err["loc"]])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            out.append((where, f"{key}: {msg} (got {err.get('input')!r})"))
        return out

    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [(where, f"zero_optimization must be a mapping, got {zero!r}")]
    try:
        zc = DeepSpeedZeroConfig(**zero)
    except ValidationError as exc:
        return pydantic_errors(exc, "zero_optimization")
    errors = []
    if int(zc.stage) != 3 and zc.offload_param is not None and zc.offload_param.device != "none":
        device = getattr(zc.offload_param.device, "value", zc.offload_param.device)  # an enum, or its value
        errors.append((where, f"zero_optimization.offload_param (device {device}) needs "
                              f"ZeRO stage 3, and the stage is {int(zc.stage)}: set deepspeed.zero_stage: 3"))
    for key in ("offload_param", "offload_optimizer"):
        off = getattr(zc, key)
        if off is not None and off.device == "nvme" and off.nvme_path is None:
            errors.append((where, f"zero_optimization.{key}.device=nvme needs zero_optimization.{key}.nvme_path "
                                  "(a folder on a local NVMe drive of every node)"))
    if errors:
        return errors
    # train_batch_size depends on the world size, which DeepSpeedConfig reads from a process group
    # that may not exist here (it then assumes 1): the loop computes it, so leave it out of the check
    try:
        DeepSpeedConfig({k: v for k, v in config.items() if k != "train_batch_size"})
    except ValidationError as exc:
        return pydantic_errors(exc, "")
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        return [(where, f"DeepSpeed refuses the merged config: {exc}")]
    return []


def read_deepspeed_file(uri: str, opts: Any = None) -> dict[str, Any]:
    """A DeepSpeed config file (JSON, or YAML by a .yaml/.yml name) from a path or ``s3://`` URI."""
    import yaml

    from polymodal import storage

    try:
        text = storage.read_text(uri, opts)
    except FileNotFoundError:
        raise ConfigError([("deepspeed.config", f"file not found: {uri}")]) from None
    try:
        data = yaml.safe_load(text) if uri.lower().endswith((".yaml", ".yml")) else json.loads(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "YAML" if uri.lower().endswith((".yaml", ".yml")) else "JSON (name a YAML file *.yaml)"
        raise ConfigError([("deepspeed.config", f"not valid {kind}: {exc}")], uri) from None
    if not isinstance(data, dict):
        raise ConfigError([("deepspeed.config", f"must hold a mapping of DeepSpeed settings, got "
                                                f"{type(data).__name__}")], uri)
    return data


def deepspeed_config_for(cfg: ExperimentConfig, *, world_size: int, device_type: DeviceType) -> dict[str, Any]:
    """The DeepSpeed config a run uses: :func:`build_deepspeed_config`, merged over the file that
    ``deepspeed.config`` names (if any) by :func:`merge_deepspeed_config`."""
    computed = build_deepspeed_config(cfg, world_size=world_size, device_type=device_type)
    if not cfg.deepspeed.config:
        return computed
    user = read_deepspeed_file(cfg.deepspeed.config, cfg.storage)
    return merge_deepspeed_config(computed, user, cfg, world_size=world_size, device_type=device_type,
                                  source=cfg.deepspeed.config)
