"""Latency and throughput of the Wander HTTP endpoint vs calling the same model in-process.

Deploys two copies of the app on 127.0.0.1 (``max_batch_size`` N and 1), sends a bounded
concurrent load to each, and times ``task.serve_predict`` in this process (one example per
call, and batches of N). Prints p50/p99 latency, requests/s and the ratios, in one run::

    python bench/serve_latency.py                         # embedded S3 + tiny synthetic checkpoint
    python bench/serve_latency.py --checkpoint s3://polymodal/runs/wander-tiny --requests 500

Without ``--checkpoint`` it starts an embedded S3 server, writes tiny synthetic Wander data and
trains a checkpoint in-process (``fit_local``, a few steps): about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _pcts(lat_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    arr = np.asarray(lat_s) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def make_checkpoint(workdir: str) -> str:
    """Embedded S3 + synthetic data + a few training steps -> the checkpoint URI."""
    from polymodal import storage
    from polymodal.config import load_config
    from polymodal.registry import get_task
    from polymodal.s3server import EmbeddedS3
    from polymodal.train.loop import fit_local

    s3 = EmbeddedS3(port=0).start()  # lives until the process exits
    os.environ.update(s3.env())       # before ray.init, so replicas inherit it
    storage.clear_fs_cache()
    os.environ.setdefault("POLYMODAL_CACHE", str(Path(workdir) / "cache"))
    data = get_task("wander.classification").synth("s3://polymodal/bench/wander", seed=0, scale=0.25,
                                                   progress=False)
    cfg = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"), [
        "name=bench", "storage_path=s3://polymodal/bench/runs", f"model.backbone={data['backbone']}",
        f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
        "optim.epochs=1", "optim.max_steps_per_epoch=4", "scaling.num_workers=1", "deepspeed.zero_stage=0"])
    return fit_local(cfg, progress=False)["best_checkpoint"]


def example_inputs(store: Any, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """n random valid request bodies, shaped from the checkpoint's backbone."""
    spec = store.base.model.spec
    rng = np.random.default_rng(seed)
    return [{"inputs": {m.name: rng.normal(size=(m.seq_len, m.feature_dim)).astype(np.float32).round(4).tolist()
                        for m in spec.modalities}} for _ in range(n)]


def bench_in_process(store: Any, bodies: list[dict[str, Any]], batch: int) -> dict[str, float]:
    """task.serve_predict on this process: one request per call, then batches of ``batch``."""
    reqs = [store.request_model.model_validate(b) for b in bodies]
    task, model = store.task, store.base.model
    task.serve_predict(model, reqs[:batch])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for r in reqs:
        t = time.perf_counter()
        task.serve_predict(model, [r])
        lat.append(time.perf_counter() - t)
    single_wall = time.perf_counter() - t0
    blat = []
    t0 = time.perf_counter()
    for i in range(0, len(reqs), batch):
        t = time.perf_counter()
        task.serve_predict(model, reqs[i:i + batch])
        blat.append(time.perf_counter() - t)
    batch_wall = time.perf_counter() - t0
    p50, p99 = _pcts(lat)
    bp50, bp99 = _pcts(blat)
    return {"single_p50": p50, "single_p99": p99, "single_rps": len(reqs) / single_wall,
            "batch_p50": bp50, "batch_p99": bp99, "batch_rps": len(reqs) / batch_wall}


async def bench_http(url: str, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    """Bounded concurrent POSTs; latency per request, throughput over the whole run."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for b in bodies[:16]:  # warm-up: connections, first batch
            await client.post(url, json=b)

        async def one(body: dict[str, Any]) -> None:
            async with sem:
                t = time.perf_counter()
                r = await client.post(url, json=body)
                lat.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        wall = time.perf_counter() - t0
    if set(codes) != {200}:
        raise SystemExit(f"{url}: unexpected status codes {codes}")
    p50, p99 = _pcts(lat)
    return {"p50": p50, "p99": p99, "rps": len(bodies) / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint, export or run folder (local or s3://); default: train a "
                                         "tiny one on embedded S3")
    ap.add_argument("--requests", type=int, default=200, help="requests per HTTP run (default 200)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--max-batch-size", type=int, default=16, help="batched app's @serve.batch size (default 16)")
    ap.add_argument("--batch-wait-timeout-s", type=float, default=0.005, help="batched app's wait (default 0.005)")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.concurrency < 1 or a.max_batch_size < 1:
        ap.error("--requests, --concurrency and --max-batch-size must be >= 1")

    import ray
    from ray import serve

    from polymodal.ports import free_port
    from polymodal.serving import proxy
    from polymodal.serving.app import ModelStore, ServeArgs, build_deployment

    with tempfile.TemporaryDirectory(prefix="polymodal-bench-") as tmp:
        ckpt = a.checkpoint or make_checkpoint(tmp)
        store = ModelStore(ServeArgs(checkpoint=ckpt))
        bodies = example_inputs(store, a.requests)
        local = bench_in_process(store, bodies, a.max_batch_size)

        proxy.install()  # as a polymodal cluster runs it
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        http: dict[str, dict[str, float]] = {}
        try:
            for name, mbs in (("batched", a.max_batch_size), ("unbatched", 1)):
                args = ServeArgs(checkpoint=ckpt, max_batch_size=mbs, batch_wait_timeout_s=a.batch_wait_timeout_s,
                                 max_ongoing_requests=max(a.concurrency, mbs), max_queued_requests=-1)
                serve.run(build_deployment(args).bind(args.model_dump()), name=name, route_prefix=f"/{name}")
                http[name] = asyncio.run(bench_http(f"http://127.0.0.1:{port}/{name}/v1/predict", bodies,
                                                    a.concurrency))
                serve.delete(name)
        finally:
            serve.shutdown()
            ray.shutdown()

    print(f"\nWander serve latency: {a.requests} requests, concurrency {a.concurrency}, "
          f"max_batch_size {a.max_batch_size}, {os.cpu_count()} CPU cores, checkpoint {ckpt}")
    print(f"{'path':34s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>9s}")
    rows = [("HTTP batched (Serve)", http["batched"]["p50"], http["batched"]["p99"], http["batched"]["rps"]),
            ("HTTP unbatched (max_batch_size=1)", http["unbatched"]["p50"], http["unbatched"]["p99"],
             http["unbatched"]["rps"]),
            ("in-process, 1 example per call", local["single_p50"], local["single_p99"], local["single_rps"]),
            (f"in-process, batches of {a.max_batch_size} (per call)", local["batch_p50"], local["batch_p99"],
             local["batch_rps"])]
    for name, p50, p99, rps in rows:
        print(f"{name:34s} {p50:8.2f} {p99:8.2f} {rps:9.1f}")
    print("ratios:")
    print(f"  HTTP batched / unbatched throughput      {http['batched']['rps'] / http['unbatched']['rps']:.2f}x")
    print(f"  HTTP unbatched p50 / in-process single   {http['unbatched']['p50'] / local['single_p50']:.1f}x")
    print(f"  in-process batched / HTTP batched req/s  {local['batch_rps'] / http['batched']['rps']:.1f}x")
    print(f"  in-process single / HTTP unbatched req/s {local['single_rps'] / http['unbatched']['rps']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
