"""Strict checks of a ``serve deploy`` / ``serve run`` config file.

``ServeDeploySchema`` ignores unknown keys (forward compatibility), so a typo such as
``max_concurent_queries`` deploys silently with the default. :func:`check_serve_config`
validates with the schema AND walks its pydantic models to reject unknown keys at every
level, then checks each application's ``import_path`` imports and its ``args`` validate
against :class:`~polymodal.serving.app.ServeArgs`.

Usage: ``polymodal serve check serve/config.yaml`` (exit 1 on errors).
"""

from __future__ import annotations

import difflib
import importlib
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


def _unwrap(annotation: Any) -> list[Any]:
    """Members of Optional/Union/Annotated, flattened."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    return [annotation]


def _models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic classes a dict value of this annotation may be (``Union[Dict, X]`` -> X)."""
    return [m for m in _unwrap(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]


def _item_models(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic classes the items of a list-typed annotation may be."""
    out = []
    for member in _unwrap(annotation):
        if typing.get_origin(member) in (list, typing.List):  # noqa: UP006 -- matches old-style hints
            args = typing.get_args(member)
            out += _models(args[0]) if args else []
    return out


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    """Accepted key -> field info, aliases included (ray's schemas populate by name and alias)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        out[name] = info
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                out[alias] = info
    return out


def unknown_keys(model: type[BaseModel], data: Any, path: str) -> list[str]:
    """Errors for keys of ``data`` (and nested model-typed values) that ``model`` does not define."""
    if not isinstance(data, dict):
        return []
    fields = _keys(model)
    errors = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {sorted(model.model_fields)}"
            errors.append(f"{where}: unknown key{hint}")
            continue
        annotation = fields[key].annotation
        if isinstance(value, dict):
            for sub in _models(annotation)[:1]:
                errors += unknown_keys(sub, value, where)
        elif isinstance(value, list):
            for sub in _item_models(annotation)[:1]:
                for i, item in enumerate(value):
                    errors += unknown_keys(sub, item, f"{where}[{i}]")
    return errors


def _resolve_import(import_path: str) -> Any:
    """``module.sub:attr`` or ``module.sub.attr`` -> the object (as Serve resolves it)."""
    if ":" in import_path:
        module, _, attr = import_path.partition(":")
    else:
        module, _, attr = import_path.rpartition(".")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def check_serve_config(path: str | Path, *, root: str | Path | None = None) -> list[str]:
    """All problems of the config at ``path``; an empty list means it is good to deploy.

    ``root`` is put on ``sys.path`` to resolve import paths (default: the folder holding
    ``path``'s parent, i.e. the repo root for ``serve/config.yaml``; Serve's working_dir).
    """
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from polymodal.serving.app import DEPLOYMENT_NAME, parse_args

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot read YAML: {exc}"]
    if not isinstance(raw, dict):
        return [f"{path}: top level must be a mapping with an 'applications' list"]
    errors = unknown_keys(ServeDeploySchema, raw, "")
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        errors += [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    root = Path(root) if root is not None else path.resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for i, app in enumerate(raw.get("applications") or []):
        if not isinstance(app, dict) or "import_path" not in app:
            continue
        where = f"applications[{i}]"
        try:
            target = _resolve_import(str(app["import_path"]))
        except Exception as exc:  # noqa: BLE001 -- any import failure is a config error here
            errors.append(f"{where}.import_path: cannot import {app['import_path']!r}: {type(exc).__name__}: {exc}")
            continue
        if not callable(target):
            errors.append(f"{where}.import_path: {app['import_path']!r} is not an application builder")
        args = app.get("args") or {}
        if getattr(target, "__module__", "").startswith(("serve.", "polymodal.serving")):
            try:
                parse_args(args)
            except ValueError as exc:
                errors.append(f"{where}.args: {exc}")
            for j, dep in enumerate(app.get("deployments") or []):
                name = dep.get("name") if isinstance(dep, dict) else None
                if name != DEPLOYMENT_NAME:
                    errors.append(f"{where}.deployments[{j}].name: {name!r} is not a deployment of this "
                                  f"application; use {DEPLOYMENT_NAME!r}")
    return errors
