"""Argument helpers shared by the CLI and the commands systems register (``data import`` formats,
``data`` subcommands, ``eval`` benchmarks): one spelling of ``--config``/``--set``, storage options
and Ray start-up for every command."""

from __future__ import annotations

import argparse
from typing import Any


def add_restart(p: argparse.ArgumentParser, keeps: str = "its finished shards") -> None:
    """``--restart`` of a ``data import`` format: by default a rerun of the same import (same
    sources as they are now, same options) into ``--out`` keeps ``keeps`` and continues an
    interrupted run (:mod:`polymodal.imports`)."""
    p.add_argument("--restart", action="store_true",
                   help=f"start over; by default a rerun of the same import (same source files as they are now, "
                        f"same options) into --out keeps {keeps} and continues an interrupted one")


def add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config PATH_OR_URI`` and repeated ``--set dotted.key=value``."""
    p.add_argument("--config", required=required, metavar="PATH_OR_URI",
                   help="experiment YAML (local path or s3:// URI)" + ("" if required else
                        "; only its storage: section is used here (S3 endpoint and credentials env)"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set optim.lr=1e-3 (repeatable)")


def load(args: argparse.Namespace) -> Any:
    """The experiment config named by ``--config`` with the ``--set`` overrides applied."""
    from polymodal.config import load_config

    return load_config(args.config, args.overrides)


def storage_options(args: argparse.Namespace) -> Any:
    """The storage options of ``--config`` when given, else None (the environment's defaults)."""
    return load(args).storage if getattr(args, "config", None) else None


def init_ray() -> None:
    """Join the cluster at ``RAY_ADDRESS``, or start a local one."""
    from polymodal.logs import init_ray as init

    init()


def names(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def print_uris(out: dict[str, str]) -> None:
    """One ``name: uri`` line per written dataset."""
    for name, uri in out.items():
        print(f"{name}: {uri}")
