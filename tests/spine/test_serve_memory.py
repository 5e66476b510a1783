"""A replica's declared memory vs what it will load (polymodal.serving.memory), checked at deploy
time without Ray: the deployment is refused before Serve places a replica that would be
OOM-killed, and the message gives both sizes and the fix."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from support import ROOT

from polymodal.errors import PolymodalError
from polymodal.serving.app import build_deployment, parse_args
from polymodal.serving.memory import manifest_memory_bytes, replica_footprint
from polymodal.shards import Manifest, ShardWriter

MIB = 2**20


def write_index(uri: str, rows: int, width: int) -> Manifest:
    """A dataset with a fixed float32 (rows, width) column, a variable-length one and a string id."""
    rng = np.random.default_rng(0)
    columns = {"vid": {"dtype": "string"}, "feats": {"dtype": "float32", "shape": [width]},
               "clips": {"dtype": "float32", "shape": [-1, 4]}}
    with ShardWriter(uri, task="any", split="index", columns=columns, rows_per_shard=256, progress=False) as w:
        for start in range(0, rows, 256):
            n = min(256, rows - start)
            w.write({"vid": [f"v{start + i}" for i in range(n)], "feats": rng.normal(size=(n, width)),
                     "clips": [rng.normal(size=(1 + i % 3, 4)) for i in range(n)]})
    return Manifest.load(uri)


def test_manifest_memory_matches_the_decoded_dataset(tmp_path):
    manifest = write_index(str(tmp_path / "index"), rows=600, width=64)
    decoded = pq.read_table([str(tmp_path / "index" / s.path) for s in manifest.shards])
    estimate = manifest_memory_bytes(manifest, str(tmp_path / "index"))
    fixed = 600 * 64 * 4
    assert estimate > fixed  # the fixed column, exactly, plus the others from the footers
    # what arrow holds once the dataset is read, within a few per cent (Parquet's page headers
    # and levels vs arrow's offsets)
    assert abs(estimate - decoded.nbytes) <= 0.05 * decoded.nbytes, (estimate, decoded.nbytes)


def export(root) -> str:
    """A checkpoint export with 64k float32 weights: the check reads files, it builds no model."""
    import torch

    from polymodal.config import load_config
    from polymodal.train.checkpoint import write_export

    cfg = load_config(str(ROOT / "jobs" / "configs" / "wander_tiny.yaml"), [])
    write_export(root / "model", cfg, {"head.weight": torch.zeros(256, 256)}, {"epoch": 0, "metrics": {}})
    return str(root)


def test_an_index_larger_than_the_replica_memory_is_refused_at_deploy_time(tmp_path):
    checkpoint = export(tmp_path / "ckpt")
    index = str(tmp_path / "index")
    write_index(index, rows=1024, width=1024)  # 4 MiB of float32 features
    args = parse_args({"checkpoint": checkpoint, "index": index})
    need = replica_footprint(checkpoint, index)
    assert need.index >= 4 * MIB and need.weights >= 256 * 256 * 4

    with pytest.raises(PolymodalError) as err:
        build_deployment(args, ray_actor_options={"num_cpus": 1, "memory": 2 * MIB})
    message = str(err.value)
    assert f"the index {index} takes" in message and "ray_actor_options.memory = 2.0 MiB" in message
    assert f"at least {need.total / MIB:.1f} MiB" in message and "raise ray_actor_options.memory" in message
    # enough memory, or none declared (Ray does not reserve any): the deployment is built
    assert build_deployment(args, ray_actor_options={"memory": 2 * need.total}).ray_actor_options["memory"]
    assert build_deployment(args, ray_actor_options={"num_cpus": 1}) is not None
