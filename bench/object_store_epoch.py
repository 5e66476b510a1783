"""One streaming epoch over a dataset larger than a simulated cluster's object stores: how full the
stores get, how much is allocated past them (plasma's fallback files), spilled and restored, and
the memory of the driver and of the workers, per Ray Data block size and object-store budget
(docs/scale.md section 4).

    PYTHONPATH=platform:tests python bench/object_store_epoch.py --block-mib 128   # Ray's default
    PYTHONPATH=platform:tests python bench/object_store_epoch.py --block-mib 8
    PYTHONPATH=platform:tests python bench/object_store_epoch.py --block-mib 8 --store-fraction 4 --first-step-s 8

A head plus two worker nodes (``tests/multinode.py``), each with a 75 MiB store and one CPU,
spilling to a temporary folder; random float32 rows (Parquet cannot shrink them) read through
:func:`polymodal.shards.ray_dataset`. ``--store-fraction`` is the share of the stores Ray Data
lets its operators fill (``DataContext.override_object_store_memory_limit_fraction``, Ray's
default 0.5): above 1 its read tasks may run ahead of a slow consumer (``--first-step-s``,
``--consume-s``) past the stores, and Ray spills to disk. The test
``tests/spine/test_multinode_serve.py::test_a_streaming_epoch_over_3x_a_node_object_store_spills_and_stays_bounded``
asserts the ``--block-mib 8 --rows 3600 --store-fraction 4`` case with a first step that lasts
until the raylets have spilled a block.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import numpy as np

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block-mib", type=int, default=128, help="Ray Data target_max_block_size (MiB)")
    parser.add_argument("--rows", type=int, default=4800, help="rows of 64 KiB (default 4800: 300 MiB)")
    parser.add_argument("--consume-s", type=float, default=0.0,
                        help="seconds the consumer spends on each 100-row batch (a training step)")
    parser.add_argument("--first-step-s", type=float, default=0.0,
                        help="seconds the consumer spends on its first batch (a slow first step: compile, warm-up)")
    parser.add_argument("--store-fraction", type=float, default=None,
                        help="Ray Data's share of the object stores (default: Ray's, 0.5)")
    args = parser.parse_args()

    import ray.data
    from multinode import MIN_OBJECT_STORE, StoreWatch, simulated_cluster

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
        head = {**node, "object_spilling_directory": f"{tmp}/spill"}  # the worker nodes take the head's
        with simulated_cluster(head, [node, node]) as cluster:
            context = ray.data.DataContext.get_current()
            context.target_max_block_size = args.block_mib * MIB
            context.override_object_store_memory_limit_fraction = args.store_fraction
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            seen, started = 0, time.time()
            with StoreWatch(cluster, f"{tmp}/spill") as watch:
                for batch in ray_dataset(uri).iter_batches(batch_size=100, batch_format="numpy"):
                    seen += len(batch["id"])
                    time.sleep(args.first_step_s if seen == len(batch["id"]) else args.consume_s)
            seconds = time.time() - started
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
    print(f"{args.rows * width * 4 / MIB:.0f} MiB, {seen} rows in {seconds:.1f} s, blocks {args.block_mib} MiB, "
          f"store fraction {args.store_fraction or 'default'}: {watch}, driver max RSS +{rss / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
