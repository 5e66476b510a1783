"""Benchmark: SequenceFusion (CP) vs the explicit outer-product fusion vs vector fusion.

For each size, times forward + backward and measures memory of the three forms:

- ``sf``: :class:`SequenceFusion` in cp mode (factors are the parameters).
- ``outer``: Eq. 9-10 literally, dense W_t (out_len, l_1..l_M) and W_h (out_dim, d_1..d_M)
  as parameters, inputs combined by an explicit tensor product (exponential in M).
- ``vector``: :class:`VectorFusion` (LMF-style, mean-pooled; no token axis in the output).

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` over forward + backward, above
what was allocated before. On CPU there is no allocator peak counter, so we report an
estimate: bytes autograd saves for backward (unique storages, parameters excluded) plus the
largest single tensor any op produced during forward + backward (a TorchDispatchMode watches
every op). Both columns say which one they are.

Run: ``.venv/bin/python bench/wander_fusion.py [--device cpu|cuda|all] [--reps N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from polymodal.models.wander.fusion import SequenceFusion, VectorFusion, outer_product_fusion, rebuild_full_weights

# (M, B, l, d, out_len, out_dim, rank_h, rank_t); every modality gets (l, d) for simplicity
SIZES = [
    (2, 16, 8, 16, 16, 32, 8, 12),
    (2, 16, 16, 32, 32, 64, 8, 12),
    (3, 8, 6, 8, 18, 32, 8, 12),
    (3, 8, 8, 12, 24, 48, 4, 4),
    (3, 4, 8, 16, 24, 48, 8, 12),
    (3, 2, 50, 16, 150, 128, 8, 12),  # CMU-MOSI-like (l=50, d=16, R_h=8, R_t=12), narrow out_dim
]

# The outer form's tensor product Z has B * prod_m(l_m d_m) elements; above this it is skipped.
OUTER_MAX_ELEMS = 2 ** 27


class _MaxTensor(TorchDispatchMode):
    """Records the byte size of the largest tensor any op returns."""

    def __init__(self):
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.numel() * t.element_size())
        return out


def _cpu_memory(step, params) -> int:
    """Saved-for-backward bytes (unique storages, parameters excluded) + largest op output."""
    param_ptrs = {p.data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with _MaxTensor() as watch, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved.values()) + watch.max_bytes


def _cuda_memory(step) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _time(step, device, reps) -> float:
    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_size(size, device: str, reps: int) -> dict:
    M, B, l, d, P, O, rh, rt = size
    torch.manual_seed(0)
    sf = SequenceFusion([d] * M, [l] * M, O, P, rh, rt).to(device)
    if B * (l * d) ** M > OUTER_MAX_ELEMS:  # do not even build the dense weights
        W_t = torch.empty(P, *[l] * M, device="meta")
        W_h = torch.empty(O, *[d] * M, device="meta")
    else:
        with torch.no_grad():
            W_t, W_h = (w.detach().clone().requires_grad_(True) for w in rebuild_full_weights(sf))
    vf = VectorFusion([d] * M, O, rh).to(device)
    xs = [torch.randn(B, l, d, device=device) for _ in range(M)]
    forms = {
        "sf": (lambda: sf(xs).square().mean().backward(), list(sf.parameters())),
        "outer": (lambda: outer_product_fusion(xs, W_t, W_h).square().mean().backward(), [W_t, W_h]),
        "vector": (lambda: vf(xs).square().mean().backward(), list(vf.parameters())),
    }
    row = {"size": size, "rel_err": float("nan")}
    if B * (l * d) ** M > OUTER_MAX_ELEMS:
        del forms["outer"]
        row.update(outer_t=float("nan"), outer_mem=float("nan"), outer_params=W_t.numel() + W_h.numel())
    else:
        with torch.no_grad():  # the outer form is the same function as SF, up to rounding
            ref = sf(xs)
            row["rel_err"] = ((outer_product_fusion(xs, W_t, W_h) - ref).norm() / ref.norm()).item()
    for name, (step, params) in forms.items():
        row[f"{name}_t"] = _time(step, device, reps)
        row[f"{name}_mem"] = _cuda_memory(step) if device == "cuda" else _cpu_memory(step, params)
        row[f"{name}_params"] = sum(p.numel() for p in params)
    return row


def _mb(n: float) -> str:
    return f"{n / 2 ** 20:8.2f}"


def print_table(rows: list[dict], device: str) -> None:
    mem_kind = ("peak cuda.max_memory_allocated" if device == "cuda"
                else "estimate: saved-for-backward + largest intermediate")
    print(f"\n== device: {device}; time = median fwd+bwd; memory ({mem_kind}) in MiB ==")
    head = (f"{'M':>2} {'B':>3} {'l':>3} {'d':>3} {'P':>3} {'O':>3} {'Rh':>3} {'Rt':>3} | "
            f"{'sf ms':>8} {'outer ms':>9} {'vec ms':>8} | {'sf MiB':>8} {'outer MiB':>9} {'vec MiB':>8} | "
            f"{'outer/sf t':>10} {'outer/sf m':>10} {'vec/sf t':>8} {'vec/sf m':>8} | "
            f"{'sf par':>8} {'outer par':>10} | {'rel err':>8}")
    print(head)
    print("-" * len(head))
    print(f"(outer is skipped, nan, where its tensor product would exceed {OUTER_MAX_ELEMS} elements)")
    for r in rows:
        M, B, l, d, P, O, rh, rt = r["size"]
        print(f"{M:>2} {B:>3} {l:>3} {d:>3} {P:>3} {O:>3} {rh:>3} {rt:>3} | "
              f"{r['sf_t'] * 1e3:8.2f} {r['outer_t'] * 1e3:9.2f} {r['vector_t'] * 1e3:8.2f} | "
              f"{_mb(r['sf_mem'])} {_mb(r['outer_mem']):>9} {_mb(r['vector_mem'])} | "
              f"{r['outer_t'] / r['sf_t']:10.2f} {r['outer_mem'] / r['sf_mem']:10.2f} "
              f"{r['vector_t'] / r['sf_t']:8.3f} {r['vector_mem'] / r['sf_mem']:8.3f} | "
              f"{r['sf_params']:>8} {r['outer_params']:>10} | {r['rel_err']:8.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: CPU, plus CUDA when available (default)")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per form (median reported)")
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        if args.device == "cuda":
            parser.error("--device cuda but torch.cuda.is_available() is False")
        devices.remove("cuda")
    for device in devices:
        print_table([bench_size(s, device, args.reps) for s in SIZES], device)


# --- shard streaming benchmark ---------------------------------------------------------------


def bench_streaming(rows: int, rows_per_shard: int, reps: int, with_ray: bool,
                    with_ray_parquet: bool = False) -> None:
    """Throughput of the shard readers against a raw ``pyarrow.parquet`` read of the same
    shards, all from an embedded S3 server on 127.0.0.1 (HTTP), in one run."""
    import os
    import uuid

    import numpy as np
    import pyarrow.parquet as pq

    from polymodal import shards, storage
    from polymodal.s3server import EmbeddedS3

    with EmbeddedS3(port=0) as s3:
        os.environ.update(s3.env())
        storage.clear_fs_cache()
        uri = f"s3://polymodal/bench-{uuid.uuid4().hex[:8]}/train"
        cols = {"m0": shards.ColumnSpec(dtype="float32", shape=[8, 32]),
                "m1": shards.ColumnSpec(dtype="float32", shape=[8, 32]),
                "label": shards.ColumnSpec(dtype="int64")}
        rng = np.random.default_rng(0)
        with shards.ShardWriter(uri, task="wander.classification", split="train", columns=cols,
                                rows_per_shard=rows_per_shard, progress=False) as w:
            for start in range(0, rows, 1024):
                n = min(1024, rows - start)
                w.write({"m0": rng.standard_normal((n, 8, 32), dtype=np.float32),
                         "m1": rng.standard_normal((n, 8, 32), dtype=np.float32),
                         "label": rng.integers(0, 2, n)})
        manifest = shards.open_dataset(uri)
        nbytes = rows * (2 * 8 * 32 * 4 + 8)
        fs, _ = storage.get_fs(uri)

        def raw() -> int:  # the peer: pyarrow reads each shard, numpy views of the flat values
            n = 0
            for shard_uri in shards.shard_uris(manifest, uri):
                table = pq.read_table(shard_uri.removeprefix("s3://"), filesystem=fs)
                for name in ("m0", "m1"):
                    np.asarray(table[name].combine_chunks().flatten()).reshape(len(table), 8, 32)
                n += len(table)
            return n

        def polymodal_local() -> int:
            return sum(len(b["label"]) for b in shards.iter_local_batches(
                uri, 256, manifest=manifest, shuffle=True, shuffle_buffer=256))

        readers = {"raw pyarrow.parquet": raw, "polymodal iter_local_batches": polymodal_local}
        first: dict[str, list[float]] = {}
        if with_ray:
            import ray

            # address="local": always a private cluster, never one another process on this host started
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            ds = shards.ray_dataset(uri, manifest=manifest)

            def polymodal_ray() -> int:
                n, t0 = 0, time.perf_counter()
                for t in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
                    if not n:  # per-epoch start-up: the iterator's call to its first batch
                        first.setdefault("polymodal ray_dataset", []).append(time.perf_counter() - t0)
                    n += len(shards.table_to_numpy(t, manifest.columns)["label"])
                return n

            readers["polymodal ray_dataset"] = polymodal_ray
            split = ds.streaming_split(1, equal=True)[0]  # what Ray Train's DataConfig hands a worker

            def polymodal_ray_split() -> int:
                n, t0 = 0, time.perf_counter()
                for t in split.iter_batches(batch_size=256, batch_format="pyarrow"):
                    if not n:
                        first.setdefault("ray_dataset streaming_split", []).append(time.perf_counter() - t0)
                    n += len(shards.table_to_numpy(t, manifest.columns)["label"])
                return n

            readers["ray_dataset streaming_split"] = polymodal_ray_split
            if with_ray_parquet:  # the reader ray_dataset used before 2026-12-07, for comparison
                fs_pa, _ = storage.to_pyarrow_fs(uri)
                paths = [storage.to_pyarrow_fs(u)[1] for u in shards.shard_uris(manifest, uri)]
                ds_pq = ray.data.read_parquet(
                    paths, filesystem=fs_pa, partitioning=None, file_extensions=None,
                    shuffle=ray.data.FileShuffleConfig(seed=0, reseed_after_execution=True),
                ).select_columns(list(manifest.columns))

                def ray_read_parquet() -> int:
                    return sum(len(shards.table_to_numpy(t, manifest.columns)["label"])
                               for t in ds_pq.iter_batches(batch_size=256, batch_format="pyarrow"))

                readers["ray read_parquet (listing)"] = ray_read_parquet
        times = {}
        for name, fn in readers.items():
            got = fn()  # warm-up, and a check that every row arrives
            if got != rows:
                raise RuntimeError(f"{name} read {got} rows, expected {rows}")
            times[name] = statistics.median(_timed(fn) for _ in range(reps))
        print(f"\nshard streaming from S3 over HTTP: {rows} rows, {len(manifest.shards)} shards, "
              f"{nbytes / 2**20:.1f} MiB of tensors")
        base = times["raw pyarrow.parquet"]
        for name, t in times.items():
            print(f"{name:>30}: {t * 1e3:9.1f} ms  {nbytes / t / 2**20:8.1f} MiB/s  "
                  f"throughput ratio vs raw = {base / t:.2f}")
        for name, starts in first.items():  # starts[0] is the warm-up pass, the first epoch
            later = starts[1:]
            print(f"{name:>30}: time to first batch, first pass {starts[0] * 1e3:.0f} ms; later passes "
                  f"median {statistics.median(later) * 1e3:.0f} ms, max {max(later) * 1e3:.0f} ms")
        if with_ray:
            print("\nRay Data stats of ray_dataset's last pass:\n" + ds.stats())
            ray.shutdown()


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main_all(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Wander fusion + shard streaming benchmarks")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--skip-fusion", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    parser.add_argument("--rows", type=int, default=16384, help="rows in the streaming dataset")
    parser.add_argument("--rows-per-shard", type=int, default=4096)
    parser.add_argument("--ray", action="store_true", help="also time the Ray Data reader")
    parser.add_argument("--ray-parquet", action="store_true",
                        help="with --ray, also time ray.data.read_parquet over the shard list (the old path)")
    args = parser.parse_args(argv)
    if not args.skip_fusion:
        main(["--device", args.device, "--reps", str(args.reps)])
    if not args.skip_streaming:
        bench_streaming(args.rows, args.rows_per_shard, max(3, args.reps // 3), args.ray, args.ray_parquet)


if __name__ == "__main__":
    main_all()
