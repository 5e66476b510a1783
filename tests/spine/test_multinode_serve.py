"""Serve and streaming on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``,
tests/multinode.py): a head (Serve's controller and its one HTTP proxy) plus two worker nodes,
each with a 75 MiB object store (Ray's smallest) and one ``replica_slot`` custom resource, so
the two replicas of a deployment land one per node.

* A streaming epoch (:func:`polymodal.shards.ray_dataset`) over a dataset 3x a node's object
  store (as large as all three stores together), its read tasks let to run ahead of a stalled
  consumer past the stores, completes with spilling: the raylets spill blocks to the cluster's
  spill folder (their stats and the folder's files), every row arrives once, and memory stays
  bounded (measured): the stores' use never past their size, the driver's memory grows by less
  than half the dataset and no worker's resident set reaches the dataset's size.

* A worker node dies (its raylet and every process on it killed, as when a spot node is
  preempted) under a bounded load: the requests in flight on its replica get polymodal's JSON
  503 with Retry-After (:class:`polymodal.serving.proxy.ProxyGuard`), all others are answered
  by the replica that survived; Serve keeps wanting two replicas, cannot place the second
  while no node has a free slot, and places it on the node the test adds.

One cluster for both (its start costs ~10-20 s); the Serve test costs two replica starts and
one more after the loss and runs under ``faults``; the epoch (~10-20 s: it writes and reads 225
MiB, spilling a third of it) runs under ``slow``, as ``faults`` is near its time budget, so each
target starts the cluster once.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from multinode import MIB, MIN_OBJECT_STORE, alive_nodes, simulated_cluster, wait_until
from support import post_under_load, wander_export

from polymodal.ports import free_port
from polymodal.serving.app import DEPLOYMENT_NAME, build_deployment, parse_args

SLOT = "replica_slot"  # custom resource: one per worker node, one per replica
# node failure detection in ~2 s instead of Ray's default ~30 s (GCS health checks of raylets)
FAST_NODE_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                    "health_check_failure_threshold": 4}


def worker_node(name: str) -> dict:
    return {"num_cpus": 1, "resources": {SLOT: 1, name: 1}, "object_store_memory": MIN_OBJECT_STORE}


@pytest.fixture(scope="module")
def spill_dir(tmp_path_factory) -> str:
    """The cluster's spill folder: the head's, which the worker nodes take as theirs."""
    return str(tmp_path_factory.mktemp("spill"))


@pytest.fixture(scope="module")
def cluster(spill_dir):
    head = {"num_cpus": 2, "object_store_memory": MIN_OBJECT_STORE, "_system_config": FAST_NODE_CHECKS,
            "object_spilling_directory": spill_dir}
    with simulated_cluster(head, [worker_node("node_a"), worker_node("node_b")]) as c:
        yield c


@pytest.fixture(scope="module")
def wander(tmp_path_factory) -> tuple[str, dict]:
    return wander_export(tmp_path_factory.mktemp("multinode-serve"))


@pytest.mark.slow
def test_a_streaming_epoch_over_3x_a_node_object_store_spills_and_stays_bounded(cluster, spill_dir, tmp_path):
    """Ray Data may fill 4x the stores (``override_object_store_memory_limit_fraction``; Ray's
    default is half of them, within which nothing spills: docs/scale.md section 4) and the
    consumer's first step lasts until Ray has spilled (a slow first step: compile, warm-up), so
    the read tasks run ahead past the stores; then the epoch drains. Blocks a store cannot hold
    are spilled to disk (or, if spilling cannot keep up, allocated past the store in plasma's
    fallback files in the same folder): both are on disk, so only the stores count as memory."""
    import resource

    import numpy as np
    import ray.data
    from multinode import StoreWatch

    from polymodal.shards import ShardWriter, ray_dataset

    rows, width = 3600, 16384  # 64 KiB a row: 225 MiB, 3x a node's store; random, so Parquet cannot shrink it
    uri = str(tmp_path / "big")
    with ShardWriter(uri, task="any", split="train", columns={"id": {"dtype": "int64"},
                     "x": {"dtype": "float32", "shape": [width]}}, rows_per_shard=200, progress=False) as w:
        for start in range(0, rows, 200):
            w.write({"id": np.arange(start, start + 200),
                     "x": np.random.default_rng(start).random((200, width), dtype=np.float32)})
    dataset_bytes = rows * width * 4

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size, context.override_object_store_memory_limit_fraction
    # blocks a small part of a node's store (Ray Data's default 128 MiB exceeds a 75 MiB store, so
    # each block would be allocated past it: docs/scale.md); 8 MiB is to 75 MiB what 128 MiB is to
    # the 1 GiB+ stores of the k8s worker groups
    context.target_max_block_size = 8 * MIB
    context.override_object_store_memory_limit_fraction = 4.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seen, times_seen, started = 0, np.zeros(rows, np.int64), time.time()
    try:
        with StoreWatch(cluster, spill_dir) as watch:
            assert dataset_bytes >= 3 * MIN_OBJECT_STORE and dataset_bytes >= watch.capacity  # all stores
            for batch in ray_dataset(uri).iter_batches(batch_size=100, batch_format="numpy"):
                if not seen:  # the first step: until the raylets have spilled a block
                    wait_until(lambda: watch.spilled_now() >= 8 * MIB, 120, "Ray spilled a block")
                seen += len(batch["id"])
                np.add.at(times_seen, batch["id"], 1)
    finally:
        context.target_max_block_size, context.override_object_store_memory_limit_fraction = saved
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    print(f"\nepoch of {dataset_bytes / MIB:.0f} MiB in {time.time() - started:.1f} s: {watch}, "
          f"driver max RSS +{rss_growth / MIB:.0f} MiB")
    assert seen == rows and (times_seen == 1).all()  # every row exactly once
    # spilled, to the cluster's spill folder
    assert watch.spilled >= 8 * MIB and watch.peak["spill_dir"] >= 8 * MIB
    # memory bounded: the stores never past their size; no process held the dataset
    assert 0 < watch.peak["used"] <= watch.capacity
    assert rss_growth < dataset_bytes / 2 and watch.peak["worker_rss"] < dataset_bytes


def replicas(app: str) -> list[tuple[str, int]]:
    """(node id, pid) of the live replicas of ``app``, sorted."""
    import ray
    from ray.util.state import list_actors

    # the address explicitly: other Ray clusters may run on this machine, and "auto" picks the latest
    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")])
    return sorted((a.node_id, a.pid) for a in alive
                  if a.class_name == f"ServeReplica:{app}:{DEPLOYMENT_NAME}")


@pytest.mark.faults
def test_serve_loses_a_node_under_load_and_restores_its_replicas_on_a_new_one(cluster, wander):
    from ray import serve

    checkpoint, body = wander
    args = parse_args({"checkpoint": checkpoint, "max_ongoing_requests": 8})
    port = free_port()
    # one proxy, on the head: the nodes share 127.0.0.1, and the head is the node that stays
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        app = build_deployment(args, num_replicas=2, health_check_period_s=1, health_check_timeout_s=3,
                               ray_actor_options={"num_cpus": 0.5, "resources": {SLOT: 1}})
        serve.run(app.bind(args.model_dump()), name="spread", route_prefix="/spread")
        url = f"http://127.0.0.1:{port}/spread/v1/predict"
        before = replicas("spread")
        workers = {n.node_id: n for n in cluster.worker_nodes}
        assert len(before) == 2 and {node for node, _ in before} == set(workers), before  # one per node
        assert httpx.post(url, json=body, timeout=60).status_code == 200

        lost_node = before[0][0]
        killed_at: list[float] = []

        async def run() -> list:
            async def lose_node() -> None:
                await asyncio.sleep(3)
                cluster.remove_node(workers[lost_node], allow_graceful=False)  # preempted: no drain
                killed_at.append(time.time())

            results, _ = await asyncio.gather(post_under_load(url, body, seconds=12, concurrency=6), lose_node())
            return results

        results = asyncio.run(run())
        statuses = [s for _, _, s, _, _ in results]
        # what was lost: the node, its replica, and only the requests that were on it
        assert lost_node not in {n["NodeID"] for n in alive_nodes()}
        assert set(statuses) <= {200, 503}, sorted(set(statuses))
        failed = [(start, h, b) for start, _, s, h, b in results if s == 503]
        for start, headers, content in failed:
            assert start < killed_at[0] + 5, "a request sent well after the loss failed"
            assert headers["content-type"] == "application/json" and headers["retry-after"] == "1"
            assert b"stopped before it answered" in content and b"Traceback" not in content
        in_flight = [s for start, end, s, _, _ in results if start < killed_at[0] < end]
        assert in_flight, "no request was in flight at the loss"
        # the survivor answered the rest, during and after the loss
        assert sum(s == 200 for t, _, s, _, _ in results if t > killed_at[0]) > 10
        wait_until(lambda: [node for node, _ in replicas("spread")] == [before[1][0]], 60,
                   "the dead node's replica left the live replicas")
        assert replicas("spread") == [before[1]]  # the survivor was not restarted
        # Serve still wants 2 replicas but no node has a free slot: the deployment is not healthy
        status = serve.status().applications["spread"].deployments[DEPLOYMENT_NAME]
        assert str(status.status).endswith(("UPDATING", "UNHEALTHY")), status

        # what was recovered: capacity returns, Serve places the second replica on it
        cluster.add_node(**worker_node("node_c"))
        after = wait_until(lambda: (lambda r: r if len(r) == 2 else None)(replicas("spread")), 120,
                           "Serve restored 2 replicas on the new node")
        new_nodes = {n.node_id for n in cluster.worker_nodes} - set(workers)
        assert {node for node, _ in after} == {before[1][0], *new_nodes}, after
        wait_until(lambda: str(serve.status().applications["spread"].deployments[DEPLOYMENT_NAME].status)
                   .endswith("HEALTHY"), 60, "the deployment is healthy again")
        assert httpx.post(url, json=body, timeout=60).status_code == 200
        print(f"\n{len(in_flight)} in flight at the loss: {in_flight}; {len(results)} requests: {statuses.count(200)} answered, {len(failed)} got 503 "
              f"(sent to the lost node's replica)")
    finally:
        serve.shutdown()
