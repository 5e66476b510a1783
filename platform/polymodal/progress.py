"""Progress bars that reach a person: inside a Ray worker (a Train worker, a Ray task, a Tune
trial) Ray's own ``tqdm_ray`` sends the bar to the driver, which draws every worker's bar in place
on its console; anywhere else it is an ordinary ``tqdm.auto`` bar."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable
from typing import Any


def in_ray_worker() -> bool:
    """True inside a Ray worker process (not in the driver, and never without Ray)."""
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None, unit: str = "it",
        leave: bool = False, initial: int = 0) -> Any:
    """A tqdm-style bar (``update``, ``set_postfix``, ``close``, iteration) over ``iterable``, starting
    at ``initial`` (a resumed epoch)."""
    if in_ray_worker():
        ray_bar = _ray_bar_class()(iterable, desc=desc, total=total, unit=unit)
        if initial:
            ray_bar.update(initial)
        return ray_bar
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, initial=initial)


@functools.cache
def _ray_bar_class() -> type:
    """Made on first use, so that a process without Ray never imports it."""
    from ray.experimental.tqdm_ray import tqdm as tqdm_ray

    class RayBar(tqdm_ray):
        """``tqdm_ray`` with ``set_postfix`` (shown after the description, as tqdm does)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._base_desc = kwargs.get("desc") or ""

        def set_postfix(self, refresh: bool = True, **values: Any) -> None:  # tqdm's signature
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            self.set_description(f"{self._base_desc} [{shown}]" if shown else self._base_desc)

    return RayBar

