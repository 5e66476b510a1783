"""Deploy the Serve applications of a ``serve/config.yaml``-style file onto the current Ray cluster.

Used by ``polymodal deploy`` and ``jobs/deploy.py``. The file is checked strictly first
(:func:`polymodal.serving.config_check.check_serve_config`; Serve itself ignores unknown keys).
polymodal's own applications are built in this process with the file's deployment options and
handed to ``serve.run``, so the Serve controller never needs to import the repo.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from polymodal.config import parse_override, read_yaml, set_dotted
from polymodal.errors import PolymodalError

ROOT = Path(__file__).resolve().parents[3]  # repo root: where serve/ lives, Serve's working_dir


def apply_serve_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """``wander.args.checkpoint=URI`` sets a key in the application named ``wander``;
    ``http_options.port=8001`` sets a top-level section."""
    out = copy.deepcopy(raw)
    apps = {a.get("name"): a for a in out.get("applications") or [] if isinstance(a, dict)}
    for item in overrides or []:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        if head in apps and rest:
            node, path = apps[head], rest
        elif head in ("http_options", "grpc_options", "logging_config", "proxy_location"):
            node, path = out, key
        else:
            raise PolymodalError(f"override {key!r}: start with an application name ({', '.join(map(str, apps))}) "
                                 "or http_options")
        set_dotted(node, path, value)
    return out


def load_serve_config(source: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read (path or s3://), apply overrides, check strictly; raise with every problem listed."""
    from polymodal.serving.config_check import check_serve_config

    raw = apply_serve_overrides(read_yaml(source, "serve config"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        errors = check_serve_config(path, root=ROOT)
    if errors:
        raise PolymodalError(f"{source}: {len(errors)} serve config error(s):\n  " + "\n  ".join(errors))
    return raw


def deploy(source: str, overrides: list[str] | None = None, *, timeout_s: float = 300.0) -> list[str]:
    """Deploy every application of the config; wait until each is RUNNING; return their URLs.

    Connects to the running cluster (``RAY_ADDRESS`` or ``auto``) unless Ray is initialised."""
    import sys

    from ray import serve

    from polymodal.serving import app as polymodal_app
    from polymodal.serving.config_check import _resolve_import

    import os

    import ray

    raw = load_serve_config(source, overrides)  # before touching Ray: bad configs fail fast
    from polymodal.logs import init_ray, quiet_ray

    init_ray(address=os.environ.get("RAY_ADDRESS") or "auto")
    http = raw.get("http_options") or {}
    serve.start(http_options=http)
    quiet_ray()  # Serve's loggers on this driver exist now
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    urls = []
    for spec in raw.get("applications") or []:
        builder = _resolve_import(spec["import_path"])
        args = spec.get("args") or {}
        if getattr(builder, "__module__", "").startswith(("serve.", "polymodal.serving")):
            parsed = polymodal_app.parse_args(args)
            options = {k: v for d in spec.get("deployments") or [] for k, v in d.items() if k != "name"}
            application = polymodal_app.build_deployment(parsed, **options).bind(parsed.model_dump())
        else:
            application = builder(args)
        serve.run(application, name=spec["name"], route_prefix=spec.get("route_prefix", "/"), blocking=False)
        urls.append(f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}{spec.get('route_prefix', '/')}")
    deadline = time.time() + timeout_s
    wanted = {spec["name"] for spec in raw.get("applications") or []}
    while True:
        apps = serve.status().applications
        statuses = {name: s.status for name, s in apps.items()}
        if all(str(statuses.get(n)).endswith("RUNNING") for n in wanted):
            return urls
        failed = [n for n, s in statuses.items() if n in wanted and "FAIL" in str(s)]
        if failed or time.time() > deadline:
            # each failed deployment's message ends with the exception (a replica constructor's error)
            why = [f"\n{n}/{dep_name}: ...{dep.message[-1500:]}" for n in failed
                   for dep_name, dep in apps[n].deployments.items() if dep.message]
            raise PolymodalError(f"Serve applications did not reach RUNNING: {statuses}" + "".join(why))
        time.sleep(0.25)  # a status is one call to the Serve controller
