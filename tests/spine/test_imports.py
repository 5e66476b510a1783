"""Each system in its own room: no system imports another, and the package has no import loop.

Every module of ``platform/polymodal`` is parsed with :mod:`ast` (nothing is imported) and every
import statement in it becomes an edge ``importer -> imported module``:

* statements count wherever they are: at the top of the file, inside a function or method (a
  lazy import), under ``if TYPE_CHECKING:`` or in ``try``. A lazy import only delays the
  dependency; the two modules are still tied together.
* ``import a.b.c`` and ``from a.b import c`` where ``c`` is a module are edges to that module;
  a package is its ``__init__``; ``from a.b import name`` (a function, class, constant) is an edge
  to ``a.b``. Relative forms (``from . import x``, ``from ..data import y``) are resolved against
  the importing module's package.
* the parent packages that Python also runs on the way (``a`` and ``a.b`` for ``import a.b.c``)
  are not edges: every import of a module runs its package's ``__init__``, so counting them would
  turn each ``__init__`` that imports its own modules (to register tasks) into a loop.

Rules:

(a) ``polymodal.models.A`` never imports ``polymodal.models.B`` for ``A != B``, not even lazily:
    what two systems need lives in the spine (``polymodal.text``, ``polymodal.testing.tiny``, ...).
(b) No import cycle among the package's modules, counting module-level AND function-local
    imports. Lazy imports must count: the loop fmri.mlm -> fmri.pipeline -> fmri.encoders ->
    fmri.mlm that this test was written against was made of lazy imports only, and a loop that
    works only because its imports are lazy breaks as soon as one of them moves to the top.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "platform" / "polymodal"


@dataclass(frozen=True)
class Edge:
    """One import statement's dependency: module ``src`` (file ``path``, line ``line``) imports ``dst``."""

    src: str
    dst: str
    path: Path
    line: int


def package_modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) for every ``.py`` under the package folder ``root``
    (``root.name`` is the top-level package; ``a/b/__init__.py`` is module ``a.b``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _known(name: str, modules: dict) -> str | None:
    """``name`` if it is a module of the package, else its longest prefix that is (None: none is)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(root: Path) -> list[Edge]:
    """Every import of a module of ``root``'s package by another (or the same) module of it."""
    modules = package_modules(root)
    top = root.name
    edges = []
    for src, (path, is_package) in modules.items():
        package = src if is_package else src.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    if node.level - 1 >= len(base):
                        raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from a import b`: b is a submodule when the package has one of that name
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            for target in targets:
                if target == top or target.startswith(top + "."):
                    dst = _known(target, modules)
                    if dst is not None:
                        edges.append(Edge(src, dst, path, node.lineno))
    return edges


def _system(module: str) -> str | None:
    """``polymodal.models.<system>.…`` -> ``<system>``; None for spine modules."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "models" else None


def cross_system_imports(edges: list[Edge]) -> list[str]:
    """``file:line: A imports B`` for every import between two different systems."""
    return [f"{e.path}:{e.line}: {e.src} imports {e.dst}" for e in edges
            if _system(e.src) and _system(e.dst) and _system(e.src) != _system(e.dst)]


def import_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges, in order) per strongly connected group of modules that import
    each other; empty when the import graph is acyclic. Self-imports are ignored."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        if e.src != e.dst:
            graph.setdefault(e.src, {}).setdefault(e.dst, e)
    # Tarjan's strongly connected components, iteratively (no recursion limit on deep graphs)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, dict[str, Edge]]) -> list[Edge]:
    """A shortest cycle through ``group[0]`` inside the strongly connected ``group`` (breadth first)."""
    members, first = set(group), group[0]
    parent: dict[str, Edge] = {}
    frontier = [first]
    while frontier:
        nxt = []
        for v in frontier:
            for w, edge in sorted(graph.get(v, {}).items()):
                if w not in members:
                    continue
                if w == first:  # closed the loop: walk the parents back to the start
                    path = [edge]
                    while path[0].src != first:
                        path.insert(0, parent[path[0].src])
                    return path
                if w not in parent:
                    parent[w] = edge
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{group} is not strongly connected")  # pragma: no cover


def describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].src] + [e.dst for e in cycle]) + "\n" + "\n".join(
        f"    {e.path}:{e.line}: {e.src} imports {e.dst}" for e in cycle)


# ----------------------------------------------------------------------------- the package


def test_no_system_imports_another():
    bad = cross_system_imports(import_edges(PACKAGE_ROOT))
    assert not bad, ("a system imports another; move what both need into the spine "
                     "(polymodal.text, polymodal.testing.tiny, ...):\n" + "\n".join(bad))


def test_the_package_has_no_import_cycle():
    cycles = import_cycles(import_edges(PACKAGE_ROOT))
    assert not cycles, ("import cycles (lazy imports count: see this module's docstring); move what both "
                        "sides need into a module they both import:\n" + "\n".join(map(describe, cycles)))


def test_the_scan_sees_the_package_imports():
    # guards against a scanner that passes by finding nothing
    edges = {(e.src, e.dst) for e in import_edges(PACKAGE_ROOT)}
    assert ("polymodal.models.fmri.mlm", "polymodal.text") in edges  # from polymodal.text import ...
    assert ("polymodal.models.violet.task", "polymodal.models.violet.serving") in edges  # lazy, in a method
    assert ("polymodal.models.fmri", "polymodal.models.fmri.mlm") in edges  # from polymodal.models.fmri import mlm
    assert ("polymodal.models.violet.task", "polymodal.models.violet.masking") in edges  # from . import masking


# ----------------------------------------------------------------------------- the scanner, on planted trees


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (path under tmp_path -> source) and return the package folder ``polymodal``."""
    for name, source in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return tmp_path / "polymodal"


ROOMS = {
    "polymodal/__init__.py": "",
    "polymodal/text.py": "",
    "polymodal/models/__init__.py": "",
    "polymodal/models/a/__init__.py": "from polymodal.models.a import task  # registers\n",
    "polymodal/models/a/task.py": "from polymodal.text import x\nfrom . import data\n",
    "polymodal/models/a/data.py": "import polymodal.text\n",
    "polymodal/models/b/__init__.py": "",
    "polymodal/models/b/task.py": "from ..a import data\n",
}


def test_a_clean_tree_passes(tmp_path):
    rooms = dict(ROOMS, **{"polymodal/models/b/task.py": "from polymodal.text import x\n"})
    edges = import_edges(_tree(tmp_path, rooms))
    assert not cross_system_imports(edges) and not import_cycles(edges)
    # a package __init__ importing its task, which imports a sibling, is no loop
    assert {(e.src, e.dst) for e in edges} == {
        ("polymodal.models.a", "polymodal.models.a.task"), ("polymodal.models.a.task", "polymodal.text"),
        ("polymodal.models.a.task", "polymodal.models.a.data"), ("polymodal.models.a.data", "polymodal.text"),
        ("polymodal.models.b.task", "polymodal.text")}


@pytest.mark.parametrize("source, line", [
    ("from ..a import data\n", 1),  # relative, resolved against polymodal.models.b
    ("import os\n\n\ndef f():\n    import polymodal.models.a.data\n", 5),  # lazy
    ("from polymodal.models import a\n", 1),  # the package itself
    ("from polymodal.models.a.task import x\n", 1),
])
def test_a_system_importing_another_fails_naming_file_and_line(tmp_path, source, line):
    root = _tree(tmp_path, dict(ROOMS, **{"polymodal/models/b/task.py": source}))
    bad = cross_system_imports(import_edges(root))
    assert len(bad) == 1
    assert bad[0].startswith(f"{root / 'models' / 'b' / 'task.py'}:{line}: polymodal.models.b.task imports "
                             "polymodal.models.a")


def test_a_loop_of_lazy_imports_is_a_cycle(tmp_path):
    root = _tree(tmp_path, dict(ROOMS, **{
        "polymodal/models/a/data.py": "def f():\n    from .pipeline import g\n",
        "polymodal/models/a/pipeline.py": "from polymodal.models.a.features import h\n",
        "polymodal/models/a/features.py": "class F:\n    def load(self):\n        from . import data\n",
    }))
    cycles = import_cycles(import_edges(root))
    assert len(cycles) == 1
    assert [e.src for e in cycles[0]] == ["polymodal.models.a.data", "polymodal.models.a.pipeline",
                                          "polymodal.models.a.features"]
    assert [(e.path.name, e.line) for e in cycles[0]] == [("data.py", 2), ("pipeline.py", 1), ("features.py", 3)]
    assert describe(cycles[0]).startswith("polymodal.models.a.data -> polymodal.models.a.pipeline -> "
                                          "polymodal.models.a.features -> polymodal.models.a.data")


def test_two_spine_modules_importing_each_other_are_a_cycle(tmp_path):
    root = _tree(tmp_path, {"polymodal/__init__.py": "", "polymodal/config.py": "from polymodal import storage\n",
                            "polymodal/storage.py": "def read():\n    from polymodal.config import Options\n"})
    assert [[e.src for e in c] for c in import_cycles(import_edges(root))] == [["polymodal.config",
                                                                                "polymodal.storage"]]
