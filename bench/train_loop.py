"""Benchmark: the train loop's harnesses against a plain PyTorch loop, same model, data and optimiser.

The task is ``wander.classification`` (the shipped ``jobs/configs/wander_tiny.yaml`` with its tiny
preset: Wander's CP sequence-fusion adapters over a frozen two-modality BERT backbone) on its
synthetic data (``write_synthetic``), widened by ``--hidden`` / ``--seq-len`` so that one step costs
tens of milliseconds of CPU compute. Every mode trains one epoch of the same train split with the same
batch size, AdamW settings (lr, betas, eps 1e-8, weight decay), gradient clipping (``optim.grad_clip``),
warm-up + cosine schedule and seed:

* ``plain`` (the peer): ``task.build_model`` + ``torch.optim.AdamW`` + ``LambdaLR`` over the same
  trainable parameters; the split read once with pyarrow into memory, shuffled by ``torch.randperm``,
  each batch through ``task.collate`` and ``task.loss``; backward, clip, step. Nothing else: no DeepSpeed, no
  checkpoint, no evaluation, no progress bar.
* ``local``: ``polymodal train --local`` (the CLI, in this process): DeepSpeed ZeRO-0, shards streamed
  by ``iter_local_batches``, the progress bar, the epoch's evaluation and checkpoint.
* ``ray1``: ``polymodal train`` (Ray Train, in this process as driver), 1 worker with every CPU
  (``scaling.resources_per_worker.CPU`` = ``--threads``: Ray gives a worker as many torch threads as
  CPUs), ZeRO-0.
* ``ray2``: 2 workers with 1 CPU each, ZeRO-2. On a 2-core machine each worker has one core,
  so this measures the cost of data parallelism where there is nothing to gain from it.

Reported per mode:

* steady-state samples/s: the polymodal modes' own ``steady_samples_per_s`` (``metrics.csv``; per-step
  timestamps with the epoch's first steps left out, :mod:`polymodal.train.throughput`); the peer uses the
  same :class:`~polymodal.train.throughput.StepClock`. Its ratio to ``plain``.
* time to the first step: polymodal's ``first_step_s`` (from ``train_local`` / ``train_ray`` entered to
  the first step's end); for ``plain``, from building the model to the first step's end. Ray is started
  (``ray.init``) once before the Ray modes and timed on its own line.
* the median step time, so the 20 ms floor can be checked.

Run: ``.venv/bin/python bench/train_loop.py [--hidden 64] [--seq-len 16] [--batch 32] [--scale 0.5]
[--threads 1] [--modes plain,local,ray1,ray2] [--rounds N]`` (``--rounds``: plain and ``local``
N times, alternating which runs first, and the median of their ratios) (the defaults: a 30 ms plain step on one core of the
2-core host).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "jobs" / "configs" / "wander_tiny.yaml"
MODES = ("plain", "local", "ray1", "ray2")


def make_data(out: str, hidden: int, seq_len: int, scale: float) -> dict[str, str]:
    from polymodal.models.wander.synth import write_synthetic

    return write_synthetic(out, "classification", seed=0, scale=scale, hidden=hidden, seq_len=seq_len,
                           progress=False)


def overrides(data: dict[str, str], runs: str, name: str, batch: int, extra: list[str]) -> list[str]:
    return [f"name={name}", f"storage_path={runs}", f"model.backbone={data['backbone']}",
            f"data.train={data['train']}", f"data.val={data['val']}", f"data.test={data['test']}",
            "optim.epochs=1", f"optim.batch_size={batch}", *extra]


def run_plain(cfg) -> dict[str, float]:
    """The peer: the same model, data, optimiser and schedule in a plain PyTorch loop."""
    import pyarrow.parquet as pq

    from polymodal import shards
    from polymodal.registry import get_task
    from polymodal.train.deepspeed_config import lr_multiplier
    from polymodal.train.loop import seed_everything
    from polymodal.train.throughput import StepClock

    task = get_task(cfg.task)
    manifest = shards.open_dataset(cfg.data.train, cfg.storage)
    cols = [shards.table_to_numpy(pq.read_table(u), manifest.columns) for u in shards.shard_uris(manifest, cfg.data.train)]
    data = {k: np.concatenate([c[k] for c in cols]) for k in cols[0]}
    rows = len(next(iter(data.values())))
    t_start = time.time()
    seed_everything(cfg.seed)
    model = task.build_model(cfg.model)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    opt = torch.optim.AdamW(trainable, lr=o.lr, betas=tuple(o.betas), eps=1e-8, weight_decay=o.weight_decay)
    steps = math.ceil(rows / o.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, total_steps=steps, warmup_steps=o.warmup_steps, schedule=o.schedule, steps_per_epoch=steps))
    clock = StepClock(t_start, 1)
    clock.start_epoch()
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(cfg.seed)).numpy()
    for s in range(steps):
        idx = order[s * o.batch_size:(s + 1) * o.batch_size]
        batch = task.collate({k: v[idx] for k, v in data.items()})
        loss, _ = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:  # as DeepSpeed's gradient_clipping does for the polymodal modes
            torch.nn.utils.clip_grad_norm_(trainable, o.grad_clip)
        opt.step()
        sched.step()
        float(loss.detach())
        clock.tick(len(idx))
    return {**clock.epoch_metrics(), "step_ms": 1000 * statistics.median(np.diff(clock.times)), "steps": steps}


def run_cli(base: list[str], local: bool) -> dict[str, float]:
    """``polymodal train`` in this process; its numbers from the run's metrics.csv."""
    from polymodal.cli import main
    from polymodal.config import load_config

    argv = ["train", "--config", str(BASE_CONFIG), *[a for o in base for a in ("--set", o)]]
    rc = main(argv + (["--local"] if local else []))
    if rc:
        raise SystemExit(f"polymodal train failed (exit {rc}): {' '.join(argv)}")
    cfg = load_config(str(BASE_CONFIG), base)
    rows = list(csv.DictReader(open(os.path.join(cfg.run_uri, "logs", "metrics.csv"))))
    last = rows[-1]
    return {"steady_samples_per_s": float(last["steady_samples_per_s"]), "first_step_s": float(last["first_step_s"]),
            "samples_per_s": float(last["samples_per_s"]), "steps": int(last["global_step"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=64, help="backbone width (the synthetic data's token width)")
    ap.add_argument("--seq-len", type=int, default=16, help="tokens per modality")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scale", type=float, default=0.5, help="train rows = 2048 x scale")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of plain/local, and CPUs (so threads) of the one ray1 worker; ray2's "
                         "workers get 1 CPU each (default 1: on a shared machine OpenMP's waiting threads fall far "
                         "behind when the cores are oversubscribed)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="plain and local this many times, alternating which runs first; the median ratio is printed")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if "plain" not in modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes: plain (the peer) and any of {MODES[1:]}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from polymodal.config import load_config

    cpus = args.threads
    torch.set_num_threads(cpus)
    load1 = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpus} CPUs, load {load1:.2f}")
    results: dict[str, dict[str, float]] = {}
    local_ratios: list[float] = []  # --local / plain of the rounds after the first
    with tempfile.TemporaryDirectory(prefix="bench-train-loop-") as tmp:
        data = make_data(os.path.join(tmp, "data"), args.hidden, args.seq_len, args.scale)
        runs = os.path.join(tmp, "runs")

        def base(name: str, *extra: str) -> list[str]:
            return overrides(data, runs, name, args.batch, list(extra))

        results["plain"] = run_plain(load_config(str(BASE_CONFIG), base("plain")))
        print(f"RESULT plain {results['plain']}", flush=True)
        if "local" in modes:
            results["local"] = run_cli(base("local", "deepspeed.zero_stage=0"), local=True)
            print(f"RESULT local {results['local']}, load {os.getloadavg()[0]:.1f}", flush=True)
            # more rounds of the pair, each order in turn: one run of each swings by 10 % here
            for k in range(1, args.rounds):
                pair = {}
                for mode in (("local", "plain") if k % 2 else ("plain", "local")):
                    pair[mode] = (run_plain(load_config(str(BASE_CONFIG), base(f"plain{k}"))) if mode == "plain"
                                  else run_cli(base(f"local{k}", "deepspeed.zero_stage=0"), local=True))
                local_ratios.append(pair["local"]["steady_samples_per_s"] / pair["plain"]["steady_samples_per_s"])
                print(f"RESULT round {k + 1}: --local / plain {local_ratios[-1]:.3f}", flush=True)
        ray_init_s = None
        if {"ray1", "ray2"} & set(modes):
            import ray

            from polymodal.logs import ray_runtime_env

            from polymodal.ports import free_port

            t0 = time.perf_counter()
            # a cluster of its own: a bare ray.init() joins any other local cluster running here.
            # Its dashboard on a port named to every process of the cluster: Ray Train's placement
            # group cleaner asks the State API whether the run's controller lives, at the address of
            # the newest cluster on the machine unless told; another session's cluster answers "no
            # such actor" and the cleaner removes our live run's placement group.
            port = free_port()
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
            ray.init(address="local", log_to_driver=True, runtime_env=ray_runtime_env(), include_dashboard=True,
                     dashboard_port=port)
            ray_init_s = time.perf_counter() - t0
            print(f"RESULT ray.init {ray_init_s:.1f} s", flush=True)
        if "ray1" in modes:
            results["ray1"] = run_cli(base("ray1", "deepspeed.zero_stage=0", "scaling.num_workers=1",
                                           f"scaling.resources_per_worker={{CPU: {cpus}}}"), local=False)
            print(f"RESULT ray1 {results['ray1']}, load {os.getloadavg()[0]:.1f}", flush=True)
        if "ray2" in modes:
            results["ray2"] = run_cli(base("ray2", "deepspeed.zero_stage=2", "scaling.num_workers=2",
                                           "scaling.resources_per_worker={CPU: 1}"), local=False)
            print(f"RESULT ray2 {results['ray2']}, load {os.getloadavg()[0]:.1f}", flush=True)
    peer = results["plain"]["steady_samples_per_s"]
    print(f"\nwander.classification, hidden {args.hidden}, seq_len {args.seq_len}, batch {args.batch}, "
          f"{int(2048 * args.scale)} train rows, 1 epoch; plain step {results['plain']['step_ms']:.1f} ms (median); "
          f"load average at start {load1:.2f}, at end {os.getloadavg()[0]:.2f}")
    if ray_init_s is not None:
        print(f"ray.init: {ray_init_s:.1f} s (before the Ray modes, not in their first-step times)")
    print("| mode | steady samples/s | ratio vs plain | epoch samples/s | time to first step |")
    print("|---|---|---|---|---|")
    label = {"plain": "plain PyTorch loop (peer)", "local": "`polymodal train --local` (ZeRO-0)",
             "ray1": "Ray Train, 1 worker, ZeRO-0", "ray2": "Ray Train, 2 workers, ZeRO-2"}
    for mode, r in results.items():
        epoch = f"{r['samples_per_s']:.0f}" if "samples_per_s" in r else "—"
        print(f"| {label[mode]} | {r['steady_samples_per_s']:.0f} | {r['steady_samples_per_s'] / peer:.3f} | "
              f"{epoch} | {r['first_step_s']:.1f} s |")
    if local_ratios:
        ratios = [results["local"]["steady_samples_per_s"] / peer, *local_ratios]
        print(f"--local / plain over {len(ratios)} rounds: median {statistics.median(ratios):.3f} "
              f"(each: {', '.join(f'{r:.3f}' for r in ratios)})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
