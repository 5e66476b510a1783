"""One streaming epoch over a dataset larger than a simulated cluster's object stores: how full the
stores get, how much is allocated past them (plasma's fallback files) and spilled, per Ray Data
block size (docs/scale.md section 4).

    PYTHONPATH=platform:tests python bench/object_store_epoch.py --block-mib 128   # Ray's default
    PYTHONPATH=platform:tests python bench/object_store_epoch.py --block-mib 8

A head plus two worker nodes (``tests/multinode.py``), each with a 75 MiB store and one CPU;
random float32 rows (Parquet cannot shrink them) read through
:func:`polymodal.shards.ray_dataset`. The test
``tests/spine/test_multinode_serve.py::test_a_streaming_epoch_over_3x_a_node_object_store_stays_within_the_stores``
asserts the 8 MiB case.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time

import numpy as np

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-mib", type=int, default=128, help="Ray Data target_max_block_size (MiB)")
    parser.add_argument("--rows", type=int, default=4800, help="rows of 64 KiB (default 4800: 300 MiB)")
    args = parser.parse_args()

    import ray.data
    from multinode import MIN_OBJECT_STORE, simulated_cluster
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    from polymodal.shards import ShardWriter, ray_dataset

    width = 16384
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"{tmp}/data"
        with ShardWriter(uri, task="any", split="train", columns={"id": {"dtype": "int64"},
                         "x": {"dtype": "float32", "shape": [width]}}, rows_per_shard=200, progress=False) as w:
            for start in range(0, args.rows, 200):
                n = min(200, args.rows - start)
                w.write({"id": np.arange(start, start + n),
                         "x": np.random.default_rng(start).random((n, width), dtype=np.float32)})
        node = {"num_cpus": 1, "object_store_memory": MIN_OBJECT_STORE}
        with simulated_cluster(node, [node, node]) as cluster:
            state = get_state_from_address(cluster.address)
            capacity = get_memory_info_reply(state).store_stats.object_store_bytes_avail
            peak = {"used": 0, "fallback": 0}
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    stats = get_memory_info_reply(state).store_stats
                    peak["used"] = max(peak["used"], stats.object_store_bytes_used)
                    peak["fallback"] = max(peak["fallback"], stats.object_store_bytes_fallback)
                    time.sleep(0.1)

            ray.data.DataContext.get_current().target_max_block_size = args.block_mib * MIB
            watcher = threading.Thread(target=watch, daemon=True)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            watcher.start()
            seen, started = 0, time.time()
            for batch in ray_dataset(uri).iter_batches(batch_size=100, batch_format="numpy"):
                seen += len(batch["id"])
            stop.set()
            watcher.join()
            spilled = get_memory_info_reply(state).store_stats.spilled_bytes_total
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
    print(f"{args.rows * width * 4 / MIB:.0f} MiB, {seen} rows in {time.time() - started:.1f} s, blocks "
          f"{args.block_mib} MiB: store peak {peak['used'] / MIB:.0f} of {capacity / MIB:.0f} MiB, fallback "
          f"{peak['fallback'] / MIB:.0f} MiB, spilled {spilled / MIB:.0f} MiB, driver max RSS +{rss / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
