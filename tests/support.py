"""Helpers the tests share (import them: ``from support import served``); fixtures live in
conftest.py. ``tests/`` is on ``sys.path`` (pytest's ``pythonpath``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polymodal.ports import free_port

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


def connect_shared_ray() -> None:
    """Start the session's local Ray cluster unless this process is connected to one.

    Called by ``ray_cluster`` and again by a module that ran its own multi-node cluster in
    between (tests/spine/test_faults_multinode.py): that module shuts the shared one down, and
    the tests after it get a fresh one with the same settings."""
    import ray

    from polymodal.serving import proxy

    if not ray.is_initialized():
        proxy.install()  # Serve's proxies get the guard (tests/spine/test_faults_serve.py)
        ray.init(num_cpus=6, include_dashboard=True, log_to_driver=False)
