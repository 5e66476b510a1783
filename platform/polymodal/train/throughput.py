"""Per-step timestamps of the train loop, turned into the two speed numbers an epoch reports.

* ``steady_samples_per_s``: samples per second between the end of step ``k0`` and the end of the
  epoch's last step, ``k0 = max(1, min(WARMUP_STEPS, steps // 4))``: the first steps (allocator
  warm-up, the reader's first shard, DeepSpeed's first-step bookkeeping) are left out, so the
  number is the loop's speed once it runs. ``samples_per_s`` (the whole epoch, its start included)
  stays beside it. Counted over every worker (this worker's samples x ``world_size``, as
  ``samples_per_s``).
* ``first_step_s``: seconds from the harness's start (``train_local`` / ``train_ray`` entered) to
  the end of this worker's first step: data checks, Ray Train's worker group, imports in the
  worker, DeepSpeed's initialize, the first batch and the first step. Reported in the first epoch
  a worker trains; a restarted worker counts from the same start, so its number includes the lost
  attempt.
"""

from __future__ import annotations

from time import perf_counter
from time import time as wall_clock

#: at most this many steps of an epoch are left out of ``steady_samples_per_s``
WARMUP_STEPS = 5


class StepClock:
    """Timestamps (``perf_counter``) after every micro step of an epoch, and the samples each took."""

    def __init__(self, started_at: float | None, world_size: int):
        self.started_at, self.world_size = started_at, world_size
        self.first_step_s: float | None = None
        self.times: list[float] = []
        self.samples: list[int] = []

    def start_epoch(self) -> None:
        self.times, self.samples = [], []

    def tick(self, samples: int) -> None:
        """After a step that trained on ``samples`` rows."""
        self.times.append(perf_counter())
        self.samples.append(samples)
        if self.first_step_s is None and self.started_at is not None:
            self.first_step_s = wall_clock() - self.started_at

    def epoch_metrics(self) -> dict[str, float]:
        """``steady_samples_per_s`` (needs 2 steps) and, the first time only, ``first_step_s``."""
        out: dict[str, float] = {}
        n = len(self.times)
        if n >= 2:
            k0 = max(1, min(WARMUP_STEPS, n // 4))  # ticks 1..k0 (1-based) are the warm-up
            span = self.times[-1] - self.times[k0 - 1]
            out["steady_samples_per_s"] = sum(self.samples[k0:]) * self.world_size / max(span, 1e-9)
        if self.first_step_s is not None:
            out["first_step_s"] = self.first_step_s
            self.started_at = None  # later epochs: reported once
            self.first_step_s = None
        return out
