"""Hyperparameter sweeps: Ray Tune drives one Ray Train run per trial.

A search space is a YAML file (``tune_spaces/*.yaml``) that names config fields by their dotted
path and gives each a distribution::

    name: wander-small
    params:
      model.rank_h: {choice: [2, 4, 8]}
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}

Every dotted path and every value the space can produce is checked against the experiment
config before any trial starts. A sweep lives in ``<storage_path>/sweeps/<name>/``: Tune's
state and one folder per trial (``trial_<id>/``), each trial's Train run
(``trials/<id>/``) and, at the end, ``results/`` (CSV and Markdown table, ``best_config.yaml``,
one PNG per swept parameter). Running the same sweep again resumes it: finished trials keep
their results, interrupted ones continue from their last Train checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from polymodal import storage, tracking
from polymodal.config import ExperimentConfig, apply_overrides, read_yaml, set_dotted, validate_config
from polymodal.errors import ConfigError, require

_DOTTED = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_DOTTED_RE = re.compile(_DOTTED)
DottedPath = Annotated[str, StringConstraints(pattern=_DOTTED)]
# a sweep must not move its own trials around or change what is being trained
_UNSWEEPABLE = ("task", "name", "storage_path", "storage")
_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "qrandint")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


Pair = Annotated[list[float], Field(min_length=2, max_length=2)]
IntPair = Annotated[list[int], Field(min_length=2, max_length=2)]
IntTriple = Annotated[list[int], Field(min_length=3, max_length=3)]


class Dist(_Strict):
    """One distribution; exactly one key is set."""

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    grid: Annotated[list[Any], Field(min_length=1)] | None = None
    uniform: Pair | None = Field(None, description="[lo, hi], floats")
    loguniform: Pair | None = Field(None, description="[lo, hi], 0 < lo < hi, sampled in log space")
    randint: IntPair | None = Field(None, description="[lo, hi), hi exclusive")
    qrandint: IntTriple | None = Field(None, description="[lo, hi, q]: multiples of q in [lo, hi], hi inclusive")

    @model_validator(mode="after")
    def _one_valid_kind(self) -> "Dist":
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_KINDS)} (got {given or 'none'})")
        args = getattr(self, given[0])
        if given[0] in ("uniform", "loguniform", "randint", "qrandint") and not args[0] < args[1]:
            raise ValueError(f"{given[0]}: low {args[0]} must be below high {args[1]}")
        if given[0] == "loguniform" and args[0] <= 0:
            raise ValueError(f"loguniform: low {args[0]} must be > 0 (log scale)")
        if given[0] == "qrandint" and (args[2] < 1 or args[0] % args[2] or args[1] % args[2]):
            raise ValueError(f"qrandint: step q={args[2]} must be >= 1 and divide low and high {args[:2]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) is not None)

    @property
    def args(self) -> list[Any]:
        return list(getattr(self, self.kind))

    def extremes(self) -> list[Any]:
        """Every value the config must accept: all options, or both ends of a range."""
        a = self.args
        if self.kind in ("choice", "grid"):
            return a
        if self.kind == "randint":
            return [a[0], a[1] - 1]
        if self.kind == "qrandint":  # low and high are multiples of q, hi inclusive
            return a[:2]
        return a[:2]


class SchedulerSpec(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="None: the base config's optim.epochs")


class SearchSpec(_Strict):
    algorithm: Literal["random", "optuna"] = "random"
    seed: int | None = None


class TrialResources(_Strict):
    """Resources of a trial's driver process; its Train workers ask for ``scaling.*`` on top."""

    cpu: float = Field(1.0, ge=0)
    gpu: float = Field(0.0, ge=0)


class SearchSpace(_Strict):
    """A ``tune_spaces/*.yaml`` file."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="folder under <storage_path>/sweeps")
    task: str | None = Field(None, description="the task this space is written for; a config for another is an error")
    metric: str | None = Field(None, description="default: the task's primary metric")
    mode: Literal["max", "min"] | None = Field(None, description="default: the task's mode")
    num_samples: int = Field(8, ge=1, description="sampled trials (times the grid size when grid params exist)")
    params: Annotated[dict[DottedPath, Dist], Field(min_length=1)]
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources_per_trial: TrialResources = Field(default_factory=TrialResources)
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: as many as fit, data CPUs spared")
    base_overrides: list[str] = Field(default_factory=list, description="dotted.key=value applied to every trial")


@dataclass
class SweepResult:
    """Where a sweep's outputs went and what won."""

    sweep_uri: str
    metric: str
    mode: str
    complete: bool
    trials: list[dict[str, Any]]
    results_csv: str | None = None
    results_md: str | None = None
    best_config: str | None = None
    plots: dict[str, str] = field(default_factory=dict)
    best_trial_id: str | None = None
    best_metric: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading & validation


def _plain(value: Any) -> Any:
    """numpy scalars (what Tune samples) -> Python scalars, so YAML and pydantic take them."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


def trial_raw_config(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a config dict) with each ``dotted.path: value`` applied."""
    out = json.loads(json.dumps(base))  # deep copy of plain data
    for key, value in values.items():
        # set as objects, not re-parsed from text: "1e-05" would read back as a string
        set_dotted(out, key, _plain(value))
    return out


def _base_raw(cfg: ExperimentConfig, space: SearchSpace) -> dict[str, Any]:
    return apply_overrides(cfg.to_dict(), space.base_overrides)


def resolve_objective(cfg: ExperimentConfig, space: SearchSpace) -> tuple[str, str]:
    """(metric, mode): the space's, or the task's primary metric and mode."""
    from polymodal.registry import get_task

    task = get_task(cfg.task)
    return space.metric or task.primary_metric, space.mode or task.mode


def _check_metric(cfg: ExperimentConfig, space: SearchSpace) -> list[tuple[str, str]]:
    """A metric the trials never report would fail mid-sweep: the task says which it reports
    (:meth:`Task.tune_metric_problem`)."""
    from polymodal.registry import get_task

    if space.metric is None:
        return []
    problem = get_task(cfg.task).tune_metric_problem(cfg, space.metric)
    return [("metric", problem)] if problem else []


def _max_t(cfg: ExperimentConfig, space: SearchSpace) -> int:
    if space.scheduler.max_t is not None:
        return space.scheduler.max_t
    epochs = [validate_config(_base_raw(cfg, space)).optim.epochs]
    if "optim.epochs" in space.params:  # swept epochs: the longest trial sets the horizon
        epochs += [int(v) for v in space.params["optim.epochs"].extremes()]
    return max(epochs)


def _check_params(cfg: ExperimentConfig, params: dict[str, Dist], base_overrides: list[str],
                  algorithm: str) -> list[tuple[str, str]]:
    """Errors for every dotted path or value that the experiment config rejects."""
    errors: list[tuple[str, str]] = []
    try:
        base = apply_overrides(cfg.to_dict(), base_overrides)  # what _base_raw gives, for any overrides
        validate_config(base)
    except ConfigError as exc:
        return [(f"base_overrides ({path})" if path else "base_overrides", msg) for path, msg in exc.errors]
    firsts = {k: d.extremes()[0] for k, d in params.items()}
    for key, dist in params.items():
        if key.split(".")[0] in _UNSWEEPABLE:
            errors.append((f"params.{key}", f"{key.split('.')[0]} cannot be swept: the sweep sets it per trial "
                                            "or it changes what is trained; remove it from params"))
            continue
        if dist.kind == "grid" and algorithm == "optuna":
            errors.append((f"params.{key}", "grid needs search.algorithm: random (optuna samples; use choice)"))
        seen: set[tuple[str, str]] = set()
        for value in dist.extremes():
            # other params stay at their first value so each error belongs to this one
            raw = trial_raw_config(base, {**firsts, key: value})
            try:
                validate_config(raw)
            except ConfigError as exc:
                for path, msg in exc.errors:
                    related = path == key or path.startswith(key + ".") or key.startswith(path + ".")
                    if not related:
                        continue
                    if msg.startswith("unknown key"):
                        item = (f"params.{key}", f"{key} is not a config field ({path}: unknown key); "
                                                 "check the spelling against the experiment config")
                    else:
                        item = (f"params.{key}", f"value {value!r} is rejected: {msg}")
                    if item not in seen:
                        seen.add(item)
                        errors.append(item)
                if any("is not a config field" in m for _, m in seen):
                    break  # a bad path fails for every value; say it once
    return errors


def validate_space(cfg: ExperimentConfig, space: SearchSpace, source: str | None = None) -> None:
    """Check the space against ``cfg``: paths, values, scheduler horizon. One error lists all."""
    if space.task is not None and space.task != cfg.task:
        raise ConfigError([("task", f"this space is for {space.task}, but the config trains {cfg.task}")], source)
    errors = _check_params(cfg, space.params, space.base_overrides, space.search.algorithm)
    errors += _check_metric(cfg, space)
    if not errors and space.scheduler.type == "asha":
        max_t = _max_t(cfg, space)
        if space.scheduler.grace_period > max_t:
            errors.append(("scheduler.grace_period", f"{space.scheduler.grace_period} exceeds max_t={max_t} "
                                                     "(the epochs a trial runs); lower it or raise optim.epochs"))
        if validate_config(_base_raw(cfg, space)).checkpoint.every_steps:
            # every report is a Tune iteration, and a step checkpoint reports without a validation
            errors.append(("scheduler.type", "ASHA compares trials by their reports as epochs, and "
                                             "checkpoint.every_steps adds reports within epochs that carry no "
                                             "validation; use scheduler.type: fifo, or drop checkpoint.every_steps "
                                             "from the sweep's config"))
    if errors:
        raise ConfigError(errors, source)
    if space.search.algorithm == "optuna":  # before Ray starts
        require("optuna", "tune", "search.algorithm: optuna")


def _space_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Schema errors with dotted paths; a param's key stays one path part (it has dots itself)."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "params":
            path = f"params.{loc[1]}"
            msg = err["msg"].removeprefix("Value error, ")
            if len(loc) >= 3 and err["type"] == "extra_forbidden":
                msg = f"unknown distribution {loc[2]!r}; use one of {', '.join(_KINDS)}"
            elif len(loc) >= 3 and loc[2] != "[key]":
                msg = f"{loc[2]}{''.join(f'[{p}]' for p in loc[3:])}: {msg} (got {err.get('input')!r})"
            elif loc[-1] == "[key]":
                msg = "not a dotted config path like optim.lr"
            out.append((path, msg))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (check the spelling; the keys are listed in polymodal/tune.py SearchSpace)"
            elif err["type"] != "missing" and not isinstance(err.get("input"), dict):
                msg = f"{msg} (got {err.get('input')!r})"
            out.append((".".join(loc), msg))
    return out


def load_space(source: str, cfg: ExperimentConfig | None = None,
               params: dict[str, Any] | None = None) -> SearchSpace:
    """Read a search-space YAML (path or URI); with ``cfg``, also check it against that config.

    ``params`` replace (or add) entries of the file's ``params:`` before validation, e.g.
    ``{"model.top_n": {"choice": [1, 2]}}`` (``polymodal tune --param``). Schema errors and
    config-path errors are reported together in one :class:`ConfigError`.
    """
    raw = read_yaml(source, "search space", cfg.storage if cfg else None)
    if not isinstance(raw, dict):
        raise ConfigError([("", f"a search space must be a mapping, got {type(raw).__name__}")], source)
    if params:
        raw = {**raw, "params": {**(raw.get("params") or {}), **params}}
    errors: list[tuple[str, str]] = []
    space = None
    try:
        space = SearchSpace.model_validate(raw)
    except ValidationError as exc:
        errors += _space_errors(exc)
    if cfg is not None:
        if space is not None:
            try:
                validate_space(cfg, space, source)
            except ConfigError as exc:
                errors += exc.errors
        else:
            # the file has schema errors; still check the paths of the well-formed params
            params = raw.get("params") if isinstance(raw.get("params"), dict) else {}
            good: dict[str, Dist] = {}
            for key, value in params.items():
                if not _DOTTED_RE.match(str(key)):
                    continue  # already reported by the schema
                try:
                    good[str(key)] = Dist.model_validate(value)
                except ValidationError:
                    pass
            overrides = raw.get("base_overrides")
            overrides = overrides if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides) else []
            algorithm = (raw.get("search") or {}).get("algorithm", "random") if isinstance(raw.get("search"), dict) \
                else "random"
            errors += _check_params(cfg, good, overrides, algorithm)
    if errors or space is None:
        raise ConfigError(errors, source)
    return space


def to_param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune sampling objects keyed by dotted path (flat keys: Tune never nests them, and the
    result dataframe's ``config/<dotted.path>`` columns map straight back)."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, dist in space.params.items():
        a = dist.args
        out[key] = {
            "choice": lambda: tune.choice(a),
            "grid": lambda: tune.grid_search(a),
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "randint": lambda: tune.randint(a[0], a[1]),
            "qrandint": lambda: tune.qrandint(a[0], a[1], a[2]),
        }[dist.kind]()
    return out


# --------------------------------------------------------------------------- running


def sweep_uri(cfg: ExperimentConfig, space: SearchSpace) -> str:
    """``<storage_path>/sweeps/<space name>``: Tune state, trial runs and results."""
    return storage.join(cfg.storage_path, "sweeps", space.name)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _make_trial_fn(setup: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """The per-trial driver: sampled values -> a validated config -> one Ray Train run."""

    def polymodal_trial(config: dict[str, Any]) -> None:
        from ray import tune

        from polymodal import logs, shards
        from polymodal.registry import get_task

        logs.configure()  # the level the CLI was given (POLYMODAL_LOG_LEVEL)
        trial_id = tune.get_context().get_trial_id()
        raw = trial_raw_config(setup["base"], config)
        # the trial id names the Train run, so a resumed trial finds its own checkpoints
        raw["name"], raw["storage_path"] = trial_id, setup["trials_uri"]
        # MLflow: the sweep's MLflowLoggerCallback makes each trial's run; its Train run adds none
        raw.pop("tracking", None)
        trial_cfg = validate_config(raw, source=f"sweep trial {trial_id}")
        # one marker per start: shows whether a trial ever ran twice (resume checks, debugging)
        marker = storage.join(trial_cfg.run_uri, "starts", f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json")
        storage.write_text(marker, json.dumps({k: _plain(v) for k, v in config.items()}), trial_cfg.storage)
        manifests = None
        if setup["manifests"] is not None:
            manifests = {k: shards.Manifest.model_validate(v) for k, v in setup["manifests"].items()}
        get_task(trial_cfg.task).tune_trial(trial_cfg, manifests)

    return polymodal_trial


def _trial_cpus(base_cfg: ExperimentConfig, space: SearchSpace) -> float:
    workers = [base_cfg.scaling.num_workers]
    if "scaling.num_workers" in space.params:
        workers += [int(v) for v in space.params["scaling.num_workers"].extremes()]
    per_worker = base_cfg.scaling.resources_per_worker.get("CPU", 1.0)
    return space.resources_per_trial.cpu + max(workers) * per_worker


# Ray Data CPUs each running trial needs beside its driver and workers when it streams a split: a
# streaming read holds one CPU in a read task blocked on backpressure and needs another to read,
# so trials that leave less deadlock mid-epoch ("Cluster resources are not enough ...").
_DATA_CPUS_PER_TRIAL = 2.0


def _data_cpus(base_cfg: ExperimentConfig, manifests: dict[str, Any] | None) -> float:
    """Ray Data CPUs per trial: none when the trial driver reads every split into memory (each under
    ``data.cache_below_mb``: no Ray Data task runs), else :data:`_DATA_CPUS_PER_TRIAL`. Unknown
    splits (``manifests`` None: swept data paths, or a task that reads its data itself) count as
    streamed."""
    from polymodal.train.loop import streams

    if manifests is None or any(streams(base_cfg, m) for m in manifests.values()):
        return _DATA_CPUS_PER_TRIAL
    return 0.0


def _concurrency(base_cfg: ExperimentConfig, space: SearchSpace, cluster_cpus: float,
                 data_cpus: float = _DATA_CPUS_PER_TRIAL) -> int:
    """Concurrent trials that fit, with ``data_cpus`` to spare for each trial's Ray Data reads."""
    need = _trial_cpus(base_cfg, space) + data_cpus
    fit = int(cluster_cpus // need)
    detail = (f"driver {space.resources_per_trial.cpu:g} + Train workers "
              f"{need - space.resources_per_trial.cpu - data_cpus:g} + Ray Data {data_cpus:g}")
    if fit < 1:
        raise ConfigError([("resources_per_trial.cpu", f"one trial needs {need:g} CPUs ({detail}), "
                                                       f"but the Ray cluster has {cluster_cpus:g}; lower "
                                                       "resources_per_trial.cpu or scaling.num_workers, or add CPUs")])
    if space.max_concurrent_trials is None:
        return fit
    if space.max_concurrent_trials > fit:
        raise ConfigError([("max_concurrent_trials", f"{space.max_concurrent_trials} trials x {need:g} CPUs ({detail}) "
                                                     f"exceed this {cluster_cpus:g}-CPU cluster and trials would "
                                                     f"hang; set max_concurrent_trials <= {fit}")])
    return space.max_concurrent_trials


def _check_state_api(space: SearchSpace) -> None:
    """Refuse an early-stopping sweep on a cluster without Ray's State API (no dashboard).

    When a scheduler stops a trial, Tune kills the trial's driver and with it the Train
    controller before it can shut down; Train's placement-group cleaner then asks the State API
    whether the controller died. Without it the worker group's CPUs stay reserved for the rest of
    the sweep and later trials hang waiting for CPUs.
    """
    if space.scheduler.type != "asha":
        return
    import ray
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        # this driver's cluster by its address: without one the State API takes the cluster last
        # started on this machine (/tmp/ray/ray_current_cluster), which may be another
        list_actors(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10,
                    raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError) as exc:
        raise ConfigError([("scheduler.type", "ASHA stops trials early, and Ray Train frees a stopped trial's "
                                              "worker CPUs through Ray's State API, which this cluster does not "
                                              "serve (started without the dashboard?). Start Ray with the "
                                              "dashboard (ray start --head / ray.init(include_dashboard=True)) "
                                              f"or use scheduler.type: fifo ({type(exc).__name__})")]) from None


def _tune_location(uri: str, cfg: ExperimentConfig) -> tuple[str, Any]:
    """Path and pyarrow filesystem as Tune wants them: bare path + fs for S3, absolute local path."""
    fs, path = storage.to_pyarrow_fs(uri, cfg.storage)
    if storage.is_s3(uri):
        return path, fs
    return os.path.abspath(path), None


def _snapshot(cfg: ExperimentConfig, space: SearchSpace) -> dict[str, Any]:
    base = _base_raw(cfg, space)
    base.pop("storage", None)  # endpoints may legitimately differ between submit hosts
    return {"space": space.model_dump(mode="json"), "base_config": base}


def _expected_trials(space: SearchSpace) -> int:
    grids = [len(d.args) for d in space.params.values() if d.kind == "grid"]
    return space.num_samples * math.prod(grids)


def run_sweep(cfg: ExperimentConfig, space: SearchSpace, *, resume: bool = True, progress: bool = False,
              callbacks: list | None = None) -> SweepResult:
    """Run (or resume) the sweep of ``space`` over ``cfg`` and write ``results/``.

    ``callbacks`` are extra ``ray.tune.Callback``s for a new sweep, after the ones ``tracking``
    asks for (:func:`polymodal.tracking.tune_callbacks`); a resumed sweep keeps the ones it
    started with (Tune restores them with its state). With ``resume=False`` an
    existing sweep of the same name is an error rather than being continued.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    validate_space(cfg, space)
    metric, mode = resolve_objective(cfg, space)
    base = _base_raw(cfg, space)
    base_cfg = validate_config(base)
    uri = sweep_uri(cfg, space)
    # bad data fails here, once, instead of in every trial; swept data paths are checked per trial
    swept_data = any(k.startswith("data.") for k in space.params)
    from polymodal.registry import get_task

    task = get_task(base_cfg.task)
    opened = None if swept_data else task.open_data(base_cfg)
    manifests = None if opened is None else {k: m.model_dump(mode="json") for k, m in opened.items()}
    from polymodal.logs import init_ray

    init_ray()
    concurrent = _concurrency(base_cfg, space, float(ray.cluster_resources().get("CPU", 0)),
                              _data_cpus(base_cfg, opened))
    _check_state_api(space)

    setup = {"base": base, "trials_uri": storage.join(uri, "trials"), "manifests": manifests}
    resources = task.tune_resources(base_cfg, {"cpu": space.resources_per_trial.cpu,
                                               "gpu": space.resources_per_trial.gpu})
    trainable = tune.with_resources(_make_trial_fn(setup), resources)
    path, fs = _tune_location(uri, cfg)
    snapshot_uri = storage.join(uri, "sweep.json")
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        if not resume:
            raise ConfigError([("name", f"a sweep named {space.name!r} already exists at {uri}; drop --no-resume "
                                        "to continue it, or rename the space / delete that folder to start over")])
        if storage.exists(snapshot_uri, cfg.storage):
            before = json.loads(storage.read_text(snapshot_uri, cfg.storage))
            if before != _snapshot(cfg, space):
                raise ConfigError([("name", f"the sweep at {uri} was started with a different space or base config "
                                            f"(see {snapshot_uri}); Tune cannot change a sweep midway: restore "
                                            "the original files or rename the space to start a new sweep")])
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    else:
        storage.write_text(snapshot_uri, json.dumps(_snapshot(cfg, space), indent=2), cfg.storage)
        scheduler = None
        if space.scheduler.type == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=_max_t(cfg, space),
                                      grace_period=space.scheduler.grace_period,
                                      reduction_factor=space.scheduler.reduction_factor)
        if space.search.algorithm == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=space.search.seed)
        else:
            # a BasicVariantGenerator instance ignores TuneConfig.max_concurrent_trials
            search_alg = BasicVariantGenerator(random_state=space.search.seed, max_concurrent=concurrent)
        parent = path.rsplit("/", 1)[0]
        tuner = tune.Tuner(
            trainable, param_space=to_param_space(space),
            tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                                        num_samples=space.num_samples,
                                        max_concurrent_trials=concurrent if space.search.algorithm == "optuna"
                                        else None,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=space.name, storage_path=parent, storage_filesystem=fs,
                                      callbacks=tracking.tune_callbacks(cfg) + list(callbacks or []),
                                      verbose=1 if progress else 0,
                                      # a trial whose driver died with its node starts again and its
                                      # Train run resumes from its own last checkpoint
                                      failure_config=tune.FailureConfig(
                                          max_failures=base_cfg.failure.max_failures)))
    reserved = _live_placement_groups()
    try:
        tuner.fit()
    finally:
        _release_leftovers(reserved)
    return write_results(cfg, space, path, fs)


def _live_placement_groups() -> set[str]:
    import ray

    return {pg for pg, info in ray.util.placement_group_table().items() if info["state"] != "REMOVED"}


def _release_leftovers(reserved: set[str], grace_s: float = 20.0) -> None:
    """Remove the placement groups this sweep created that outlive it. In Ray 2.60 an interrupted
    sweep (Ctrl+C, SIGUSR1) stops its trials without removing the Ray Train worker groups' placement
    groups, and Train's cleaner frees them only when the driver exits: a driver that goes on (a
    notebook, a second sweep, the test session) would keep their CPUs. Ray gets ``grace_s`` to free
    them itself first; whatever is still reserved then belongs to no running trial. Only this job's
    groups are touched (a placement group id ends with its job's id): other drivers' sweeps on a
    shared cluster keep theirs."""
    import ray
    from ray.util.placement_group import PlacementGroup

    job = ray.get_runtime_context().get_job_id()

    def leftovers() -> set[str]:
        return {pg for pg in _live_placement_groups() - reserved if pg.endswith(job)}

    deadline = time.monotonic() + grace_s
    while (left := leftovers()) and time.monotonic() < deadline:
        time.sleep(1.0)
    for pg_id in left:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


# --------------------------------------------------------------------------- results


def _status(trial: Any, epochs: int, epochs_done: int) -> str:
    if trial.status == "ERROR":
        return "error"
    if trial.status != "TERMINATED":
        return "unfinished"
    # Tune marks scheduler-stopped trials TERMINATED too; epochs tell them apart
    return "finished" if epochs_done >= epochs else "stopped early"


def _is_better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def _trial_rows(analysis: Any, base: dict[str, Any], space: SearchSpace, metric: str, mode: str) -> list[dict[str, Any]]:
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        values = {k: _plain(trial.config.get(k)) for k in space.params}
        last = trial.last_result or {}
        history: list[float] = []
        frame = analysis.trial_dataframes.get(trial.trial_id)
        if frame is not None and metric in frame:
            history = [float(v) for v in frame[metric].dropna().tolist()]
        final = last.get(metric)
        final = float(final) if isinstance(final, (int, float)) and not isinstance(final, bool) else None
        best = None
        for v in history or ([final] if final is not None else []):
            best = v if _is_better(v, best, mode) else best
        epochs = int(values.get("optim.epochs") or base["optim"]["epochs"])
        epochs_done = int(last.get("epoch", -1)) + 1
        rows.append({"trial_id": trial.trial_id, **values, f"{metric}_final": final, f"{metric}_best": best,
                     "epochs_done": epochs_done, "status": _status(trial, epochs, epochs_done)})
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown(rows: list[dict[str, Any]], keys: list[str], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], key: str, dist: Dist, metric: str, best_id: str | None) -> bytes:
    """Scatter of each trial's best metric against its value of ``key``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r[key], r[f"{metric}_best"], r["trial_id"]) for r in rows if r[f"{metric}_best"] is not None]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _, _ in points)
    labels: list[str] = []
    if not numeric:  # categorical options (strings, lists): one slot per distinct value
        labels = sorted({str(x) for x, _, _ in points})
    xs = [x if numeric else labels.index(str(x)) for x, _, _ in points]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.scatter(xs, [y for _, y, _ in points], alpha=0.8)
    for x, (_, y, tid) in zip(xs, points):
        if tid == best_id:
            ax.scatter([x], [y], marker="*", s=200, color="tab:red", label=f"best ({tid})")
            ax.legend(fontsize=8)
    if dist.kind == "loguniform":
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide within one decade
    if labels:
        ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=key, ylabel=f"{metric} (best epoch)", title=f"{metric} vs {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_results(cfg: ExperimentConfig, space: SearchSpace, path: str | None = None, fs: Any = None) -> SweepResult:
    """Read the sweep's Tune state and write ``results/``: table, best config, one plot per param."""
    from ray.tune import ExperimentAnalysis

    uri = sweep_uri(cfg, space)
    if path is None:
        path, fs = _tune_location(uri, cfg)
    metric, mode = resolve_objective(cfg, space)
    base = _base_raw(cfg, space)
    analysis = ExperimentAnalysis(path, storage_filesystem=fs)
    rows = _trial_rows(analysis, base, space, metric, mode)
    complete = len(rows) >= _expected_trials(space) and all(r["status"] != "unfinished" for r in rows)
    out = SweepResult(sweep_uri=uri, metric=metric, mode=mode, complete=complete, trials=rows)
    for r in rows:
        score = r[f"{metric}_best"]
        if score is not None and _is_better(score, out.best_metric, mode):
            out.best_metric, out.best_trial_id = score, r["trial_id"]
            out.best_values = {k: r[k] for k in space.params}

    results = storage.join(uri, "results")
    keys = ["trial_id", *space.params, f"{metric}_final", f"{metric}_best", "epochs_done", "status"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in keys} for r in rows])
    out.results_csv = storage.join(results, "results.csv")
    storage.write_text(out.results_csv, text.getvalue(), cfg.storage)
    title = f"Sweep {space.name}: {metric} ({mode})" + ("" if complete else " - unfinished, rerun to resume")
    md = _markdown(rows, keys, title)
    if out.best_trial_id:
        md += f"\nBest: trial {out.best_trial_id}, {metric} = {out.best_metric:.4g}, values {out.best_values}\n"
    out.results_md = storage.join(results, "results.md")
    storage.write_text(out.results_md, md, cfg.storage)
    if out.best_trial_id:
        raw = trial_raw_config(base, out.best_values)
        raw["name"] = f"{space.name}-best"  # a fresh run folder beside the base config's run
        best_cfg = validate_config(raw, source=f"best trial {out.best_trial_id} of {uri}")
        header = (f"# Best trial {out.best_trial_id} of sweep {uri}: {metric} = {out.best_metric:.4g} ({mode}).\n"
                  f"# Train it: polymodal train --config best_config.yaml\n")
        out.best_config = storage.join(results, "best_config.yaml")
        storage.write_text(out.best_config, header + best_cfg.to_yaml(), cfg.storage)
    for key, dist in space.params.items():
        png = storage.join(results, f"{key}.png")
        storage.write_bytes(png, _plot(rows, key, dist, metric, out.best_trial_id), cfg.storage)
        out.plots[key] = png
    return out
