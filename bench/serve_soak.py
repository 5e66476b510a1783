"""Soak test: N requests over M minutes at a fixed concurrency against a Serve app on 127.0.0.1.

Requests start on a fixed schedule (N spread evenly over M minutes), at most ``--concurrency``
in flight. Reports errors (anything but 200: must be 0), latency percentiles, and the resident
memory of the replica process, sampled every few seconds: its growth from the end of the
warm-up to the end of the run must stay within 10 %. The peer, measured in the same run under
the same schedule: the same app (:func:`polymodal.serving.app.local_app`: same routes, model and
validation) in one plain uvicorn process without Ray. Exits 1 if either check fails::

    python bench/serve_soak.py                                    # 3000 requests over 3 min, then the peer
    python bench/serve_soak.py --requests 20000 --minutes 20 --concurrency 16 --checkpoint s3://...
    python bench/serve_soak.py --minutes 1 --requests 600 --no-peer
    python bench/serve_soak.py --out soak/        # also soak/soak.json and soak/soak.png (memory, p99 over time)

Without ``--checkpoint`` it trains the tiny Wander checkpoint of ``bench/serve_latency.py``
(embedded S3, about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve_latency import example_inputs, make_checkpoint  # bench/ is on sys.path: python bench/x.py

MEMORY_LIMIT = 0.10  # allowed RSS growth over the run
SAMPLE_S = 2.0


@dataclass
class Soak:
    """What one soak run measured."""

    latencies_s: list[float] = field(default_factory=list)
    started_s: list[float] = field(default_factory=list)  # when each answered request started, into the run
    errors: dict[str, int] = field(default_factory=dict)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)
    wall_s: float = 0.0
    max_lag_s: float = 0.0  # how far behind schedule a request started (client or server saturated)

    @property
    def n(self) -> int:
        return len(self.latencies_s) + sum(self.errors.values())

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies_s) * 1e3, q)) if self.latencies_s else float("nan")

    @property
    def growth(self) -> float:
        """RSS at the end over RSS at the start, minus 1 (medians of the first and last 10 % of samples)."""
        mb = np.asarray([m for _, m in self.rss_mb])
        k = max(1, len(mb) // 10)
        return float(np.median(mb[-k:]) / np.median(mb[:k]) - 1)

    @property
    def slope_mb_per_min(self) -> float:
        t, mb = np.asarray(self.rss_mb).T
        return float(np.polyfit(t / 60, mb, 1)[0]) if len(t) > 2 else float("nan")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


async def soak(url: str, bodies: list[dict[str, Any]], n: int, seconds: float, concurrency: int,
               pid: int, warmup: int) -> Soak:
    """Warm up, then start request i at ``i * seconds / n`` with at most ``concurrency`` in flight."""
    import httpx

    out = Soak()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for i in range(warmup):
            r = await client.post(url, json=bodies[i % len(bodies)])
            if r.status_code != 200:
                raise SystemExit(f"{url}: warm-up request answered {r.status_code}: {r.text[:300]}")
        gap = seconds / n
        next_i = 0
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal next_i
            while next_i < n:
                i, next_i = next_i, next_i + 1
                delay = t0 + i * gap - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    out.max_lag_s = max(out.max_lag_s, -delay)
                t = time.perf_counter()
                try:
                    r = await client.post(url, json=bodies[i % len(bodies)])
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    out.latencies_s.append(time.perf_counter() - t)
                    out.started_s.append(t - t0)
                else:
                    out.errors[status] = out.errors.get(status, 0) + 1

        async def sampler() -> None:
            while next_i < n:
                out.rss_mb.append((time.perf_counter() - t0, rss_mb(pid)))
                await asyncio.sleep(SAMPLE_S)

        await asyncio.gather(sampler(), *(worker() for _ in range(concurrency)))
        out.wall_s = time.perf_counter() - t0
        out.rss_mb.append((out.wall_s, rss_mb(pid)))
    return out


def replica_pid(app: str) -> int:
    from ray.util.state import list_actors

    from polymodal.serving.app import DEPLOYMENT_NAME

    [actor] = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
               if a.class_name == f"ServeReplica:{app}:{DEPLOYMENT_NAME}"]
    return int(actor.pid)


def soak_serve(ckpt: str, bodies: list, a: argparse.Namespace) -> Soak:
    """The app on Ray Serve: one replica, batching on (the shipped defaults)."""
    import ray
    from ray import serve

    from polymodal.ports import free_port
    from polymodal.serving import proxy
    from polymodal.serving.app import ServeArgs, build_deployment

    proxy.install()
    ray.init(num_cpus=4, include_dashboard=True, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = ServeArgs(checkpoint=ckpt, max_ongoing_requests=max(8, a.concurrency), max_queued_requests=-1)
        serve.run(build_deployment(args, num_replicas=1).bind(args.model_dump()), name="soak", route_prefix="/soak")
        return asyncio.run(soak(f"http://127.0.0.1:{port}/soak/v1/predict", bodies, a.requests, a.minutes * 60,
                                a.concurrency, replica_pid("soak"), a.warmup))
    finally:
        serve.shutdown()
        ray.shutdown()


def soak_uvicorn(ckpt: str, bodies: list, a: argparse.Namespace) -> Soak:
    """The peer: ``local_app`` of the same checkpoint in one uvicorn process."""
    import httpx

    from polymodal.ports import free_port

    port = free_port()
    code = ("import json, sys, uvicorn; from polymodal.serving.app import local_app; "
            "uvicorn.run(local_app(json.loads(sys.argv[1])), host='127.0.0.1', port=int(sys.argv[2]), "
            "log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps({"checkpoint": ckpt}), str(port)])
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the uvicorn peer did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        return asyncio.run(soak(f"http://127.0.0.1:{port}/v1/predict", bodies, a.requests, a.minutes * 60,
                                a.concurrency, proc.pid, a.warmup))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def report(name: str, s: Soak) -> list[str]:
    """Print one run's numbers; return the checks it failed."""
    rss = [m for _, m in s.rss_mb]
    print(f"{name:22s} {s.n:6d} {sum(s.errors.values()):6d} {s.n / s.wall_s:7.1f} {s.pct(50):8.2f} "
          f"{s.pct(99):8.2f} {max(s.latencies_s, default=0) * 1e3:8.1f} {rss[0]:8.1f} {rss[-1]:8.1f} "
          f"{100 * s.growth:+7.2f}% {s.slope_mb_per_min:+8.3f} {s.max_lag_s:7.2f}")
    failed = []
    if s.errors:
        failed.append(f"{name}: {sum(s.errors.values())} errors {s.errors}")
    if s.growth > MEMORY_LIMIT:
        failed.append(f"{name}: memory grew {100 * s.growth:.1f} % (limit {100 * MEMORY_LIMIT:.0f} %)")
    return failed


def windows(s: Soak, width_s: float = 10.0) -> list[tuple[float, float]]:
    """(window middle in s, p99 ms) of the requests that started in each ``width_s`` window."""
    start, lat = np.asarray(s.started_s), np.asarray(s.latencies_s) * 1e3
    out = []
    for lo in np.arange(0.0, s.wall_s, width_s):
        sel = lat[(start >= lo) & (start < lo + width_s)]
        if len(sel):
            out.append((float(lo + width_s / 2), float(np.percentile(sel, 99))))
    return out


def save(folder: Path, runs: dict[str, Soak], a: argparse.Namespace) -> None:
    """soak.json with every sample, and soak.png: replica memory and windowed p99 against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    data = {"args": {k: v for k, v in vars(a).items() if k != "out"},
            "runs": {name: {"errors": s.errors, "rss_mb": s.rss_mb, "p99_ms_per_10s": windows(s),
                            "latency_ms": [round(x * 1e3, 3) for x in s.latencies_s], "started_s": s.started_s}
                     for name, s in runs.items()}}
    (folder / "soak.json").write_text(json.dumps(data))
    fig, (mem, lat) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for name, s in runs.items():
        t, mb = np.asarray(s.rss_mb).T
        mem.plot(t / 60, mb, label=name)
        w = np.asarray(windows(s))
        if len(w):
            lat.plot(w[:, 0] / 60, w[:, 1], label=name)
    mem.set_ylabel("resident memory (MB)")
    mem.set_title(f"{a.requests} requests over {a.minutes:g} min, concurrency {a.concurrency}")
    lat.set_ylabel("p99 latency per 10 s (ms)")
    lat.set_xlabel("minutes into the run")
    mem.legend()
    fig.tight_layout()
    fig.savefig(folder / "soak.png", dpi=120)
    print(f"wrote {folder / 'soak.json'} and {folder / 'soak.png'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="Wander checkpoint, export or run folder (local or s3://); default: "
                                         "train a tiny one on embedded S3")
    ap.add_argument("--requests", type=int, default=3000, help="N: requests after the warm-up (default 3000)")
    ap.add_argument("--minutes", type=float, default=3.0, help="M: minutes they are spread over (default 3)")
    ap.add_argument("--concurrency", type=int, default=8, help="most requests in flight (default 8)")
    ap.add_argument("--warmup", type=int, default=200, help="requests before measuring (default 200)")
    ap.add_argument("--no-peer", action="store_true", help="skip the plain-uvicorn peer run")
    ap.add_argument("--out", help="folder for soak.json (every sample) and soak.png (memory and p99 over time)")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.minutes <= 0 or a.concurrency < 1 or a.warmup < 0:
        ap.error("--requests, --minutes and --concurrency must be positive, --warmup >= 0")

    from polymodal.serving.app import ModelStore, ServeArgs

    with tempfile.TemporaryDirectory(prefix="polymodal-soak-") as tmp:
        ckpt = a.checkpoint or make_checkpoint(tmp)
        bodies = example_inputs(ModelStore(ServeArgs(checkpoint=ckpt)), 256)
        runs = {"Ray Serve (1 replica)": soak_serve(ckpt, bodies, a)}
        if not a.no_peer:
            runs["uvicorn, no Ray"] = soak_uvicorn(ckpt, bodies, a)

    print(f"\nServe soak: {a.requests} requests over {a.minutes:g} min (target {a.requests / a.minutes / 60:.1f} "
          f"req/s), concurrency {a.concurrency}, warm-up {a.warmup}, {os.cpu_count()} CPU cores, checkpoint {ckpt}")
    print(f"{'server':22s} {'reqs':>6s} {'errors':>6s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} "
          f"{'RSS0 MB':>8s} {'RSS1 MB':>8s} {'growth':>8s} {'MB/min':>8s} {'lag s':>7s}")
    failed = [f for name, s in runs.items() for f in report(name, s)]
    if len(runs) == 2:
        serve_run, peer = runs.values()
        print(f"ratios (Serve / uvicorn): p50 {serve_run.pct(50) / peer.pct(50):.2f}x, "
              f"p99 {serve_run.pct(99) / peer.pct(99):.2f}x")
    if a.out:
        save(Path(a.out), runs, a)
    print("PASS: no errors, memory flat within 10 %" if not failed else "FAIL:\n  " + "\n  ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
