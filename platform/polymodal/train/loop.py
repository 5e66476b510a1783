"""The one train loop. A task supplies model, loss and metrics; this file supplies the rest.

``train_worker`` is the whole per-worker program. It runs unchanged in two harnesses:

* Ray Train (``train_ray``, behind ``fit``): Ray owns the process group, the data split (``get_dataset_shard``),
  checkpoint upload (``ray.train.report``) and restarts (``FailureConfig``);
* ``--local`` (``train_local``, behind ``fit_local``): one process, a gloo/nccl group of one, shards read with plain
  pyarrow, checkpoints written straight into the run folder. GPU paths can be checked on a
  machine without Ray this way.

Only the harness classes (``*Batches``, ``*Reporter``) touch Ray.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from polymodal import runs, shards, storage, tracking
from polymodal.config import ExperimentConfig, validate_config
from polymodal.errors import PolymodalError
from polymodal.ports import free_port
from polymodal.registry import get_task
from polymodal.train.checkpoint import (DS_DIR, DS_TAG, MODEL_DIR, STATE_FILE, checkpoint_name,
                                        complete_checkpoints, publish_checkpoint, trainable_state, write_export)
from polymodal.train.deepspeed_config import deepspeed_config_for, import_deepspeed, lr_multiplier, resolve_precision
from polymodal.train.metrics_log import MetricsLog
from polymodal.train.prefetch import Prefetched
from polymodal.train.throughput import StepClock

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- harness pieces


class BatchSource(Protocol):
    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` in their seeded order, less the first ``skip`` (a resumed epoch's
        consumed batches: read again to reach the same place, not trained on)."""
        ...


class RayBatches:
    """This worker's split of a Ray dataset, as arrow batches converted without Python loops."""

    def __init__(self, name: str, task: "polymodal.task.Task", manifest: shards.Manifest, batch_size: int,
                 shuffle_buffer: int, seed: int, train: bool):
        self.name, self.task, self.manifest = name, task, manifest
        self.batch_size, self.shuffle_buffer, self.seed, self.train = batch_size, shuffle_buffer, seed, train

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        import ray.train

        it = ray.train.get_dataset_shard(self.name)
        shuffle = self.train and self.shuffle_buffer > 0
        tables = it.iter_batches(
            batch_size=self.batch_size, batch_format="pyarrow", drop_last=False,
            local_shuffle_buffer_size=self.shuffle_buffer if shuffle else None,
            local_shuffle_seed=(self.seed * 100_003 + epoch) if shuffle else None)
        # Ray Data's split hands blocks to workers as they ask, so only a materialised dataset read by
        # one worker repeats its order exactly; otherwise the skip drops the same number of batches
        for table in itertools.islice(tables, skip, None):
            yield self.task.collate(shards.table_to_numpy(table, self.manifest.columns, shard=self.name))


class LocalBatches:
    """Plain pyarrow streaming (no Ray): one shard in memory at a time."""

    def __init__(self, uri: str, task: "polymodal.task.Task", manifest: shards.Manifest, batch_size: int,
                 shuffle_buffer: int, seed: int, train: bool, opts, rank: int = 0, world_size: int = 1):
        self.uri, self.task, self.manifest, self.opts = uri, task, manifest, opts
        self.batch_size, self.shuffle_buffer, self.seed, self.train = batch_size, shuffle_buffer, seed, train
        self.rank, self.world_size = rank, world_size

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        batches = shards.iter_local_batches(
            self.uri, self.batch_size, manifest=self.manifest, epoch=epoch, seed=self.seed,
            shuffle=self.train, shuffle_buffer=self.shuffle_buffer if self.train else 0,
            rank=self.rank, world_size=self.world_size, opts=self.opts)
        for cols in itertools.islice(batches, skip, None):  # same seeded order: the skip is exact
            yield self.task.collate(cols)


class MixedBatches:
    """The batches of several training sources, interleaved by weight: each batch comes whole from
    one source (so a batch never mixes datasets whose rows differ in shape), the source drawn with
    probability ``weight / sum(weights)`` from a generator seeded by (seed, epoch), the same draws on
    every worker. An epoch is ``steps`` batches; a source that runs out restarts, pass ``k`` of epoch
    ``e`` reading it as its epoch ``e + k * PASS_STRIDE`` (a fresh shuffle no run reaches as a real
    epoch). Every worker's share of a source has the same number of batches (Ray's equal split, the
    local reader's row split), so all workers restart a source at the same step."""

    PASS_STRIDE = 100_003

    def __init__(self, sources: list[BatchSource], weights: list[float], steps: int, seed: int):
        if len(sources) != len(weights) or not sources or min(weights) <= 0:
            raise ValueError(f"need one positive weight per source, got {len(sources)} sources and weights {weights}")
        self.sources, self.steps, self.seed = sources, steps, seed
        self.p = np.asarray(weights, dtype=np.float64) / float(sum(weights))

    def draws(self, epoch: int) -> np.ndarray:
        """(steps,) the source index of every batch of ``epoch``."""
        return np.random.default_rng([self.seed, epoch, 0x6D6978]).choice(len(self.p), size=self.steps, p=self.p)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        iters: list[Iterator[Batch] | None] = [None] * len(self.sources)
        passes = [0] * len(self.sources)
        try:
            for k, i in enumerate(self.draws(epoch).tolist()):
                for _ in range(2):  # the current pass, else a fresh one
                    if iters[i] is None:
                        iters[i] = iter(self.sources[i].epoch(epoch + passes[i] * self.PASS_STRIDE))
                    batch = next(iters[i], None)
                    if batch is not None:
                        break
                    _close(iters[i])
                    iters[i], passes[i] = None, passes[i] + 1
                else:
                    raise PolymodalError(f"training source {i} (data.train[{i}]) yields no batches")
                if k >= skip:  # skipped batches are still drawn and read, so every source keeps its place
                    yield batch
        finally:
            for it in iters:
                _close(it)


def _close(it: Any) -> None:
    """Stop a half-read generator now (releases its reader) instead of when it is collected."""
    close = getattr(it, "close", None)
    if close is not None:
        close()


class Reporter(Protocol):
    ray_train: bool  # inside a Ray Train worker (MLflow opens its run through Ray's setup_mlflow)

    def state(self) -> dict[str, Any] | None:
        """The ``state.json`` of the checkpoint :meth:`restore` would restore (None: none), read
        without downloading the checkpoint."""
        ...

    def restore(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path) -> None: ...


class RayReporter:
    """``score_metric``: the metric Ray ranks checkpoints by (None when it keeps the newest). A step
    checkpoint taken without an evaluation reports it as NaN, which Ray ranks below every score."""

    ray_train = True

    def __init__(self, score_metric: str | None = None):
        self.score_metric = score_metric

    def state(self) -> dict[str, Any] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.filesystem.open_input_stream(f"{ckpt.path.rstrip('/')}/{STATE_FILE}") as f:
            return json.loads(f.read())

    def restore(self):
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return contextlib.nullcontext(None)
        _check_checkpoint_keys(ckpt.filesystem, ckpt.path)
        return _as_path(ckpt.as_directory())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        import ray.train

        if self.score_metric and metrics.get(self.score_metric) is None:
            metrics = {**metrics, self.score_metric: float("nan")}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)))


def _check_checkpoint_keys(fs, root: str) -> None:
    """Refuse a checkpoint whose object keys step out of it: Ray's download (pyarrow ``copy_files``)
    writes ``ckpt/../../x`` outside the download folder. :func:`polymodal.storage.download_dir`
    refuses such keys too; this covers Ray Train's restore, which does not go through it."""
    import pyarrow.fs

    prefix = root.rstrip("/") + "/"
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        rel = info.path[len(prefix):] if info.path.startswith(prefix) else info.path
        if ".." in rel.replace("\\", "/").split("/"):
            raise PolymodalError(f"checkpoint {root} holds the object {info.path!r}, whose '..' would be written "
                                 "outside the restore folder; refusing to restore from it")


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside is ``weights_only`` (no pickled code runs), DeepSpeed's included.

    DeepSpeed 0.19 unpickles its model and optimizer state with the full (code-running) unpickler,
    so a resume from a shared bucket would run whatever a writer to that prefix pickled into them. Torch
    honours ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` per call; the few DeepSpeed classes a ZeRO checkpoint
    holds are allowed by name.
    """
    import_deepspeed()
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    allowed = [LossScaler, ZeroStageEnum]
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:  # older DeepSpeed: not in its checkpoints either
        pass
    torch.serialization.add_safe_globals(allowed)
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


@contextlib.contextmanager
def _as_path(cm):
    with cm as d:
        yield Path(d)


class LocalReporter:
    """Checkpoints go to ``<run>/checkpoints/epoch_NNNN`` (an epoch's end) and
    ``epoch_NNNN_step_SSSSSSSS`` (a step checkpoint within epoch NNNN); the newest complete one resumes."""

    ray_train = False

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self.opts = cfg, cfg.storage
        self.root = storage.join(cfg.run_uri, "checkpoints")
        self.best: tuple[float, str] | None = None

    def state(self) -> dict[str, Any] | None:
        done = complete_checkpoints(self.root, self.opts)
        return json.loads(storage.read_text(storage.join(done[-1], STATE_FILE), self.opts)) if done else None

    @contextlib.contextmanager
    def restore(self):
        done = complete_checkpoints(self.root, self.opts)
        if not done:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="polymodal-restore-") as tmp:
            storage.download_dir(done[-1], tmp, self.opts)
            yield Path(tmp)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        state = json.loads((checkpoint_dir / STATE_FILE).read_text())
        name = checkpoint_name(state)
        # state.json goes up last (also on S3, where upload_dir copies in parallel): a checkpoint
        # without it is incomplete and never restored
        uri = publish_checkpoint(checkpoint_dir, storage.join(self.root, name), self.opts)
        task = get_task(self.cfg.task)
        score = metrics.get(task.primary_metric)
        if score is not None:
            signed = score if task.mode == "max" else -score
            if self.best is None or signed > self.best[0]:
                self.best = (signed, uri)
        # the summary names the new checkpoint before any old one goes, so it never names a deleted one
        runs.write_summary(self.cfg, latest=uri, best=self.best[1] if self.best else uri, metrics=metrics)
        for old in complete_checkpoints(self.root, self.opts)[:-self.cfg.checkpoint.num_to_keep]:
            if not (self.best and self.best[1].rstrip("/") == old.rstrip("/")):
                storage.remove(old, recursive=True, opts=self.opts)


# --------------------------------------------------------------------------- the worker


@dataclass
class WorkerInfo:
    rank: int
    world_size: int
    device: torch.device


@dataclass
class DataPosition:
    """Where a run stands in its training data: ``batches`` of epoch ``epoch`` trained on, and that
    epoch's running loss (sum over ``loss_n`` batches), so a resumed epoch logs the loss of all of it."""

    epoch: int = 0
    batches: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0


def resume_position(state: dict[str, Any], cfg: ExperimentConfig) -> DataPosition:
    """The data position to resume at from a checkpoint's ``state.json``: the next epoch after an
    epoch's end (and for checkpoints older than step checkpoints); within the epoch after a step
    checkpoint, whose consumed batches the sources skip in the same seeded order. That order holds
    only for the seed and batch size it was written with, so another one is refused."""
    if state.get("epoch_done", True):
        return DataPosition(epoch=state["epoch"] + 1)
    for key, saved, ours in (("seed", state.get("seed"), cfg.seed),
                             ("optim.batch_size", state.get("batch_size"), cfg.optim.batch_size)):
        if saved is not None and saved != ours:
            raise PolymodalError(
                f"{cfg.run_uri}: the newest checkpoint stopped in epoch {state['epoch']} after batch "
                f"{state['batches']}, a place in the data order of {key}={saved}, but the config now sets "
                f"{key}={ours}; set it back to {saved} to resume, or start a new run (another name)")
    return DataPosition(state["epoch"], state["batches"], state.get("loss_sum", 0.0), state.get("loss_n", 0))


class TimedBatches:
    """Iterates a batch source's epoch, summing in ``wait_s`` the seconds the loop spent waiting for
    the next batch: a data-bound run waits much, a compute-bound one little."""

    def __init__(self, batches: Iterator[Batch]):
        self.batches, self.wait_s = iter(batches), 0.0

    def __iter__(self) -> "TimedBatches":
        return self

    def __next__(self) -> Batch:
        t = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.wait_s += time.perf_counter() - t


@dataclass
class StepMeter:
    """The optimizer step in progress: its micro-batches' loss sum and count, samples, start time."""

    t0: float
    loss_sum: float = 0.0
    n: int = 0
    samples: int = 0

    def add(self, loss: float, samples: int) -> None:
        self.loss_sum, self.n, self.samples = self.loss_sum + loss, self.n + 1, self.samples + samples

    def scalars(self, lr: float, grad_norm: float, world_size: int) -> dict[str, float]:
        """TensorBoard's ``step/*`` scalars of the finished step; samples/s counts every worker."""
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        return {"loss": self.loss_sum / max(self.n, 1), "lr": lr, "grad_norm": grad_norm,
                "samples_per_s": self.samples * world_size / seconds}


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    """L2 norm of the gradients of ``params`` (all-reduced already when DeepSpeed steps without ZeRO)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _take_over_clipping(engine: Any) -> float:
    """The max norm to which the train loop clips the gradients itself, DeepSpeed's clipping then
    off; 0.0 where DeepSpeed keeps it.

    Taken over in ZeRO-0 without fp16/bf16 (no ZeRO or mixed-precision optimizer holding the
    gradients): the loop calls torch's ``clip_grad_norm_`` on the trainable parameters at each
    accumulation boundary, the same clip (``max_norm / (norm + 1e-6)`` where below 1) on the same,
    all-reduced gradients, and its result is the norm the loop logs. DeepSpeed's own walks every
    parameter of the module, frozen ones too, one norm each, and all-reduces the result over gloo
    every step: its step took 2.2 ms against 1.1 ms for the plain loop's clip and AdamW in
    bench/train_loop.py (bench/RESULTS.md, 2026-12-07).
    """
    if not (engine.zero_optimization_stage() == 0 and engine.gradient_clipping() > 0
            and not (engine.fp16_enabled() or engine.bfloat16_enabled())
            and getattr(engine, "torch_autocast_z0_gradscaler", None) is None):
        return 0.0
    clip = float(engine.gradient_clipping())
    engine._config.gradient_clipping = 0.0  # what the engine's step reads through gradient_clipping()
    return clip


def _zero_only_trainable(engine: Any, trainable: list[torch.nn.Parameter]) -> None:
    """In ZeRO-0 without fp16/bf16 the engine's step zeroes the gradients through its ``zero_grad``,
    which walks every module's parameters, frozen ones too (0.4-0.8 ms a step in
    bench/train_loop.py); only the trainable ones have gradients, so only they are walked."""
    if engine.zero_optimization_stage() != 0 or engine.fp16_enabled() or engine.bfloat16_enabled():
        return

    def zero_grad() -> None:
        for p in trainable:
            p.grad = None

    engine.zero_grad = zero_grad


def _every(interval: int | None, step: int) -> bool:
    return bool(interval) and step % interval == 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: Batch, device: torch.device, float_dtype: torch.dtype) -> Batch:
    out = {}
    for k, v in batch.items():
        if v.device != device:
            v = v.to(device, non_blocking=True)
        out[k] = v.to(float_dtype) if v.is_floating_point() and v.dtype != float_dtype else v
    return out


def _gather(outputs: list[dict[str, np.ndarray]], world_size: int) -> dict[str, np.ndarray]:
    local = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]} if outputs else {}
    if world_size > 1:
        parts: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(parts, local)
        parts = [p for p in parts if p]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return local


@torch.no_grad()
def evaluate_split(engine, task: "polymodal.task.Task", source: BatchSource, info: WorkerInfo,
                   float_dtype: torch.dtype) -> dict[str, float]:
    """Run ``task.predict`` over this worker's share, gather every share, let the task finish
    them with the model (:meth:`~polymodal.task.Task.finish_eval`), compute metrics."""
    engine.eval()
    outputs = [task.predict(engine, _to_device(b, info.device, float_dtype)) for b in source.epoch(0)]
    gathered = _gather(outputs, info.world_size)
    if gathered:
        gathered = task.finish_eval(engine, gathered)  # still in eval mode: it may run the model
    engine.train()
    return task.metrics(gathered) if gathered else {}


def _disable_shm_comm_build_on_cpu() -> None:
    # DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce on first initialize
    # (tens of seconds, needs g++). gloo is fast enough for CPU runs and tests.
    import_deepspeed()
    import deepspeed.ops

    with contextlib.suppress(Exception):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def train_worker(cfg: ExperimentConfig, info: WorkerInfo, sources: dict[str, BatchSource],
                 reporter: Reporter, steps_per_epoch: int, progress: bool = True,
                 started_at: float | None = None) -> dict[str, Any]:
    """Train ``cfg`` on this worker. Returns the last epoch's metrics.

    The run ends after ``optim.epochs`` or at global step ``optim.max_steps``, whichever comes first,
    with a checkpoint and an evaluation. ``checkpoint.every_steps`` and ``eval.every_steps`` add
    both within epochs (not on an epoch's last step, whose own checkpoint and evaluation follow).
    A step checkpoint records the data position (:class:`DataPosition`); a resumed run skips the
    batches it already trained on and goes on with the next one. ``started_at`` (``time.time()``
    when the harness started) dates the first step (``first_step_s``, :mod:`polymodal.train.throughput`)."""
    deepspeed = import_deepspeed()

    task = get_task(cfg.task)
    state = reporter.state()
    position = resume_position(state, cfg) if state is not None else DataPosition()
    # the first epoch's batches start coming now, under the model's build and the engine's set-up
    trains = position.epoch < cfg.optim.epochs and not (
        cfg.optim.max_steps and state is not None and state.get("global_step", 0) >= cfg.optim.max_steps)
    upcoming = _read_ahead(cfg, sources["train"], position) if trains else None
    device_type = "cuda" if info.device.type == "cuda" else "cpu"
    if device_type == "cpu":
        _disable_shm_comm_build_on_cpu()
    seed_everything(cfg.seed)  # same init on every rank; DeepSpeed also broadcasts rank 0's weights
    model = task.build_model(cfg.model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"task {cfg.task} marked no parameter trainable; check model.method")
    n_train, n_all = sum(p.numel() for p in trainable), sum(p.numel() for p in model.parameters())
    if info.rank == 0:
        print(f"[polymodal] {cfg.task} ({getattr(cfg.model, 'method', 'model')}): trainable parameters "
              f"{n_train:,} of {n_all:,} ({100 * n_train / max(n_all, 1):.2f}%)", flush=True)
    ds_config = deepspeed_config_for(cfg, world_size=info.world_size, device_type=device_type)
    precision = resolve_precision(cfg.optim.precision, device_type)
    float_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    optim_steps_per_epoch = math.ceil(steps_per_epoch / cfg.optim.grad_accum)
    total_steps = max(1, cfg.optim.epochs * optim_steps_per_epoch)
    if cfg.optim.max_steps:  # the schedule spans whichever of epochs and max_steps ends the run first
        total_steps = min(total_steps, cfg.optim.max_steps)

    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(
            s, total_steps=total_steps, warmup_steps=cfg.optim.warmup_steps, schedule=cfg.optim.schedule,
            steps_per_epoch=optim_steps_per_epoch, step_size=cfg.optim.step_size, gamma=cfg.optim.gamma))

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config,
                                           lr_scheduler=schedule)
    if info.world_size == 1 and engine.zero_optimization_stage() == 0:
        engine.enable_backward_allreduce = False  # a group of one has nothing to reduce: no gloo call per step
    own_clip = _take_over_clipping(engine)
    _zero_only_trainable(engine, trainable)
    start_epoch, micro_step, resumed_step = 0, 0, None
    with reporter.restore() as ckpt:
        if ckpt is not None:  # the checkpoint whose state.json gave ``state`` and ``position`` above
            with weights_only_loads():
                engine.load_checkpoint(str(ckpt / DS_DIR), tag=DS_TAG, load_module_strict=False)
            start_epoch, micro_step, resumed_step = position.epoch, state["micro_step"], int(engine.global_steps)
            if info.rank == 0 and position.batches:
                print(f"[polymodal] resumed from step {engine.global_steps}: epoch {position.epoch + 1}"
                      f"/{cfg.optim.epochs} after batch {position.batches}", flush=True)
            elif info.rank == 0:
                print(f"[polymodal] resumed from epoch {state['epoch']} (step {engine.global_steps})", flush=True)
    log = None
    if info.rank == 0:
        log = MetricsLog(cfg.run_uri, cfg.storage, start_epoch, start_step=resumed_step,
                         mlflow=tracking.start_run(cfg, ray_train=reporter.ray_train))

    def validate(metrics: dict[str, Any]) -> None:
        metrics.update({f"val_{k}": v for k, v in
                        evaluate_split(engine, task, sources["val"], info, float_dtype).items()})
        # Tune and the checkpoint ranking read the task's primary metric under its plain name
        metrics[task.primary_metric] = metrics.get(f"val_{task.primary_metric}")

    def save(metrics: dict[str, Any], at: DataPosition, epoch_done: bool) -> None:
        ckpt_dir = Path(tempfile.mkdtemp(prefix="polymodal-ckpt-"))
        engine.save_checkpoint(str(ckpt_dir / DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True)
        weights = trainable_state(engine.module, cfg.deepspeed.zero_stage)
        if info.rank == 0:
            write_export(ckpt_dir / MODEL_DIR, cfg, weights, {"epoch": at.epoch, "metrics": metrics,
                                                              "trainable_parameters": n_train,
                                                              "total_parameters": n_all})
            (ckpt_dir / STATE_FILE).write_text(json.dumps(
                {"epoch": at.epoch, "micro_step": micro_step, "global_step": int(engine.global_steps),
                 "epoch_done": epoch_done, "batches": at.batches, "loss_sum": at.loss_sum, "loss_n": at.loss_n,
                 "seed": cfg.seed, "batch_size": cfg.optim.batch_size}))
        reporter.report(metrics, ckpt_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    max_steps = cfg.optim.max_steps
    ended = bool(max_steps) and engine.global_steps >= max_steps  # resumed from the run's last checkpoint
    metrics: dict[str, Any] = {}
    clock = StepClock(started_at, info.world_size)
    for epoch in range(start_epoch, cfg.optim.epochs):
        if ended:
            break
        here = position if epoch == position.epoch else DataPosition(epoch)
        t0, seen, loss_sum, n, i = time.perf_counter(), 0, here.loss_sum, here.loss_n, here.batches
        meter = StepMeter(t0)
        bar = _progress(progress and info.rank == 0, steps_per_epoch, f"epoch {epoch + 1}/{cfg.optim.epochs}",
                        initial=i)
        batches = TimedBatches(upcoming if upcoming is not None else _read_ahead(cfg, sources["train"], here))
        upcoming = None
        clock.start_epoch()
        for batch in batches:
            if cfg.optim.max_steps_per_epoch and i >= cfg.optim.max_steps_per_epoch:
                break
            batch = _to_device(batch, info.device, float_dtype)
            loss, extra = task.loss(engine, batch)
            before = engine.global_steps
            engine.backward(loss)
            # DeepSpeed reports the norm where its optimizer computes it (ZeRO, bf16/fp16); else it is ours
            own_norm = None
            if engine.zero_optimization_stage() == 0 and engine.is_gradient_accumulation_boundary():
                if own_clip:  # on every rank: the gradients are all-reduced, each rank clips its copy
                    own_norm = float(torch.nn.utils.clip_grad_norm_(trainable, own_clip))
                elif log is not None:
                    own_norm = _grad_norm(trainable)
            engine.step()
            micro_step, i = micro_step + 1, i + 1
            batch_loss, rows = float(loss.detach()), next(iter(batch.values())).shape[0]
            loss_sum, n, seen = loss_sum + batch_loss, n + 1, seen + rows
            meter.add(batch_loss, rows)
            clock.tick(rows)
            if bar is not None:  # drawn at most every 0.1 s (tqdm's mininterval), not every step
                bar.set_postfix(loss=f"{loss_sum / n:.4f}", refresh=False)
                bar.update(1)
            step = int(engine.global_steps)
            if step == before:  # within a gradient accumulation: no optimizer step to stop or save at
                continue
            if log is not None:
                grad_norm = engine.get_global_grad_norm()
                log.log_step(step, meter.scalars(float(engine.get_lr()[0]), float(
                    own_norm if grad_norm is None else grad_norm), info.world_size))
            meter = StepMeter(time.perf_counter())
            if max_steps and step >= max_steps:
                ended = True
                break
            at_eval = "val" in sources and _every(cfg.eval.every_steps, step)
            at_ckpt = _every(cfg.checkpoint.every_steps, step)
            if i >= steps_per_epoch or not (at_eval or at_ckpt):
                continue
            row = {"epoch": epoch, "global_step": step, "train_loss": loss_sum / n, "lr": float(engine.get_lr()[0])}
            if at_eval:
                validate(row)
                if log is not None:
                    log.log(row)
            if at_ckpt:
                save(row, DataPosition(epoch, i, loss_sum, n), epoch_done=False)
                if info.rank == 0:
                    print(f"[polymodal] step {step} (epoch {epoch + 1}/{cfg.optim.epochs}, batch {i}) "
                          f"checkpointed: train_loss={loss_sum / n:.4g}", flush=True)
            meter = StepMeter(time.perf_counter())  # the next step's throughput leaves out this evaluation
        _close(batches.batches)  # after a break: release the reader now, not at the next epoch
        if not ended and epoch + 1 < cfg.optim.epochs:  # the next epoch's batches come under this one's end
            upcoming = _read_ahead(cfg, sources["train"], DataPosition(epoch + 1))
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        metrics = {"epoch": epoch, "global_step": int(engine.global_steps),
                   "train_loss": loss_sum / max(n, 1), "lr": float(engine.get_lr()[0]),
                   "samples_per_s": seen * info.world_size / max(elapsed, 1e-9), **clock.epoch_metrics(),
                   # mid-epoch evaluations and checkpoints count to the epoch, not to the wait
                   "data_wait_s": batches.wait_s, "data_wait_frac": min(1.0, batches.wait_s / max(elapsed, 1e-9))}
        if "val" in sources:
            validate(metrics)
        if log is not None:
            log.log(metrics)
        save(metrics, DataPosition(epoch, i, loss_sum, n), epoch_done=not ended or i >= steps_per_epoch)
        if info.rank == 0:  # printed once the checkpoint is persisted
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            what = (f"step {metrics['global_step']} = optim.max_steps, run ends" if ended
                    else f"epoch {epoch + 1}/{cfg.optim.epochs}")
            print(f"[polymodal] {what} checkpointed: {shown}", flush=True)
    if upcoming is not None:  # not read (a run that ended before its epochs did)
        upcoming.close()
    if log is not None:
        log.close()
    return metrics


def _read_ahead(cfg: ExperimentConfig, source: BatchSource, at: DataPosition) -> Prefetched[Batch]:
    """The batches of epoch ``at.epoch`` from batch ``at.batches`` on, read and converted on a
    background thread from now on, ``data.prefetch_batches`` ahead of the loop."""
    return Prefetched(lambda: source.epoch(at.epoch, skip=at.batches), cfg.data.prefetch_batches,
                      name=f"polymodal-batches-epoch-{at.epoch}")


def _progress(enabled: bool, total: int, desc: str, initial: int = 0):
    if not enabled:
        return None
    from polymodal.progress import bar

    return bar(total=total, desc=desc, unit="step", initial=initial)  # in a Ray Train worker: drawn by the driver


# --------------------------------------------------------------------------- Ray harness


def ray_train_loop(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` for :class:`ray.train.torch.TorchTrainer`."""
    import ray.train
    import ray.train.torch

    from polymodal import logs

    logs.configure()  # the level the CLI was given (POLYMODAL_LOG_LEVEL)
    torch.set_num_threads(worker_threads())
    keep_freed_memory()
    cfg = validate_config(loop_config["config"])
    ctx = ray.train.get_context()
    info = WorkerInfo(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
    task = get_task(cfg.task)
    manifests = {k: shards.Manifest.model_validate(v) for k, v in loop_config["manifests"].items()}
    sources = {name: RayBatches(name, task, m, cfg.optim.batch_size, cfg.data.shuffle_buffer, cfg.seed,
                                train=name in train_names(cfg)) for name, m in manifests.items()}
    steps = loop_config["steps_per_epoch"]
    reporter = RayReporter(task.primary_metric if cfg.data.val else None)
    train_worker(cfg, info, mix_train(cfg, sources, steps), reporter, steps,
                 progress=loop_config.get("progress", True), started_at=loop_config.get("started_at"))


def worker_threads() -> int:
    """Torch threads for this Ray worker: ``OMP_NUM_THREADS`` as Ray sets it from the worker's CPUs
    (``scaling.resources_per_worker.CPU``, floored, at least 1) unless the job's environment set
    it, else those CPUs. Ray sets the variable when the worker's first task starts, which is too
    late for an OpenMP or MKL runtime loaded earlier in the process (by anything that imports torch
    first): each new thread, such as the one Ray Train runs the loop on, would start with a thread
    pool as large as the machine, whose threads spin against the other processes' on a shared host."""
    import ray

    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def keep_freed_memory(trim_mb: int = 256, mmap_mb: int = 32) -> bool:
    """Let this process keep the memory a training step frees for the next step (glibc's malloc
    only; elsewhere nothing). True when set.

    Ray Train runs the loop on a thread of its own, whose allocations come from one of glibc's
    secondary arenas: freed memory at the top of their heaps goes back to the kernel at once, and
    blocks above the mmap threshold are mapped and unmapped on every allocation, so each step
    faulted its activations' pages in again (4,500 page faults a step, a third of the step's CPU in
    bench/train_loop.py; ``--local``, on the main thread, had none). With ``trim_mb`` of free top
    kept and blocks up to ``mmap_mb`` (glibc's limit: 32) taken from the heaps, the process holds
    about its largest step's memory instead."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        return bool(libc.mallopt(m_trim_threshold, trim_mb * 2**20) and libc.mallopt(m_mmap_threshold, mmap_mb * 2**20))
    except (OSError, AttributeError):
        return False


def train_names(cfg: ExperimentConfig) -> list[str]:
    """Dataset names of the training sources: ``train``, then ``train_1``, ``train_2``, ... for
    the further entries of a ``data.train`` list."""
    return ["train"] + [f"train_{i}" for i in range(1, len(cfg.data.train_sources))]


def split_uris(cfg: ExperimentConfig) -> dict[str, str]:
    """Every dataset a run reads, by name: the training sources (:func:`train_names`) and ``val``."""
    out = {name: src.uri for name, src in zip(train_names(cfg), cfg.data.train_sources)}
    if cfg.data.val:
        out["val"] = cfg.data.val
    return out


def mix_train(cfg: ExperimentConfig, sources: dict[str, BatchSource], steps: int) -> dict[str, BatchSource]:
    """``sources`` with the training sources replaced by one ``train`` source: itself for a single
    dataset, :class:`MixedBatches` of ``steps`` batches per epoch for several."""
    names = train_names(cfg)
    if len(names) == 1:
        return sources
    out = {k: v for k, v in sources.items() if k not in names}
    out["train"] = MixedBatches([sources[n] for n in names], [s.weight for s in cfg.data.train_sources], steps,
                                cfg.seed)
    return out


def _steps_per_epoch(cfg: ExperimentConfig, rows: int, world_size: int) -> int:
    steps = math.ceil(rows // world_size / cfg.optim.batch_size)
    if cfg.optim.max_steps_per_epoch:
        steps = min(steps, cfg.optim.max_steps_per_epoch)
    return max(1, steps)


def _train_steps(cfg: ExperimentConfig, manifests: dict[str, shards.Manifest], world_size: int) -> int:
    """Batches per epoch: one pass over every training source (each source's own partial last batch
    counted), capped by ``optim.max_steps_per_epoch``."""
    names = train_names(cfg)
    if len(names) == 1:
        return _steps_per_epoch(cfg, manifests["train"].num_rows, world_size)
    steps = sum(math.ceil(manifests[n].num_rows // world_size / cfg.optim.batch_size) for n in names)
    if cfg.optim.max_steps_per_epoch:
        steps = min(steps, cfg.optim.max_steps_per_epoch)
    return max(1, steps)


def open_splits(cfg: ExperimentConfig) -> dict[str, shards.Manifest]:
    """Validate every dataset the run reads, before anything starts. Mixed training sources must
    have the same columns of the same types (shapes may differ: each batch comes from one source)."""
    out = {name: shards.open_dataset(uri, cfg.storage, verify=cfg.data.verify) for name, uri in split_uris(cfg).items()}
    names = train_names(cfg)
    first = out[names[0]]
    for i, name in enumerate(names[1:], start=1):
        m = out[name]
        if m.task != first.task:
            raise PolymodalError(f"data.train[{i}] ({cfg.data.train_sources[i].uri}) is a {m.task} dataset but "
                                 f"data.train[0] ({cfg.data.train_sources[0].uri}) is {first.task}; mixed training "
                                 "data must be of one task")
        ours = {k: c.dtype for k, c in m.columns.items()}
        theirs = {k: c.dtype for k, c in first.columns.items()}
        if ours != theirs:
            raise PolymodalError(f"data.train[{i}] ({cfg.data.train_sources[i].uri}) has columns {ours} but "
                                 f"data.train[0] ({cfg.data.train_sources[0].uri}) has {theirs}; mixed training "
                                 "data must have the same columns of the same types")
    return out


def _ray_dataset(cfg: ExperimentConfig, name: str, uri: str, manifest: shards.Manifest):
    """The Ray dataset of one split; small ones (``data.cache_below_mb``) read once into the object store.

    A streamed read plans each epoch from the manifest (no listing) and starts its Ray Data read
    tasks anew: 0.4-1 s to the first batch on 2 busy cores (bench/RESULTS.md, 2026-12-07), more
    than a small epoch's training (7-8 s per epoch for 512 LLaViLo rows through the former
    read_parquet path, 0.05 s once materialised). A small split is read here, by the driver
    (:func:`~polymodal.shards.ray_dataset_in_memory`: no Ray Data execution before the trainer
    starts). A materialised training set keeps one seeded block order (so runs repeat);
    the local shuffle buffer, seeded per epoch, still mixes the rows differently every epoch.
    """
    shuffle = name in train_names(cfg)
    if streams(cfg, manifest):
        return shards.ray_dataset(uri, manifest=manifest, opts=cfg.storage, seed=cfg.seed, shuffle=shuffle)
    ds = shards.ray_dataset_in_memory(uri, manifest=manifest, opts=cfg.storage)
    return ds.randomize_block_order(seed=cfg.seed) if shuffle else ds


def streams(cfg: ExperimentConfig, manifest: shards.Manifest) -> bool:
    """Whether Ray Train streams this split with Ray Data (its shards total at least
    ``data.cache_below_mb``) rather than the driver reading it into the object store."""
    return sum(s.bytes for s in manifest.shards) >= cfg.data.cache_below_mb * 2**20


def build_trainer(cfg: ExperimentConfig, *, progress: bool = True, callbacks: list | None = None,
                  manifests: dict[str, shards.Manifest] | None = None, started_at: float | None = None):
    """The :class:`ray.train.torch.TorchTrainer` for ``cfg`` (Ray must be initialised).
    ``started_at`` (``time.time()``; default: now) is when the run started, for ``first_step_s``.

    ``callbacks`` are ``ray.train.UserCallback``s, e.g. Tune's ``TuneReportCallback`` when a
    Tune trial drives this trainer.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    manifests = manifests or open_splits(cfg)
    datasets = {name: _ray_dataset(cfg, name, uri, manifests[name]) for name, uri in split_uris(cfg).items()}
    task = get_task(cfg.task)
    fs, path = storage.to_pyarrow_fs(cfg.storage_path, cfg.storage)
    if not storage.is_s3(cfg.storage_path):
        path, fs = os.path.abspath(path), None
        os.makedirs(path, exist_ok=True)
    return TorchTrainer(
        ray_train_loop,
        train_loop_config={
            "config": cfg.to_dict(),
            "manifests": {k: m.model_dump(mode="json") for k, m in manifests.items()},
            "steps_per_epoch": _train_steps(cfg, manifests, cfg.scaling.num_workers),
            # Ray's bars are drawn in place on a terminal; into a log they would come one line a
            # second per worker, so a driver without a terminal gets the epoch lines alone
            "progress": progress and sys.stderr.isatty(),
            "started_at": time.time() if started_at is None else started_at,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=cfg.scaling.resources_per_worker or None),
        run_config=ray.train.RunConfig(
            name=cfg.name, storage_path=path, storage_filesystem=fs, callbacks=callbacks,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.checkpoint.num_to_keep,
                checkpoint_score_attribute=task.primary_metric if cfg.data.val else None,
                checkpoint_score_order=task.mode),
            failure_config=ray.train.FailureConfig(max_failures=cfg.failure.max_failures)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split="all"),
    )


def summarize_result(cfg: ExperimentConfig, result) -> dict[str, Any]:
    """Write ``summary.json`` from a Ray Train result: latest and best checkpoint URIs."""
    task = get_task(cfg.task)
    prefix = "s3://" if storage.is_s3(cfg.storage_path) else ""
    latest = prefix + result.checkpoint.path if result.checkpoint else None
    best = latest
    scored = [(m.get(task.primary_metric), c) for c, m in (result.best_checkpoints or [])]
    scored = [(s, c) for s, c in scored if s is not None and not math.isnan(s)]  # NaN: a step checkpoint
    if scored:
        pick = max(scored, key=lambda t: t[0]) if task.mode == "max" else min(scored, key=lambda t: t[0])
        best = prefix + pick[1].path
    return runs.write_summary(cfg, latest=latest, best=best, metrics=dict(result.metrics or {}))


def fit(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Fit ``cfg`` on the Ray cluster the way its task does (:meth:`Task.fit`; by default
    :func:`train_ray`). Re-running the same ``name``/``storage_path`` resumes."""
    return get_task(cfg.task).fit(cfg, progress=progress)


def fit_local(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Fit ``cfg`` in this process, without Ray (:meth:`Task.fit` with ``local``; by default
    :func:`train_local`)."""
    return get_task(cfg.task).fit(cfg, progress=progress, local=True)


def train_ray(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train with Ray Train + DeepSpeed. Re-running the same ``name``/``storage_path`` resumes."""
    from polymodal.logs import init_ray

    started_at = time.time()
    manifests = open_splits(cfg)  # bad data fails here, before any Ray work
    deepspeed_config_for(cfg, world_size=cfg.scaling.num_workers,  # and a bad deepspeed.config
                         device_type="cuda" if cfg.scaling.use_gpu else "cpu")
    init_ray()  # (quiet: only polymodal's lines of the workers reach the console)
    import ray

    from polymodal.train.capacity import CapacityWatch

    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    try:
        with CapacityWatch(cfg, alive):  # a restart that waits for a lost node's resources says so
            result = build_trainer(cfg, progress=progress, manifests=manifests, started_at=started_at).fit()
    except ray.train.TrainingFailedError as exc:
        lost = _lost_nodes(alive, str(exc))
        if not lost:
            raise
        raise PolymodalError(lost_nodes_message(cfg, lost)) from exc
    return summarize_result(cfg, result)


def _lost_nodes(alive_before: set[str], error: str, wait_s: float = 30.0) -> list[dict[str, Any]]:
    """The nodes that were up when the run started and are gone now; a node a failed worker's
    error names is waited for (the GCS declares a node dead only after its health checks fail)."""
    import re

    import ray

    named = set(re.findall(r"node_id='([0-9a-f]{56})'", error)) & alive_before
    deadline = time.time() + (wait_s if named else 0.0)
    while True:
        nodes = ray.nodes()
        lost = [n for n in nodes if n["NodeID"] in alive_before and not n["Alive"]]
        if named <= {n["NodeID"] for n in lost} or time.time() >= deadline:
            return lost
        time.sleep(1.0)


def lost_nodes_message(cfg: ExperimentConfig, lost: list[dict[str, Any]]) -> str:
    """What a run that died with its nodes says: which nodes, and where a rerun resumes from."""
    nodes = "; ".join(f"node {n['NodeID']} ({n.get('NodeManagerAddress', '?')}: "
                      f"{n.get('DeathReasonMessage') or 'no reason given'})" for n in lost)
    try:  # the newest complete checkpoint, as evaluate --which latest would find it
        checkpoint = runs.resolve_weights(cfg.run_uri, cfg.storage, which="latest")
    except PolymodalError:
        checkpoint = None
    resume = (f"the last checkpoint is {checkpoint}; run the same command again (same name and storage_path) "
              "to resume from it" if checkpoint else "no checkpoint was written; a rerun starts from scratch")
    return (f"training run {cfg.name!r} failed: {len(lost)} Ray node(s) left the cluster mid-run: {nodes}. "
            f"failure.max_failures={cfg.failure.max_failures} allowed no further restart; {resume}. "
            "Set failure.max_failures to restart on the remaining nodes automatically.")


# --------------------------------------------------------------------------- local harness


def train_local(cfg: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Single-process training without Ray (same worker code; CUDA when available)."""
    from polymodal.logs import chatter_to_log

    deepspeed = import_deepspeed()

    started_at = time.time()
    manifests = open_splits(cfg)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # before init_distributed, whose comm backend would load (or first compile) the op
        _disable_shm_comm_build_on_cpu()
    if not torch.distributed.is_initialized():
        # A group of one, met through a file store: a TCP store's "free" port can be taken again
        # before it binds (EADDRINUSE seen right after a killed run), and an inherited MASTER_PORT
        # may belong to another process's store.
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
        store = Path(tempfile.mkdtemp(prefix="polymodal-pg-")) / "store"
        with chatter_to_log():  # DeepSpeed prints its accelerator and backend set-up
            deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                       init_method=f"file://{store}", rank=0, world_size=1)
    task = get_task(cfg.task)
    sources = {name: LocalBatches(uri, task, manifests[name], cfg.optim.batch_size, cfg.data.shuffle_buffer,
                                  cfg.seed, train=name in train_names(cfg), opts=cfg.storage)
               for name, uri in split_uris(cfg).items()}
    reporter = LocalReporter(cfg)
    steps = _train_steps(cfg, manifests, 1)
    metrics = train_worker(cfg, WorkerInfo(0, 1, device), mix_train(cfg, sources, steps), reporter, steps,
                           progress=progress, started_at=started_at)
    return runs.read_summary(cfg.run_uri, cfg.storage) or {"metrics": metrics}
