"""The spine's side of the plug-in contract: systems come from entry points, every system fills
its room in the registry, and the shared entry points (cli.py, jobs/demo.py) name none of them."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from polymodal.registry import ENTRY_POINT_GROUP, registry

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = sorted((ROOT / "platform" / "polymodal" / "models").glob("*/__init__.py"))


def test_every_builtin_system_is_an_entry_point_of_the_installed_package():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert sorted(declared) == sorted(p.parent.name for p in SYSTEMS)
    installed = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    for name, value in declared.items():  # a stale install (pip install -e . not rerun) fails here
        assert installed.get(name) == value, f"reinstall polymodal: entry point {name} is {installed.get(name)}"


@pytest.mark.parametrize("system", [p.parent.name for p in SYSTEMS])
def test_every_system_registers_its_tasks_demo_step_and_serve_apps(system):
    reg = registry()
    module = f"polymodal.models.{system}"
    mine = {kind: [n for n in reg.names(kind) if reg.owner(kind, n).startswith(module)] for kind in reg.KINDS}
    assert mine["task"] and all(n.startswith(f"{system}.") for n in mine["task"]), mine
    assert mine["demo step"] == [system]
    assert mine["serve app"], f"{system} registers no Serve app"
    for name in mine["serve app"]:
        app = reg.get("serve app", name)
        raw = yaml.safe_load((ROOT / "serve" / app.config).read_text())
        (spec,) = [a for a in raw["applications"] if a["name"] == name]
        assert spec["import_path"] == app.import_path


ROOMS = ("config", "model", "task", "data", "importers", "synth", "serving", "metrics", "commands", "demo")


@pytest.mark.parametrize("system", [p.parent.name for p in SYSTEMS])
def test_every_system_has_the_same_rooms(system):
    folder = ROOT / "platform" / "polymodal" / "models" / system
    missing = [room for room in ROOMS if not (folder / f"{room}.py").is_file()]
    assert not missing, f"polymodal.models.{system} lacks {missing} (report.py is optional)"


def test_cli_and_demo_name_no_system_task_or_format():
    reg = registry()
    names = {p.parent.name for p in SYSTEMS}
    for kind in ("task", "import format", "data command", "eval command"):
        names.update(reg.names(kind))
    names.update(n.split(".")[0] for n in reg.names("task"))
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")(?![\w-])",
                         re.IGNORECASE)
    for path in (ROOT / "platform" / "polymodal" / "cli.py", ROOT / "jobs" / "demo.py"):
        hits = [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                if pattern.search(line)]
        assert not hits, "shared entry points must build commands and steps from the registry:\n" + "\n".join(hits)
