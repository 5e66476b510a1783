"""Helpers the tests share (import them: ``from support import served``); fixtures live in
conftest.py. ``tests/`` is on ``sys.path`` (pytest's ``pythonpath``)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polymodal import storage
from polymodal.ports import free_port
from polymodal.train.checkpoint import STATE_FILE

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served(args, name: str, deployment: dict | None = None, **actor_options) -> Iterator[str]:
    """A polymodal Serve app (``args``: parsed ServeArgs; ``deployment``: more Deployment options)
    on a fresh port of 127.0.0.1, on the session's Ray cluster; yields its base URL and shuts
    Serve down afterwards."""
    from ray import serve

    from polymodal.serving.app import build_deployment

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = {"num_cpus": 0.5, **actor_options}
    serve.run(build_deployment(args, ray_actor_options=options, **(deployment or {})).bind(args.model_dump()),
              name=name, route_prefix=f"/{name}")
    try:
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        serve.shutdown()


def untrained_export(root, yaml: str, *overrides: str, seed: int = 0) -> tuple[str, Any]:
    """(checkpoint folder, config) of an untrained model of a shipped tiny config: serving needs
    no training to be fuzzed or faulted."""
    import torch

    from polymodal.config import load_config
    from polymodal.registry import get_task
    from polymodal.train.checkpoint import trainable_state, write_export

    root = Path(root)
    cfg = load_config(str(ROOT / "jobs" / "configs" / yaml), list(overrides))
    torch.manual_seed(seed)
    model = get_task(cfg.task).build_model(cfg.model)
    write_export(root / "model", cfg, trainable_state(model, zero_stage=2), {"epoch": 0, "metrics": {}})
    return str(root), cfg


def wander_request(backbone: str, seed: int = 0) -> dict:
    """A valid Wander request body: random features of every modality of ``backbone``."""
    import numpy as np

    from polymodal.models.wander.backbone import read_spec

    rng = np.random.default_rng(seed)
    return {"inputs": {m.name: rng.normal(size=(m.seq_len, m.feature_dim)).round(3).tolist()
                       for m in read_spec(backbone).modalities}}


def wander_export(root, seed: int = 0) -> tuple[str, dict]:
    """(an untrained tiny Wander export under ``root``, a valid request body) on fresh synthetic data."""
    from polymodal.registry import get_task

    root = Path(root)
    data = get_task("wander.classification").synth(str(root / "data"), seed=seed, scale=0.05, progress=False)
    checkpoint, _ = untrained_export(root / "base", "wander_tiny.yaml", f"model.backbone={data['backbone']}",
                                     *(f"data.{s}={data[s]}" for s in ("train", "val", "test")), seed=seed)
    return checkpoint, wander_request(data["backbone"], seed)


def wander_config(data: dict[str, str], storage_path: str, name: str, *overrides: str):
    """The shipped tiny Wander config pointed at ``data`` and ``storage_path``."""
    from polymodal.config import load_config

    return load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"), [
        f"name={name}", f"storage_path={storage_path}", f"model.backbone={data['backbone']}",
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
        *overrides])


def cheffusion_config(data: dict[str, str], storage_path: str, name: str, *overrides: str):
    """The shipped tiny ChefFusion config pointed at ``data`` and ``storage_path``."""
    from polymodal.config import load_config

    return load_config(str(ROOT / "jobs" / "configs" / "cheffusion_tiny.yaml"), [
        f"name={name}", f"storage_path={storage_path}", f"model.lm={data['lm']}", f"model.clip={data['clip']}",
        f"model.sd={data['sd']}", f"data.train={data['train']}", f"data.val={data['val']}",
        f"data.test={data['test']}", *overrides])


def checkpoint_epochs(cfg) -> list[int]:
    """Epoch of every complete Ray Train checkpoint folder in the run (``num_to_keep`` keeps all)."""
    epochs = []
    for name in storage.listdir(cfg.run_uri, cfg.storage):
        state = storage.join(cfg.run_uri, name, STATE_FILE)
        if name.startswith("checkpoint_") and storage.exists(state, cfg.storage):
            epochs.append(json.loads(storage.read_text(state, cfg.storage))["epoch"])
    return sorted(epochs)


def registered_epoch(cfg) -> int:
    """The epoch of the latest checkpoint Ray Train's controller has registered (-1: none yet).

    A checkpoint counts once the controller has polled it from the worker (every
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: 0.5 s on the test clusters, Ray's default 2 s); one a
    worker uploaded but died before handing over is not resumed from, so the test kills only
    after a registration it can see."""
    uri = storage.join(cfg.run_uri, "checkpoint_manager_snapshot.json")
    if not storage.exists(uri, cfg.storage):
        return -1
    try:
        latest = json.loads(storage.read_text(uri, cfg.storage)).get("latest_checkpoint_result")
    except (ValueError, FileNotFoundError):  # caught mid-write
        return -1
    return int(latest["metrics"]["epoch"]) if latest else -1


async def post_under_load(url: str, body: dict, seconds: float,
                          concurrency: int = 8) -> list[tuple[float, float, int, dict, bytes]]:
    """POST ``body`` back to back from ``concurrency`` clients for ``seconds``:
    [(start time, end time, status, headers, body)] of every request, each bounded by a 60 s timeout."""
    import asyncio

    import httpx

    out: list[tuple[float, float, int, dict, bytes]] = []
    stop = time.time() + seconds
    async with httpx.AsyncClient(timeout=60) as client:
        async def worker() -> None:
            while time.time() < stop:
                t = time.time()
                r = await client.post(url, json=body)  # a timeout raises and fails the test
                out.append((t, time.time(), r.status_code, dict(r.headers), r.content))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def deepspeed_process_group() -> None:
    """A one-process gloo group for tests that build DeepSpeed engines outside a train run."""
    import os

    import deepspeed
    import torch

    from polymodal.train.loop import _disable_shm_comm_build_on_cpu

    _disable_shm_comm_build_on_cpu()  # first: init_distributed would JIT-compile the op (~30 s on 2 cores)
    if not torch.distributed.is_initialized():
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
        deepspeed.init_distributed(dist_backend="gloo")
