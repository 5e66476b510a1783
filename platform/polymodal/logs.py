"""Logging for the CLI and for polymodal's code inside Ray workers.

``polymodal -v`` (INFO), ``-vv`` (DEBUG) or ``--log-level LEVEL`` set the level of the ``polymodal``
loggers; the default, WARNING, shows only what a person should act on (skipped rows, fallbacks).
The level travels to Ray workers in ``POLYMODAL_LOG_LEVEL`` (:func:`ray_runtime_env` for a cluster the
CLI joins; processes started from this one inherit it), and each Train worker and Tune trial calls
:func:`configure` on start.

At the default level the console tells the story (what runs, where it writes, the results) and
everything else goes to one log file per process (:func:`log_file`, ``$POLYMODAL_LOG_FILE`` to
choose it): the INFO lines of Ray, Ray Data, Ray Train, Serve, DeepSpeed, botocore and the other
libraries, the Python warnings raised inside them, and every line the Ray workers print except
polymodal's own (``[polymodal] ...`` and polymodal's log records). Ray Data's progress bars are
switched off. ``-v`` or ``--log-level INFO``/``DEBUG`` bring all of it back to the console (the
file still gets a copy).
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

ENV = "POLYMODAL_LOG_LEVEL"
#: where :func:`log_file` writes; set to choose the file (children inherit it)
FILE_ENV = "POLYMODAL_LOG_FILE"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HANDLER_NAME = "polymodal"
_FILE_HANDLER_NAME = "polymodal-file"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# a line a Ray worker prints that is polymodal's story: its own prints or its log records (_FORMAT)
_OURS = re.compile(r"^(\[polymodal\] |\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) polymodal[.:])")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# DeepSpeed makes its logger (a stdout handler) on import, and logs its accelerator guess then
_EARLY_LOGGERS = ("DeepSpeed",)
_quiet = False


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
        handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False  # Ray's and the root logger's handlers would print it twice
    _route_chatter(quiet=logging.getLevelName(level) >= logging.WARNING)
    return level


def is_quiet() -> bool:
    """Whether the console shows only polymodal's story (the default level, WARNING or above)."""
    return _quiet


def log_file() -> Path:
    """This process's log file: ``$POLYMODAL_LOG_FILE``, else
    ``<temp dir>/polymodal-logs/polymodal-<date>-<time>-<pid>.log`` (then exported in
    ``POLYMODAL_LOG_FILE``, so a second call, and a child process, name the same file)."""
    path = os.environ.get(FILE_ENV)
    if not path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = str(Path(tempfile.gettempdir()) / "polymodal-logs" / f"polymodal-{stamp}-{os.getpid()}.log")
        os.environ[FILE_ENV] = path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


def where_logs_go() -> str:
    """One line naming the log file (and Ray's log folder when this process started or joined a
    local Ray cluster), for the end of a command's or the demo's output."""
    text = f"log file (Ray, DeepSpeed and library messages, warnings): {log_file()}"
    ray_logs = _ray_logs_dir()
    return text + (f"; Ray's own logs: {ray_logs}" if ray_logs else "")


def _ray_logs_dir() -> str | None:
    if "ray" not in sys.modules:
        return None
    try:
        import ray
        from ray._private import worker

        node = getattr(worker, "_global_node", None)
        return node.get_logs_dir_path() if ray.is_initialized() and node is not None else None
    except Exception:  # a Ray without these internals: the log file still names every line
        return None


def _file_handler() -> logging.FileHandler:
    """The root logger's handler of :func:`log_file` (a new one when ``$POLYMODAL_LOG_FILE`` changed)."""
    root = logging.getLogger()
    path = os.path.abspath(log_file())
    for handler in list(root.handlers):
        if handler.get_name() == _FILE_HANDLER_NAME:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename == path:
                return handler
            _drop_everywhere(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.set_name(_FILE_HANDLER_NAME)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    root.addHandler(handler)
    return handler


def _drop_everywhere(handler: logging.Handler) -> None:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        if handler in logger.handlers:
            logger.removeHandler(handler)
    handler.close()


class _ConsoleGate(logging.Filter):
    """On a library's console handler: lets through only errors while the console is quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _quiet or record.levelno >= logging.ERROR


class _Divert(logging.Filter):
    """On a library's logger: while the console is quiet, sends its records below ERROR to the log
    file instead of to the logger's own handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _quiet or record.levelno >= logging.ERROR:
            return True
        handler = _file_handler()
        if record.levelno >= handler.level:
            handler.handle(record)
        return False


_GATE = _ConsoleGate()
_DIVERT = _Divert()


def _route_chatter(quiet: bool) -> None:
    """Quiet: libraries' records go to :func:`log_file` (their console handlers pass errors only),
    and so do the warnings they raise. Not quiet: they print as they would without polymodal."""
    global _quiet
    _quiet = quiet
    root = logging.getLogger()
    _file_handler()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)  # the libraries' INFO records reach the file (the root has no console handler)
    logging.captureWarnings(quiet)
    if quiet:  # transformers' "Loading weights" bars (read when huggingface_hub is imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in _EARLY_LOGGERS:
        logger = logging.getLogger(name)
        if _DIVERT not in logger.filters:
            logger.addFilter(_DIVERT)
    gate_console_handlers()


def gate_console_handlers() -> None:
    """Put the quiet-console gate on every console handler libraries have set up so far, and
    the log file on the loggers that do not pass their records up to the root. Called again
    after Ray, Ray Data or Serve is imported, since they add their handlers then."""
    handler = _file_handler()
    manager = logging.Logger.manager
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name == "polymodal" or name.startswith("polymodal."):
            continue
        for h in logger.handlers:
            if _is_console(h) and _GATE not in h.filters:
                h.addFilter(_GATE)
        if not logger.propagate and logger.handlers and handler not in logger.handlers:
            logger.addHandler(handler)


def _is_console(handler: logging.Handler) -> bool:
    """A handler that prints: a stream handler, but not one writing to a file or to memory (a
    ``StringIO``, as log-capturing handlers do)."""
    return (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            and not isinstance(getattr(handler, "stream", None), io.StringIO))


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


@contextmanager
def chatter_to_log() -> Iterator[None]:
    """While the console is quiet, what a library ``print``s inside the block goes to the log file."""
    if not _quiet:
        yield
        return
    stream = _file_handler().stream
    with redirect_stdout(stream):
        yield
    stream.flush()


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` unless Ray is already initialised (by default at ``$RAY_ADDRESS`` or a
    new local cluster, with :func:`ray_runtime_env`), then :func:`quiet_ray`."""
    import ray

    if not ray.is_initialized():
        kwargs.setdefault("address", os.environ.get("RAY_ADDRESS") or None)
        env = ray_runtime_env()
        if env is not None:
            kwargs.setdefault("runtime_env", env)
        kwargs.setdefault("log_to_driver", True)
        ray.init(**kwargs)
    quiet_ray()


def quiet_ray() -> None:
    """While the console is quiet: Ray Data shows no progress bars and no execution plans, the
    lines Ray's workers print reach the console only when they are polymodal's own (all go to
    :func:`log_file`), and Ray's loggers here print errors only (the rest to the file).
    Idempotent; does nothing to Ray at INFO/DEBUG."""
    if not _quiet:
        return
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    _filter_worker_output()
    gate_console_handlers()


def worker_lines(data: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(lines for the console, lines for the log file) of one batch of a Ray worker's output as
    Ray's log monitor hands it to the driver (``lines``, ``pid``, ``actor_name``/``task_name``)."""
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who + ' ' if who else ''}pid={data.get('pid')}) "
    lines = [str(line) for line in data.get("lines", [])]
    keep = [line for line in lines if _OURS.match(_ANSI.sub("", line).lstrip("\r").strip())]
    return keep, [prefix + _ANSI.sub("", line) for line in lines]


def _filter_worker_output() -> bool:
    """Replace Ray's printer of worker output on this driver (present when ``ray.init`` had
    ``log_to_driver=True``) with one that writes every line to the log file and prints only
    polymodal's (the autoscaler's events still print), and send the raylet's notices to the log
    file. False when there is none to replace (or this Ray has no such hook)."""
    try:
        from ray._private import worker
    except ImportError:
        return False
    dispatcher = getattr(worker, "global_worker_stdstream_dispatcher", None)
    printer = getattr(worker, "print_to_stdstream", None)
    if dispatcher is None or printer is None:
        return False
    printer = getattr(printer, "_original", printer)
    with dispatcher._lock:
        handlers = dict(dispatcher.handlers)
    current = handlers.get("ray_print_logs")
    if current is None or getattr(current, "_polymodal", False):
        return current is not None
    ignore_prefix = worker._should_ignore_worker_log_prefix(worker.global_worker)

    def handle(data: dict[str, Any]) -> None:
        if not _quiet or data.get("pid") == "autoscaler":
            # the autoscaler's events ("no node can fulfil this request") are few and actionable;
            # Ray's printer drops its periodic status reports
            printer(data, ignore_prefix=ignore_prefix)
            return
        keep, logged = worker_lines(data)
        _write_to_log_file(logged)
        if keep:
            printer({**data, "lines": keep}, ignore_prefix=ignore_prefix)

    def raylet_notices(data: dict[str, Any], ignore_prefix: bool) -> None:
        # the raylet's notices to this job ("N worker processes have been started", a worker
        # killed): Ray hands them straight to its printer; failures also come back as exceptions
        if _quiet and data.get("pid") == "raylet":
            _write_to_log_file([f"(raylet) {_ANSI.sub('', str(line))}" for line in data.get("lines", [])])
        else:
            printer(data, ignore_prefix=ignore_prefix)

    handle._polymodal = True  # type: ignore[attr-defined]
    raylet_notices._original = printer  # type: ignore[attr-defined]
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", handle)
    worker.print_to_stdstream = raylet_notices
    return True


def _write_to_log_file(lines: list[str]) -> None:
    handler = _file_handler()
    if handler.stream is not None:
        with handler.lock:
            handler.stream.write("".join(line + "\n" for line in lines))
            handler.stream.flush()
