"""Shared fixtures: an embedded S3 server for the whole session, fresh prefixes per test."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polymodal import storage
from polymodal.s3server import EmbeddedS3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """One moto S3 server on 127.0.0.1 with bucket ``polymodal``; its env is exported
    into ``os.environ`` for the session (so Ray workers started later inherit it)."""
    server = EmbeddedS3(port=0, buckets=("polymodal",)).start()
    env = server.env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    storage.clear_fs_cache()  # filesystems built before this point saw other settings
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        storage.clear_fs_cache()
        server.stop()


@pytest.fixture
def s3_bucket_uri(s3_server: EmbeddedS3) -> str:
    """A prefix no other test uses: ``s3://polymodal/test-<uuid>``."""
    return f"s3://polymodal/test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole session (TorchTrainer start-up costs ~20 s, so
    tests share it). Logical CPUs exceed the 2 cores: a 2-worker Train run also needs a slot
    for its controller, and Tune trials need one for their driver. The dashboard runs because
    Ray's State API needs it, and Train needs that to release the placement group of a run
    whose trial Tune stopped (ASHA)."""
    import ray

    from polymodal.serving import proxy

    if not ray.is_initialized():
        proxy.install()  # Serve's proxies get the guard (tests/test_faults_serve.py)
        ray.init(num_cpus=6, include_dashboard=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def wander_data(s3_server) -> dict[str, str]:
    """Synthetic Wander classification splits + tiny backbone in the S3 server (1024 train rows)."""
    from polymodal.registry import get_task

    return get_task("wander.classification").synth(
        "s3://polymodal/session/wander", seed=0, scale=0.5, progress=False)


def untrained_export(root, yaml: str, *overrides: str, seed: int = 0) -> tuple[str, Any]:
    """(checkpoint folder, config) of an untrained model of a shipped tiny config: serving needs
    no training to be fuzzed or faulted."""
    from pathlib import Path

    import torch

    from polymodal.config import load_config
    from polymodal.registry import get_task
    from polymodal.train.checkpoint import trainable_state, write_export

    root = Path(root)
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "jobs" / "configs" / yaml), list(overrides))
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
    from pathlib import Path

    from polymodal.registry import get_task

    root = Path(root)
    data = get_task("wander.classification").synth(str(root / "data"), seed=seed, scale=0.05, progress=False)
    checkpoint, _ = untrained_export(root / "base", "wander_tiny.yaml", f"model.backbone={data['backbone']}",
                                     *(f"data.{s}={data[s]}" for s in ("train", "val", "test")), seed=seed)
    return checkpoint, wander_request(data["backbone"], seed)


def wander_config(data: dict[str, str], storage_path: str, name: str, *overrides: str):
    """The shipped tiny Wander config pointed at ``data`` and ``storage_path``."""
    from pathlib import Path

    from polymodal.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(str(root / "jobs" / "configs" / "wander_tiny.yaml"), [
        f"name={name}", f"storage_path={storage_path}", f"model.backbone={data['backbone']}",
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
        *overrides])


@pytest.fixture(scope="session")
def cheffusion_data(s3_server) -> dict[str, str]:
    """Synthetic ChefFusion dishes (raw + feature splits, 480 train rows) and tiny backbones in S3."""
    from polymodal.registry import get_task

    return get_task("cheffusion.recipes").synth("s3://polymodal/session/cheffusion", seed=0, progress=False)


def cheffusion_config(data: dict[str, str], storage_path: str, name: str, *overrides: str):
    """The shipped tiny ChefFusion config pointed at ``data`` and ``storage_path``."""
    from pathlib import Path

    from polymodal.config import load_config

    root = Path(__file__).resolve().parents[1]
    return load_config(str(root / "jobs" / "configs" / "cheffusion_tiny.yaml"), [
        f"name={name}", f"storage_path={storage_path}", f"model.lm={data['lm']}", f"model.clip={data['clip']}",
        f"model.sd={data['sd']}", f"data.train={data['train']}", f"data.val={data['val']}",
        f"data.test={data['test']}", *overrides])
