"""Logging for the CLI and for polymodal's code inside Ray workers.

``polymodal -v`` (INFO), ``-vv`` (DEBUG) or ``--log-level LEVEL`` set the level of the ``polymodal``
loggers; the default, WARNING, shows only what a person should act on (skipped rows, fallbacks).
The level travels to Ray workers in ``POLYMODAL_LOG_LEVEL`` (:func:`ray_runtime_env` for a cluster the
CLI joins; processes started from this one inherit it), and each Train worker and Tune trial calls
:func:`configure` on start.
"""

from __future__ import annotations

import logging
import os
import sys

ENV = "POLYMODAL_LOG_LEVEL"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HANDLER_NAME = "polymodal"


def level_from(verbose: int = 0, log_level: str | None = None) -> str:
    """The level named by ``--log-level``, else by the count of ``-v``, else by the environment."""
    if log_level:
        return log_level.upper()
    if verbose:
        return "DEBUG" if verbose > 1 else "INFO"
    return os.environ.get(ENV, "WARNING").upper()


def configure(level: str | None = None) -> str:
    """Send the ``polymodal`` loggers at ``level`` (default: ``$POLYMODAL_LOG_LEVEL`` or WARNING) to
    stderr, one line a record; idempotent. Exported in ``POLYMODAL_LOG_LEVEL`` for child processes."""
    level = (level or os.environ.get(ENV) or "WARNING").upper()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: choose one of {', '.join(LEVELS)}")
    os.environ[ENV] = level
    logger = logging.getLogger("polymodal")
    logger.setLevel(level)
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = _StderrHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False  # Ray's and the root logger's handlers would print it twice
    return level


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (a redirect, a test's capture), not
    as it was when logging was set up."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def ray_runtime_env() -> dict | None:
    """``runtime_env`` for ``ray.init`` that carries a log level other than the default to every
    worker of the job (None otherwise, leaving a submitted job's own runtime_env alone)."""
    level = os.environ.get(ENV, "WARNING")
    return {"env_vars": {ENV: level}} if level != "WARNING" else None
