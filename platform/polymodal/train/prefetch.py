"""Batches read ahead of the train loop on a background thread.

A train worker's batches come from a reader (Ray Data's split, or pyarrow with ``--local``) and a
conversion (arrow -> numpy -> the task's ``collate``). Done on the loop's thread, each ``next``
pays for both, and an epoch's first ``next`` also pays for the stream's start (for a Ray Train
worker: the split's coordinator actor, the plan and the first blocks, 3 s for the Wander demo on
2 busy cores). :class:`Prefetched` moves all of it to one daemon thread that keeps up to ``depth``
batches ready, and starts when it is created, so a caller that creates it before other work
(building the model, an epoch's evaluation and checkpoint) finds the first batch ready when it
asks.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _END, _ERROR = 0, 1, 2
_POLL_S = 0.2  # how often a blocked thread looks whether it was stopped or dropped


class Prefetched(Iterator[T]):
    """Iterates ``make()`` on a daemon thread, up to ``depth`` items ahead of the consumer.

    ``make`` (e.g. a batch source's ``epoch``) is called on the thread as well, so whatever it
    starts with runs there. Items, the end and an exception come through in order; an exception
    is raised at the consumer's ``next`` (the reader's own, with its traceback). ``close()`` stops
    the thread and waits for it; the thread closes the reader itself (a generator cannot be closed
    from another thread while it runs), so the reader's ``finally`` runs. One that is dropped
    without ``close()`` (a loop left by an exception) ends its thread within ``0.2`` s once it is
    collected.

    ``depth`` 0 reads nothing ahead: ``make()`` is iterated on the consumer's thread, lazily, as a
    plain loop over it would.
    """

    def __init__(self, make: Callable[[], Iterable[T]], depth: int, name: str = "polymodal-prefetch"):
        self.depth, self._done = depth, False
        self._inline: Iterator[T] | None = None
        self._thread: threading.Thread | None = None
        if depth <= 0:
            self._inline = iter(make())
            return
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=_fill, args=(make, self._queue, self._stop, weakref.ref(self)),
                                        name=name, daemon=True)
        self._thread.start()

    def __iter__(self) -> "Prefetched[T]":
        return self

    def __next__(self) -> T:
        if self._inline is not None:
            return next(self._inline)
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():  # stopped by close()
                    self._done = True
                    raise StopIteration from None
        if kind == _ITEM:
            return value
        self._done = True
        if kind == _ERROR:
            raise value
        raise StopIteration

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop reading ahead and release the reader (on its thread); wait up to ``timeout_s``
        for the thread to finish the item it is reading."""
        self._done = True
        if self._inline is not None:
            close = getattr(self._inline, "close", None)
            if close is not None:
                close()
            return
        self._stop.set()
        while True:  # what was read ahead is not wanted
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("the batch reader thread %s did not stop within %.0f s; leaving it behind",
                        self._thread.name, timeout_s)


def _fill(make: Callable[[], Iterable[Any]], q: queue.Queue, stop: threading.Event,
          owner: weakref.ReferenceType) -> None:
    """The thread of a :class:`Prefetched`: it holds no reference to its owner, so a dropped one
    is collected and its thread sees ``owner()`` gone."""

    def put(entry: tuple[int, Any]) -> bool:
        while not stop.is_set() and owner() is not None:
            try:
                q.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    it = None
    try:
        it = iter(make())
        for item in it:
            if not put((_ITEM, item)) or stop.is_set():  # stopped: read no further item
                return
        put((_END, None))
    except BaseException as exc:  # noqa: BLE001 (handed to the consumer, raised there)
        put((_ERROR, exc))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
