"""The settings tables and reproduction commands of ``docs/<system>.md`` checked against the code.

Each system's page holds two tables (docs/README.md describes them):

* **Settings**, ``| setting | config | paper | ours | where |``: ``ours`` must equal the value the
  named config resolves to (its model preset filled in), and a numeric ``paper`` value must equal
  ``ours`` unless ``where`` says why ours differs ("ours differs: ..."). So a preset that drifts
  from the paper, or a table that drifts from the preset, fails here.
* **Paper results**, ``| paper row | command |``: every ``polymodal`` command in it parses with the
  real CLI, and its config (with its ``--set`` overrides) and ``--space`` load and validate.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import yaml

from polymodal.config import apply_overrides, load_config, validate_model_section
from polymodal.registry import registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SETTINGS_HEADER = ["setting", "config", "paper", "ours", "where"]
RESULTS_HEADER = ["paper row", "command"]
DIFFERS = "ours differs:"


def _tables(text: str) -> list[tuple[list[str], list[tuple[int, list[str]]]]]:
    """Every Markdown table of ``text``: (header cells, [(line number, cells), ...])."""
    tables, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            header = _cells(lines[i])
            rows, j = [], i + 2
            while j < len(lines) and lines[j].startswith("|"):
                rows.append((j + 1, _cells(lines[j])))
                j += 1
            tables.append((header, rows))
            i = j
        else:
            i += 1
    return tables


def _cells(line: str) -> list[str]:
    # a "|" inside `code` (an override like a|b) is escaped as \| in Markdown
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


def _value(cell: str):
    """A cell as a value: `code` and plain text parsed as YAML, ``1e-4`` as a float."""
    text = cell.strip().strip("`")
    try:
        return float(text) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", text) else yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _numeric(v) -> bool:
    if isinstance(v, bool):
        return True
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, list) and bool(v) and all(_numeric(x) for x in v)


def _same(a, b) -> bool:
    if isinstance(a, list) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _resolved(config: str) -> dict:
    """The values ``config`` names: ``jobs/configs/X.yaml`` resolved, or ``preset:TASK:NAME``
    (a task's model preset alone, validated, under ``model.``)."""
    if config.startswith("preset:"):
        _, task, name = config.split(":")
        model, errors = validate_model_section(task, {"preset": name})
        assert not errors, errors
        return {"model": model.model_dump(mode="json")}
    return load_config(str(ROOT / "jobs" / "configs" / config)).to_dict()


def _lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"no {dotted!r} (missing {part!r})"
        node = node[part]
    return node


def _systems() -> set[str]:
    """The systems that register tasks (``polymodal.models.<system>``)."""
    reg = registry()
    owners = (reg.owner("task", name) for name in reg.names("task"))
    return {o.split(".")[2] for o in owners if o.startswith("polymodal.models.")}


def _pages() -> list[Path]:
    """The system pages: ``docs/<system>.md`` (platform.md, plugins.md, ... are not)."""
    return sorted(p for p in DOCS.glob("*.md") if p.stem in _systems())


def _page_tables(page: Path, header: list[str]) -> list[tuple[int, list[str]]]:
    rows = [row for head, body in _tables(page.read_text()) if [h.lower() for h in head] == header for row in body]
    return rows


def test_every_system_has_a_page_with_both_tables():
    pages = {p.stem for p in _pages()}
    assert _systems() <= pages, f"systems without docs/<system>.md: {sorted(_systems() - pages)}"
    for page in _pages():
        assert _page_tables(page, SETTINGS_HEADER), f"{page.name}: no settings table ({' | '.join(SETTINGS_HEADER)})"
        assert _page_tables(page, RESULTS_HEADER), f"{page.name}: no paper-results table ({' | '.join(RESULTS_HEADER)})"


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.stem)
def test_settings_table_matches_the_configs(page):
    cache: dict[str, dict] = {}
    problems = []
    for line, cells in _page_tables(page, SETTINGS_HEADER):
        assert len(cells) == 5, f"{page.name}:{line}: expected 5 cells, got {len(cells)}"
        setting, config, paper, ours, where = (c.strip() for c in cells)
        setting, config = setting.strip("`"), config.strip("`")
        if config not in cache:
            cache[config] = _resolved(config)
        try:
            actual = _lookup(cache[config], setting)
        except AssertionError as exc:
            problems.append(f"{page.name}:{line}: {config}: {exc}")
            continue
        if not _same(_value(ours), actual):
            problems.append(f"{page.name}:{line}: {setting} in {config} is {actual!r}, the table says {ours}")
        p, o = _value(paper), _value(ours)
        if _numeric(p) and _numeric(o) and not _same(p, o) and DIFFERS not in where.lower():
            problems.append(f"{page.name}:{line}: {setting}: paper {paper} but ours {ours}, and "
                            f"'where' does not say why ('{DIFFERS} ...')")
        if not where:
            problems.append(f"{page.name}:{line}: {setting}: 'where' is empty (section, table or equation)")
    assert not problems, "\n".join(problems)


def _commands(cell: str) -> list[list[str]]:
    """The ``polymodal ...`` commands in the `code` spans of a cell (``&&`` chains split)."""
    out = []
    for span in re.findall(r"`([^`]+)`", cell):
        for part in span.split("&&"):
            argv = shlex.split(part.strip())
            if argv and argv[0] == "polymodal":
                out.append(argv[1:])
    return out


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.stem)
def test_paper_result_commands_load(page):
    from polymodal.cli import build_parser

    parser = build_parser()
    rows = _page_tables(page, RESULTS_HEADER)
    checked = 0
    for line, cells in rows:
        commands = _commands(cells[-1])
        assert commands, f"{page.name}:{line}: no `polymodal ...` command for {cells[0]!r}"
        for argv in commands:
            if argv[0] == "data":
                continue  # import formats parse their own options; their tests cover them
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{page.name}:{line}: `polymodal {shlex.join(argv)}` does not parse")
            config = getattr(args, "config", None)
            if config and args.command in ("train", "tune", "evaluate", "report", "params"):
                cfg = load_config(str(ROOT / config), args.overrides)
                assert cfg.task, f"{page.name}:{line}"
                checked += 1
            if getattr(args, "space", None):
                from polymodal.tune import load_space

                params = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.param)}
                load_space(str(ROOT / args.space), cfg, params)
    assert checked, f"{page.name}: no train/tune/evaluate command checked"


def test_value_parsing():
    assert _value("`1e-4`") == 1e-4 and _value("8") == 8 and _value("[2, 3]") == [2, 3]
    assert _same(_value("0.0001"), 1e-4) and not _same(_value("12"), 8)
    assert _numeric(_value("true")) and not _numeric(_value("AdamW"))
    assert _cells("| `a\\|b` | c |") == ["`a|b`", "c"]
    assert _commands("`polymodal train --config x.yaml && polymodal evaluate --config x.yaml`") == [
        ["train", "--config", "x.yaml"], ["evaluate", "--config", "x.yaml"]]
    assert apply_overrides({"a": {}}, ["a.b=1"]) == {"a": {"b": 1}}


def test_readme_commands_parse_and_their_configs_load():
    """The README's ```bash blocks (quickstart, staging) run as written: each `polymodal` line
    parses with the real CLI, and its config, overrides and search space load."""
    from polymodal.cli import _format_as_command, build_parser

    parser = build_parser()
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    checked = 0
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                argv = [a for a in shlex.split(part.strip()) if a != "&"]  # `... &`: in the background
                if not argv or argv[0] != "polymodal":
                    continue
                args = parser.parse_args(_format_as_command(argv[1:]))
                if getattr(args, "config", None) and args.command in ("train", "tune", "evaluate", "report"):
                    cfg = load_config(str(ROOT / args.config), args.overrides)
                    if getattr(args, "space", None):
                        from polymodal.tune import load_space

                        load_space(str(ROOT / args.space), cfg)
                    checked += 1
    assert checked >= 4, "the README's quickstart lost its train/evaluate/tune commands"
