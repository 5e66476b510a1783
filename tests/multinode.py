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

    from polymodal.demo import one_machine_train_settings
    from polymodal.serving import proxy

    proxy.install()  # Serve's proxies get the guard (tests/spine/test_faults_serve.py)
    one_machine_train_settings()  # as the demo's: Train runs end sooner, start one process fewer
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
        # RAY_ADDRESS in every worker of the job: the State API inside the cluster (Ray Train's
        # PlacementGroupCleaner asks it whether the run's controller lives) otherwise finds "the
        # latest cluster" on this machine, another one where the controller is unknown, and the
        # cleaner removed the live run's placement group (seen while other clusters ran here)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
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


class StoreWatch:
    """Samples a simulated cluster's memory while a workload runs (``with StoreWatch(cluster, ...)
    as watch:``), 10 times a second, keeping the peaks:

    * ``used`` / ``fallback``: the object stores' bytes in use and allocated past them (plasma's
      fallback files), summed over the nodes (the raylets' store stats, as ``ray memory`` shows);
    * ``spill_dir``: bytes of the spilled-object files under ``spill_dir`` (every node's
      ``ray_spilled_objects_<node id>`` folder);
    * ``worker_rss``: the largest resident set of one worker process of the cluster (the
      raylets' ``default_worker.py`` children; shared store pages it mapped included).

    After the block, ``capacity`` is the stores' size and ``spilled`` / ``restored`` the bytes the
    raylets spilled and restored since the watch began.
    """

    def __init__(self, cluster: Any, spill_dir: str | None = None, period_s: float = 0.1) -> None:
        from ray._private.internal_api import get_state_from_address

        self._state = get_state_from_address(cluster.address)
        self._nodes = [cluster.head_node, *cluster.worker_nodes]
        self._spill_dir = spill_dir
        self._period_s = period_s
        self.peak = {"used": 0, "fallback": 0, "spill_dir": 0, "worker_rss": 0}
        self.capacity = self.spilled = self.restored = 0

    def _stats(self) -> Any:
        from ray._private.internal_api import get_memory_info_reply

        return get_memory_info_reply(self._state).store_stats

    def spilled_now(self) -> int:
        """Bytes the raylets have spilled since the watch began, asked now."""
        return self._stats().spilled_bytes_total - self._spilled0

    def _worker_rss(self) -> int:
        import psutil

        largest = 0
        for node in self._nodes:
            for info in node.all_processes.get("raylet", []):
                try:
                    children = psutil.Process(info.process.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    continue
                for child in children:
                    try:
                        if any("default_worker.py" in part for part in child.cmdline()):
                            largest = max(largest, child.memory_info().rss)
                    except psutil.Error:  # a worker that exited between the listing and the read
                        continue
        return largest

    def _spill_dir_bytes(self) -> int:
        import os

        total = 0
        for root, _, files in os.walk(self._spill_dir or ""):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:  # deleted once restored and freed
                    continue
        return total

    def _sample(self) -> None:
        stats = self._stats()
        peak = self.peak
        peak["used"] = max(peak["used"], stats.object_store_bytes_used)
        peak["fallback"] = max(peak["fallback"], stats.object_store_bytes_fallback)
        peak["worker_rss"] = max(peak["worker_rss"], self._worker_rss())
        if self._spill_dir:
            peak["spill_dir"] = max(peak["spill_dir"], self._spill_dir_bytes())

    def __enter__(self) -> StoreWatch:
        import threading

        stats = self._stats()
        self.capacity = stats.object_store_bytes_avail
        self._spilled0, self._restored0 = stats.spilled_bytes_total, stats.restored_bytes_total
        self._stop = threading.Event()

        def watch() -> None:
            while not self._stop.is_set():
                self._sample()
                self._stop.wait(self._period_s)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        stats = self._stats()
        self.spilled = stats.spilled_bytes_total - self._spilled0
        self.restored = stats.restored_bytes_total - self._restored0

    def __str__(self) -> str:
        p = self.peak
        return (f"object store peak {p['used'] / MIB:.0f} of {self.capacity / MIB:.0f} MiB, fallback "
                f"{p['fallback'] / MIB:.0f} MiB, spilled {self.spilled / MIB:.0f} MiB (spill folder peak "
                f"{p['spill_dir'] / MIB:.0f} MiB), restored {self.restored / MIB:.0f} MiB, largest worker RSS "
                f"{p['worker_rss'] / MIB:.0f} MiB")
