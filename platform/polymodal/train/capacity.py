"""A Ray Train run that waits for its workers' resources says so on the console.

After a worker's node is lost, ``failure.max_failures`` restarts the whole worker group, which
needs ``scaling.num_workers`` x ``scaling.resources_per_worker`` again. Until the cluster has them
(KubeRay's autoscaler adds a pod, a preempted node comes back, someone adds a node), Ray Train's
controller retries the group's placement group every ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``
(60 s) without limit, and says so only in its own log: on polymodal's quiet console the run looks
hung. :class:`CapacityWatch` watches from the driver and warns once the run has waited
``POLYMODAL_CAPACITY_WARN_S`` seconds (default 60), then every 5 minutes while it still waits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from polymodal.config import ExperimentConfig

log = logging.getLogger(__name__)

WARN_ENV = "POLYMODAL_CAPACITY_WARN_S"
#: placement-group states of a worker group that does not fit (yet)
WAITING = ("PENDING", "RESCHEDULING")


class CapacityWatch:
    """``with CapacityWatch(cfg, alive_before): trainer.fit()``: a thread polls the GCS's placement
    group table (one cheap call every ``poll_s``) for a group of this driver's job with
    ``scaling.num_workers`` bundles that is not placed, and logs a warning naming what the run
    waits for, what is free and which of the nodes ``alive_before`` are gone."""

    def __init__(self, cfg: ExperimentConfig, alive_before: set[str], warn_after_s: float | None = None,
                 repeat_s: float = 300.0, poll_s: float = 1.0):
        self.cfg, self.alive_before = cfg, alive_before
        self.warn_after_s = float(os.environ.get(WARN_ENV, 60.0)) if warn_after_s is None else warn_after_s
        self.repeat_s, self.poll_s = repeat_s, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "CapacityWatch":
        import ray

        self._job = ray.get_runtime_context().get_job_id()
        self._thread = threading.Thread(target=self._run, name="polymodal-capacity-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def waiting_bundles(self) -> list[dict[str, float]] | None:
        """The bundles of this run's worker group while it waits to be placed, else None."""
        import ray

        for pg_id, info in ray.util.placement_group_table().items():
            # a placement group's id ends with its job's id
            if (pg_id.endswith(self._job) and info["state"] in WAITING
                    and len(info["bundles"]) == self.cfg.scaling.num_workers):
                return list(info["bundles"].values())
        return None

    def _run(self) -> None:
        since: float | None = None
        warned_at: float | None = None
        while not self._stop.wait(self.poll_s):
            try:
                bundles = self.waiting_bundles()
            except Exception:  # noqa: BLE001 - the GCS unreachable for a moment: the next poll asks again
                continue
            now = time.monotonic()
            if bundles is None:
                since = warned_at = None
                continue
            since = now if since is None else since
            if now - since >= self.warn_after_s and (warned_at is None or now - warned_at >= self.repeat_s):
                warned_at = now
                try:
                    log.warning(self.message(bundles, now - since))
                except Exception:  # noqa: BLE001 - a failed look-up must not end the watch
                    log.warning("training run %r has waited %.0f s for its workers' resources",
                                self.cfg.name, now - since)

    def message(self, bundles: list[dict[str, float]], waited_s: float) -> str:
        """What the run waits for, what the cluster has free, and which nodes left since the start."""
        import ray

        need: dict[str, float] = {}
        for bundle in bundles:
            for key, amount in bundle.items():
                need[key] = need.get(key, 0.0) + amount
        free = ray.available_resources()
        have = ", ".join(f"{key} {free.get(key, 0.0):g} of {amount:g}" for key, amount in sorted(need.items()))
        lost = sorted(n["NodeID"] for n in ray.nodes() if n["NodeID"] in self.alive_before and not n["Alive"])
        gone = f"; node(s) gone since the run started: {', '.join(lost)}" if lost else ""
        return (f"training run {self.cfg.name!r} has waited {waited_s:.0f} s for its {len(bundles)} workers' "
                f"resources ({len(bundles)} x {bundles[0]}); free now: {have}{gone}. Ray Train retries until "
                "they fit (every RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default): add a node with them "
                "(KubeRay: a worker group whose pods offer them), or stop the run and run the same command "
                "later; it resumes from its last checkpoint.")
