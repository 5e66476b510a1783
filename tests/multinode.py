"""A simulated multi-node Ray cluster for tests (``from multinode import simulated_cluster``).

``ray.cluster_utils.Cluster`` runs several raylets on this machine, each a "node" with its own
CPUs, custom resources and object store, as Ray's own multi-node tests do. A driver talks to
one cluster at a time, so :func:`simulated_cluster` shuts the session's shared cluster down
(tests/conftest.py ``ray_cluster``), connects to the simulated one, and on exit starts the
shared cluster again with the same settings (:func:`init_shared_ray`), so later tests that
use ``ray_cluster`` find Ray as they expect. Use it from a module-scoped fixture: starting a
cluster costs seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

MIB = 1024 * 1024
#: the smallest object store Ray accepts (ray_constants.OBJECT_STORE_MINIMUM_MEMORY_BYTES)
MIN_OBJECT_STORE = 75 * MIB


def init_shared_ray() -> None:
    """Start the session's one local Ray cluster (tests/conftest.py ``ray_cluster``): logical CPUs
    exceed the 2 cores because a 2-worker Train run also needs a slot for its controller and Tune
    trials one for their driver; the dashboard runs because Ray's State API needs it."""
    import ray

    from polymodal.serving import proxy

    proxy.install()  # Serve's proxies get the guard (tests/spine/test_faults_serve.py)
    # "local": a cluster of its own, never one another process on this machine started
    ray.init(address="local", num_cpus=6, include_dashboard=True, log_to_driver=False)


@contextlib.contextmanager
def simulated_cluster(head: dict[str, Any], workers: list[dict[str, Any]]) -> Iterator[Any]:
    """A head plus worker nodes (``Cluster.add_node`` arguments: ``num_cpus``, ``resources``,
    ``object_store_memory``, ...) with this process connected as its driver; yields the
    ``Cluster`` (``add_node`` / ``remove_node`` to lose and regain capacity)."""
    import ray
    from ray.cluster_utils import Cluster

    from polymodal.ports import free_port
    from polymodal.serving import proxy

    shared = ray.is_initialized()
    if shared:
        ray.shutdown()  # this driver started the shared cluster: shutdown stops its processes
    proxy.install()  # the nodes' processes inherit it: Serve proxies on them get the guard
    # the State API needs the dashboard; a free port, as other Ray clusters may run on this machine
    head = {"include_dashboard": True, "dashboard_port": free_port(), **head}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for args in workers:
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if shared:
            init_shared_ray()


def alive_nodes() -> list[dict[str, Any]]:
    """``ray.nodes()`` entries of the nodes Ray counts as alive."""
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def wait_until(predicate: Any, timeout_s: float, what: str, period_s: float = 0.5) -> Any:
    """Poll ``predicate()`` until it returns a truthy value (returned); fail naming ``what``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
