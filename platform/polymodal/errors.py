"""Typed errors a user or a file can trigger. Each message names the bad thing and the fix."""

from __future__ import annotations


class PolymodalError(Exception):
    """Base class for every error polymodal raises on purpose."""


class ConfigError(PolymodalError, ValueError):
    """A config failed validation. ``errors`` lists ``(dotted.path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.errors) == 1:
            path, msg = self.errors[0]
            super().__init__(f"config error{where}: {path or '<root>'}: {msg}")
            return
        lines = [f"{len(self.errors)} config errors{where}:"]
        lines += [f"  {path or '<root>'}: {msg}" for path, msg in self.errors]
        super().__init__("\n".join(lines))

    def __reduce__(self):  # raised in a Ray worker, it is pickled back to the driver
        return type(self), (self.errors, self.source)


class StorageError(PolymodalError, OSError):
    """A URI could not be resolved, read or written."""


class ShardError(PolymodalError, ValueError):
    """A shard or manifest is missing, corrupt, or does not match its declared schema."""

    def __init__(self, message: str, *, shard: str | None = None, column: str | None = None):
        self.shard = shard
        self.column = column
        parts = []
        if shard:
            parts.append(f"shard {shard}")
        if column:
            parts.append(f"column {column!r}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)
        self._message = message

    def __reduce__(self):
        return _rebuild_shard_error, (self._message, self.shard, self.column)


class ImportDataError(PolymodalError, ValueError):
    """A source file fed to an importer is malformed; the message names file and row/line."""


class ServeInputError(PolymodalError, ValueError):
    """A serving request that parsed but does not fit the model (shape, dtype, range).

    ``field`` is the dotted path of the bad value (``inputs.m0``); the serving app answers 422.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return type(self), (self.field, self.message)


def require(module: str, extra: str, what: str):
    """Import ``module`` (an optional dependency) or raise a :class:`PolymodalError` that names the
    extra to install: ``require("av", "video", "decoding videos")``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PolymodalError(f"{what} needs the {module.split('.')[0]!r} package: pip install "
                             f"'polymodal[{extra}]' ({exc})") from None


def _rebuild_shard_error(message: str, shard: str | None, column: str | None) -> ShardError:
    return ShardError(message, shard=shard, column=column)
