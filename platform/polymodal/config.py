"""Typed, strict experiment configs.

An experiment YAML holds values only; these pydantic models hold the rules. Unknown keys,
wrong types and impossible values are all reported at once, each with its dotted path::

    task: wander.classification
    model: {preset: tiny, rank_h: 4}
    data: {train: s3://bucket/wander/train, val: s3://bucket/wander/val}
    optim: {epochs: 3, lr: 1.0e-3, batch_size: 32}
    storage_path: s3://bucket/runs

``model`` is validated against the model-config class that the task registers, after its
``preset`` (``tiny`` or ``paper``) has filled the defaults.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from polymodal.errors import ConfigError
# re-exported: every config section builds on these; they live below storage.py, which needs them
from polymodal.schema import CREDENTIALS_IN_URL, StorageOptions, StrictModel


class TrainSource(StrictModel):
    """One entry of a mixed training set (``data.train`` as a list)."""

    uri: str = Field(..., description="URI of a training dataset folder (manifest.json + shards)")
    weight: float = Field(1.0, gt=0, description="share of the training batches drawn from this dataset, relative "
                                                 "to the other entries' weights")


class DataConfig(StrictModel):
    train: str | list[TrainSource] = Field(
        ..., description="URI of the training dataset folder (manifest.json + shards), or a list of {uri, weight} "
                         "entries to train on several datasets at once: every batch comes from one of them, drawn "
                         "by weight (seeded), and a dataset that runs out mid-epoch starts over")
    val: str | None = None
    test: str | None = None
    shuffle_buffer: int = Field(256, ge=0, description="rows in the local shuffle buffer; 0 disables")
    verify: Literal["footer", "checksum"] = Field(
        "footer", description="footer: sizes and Parquet schemas before training; checksum: also sha256 of every shard")
    cache_below_mb: float = Field(256.0, ge=0, description="Ray Train: a dataset whose shards total less than this is "
                                  "read once, by the driver, into Ray's object store and every epoch iterates it from "
                                  "there (a fresh read costs seconds of start-up per epoch); 0 streams every dataset "
                                  "from storage")
    prefetch_batches: int = Field(
        2, ge=0, description="training batches each worker reads and converts ahead of its steps, on a background "
                             "thread that starts the first epoch's read while the model is built and each next "
                             "epoch's during the previous epoch's evaluation and checkpoint (each batch held "
                             "ready costs its size in memory); 0 reads every batch on the loop's thread when it "
                             "is asked for")

    @field_validator("train")
    @classmethod
    def _train_entries(cls, v: str | list[TrainSource]) -> str | list[TrainSource]:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list names no training data; give a URI or at least one {uri, weight}")
            uris = [s.uri for s in v]
            repeated = sorted({u for u in uris if uris.count(u) > 1})
            if repeated:
                raise ValueError(f"dataset {repeated[0]!r} is listed twice; give it one entry with the summed weight")
        return v

    @property
    def train_sources(self) -> list[TrainSource]:
        """The training datasets as ``{uri, weight}`` entries (one, of weight 1, for a plain URI)."""
        return [TrainSource(uri=self.train)] if isinstance(self.train, str) else list(self.train)


class OptimConfig(StrictModel):
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "linear", "cosine", "step"] = Field(
        "cosine", description="after warm-up: constant, linear or cosine decay to 0, or step: the lr times "
                              "gamma every step_size epochs (torch's StepLR stepped once per epoch)")
    warmup_steps: int = Field(0, ge=0)
    step_size: int | None = Field(None, ge=1, description="schedule step: epochs between two decays")
    gamma: float = Field(0.1, gt=0, le=1, description="schedule step: lr factor at each decay")
    batch_size: int = Field(32, ge=1, description="micro-batch per worker")
    grad_accum: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 on CPU")
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for smoke runs")
    max_steps: int | None = Field(
        None, ge=1, description="end the run at this global (optimizer) step, with a final checkpoint and evaluation; "
                                "with epochs, whichever comes first ends the run (the lr schedule spans the shorter)")

    @model_validator(mode="after")
    def _step_size_with_step(self) -> "OptimConfig":
        if self.schedule == "step" and self.step_size is None:
            raise ValueError("schedule 'step' needs optim.step_size (epochs between two lr decays by optim.gamma)")
        if self.schedule != "step" and self.step_size is not None:
            raise ValueError(f"optim.step_size applies only to schedule 'step', not {self.schedule!r}; remove it")
        return self


class DeepSpeedOptions(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    config: str | None = Field(
        None, description="a DeepSpeed JSON or YAML (*.yaml) file, path or s3:// URI, merged with the config "
                          "polymodal computes: the fields it derives from its own settings (batch sizes, precision, "
                          "clipping, optimizer, ZeRO stage, the offloads it is asked for) hold, and the file may "
                          "repeat them only with the same value (another is an error naming both places); anything "
                          "else in it passes through, e.g. ZeRO-3 offload_param/offload_optimizer to cpu or nvme")

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self) -> "DeepSpeedOptions":
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3 (parameter offload is a ZeRO-3 feature)")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class ScalingOptions(StrictModel):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(default_factory=dict)


class FailureOptions(StrictModel):
    max_failures: int = Field(0, ge=-1, description="worker-group restarts before giving up; -1 = forever")


class CheckpointOptions(StrictModel):
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept (epoch and step ones alike), the best one also")
    every_steps: int | None = Field(
        None, ge=1, description="also checkpoint every this many global steps, mid-epoch; a killed run resumes "
                                "from the newest, at the same place in the data")


class EvalOptions(StrictModel):
    every_steps: int | None = Field(
        None, ge=1, description="also evaluate on data.val every this many global steps, mid-epoch (a row with its "
                                "global_step in logs/metrics.csv and TensorBoard)")


class MlflowOptions(StrictModel):
    uri: str = Field(..., min_length=1, description="MLflow tracking URI: http(s)://host:port of an `mlflow server` "
                                                    "(what a cluster needs: every worker reaches it), or "
                                                    "sqlite:///path.db for a single machine without a server")
    experiment: str = Field("polymodal", min_length=1, description="MLflow experiment the runs go to (created "
                                                                   "if missing)")


class TrackingConfig(StrictModel):
    mlflow: MlflowOptions | None = Field(
        None, description="log to MLflow (needs pip install 'polymodal[tracking]'): the flattened config as "
                          "params, per-step and per-epoch metrics, and logs/metrics.csv, TensorBoard files and "
                          "the report as artifacts; a Tune sweep logs one run per trial")


class ExperimentConfig(StrictModel):
    """One experiment: what to train, on which data, how, and where results go."""

    task: str
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="run name under storage_path")
    seed: int = 0
    model: SerializeAsAny[BaseModel]
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedOptions = Field(default_factory=DeepSpeedOptions)
    scaling: ScalingOptions = Field(default_factory=ScalingOptions)
    failure: FailureOptions = Field(default_factory=FailureOptions)
    checkpoint: CheckpointOptions = Field(default_factory=CheckpointOptions)
    eval: EvalOptions = Field(default_factory=EvalOptions)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage_path: str = Field("runs", description="folder or s3:// URI where runs are written")
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @property
    def run_uri(self) -> str:
        return self.storage_path.rstrip("/") + "/" + self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that :func:`validate_config` turns back into an equal config."""
        out = self.model_dump(mode="json")
        out["optim"]["betas"] = list(out["optim"]["betas"])
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class _RawExperiment(ExperimentConfig):
    """First validation pass: everything but the model section, which depends on the task."""

    model: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError([(item, "override must look like dotted.key=value")])
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([(key or item, "override key must be a dotted path like optim.lr")])
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError([(key, f"value {text!r} is not valid YAML: {exc}")]) from None
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set ``raw[a][b][c] = value`` for ``key="a.b.c"`` in place, creating missing sections."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError([(key, f"cannot set a key below {part!r}, which holds a value, not a section")])
        node = child
    node[parts[-1]] = value
    return raw


def _apply_each(raw: dict[str, Any], overrides: list[str] | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A copy of ``raw`` with every well-formed override applied, and the errors of the others."""
    out, errors = copy.deepcopy(raw), []
    for item in overrides or []:
        try:
            set_dotted(out, *parse_override(item))
        except ConfigError as exc:
            errors += exc.errors
    return out, errors


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``dotted.key=value`` applied; one
    :class:`ConfigError` lists every malformed override."""
    out, errors = _apply_each(raw, overrides)
    if errors:
        raise ConfigError(errors)
    return out


# --------------------------------------------------------------------------- validation


def _errors_from(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("__root__",))
        path = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `polymodal train --help` for the schema)"
        elif "input" in err and err["type"] not in ("missing", CREDENTIALS_IN_URL) \
                and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        out.append((path, msg))
    return out


def validate_model_section(task_name: str, model: dict[str, Any]) -> tuple[BaseModel | None, list[tuple[str, str]]]:
    """Fill ``model`` from its preset and validate it against the task's model-config class."""
    from polymodal.registry import get_task, task_names

    try:
        task = get_task(task_name)
    except KeyError:
        return None, [("task", f"unknown task {task_name!r}; known tasks: {', '.join(task_names())}")]
    model = dict(model or {})
    preset = model.pop("preset", "tiny")
    if preset not in task.presets:
        return None, [("model.preset", f"unknown preset {preset!r} for {task_name}; choose one of {sorted(task.presets)}")]
    values = {**task.presets[preset](), **model}
    try:
        return task.model_config_cls.model_validate(values), []
    except ValidationError as exc:
        return None, _errors_from(exc, "model")


def validate_config(raw: dict[str, Any], source: str | None = None) -> ExperimentConfig:
    """Validate a raw dict; raise one :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError([("", f"config must be a mapping, got {type(raw).__name__}")], source)
    errors: list[tuple[str, str]] = []
    try:
        _RawExperiment.model_validate(raw)
    except ValidationError as exc:
        errors += _errors_from(exc)
    model_obj = None
    task = raw.get("task")
    if isinstance(task, str):
        model_raw = raw.get("model", {})
        if not isinstance(model_raw, dict):
            errors.append(("model", "must be a mapping with at least a preset"))
        else:
            model_obj, model_errors = validate_model_section(task, model_raw)
            errors += model_errors
    if errors:
        raise ConfigError(errors, source)
    return ExperimentConfig.model_validate({**raw, "model": model_obj})


def read_yaml(source: str, what: str = "config", storage: StorageOptions | None = None) -> Any:
    """Parse a YAML file from a path or URI (``s3://`` too); a missing file or bad YAML is a
    :class:`ConfigError` naming ``source``. An empty file reads as ``{}``."""
    from polymodal import storage as st

    try:
        text = st.read_text(source, storage)
    except FileNotFoundError:
        raise ConfigError([("", f"{what} file not found: {source}")], source) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")], source) from None


def load_config(source: str, overrides: list[str] | None = None,
                storage: StorageOptions | None = None) -> ExperimentConfig:
    """Read a YAML config from a path or URI (``s3://`` too), apply overrides, validate.

    One :class:`ConfigError` lists malformed overrides and every validation error together."""
    raw = read_yaml(source, "config", storage)
    if not isinstance(raw, dict):
        return validate_config(raw, source)  # raises: a config must be a mapping
    merged, errors = _apply_each(raw, overrides)
    try:
        cfg = validate_config(merged, source)
    except ConfigError as exc:
        raise ConfigError(errors + exc.errors, source) from None
    if errors:
        raise ConfigError(errors, source)
    return cfg
