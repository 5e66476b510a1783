"""The registry: the one place where the spine learns about a system.

A system is a plug-in: a package exposing ``register(registry)`` under the entry-point group
``polymodal.systems`` (the five built-in systems in ``polymodal.models.<system>`` too). Its
``register`` adds, through :class:`Registry`, everything the system brings: tasks
(:class:`polymodal.task.Task` subclasses), ``data import`` formats, other ``data`` subcommands
and ``eval`` benchmarks (:class:`Command`), its ``make demo`` step (:class:`DemoStep`) and its
Serve apps (:class:`ServeApp`). Shared code asks the registry and never branches on a system's
name.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from polymodal.errors import PolymodalError


# ---------------------------------------------------------------------------- plug-in registries


@dataclass(frozen=True)
class Command:
    """A command a system adds to the CLI: a ``data import --format`` source format, a ``data``
    subcommand or an ``eval`` benchmark.

    ``add_arguments(parser)`` declares its options (``--help`` shows only these);
    ``run(args)`` does the work and prints what it wrote.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    #: longer text for ``--help`` (default: ``help``)
    description: str | None = None


@dataclass(frozen=True)
class DemoStep:
    """A system's part of ``make demo``: ``run(demo)`` gets a :class:`polymodal.demo.Demo` (the
    embedded S3, the Ray cluster, the output folder, a Serve helper) and returns the lines it adds
    to the closing summary, e.g. ``[("fMRI report", "demo_out/fmri-glove/report/report.md")]``;
    ``data(demo)`` writes the step's synthetic data, ahead of the step when other steps run first."""

    name: str
    help: str
    run: Callable[[Any], list[tuple[str, str]]]
    #: steps run in ascending order (ties by name)
    order: int = 100
    #: ``data(demo)`` writes the step's synthetic data and returns what ``run`` reads back with
    #: ``demo.data_of(name)``; a module-level function (the demo runs it ahead as a Ray task)
    data: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class ServeApp:
    """A Serve application a system ships: ``config`` (a YAML under the repo's ``serve/``) holds an
    application named ``name`` whose ``import_path`` is ``import_path``."""

    name: str
    config: str
    import_path: str


class Registry:
    """Everything the systems plug in, by kind and name. Names are unique per kind: a second
    registration of a name is refused naming both modules."""

    KINDS = ("task", "import format", "data command", "eval command", "demo step", "serve app")

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Any]] = {kind: {} for kind in self.KINDS}
        self._owners: dict[tuple[str, str], str] = {}
        self._loaded: set[str] = set()  # entry points already run

    def add(self, kind: str, name: str, entry: Any, owner: str) -> Any:
        if kind not in self._entries:
            raise ValueError(f"unknown registry kind {kind!r}; one of {', '.join(self.KINDS)}")
        if name in self._entries[kind]:
            raise PolymodalError(
                f"{kind} {name!r} is already registered by {self._owners[kind, name]}; {owner} registers it "
                "again. Give one of them another name")
        self._entries[kind][name] = entry
        self._owners[kind, name] = owner
        return entry

    def get(self, kind: str, name: str) -> Any:
        return self._entries[kind][name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def items(self, kind: str) -> dict[str, Any]:
        return dict(self._entries[kind])

    def owner(self, kind: str, name: str) -> str:
        return self._owners[kind, name]

    # one method per kind: what a system's register(registry) calls

    def add_task(self, task: Any) -> Any:
        """Add a task instance; it must define the ``tiny`` and ``paper`` presets."""
        for preset in ("tiny", "paper"):
            if preset not in task.presets:
                raise ValueError(f"task {task.name!r} must define a {preset!r} preset")
        return self.add("task", task.name, task, type(task).__module__)

    def add_import_format(self, command: Command) -> Command:
        return self.add("import format", command.name, command, _module_of(command.run))

    def add_data_command(self, command: Command) -> Command:
        return self.add("data command", command.name, command, _module_of(command.run))

    def add_eval_command(self, command: Command) -> Command:
        return self.add("eval command", command.name, command, _module_of(command.run))

    def add_demo_step(self, step: DemoStep) -> DemoStep:
        return self.add("demo step", step.name, step, _module_of(step.run))

    def add_serve_app(self, app: ServeApp, owner: str) -> ServeApp:
        return self.add("serve app", app.name, app, owner)

    def discover(self) -> None:
        """Run the ``register(registry)`` function of every ``polymodal.systems`` entry point not run
        yet. The five built-in systems are entry points too (pyproject.toml); a separate package adds
        its own line under ``[project.entry-points."polymodal.systems"]``."""
        from importlib.metadata import entry_points

        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self._loaded:
                continue
            self._loaded.add(ep.name)  # first: a failing plug-in is reported once, not on every lookup
            register = ep.load()
            if not callable(register):
                raise PolymodalError(f"entry point {ep.name} = {ep.value} of group {ENTRY_POINT_GROUP} is not a "
                                     "callable register(registry)")
            register(self)
        if not self._loaded:
            raise PolymodalError(f"no polymodal systems are installed (entry-point group {ENTRY_POINT_GROUP} is "
                                 "empty): reinstall polymodal (pip install -e .) so its metadata is current")


ENTRY_POINT_GROUP = "polymodal.systems"


def _module_of(fn: Any) -> str:
    """The module that defined ``fn`` (through ``functools.partial`` too)."""
    while hasattr(fn, "func"):  # functools.partial says it comes from functools
        fn = fn.func
    return getattr(fn, "__module__", None) or repr(fn)

#: the one registry of this process; systems fill it through :meth:`Registry.discover`
REGISTRY = Registry()


def registry() -> Registry:
    """The process's registry with every installed system loaded."""
    if not REGISTRY._loaded:
        REGISTRY.discover()
    return REGISTRY


def get_task(name: str) -> Any:
    """The registered :class:`polymodal.task.Task` named ``name`` (KeyError if none)."""
    tasks = registry().items("task")
    if name not in tasks:
        raise KeyError(name)
    return tasks[name]


def task_names() -> list[str]:
    return registry().names("task")
