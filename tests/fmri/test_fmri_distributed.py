"""Voxel-chunked responses in the S3 server, solved chunk by chunk in Ray tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polymodal import storage
from polymodal.errors import PolymodalError
from polymodal.models.fmri import RidgeCV
from polymodal.models.fmri.data import read_chunk, read_index, write_responses
from polymodal.models.fmri.distributed import ResponseSelection, fit_ridge_ray, load_solution, task_options
from polymodal.models.fmri.synth import design, make_synthetic, story_features
from polymodal.shards import ShardError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(n_stories=10, trs_per_story=120, n_voxels=150, dim=6, seed=11)


def test_chunks_round_trip_and_read_only_their_voxels(synth, s3_bucket_uri):
    responses = {name: s.responses for name, s in synth.stories.items()}
    index = write_responses(s3_bucket_uri, "S01", responses, chunk=64)
    assert [(c.start, c.stop) for c in index.chunks] == [(0, 64), (64, 128), (128, 150)]
    assert read_index(s3_bucket_uri, "S01") == index
    last = read_chunk(s3_bucket_uri, "S01", index.chunks[-1])
    for name, arr in responses.items():
        np.testing.assert_array_equal(last[name], arr[:, 128:150])
    with pytest.raises(PolymodalError, match="unknown subject 'S99'"):
        read_index(s3_bucket_uri, "S99")
    with pytest.raises(PolymodalError, match="story 'nope'"):
        read_chunk(s3_bucket_uri, "S01", index.chunks[0], ["nope"])


def test_corrupt_chunk_names_the_shard(synth, s3_bucket_uri):
    index = write_responses(s3_bucket_uri, "S02", {n: s.responses for n, s in synth.stories.items()}, chunk=100)
    folder = storage.join(s3_bucket_uri, "responses", "S02", index.chunks[1].name)
    shard = storage.join(folder, "part-00000.parquet")
    storage.write_bytes(shard, b"not parquet at all")
    with pytest.raises(ShardError, match="part-00000.parquet"):
        read_chunk(s3_bucket_uri, "S02", index.chunks[1])


def test_chunk_tasks_ask_for_scaling_resources_per_worker():
    """A chunk task asks Ray for ``scaling.resources_per_worker`` as written: CPUs, GPUs and custom
    resources (which pin chunks to the nodes that offer them); 1 CPU and, on CUDA, 1 GPU unless set."""
    from polymodal.config import load_config
    from polymodal.models.fmri.pipeline import chunk_resources

    assert task_options(None, "cpu") == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {}}
    assert task_options({"CPU": 2, "ridge": 1}, "cuda") == {"num_cpus": 2, "num_gpus": 1.0, "resources": {"ridge": 1}}
    assert task_options({"GPU": 0.5}, "cuda")["num_gpus"] == 0.5
    config = str(ROOT / "jobs" / "configs" / "fmri_huth_paper.yaml")
    assert chunk_resources(load_config(config)) == {"CPU": 2.0}
    cfg = load_config(config, ["scaling.use_gpu=true", "scaling.resources_per_worker={CPU: 4, ridge: 1}"])
    assert task_options(chunk_resources(cfg), "cuda") == {"num_cpus": 4.0, "num_gpus": 1.0, "resources": {"ridge": 1.0}}


def test_ray_chunks_equal_the_in_memory_solve(ray_cluster, synth, s3_bucket_uri):
    names = sorted(synth.stories)
    write_responses(s3_bucket_uri, "S01", {n: synth.stories[n].responses for n in names}, chunk=64)
    train = names[:8]
    X, Y, groups = design(synth, train)
    sel = ResponseSelection(root=s3_bucket_uri, subject="S01", stories=train, tr=synth.tr, trim=synth.trim)
    out = storage.join(s3_bucket_uri, "ridge", "S01")
    alphas = np.logspace(0, 4, 8)
    result = fit_ridge_ray(X, groups, sel, out, alphas=alphas, cv=4, resources={"CPU": 0.5})
    assert result["solved_now"] == ["v000000-000064", "v000064-000128", "v000128-000150"]
    got = load_solution(out)
    ref = RidgeCV(alphas, cv=4).fit(X, Y, groups=groups)
    np.testing.assert_array_equal(got["best_alphas"], ref.best_alphas_.astype(np.float32))
    np.testing.assert_allclose(got["coef"], ref.coef_, rtol=1e-4, atol=1e-5)
    # held-out stories: signal voxels predicted, noise voxels not
    X_te, Y_te, _ = design(synth, names[8:])
    P = X_te @ got["coef"]
    r = np.array([np.corrcoef(P[:, v], Y_te[:, v])[0, 1] for v in range(P.shape[1])])
    assert r[synth.snr > 0].mean() > 0.5 and abs(r[synth.snr == 0].mean()) < 0.05
    # a rerun skips every chunk already written
    assert fit_ridge_ray(X, groups, sel, out, alphas=alphas, cv=4)["solved_now"] == []


def test_mismatched_rows_are_a_clear_error(ray_cluster, synth, s3_bucket_uri):
    import ray

    names = sorted(synth.stories)
    write_responses(s3_bucket_uri, "S01", {n: synth.stories[n].responses for n in names}, chunk=150)
    X = np.vstack([story_features(synth, n) for n in names[:6]])
    groups = np.repeat(np.arange(6), len(X) // 6)
    sel = ResponseSelection(root=s3_bucket_uri, subject="S01", stories=names[:5], tr=synth.tr, trim=synth.trim)
    with pytest.raises(ray.exceptions.RayTaskError, match="stories or trimming differ"):
        fit_ridge_ray(X, groups, sel, storage.join(s3_bucket_uri, "bad"), cv=3, resources={"CPU": 0.5})
    missing = ResponseSelection(root=s3_bucket_uri, subject="S01", stories=["ghost"], tr=synth.tr, trim=synth.trim)
    with pytest.raises(ValueError, match="ghost"):
        fit_ridge_ray(X, groups, missing, storage.join(s3_bucket_uri, "bad"))
