"""Shared fixtures: an embedded S3 server and a Ray cluster for the whole session, fresh prefixes
per test. Helpers shared by tests are in support.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

# Tests never reach the network: hub ids resolve only from the local cache. Set before
# huggingface_hub is imported (it reads the variable once), and inherited by Ray workers.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from polymodal import storage  # noqa: E402
from polymodal.s3server import EmbeddedS3  # noqa: E402


@pytest.fixture(autouse=True)
def _polymodal_records_reach_caplog():
    """``polymodal`` loggers stop propagating to the root once :func:`polymodal.logs.configure` ran
    (a CLI call in an earlier test), and caplog listens at the root: each test starts with them
    propagating again."""
    import logging

    logger = logging.getLogger("polymodal")
    saved, logger.propagate = logger.propagate, True
    yield
    logger.propagate = saved


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
    tests share it); its settings are :func:`multinode.init_shared_ray`'s. The dashboard runs
    because Ray's State API needs it, and Train needs that to release the placement group of a
    run whose trial Tune stopped (ASHA)."""
    import ray
    from multinode import init_shared_ray

    if not ray.is_initialized():
        init_shared_ray()  # tests on a simulated multi-node cluster start it again after them
    yield ray
    ray.shutdown()


class SyntheticData:
    """Synthetic datasets of any registered task, written once per session into the S3 server
    (``s3://polymodal/session/<task>-<scale>``) and shared by every test that asks."""

    def __init__(self) -> None:
        self._made: dict[tuple[str, float], dict[str, str]] = {}

    def __call__(self, task: str, scale: float | None = None) -> dict[str, str]:
        """The splits (and backbones) ``synth`` wrote for ``task`` at ``scale``; ``scale=None``:
        any scale this session already made, else a small one (tests that need only a few rows)."""
        from polymodal.registry import get_task

        if scale is None:
            made = [out for (name, _), out in self._made.items() if name == task]
            if made:
                return made[0]
            scale = 0.1
        if (task, scale) not in self._made:
            self._made[task, scale] = get_task(task).synth(
                f"s3://polymodal/session/{task}-{scale:g}", seed=0, scale=scale, progress=False)
        return self._made[task, scale]


@pytest.fixture(scope="session")
def synthetic(s3_server) -> SyntheticData:
    return SyntheticData()


@pytest.fixture(scope="session")
def wander_data(synthetic) -> dict[str, str]:
    """Synthetic Wander classification splits + tiny backbone in the S3 server (1024 train rows)."""
    return synthetic("wander.classification", 0.5)


@pytest.fixture(scope="session")
def cheffusion_data(synthetic) -> dict[str, str]:
    """Synthetic ChefFusion dishes (raw + feature splits, 480 train rows) and tiny backbones in S3."""
    return synthetic("cheffusion.recipes", 1.0)
