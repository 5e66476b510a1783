"""What ``make demo`` (``jobs/demo.py``) hands each system's demo step: one embedded S3, one local
Ray cluster, the output folder, the repo's configs and a way to put a Serve app up and down.

A system registers a :class:`polymodal.registry.DemoStep` whose ``run(demo)`` trains, evaluates
and serves it on embedded defaults and returns the lines it adds to the closing summary, and
whose ``data(demo)`` writes its synthetic data. ``jobs/demo.py`` writes every later step's data
ahead, as Ray tasks beside the steps before it (:meth:`Demo.write_ahead`); a step's ``run``
takes what its ``data`` returned from :meth:`Demo.data_of`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from polymodal.ports import free_port


def one_machine_train_settings() -> None:
    """Ray Train's settings for a cluster on one machine (the demo's, the tests'), set in this
    process's environment before it starts the cluster, so its workers inherit them; explicit
    settings win. The controller polls its workers every 0.5 s, not 2 s: a run's last report
    and its end are seen sooner (each Train run ends about a second sooner); the preemption
    watcher, an actor per run that polls for node drains, is off: one machine has no node to
    drain, and each run starts one process fewer."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@dataclass
class Demo:
    """The demo's shared settings and helpers."""

    #: the repository root (``jobs/configs``, ``serve``, ``tune_spaces`` live here)
    root: Path
    #: local folder that receives copies of the run folders
    out: Path
    #: Ray Train workers of the main training runs
    workers: int = 2
    #: epochs of the main training runs (steps may use their configs' own)
    epochs: int = 4
    #: synthetic dataset size multiplier
    scale: float = 1.0
    #: trials of a demo sweep (0: skip Tune)
    tune_samples: int = 3
    #: deploy Serve apps and send them requests
    serve: bool = True
    #: where synthetic data goes in the embedded S3
    data_prefix: str = "s3://polymodal/demo"
    #: the one HTTP port of the demo's one Serve instance (chosen at the first deployment)
    serve_port: int | None = None
    #: step name -> the Ray ObjectRef of its data being written ahead (:meth:`write_ahead`)
    ahead: dict[str, Any] = field(default_factory=dict, repr=False)

    def say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)

    def config(self, name: str, *overrides: str) -> Any:
        """``jobs/configs/<name>`` with ``overrides`` applied."""
        from polymodal.config import load_config

        return load_config(str(self.root / "jobs" / "configs" / name), list(overrides))

    def synthesize(self, config: str, folder: str) -> dict[str, str]:
        """Write the synthetic data of the task of ``jobs/configs/<config>`` to
        ``<data_prefix>/<folder>`` (where the shipped tiny configs read it); return its URIs."""
        from polymodal.registry import get_task

        cfg = self.config(config)
        return get_task(cfg.task).synth(f"{self.data_prefix}/{folder}", seed=cfg.seed, progress=False)

    def write_ahead(self, steps: list[Any]) -> None:
        """Start writing the data of ``steps`` (:class:`~polymodal.registry.DemoStep`), one after
        another in their order, each a Ray task (no CPU reserved: it fills the cores the running
        step leaves idle, such as a one-worker training run's second core)."""
        import ray

        write, previous = ray.remote(num_cpus=0, max_retries=0)(_write_data), None
        settings = dataclasses.replace(self, ahead={})
        for step in steps:
            if step.data is not None:
                previous = write.options(name=f"demo-data-{step.name}").remote(step.data, settings, previous)
                self.ahead[step.name] = previous

    def data_of(self, step: str) -> Any:
        """What the ``data`` of ``step`` returned: waited for when it is being written ahead,
        else written now."""
        import ray

        from polymodal.registry import registry

        if step in self.ahead:
            return ray.get(self.ahead.pop(step))
        return registry().get("demo step", step).data(self)

    def synthesized(self, step: str, config: str, message: str) -> tuple[Any, Any]:
        """(config, task) of ``jobs/configs/<config>`` once the data of ``step`` is written; says
        ``message``."""
        from polymodal.registry import get_task

        self.data_of(step)
        cfg = self.config(config)
        self.say(message)
        return cfg, get_task(cfg.task)

    def fit_and_report(self, task: Any, cfg: Any) -> tuple[dict[str, Any], Path]:
        """Fit the run on the Ray cluster, evaluate it on its test split, write its report and copy
        the run folder here: (the evaluation, the local copy)."""
        task.fit(cfg, progress=False)
        result, _ = task.evaluate_run(cfg, "test", progress=False)
        task.write_report(cfg)
        return result, self.keep(cfg)

    def keep(self, cfg: Any, name: str | None = None) -> Path:
        """Copy the run folder of ``cfg`` from the embedded S3 to ``out/<name>``; return the copy."""
        from polymodal import storage

        local = self.out / (name or cfg.name)
        storage.download_dir(cfg.run_uri, str(local), cfg.storage)
        return local

    @contextmanager
    def deployed(self, app: str, **args: str) -> Iterator[tuple[str, dict[str, str]]]:
        """Deploy the registered Serve app ``app`` (its application in ``serve/<config>``) with
        ``args`` overriding its serve args; yield its URL and the bearer-token header; delete the
        application on the way out, always (without waiting for its replica to stop). Serve itself
        starts once, on a free port, at the first deployment and stays up for the next ones
        (``jobs/demo.py`` shuts it down).

        ``deploy`` starts every application of its file, so the file is copied with ``app`` alone
        (a file may hold apps whose checkpoints the demo never trains).
        """
        import yaml
        from ray import serve

        from polymodal.config import read_yaml
        from polymodal.registry import registry
        from polymodal.serving.deploy import deploy

        config = registry().get("serve app", app).config
        raw = read_yaml(str(self.root / "serve" / config), "serve config")
        raw["applications"] = [spec for spec in raw["applications"] if spec["name"] == app]
        if not raw["applications"]:
            raise ValueError(f"serve/{config} has no application {app!r}")
        if self.serve_port is None:
            self.serve_port = free_port()
        port = self.serve_port
        overrides = [f"{app}.args.{key}={value}" for key, value in args.items()] + [f"http_options.port={port}"]
        self.say(f"  serve: deploying {app} of serve/{config} on 127.0.0.1:{port}")
        with tempfile.TemporaryDirectory(prefix="polymodal-demo-serve-") as tmp:
            path = Path(tmp) / config
            path.write_text(yaml.safe_dump(raw))
            try:
                (url,) = deploy(str(path), overrides)
                # the replicas read the same token from the environment they inherited from this process
                yield url, {"Authorization": f"Bearer {os.environ['POLYMODAL_SERVE_TOKEN']}"}
            finally:
                # not waited for: its replica drains for 2 s (Serve's graceful shutdown) and is
                # gone long before the next step deploys
                serve.delete(app, _blocking=False)


def _write_data(data, demo: Demo, previous: Any) -> Any:
    """A step's ``data(demo)``, run as a Ray task once ``previous`` (the step before's, or None)
    is done: Ray waits for an ObjectRef argument before it starts the task."""
    return data(demo)
