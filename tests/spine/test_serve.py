"""Serving over real HTTP: a Wander checkpoint and an adapter behind Ray Serve on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from support import wander_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polymodal.cache import local_copy
from polymodal.evaluate import load_model
from polymodal.models.wander.backbone import read_spec
from polymodal.ports import free_port
from polymodal.serving.app import (DEFAULT_MODEL_ID, MODEL_HEADER, ModelStore, ServeArgs, app_builder,
                                   build_deployment, parse_args, read_token)
from polymodal.serving.config_check import check_serve_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "POLYMODAL_TEST_SERVE_TOKEN"
TOKEN = "t0k-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def checkpoints(wander_data, s3_server) -> dict[str, str]:
    """A tiny trained base (wander) and an adapter (houlsby, other seed) on the same backbone."""
    from polymodal.train.loop import fit_local

    prefix = f"s3://polymodal/test-serve-{uuid.uuid4().hex}"
    common = ("optim.epochs=1", "optim.max_steps_per_epoch=6", "scaling.num_workers=1", "deepspeed.zero_stage=0")
    base = fit_local(wander_config(wander_data, prefix, "base", *common), progress=False)
    adapter = fit_local(wander_config(wander_data, prefix, "adapter", "seed=1", "model.method=houlsby", *common),
                        progress=False)
    return {"base": base["best_checkpoint"], "adapter": adapter["best_checkpoint"],
            "base_run": f"{prefix}/base", "backbone": wander_data["backbone"]}


@pytest.fixture(scope="module")
def server(ray_cluster, checkpoints):
    """Two apps on one Serve instance: ``/wander`` (token, adapter) and ``/burst`` (tiny queue)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    env = {"runtime_env": {"env_vars": {TOKEN_ENV: TOKEN}}, "num_cpus": 0.5}
    args = parse_args({"checkpoint": checkpoints["base_run"], "adapters": {"houlsby": checkpoints["adapter"]},
                       "token_env": TOKEN_ENV, "max_body_bytes": 200_000})
    serve.run(build_deployment(args, ray_actor_options=env).bind(args.model_dump()), name="wander",
              route_prefix="/wander")
    burst = parse_args({"checkpoint": checkpoints["base"], "max_batch_size": 1, "max_ongoing_requests": 1,
                        "max_queued_requests": 2})
    serve.run(build_deployment(burst, ray_actor_options={"num_cpus": 0.5}).bind(burst.model_dump()),
              name="burst", route_prefix="/burst")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def example(checkpoints) -> dict[str, list]:
    """One valid request's ``inputs``: every modality (seq_len x feature_dim floats)."""
    spec = read_spec(local_copy(checkpoints["backbone"]))
    rng = np.random.default_rng(0)
    return {m.name: rng.normal(size=(m.seq_len, m.feature_dim)).round(4).tolist() for m in spec.modalities}


def _in_process_probs(checkpoint: str, inputs: dict[str, list]) -> np.ndarray:
    """The reference: evaluate's loader + a plain forward, no serving code involved."""
    _, _, model = load_model(checkpoint)
    with torch.no_grad():
        logits = model({k: torch.tensor([v], dtype=torch.float32) for k, v in inputs.items()})["logits"]
    return torch.softmax(logits, dim=-1)[0].numpy()


def test_health_needs_no_token(server):
    r = httpx.get(f"{server}/wander/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_models_lists_default_and_adapter(server):
    r = httpx.get(f"{server}/wander/v1/models", headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["id"] for m in body["models"]] == [DEFAULT_MODEL_ID, "houlsby"]
    assert body["task"] == "wander.classification" and body["model_header"] == MODEL_HEADER
    assert set(body["request_schema"]["$defs"]["WanderInputs"]["properties"]) == {"m0", "m1"}


def test_predict_matches_in_process_model(server, checkpoints, example):
    r = httpx.post(f"{server}/wander/v1/predict", json={"inputs": example}, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    ref = _in_process_probs(checkpoints["base"], example)
    np.testing.assert_allclose(out["probabilities"], ref, atol=1e-5)
    assert out["label"] == int(ref.argmax())


def test_adapter_predicts_with_its_own_weights_and_shares_the_backbone(server, checkpoints, example):
    r = httpx.post(f"{server}/wander/v1/predict", json={"inputs": example},
                   headers={**AUTH, MODEL_HEADER: "houlsby"}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], _in_process_probs(checkpoints["adapter"], example),
                               atol=1e-5)
    models = {m["id"]: m for m in httpx.get(f"{server}/wander/v1/models", headers=AUTH).json()["models"]}
    assert models["houlsby"]["loaded"]
    # every encoder element of the adapter lives in the default model's memory
    assert models["houlsby"]["shared_parameters"] > 0.5 * models["houlsby"]["parameters"], models


def test_unknown_adapter_is_404_naming_it(server, example):
    r = httpx.post(f"{server}/wander/v1/predict", json={"inputs": example},
                   headers={**AUTH, MODEL_HEADER: "nope"}, timeout=30)
    assert r.status_code == 404
    assert "'nope'" in r.text and "houlsby" in r.text


def test_auth_missing_or_wrong_token_is_401(server, example):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(f"{server}/wander/v1/predict", json={"inputs": example}, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text
    assert httpx.get(f"{server}/wander/v1/models").status_code == 401


def test_malformed_bodies_are_422_naming_the_field(server, example):
    url = f"{server}/wander/v1/predict"
    r = httpx.post(url, content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422 and "malformed JSON" in r.json()["detail"]
    r = httpx.post(url, json={"inputs": {"m1": example["m1"]}}, headers=AUTH)
    assert r.status_code == 422 and "inputs.m0" in r.json()["detail"], r.text
    r = httpx.post(url, json={"inputs": {**example, "m0": "text"}}, headers=AUTH)
    assert r.status_code == 422 and "inputs.m0" in r.json()["detail"], r.text
    r = httpx.post(url, json={"inputs": {**example, "m9": [[0.0]]}}, headers=AUTH)
    assert r.status_code == 422 and "inputs.m9" in r.json()["detail"], r.text
    r = httpx.post(url, json={"inputs": example, "extra": 1}, headers=AUTH)
    assert r.status_code == 422 and "extra" in r.json()["detail"], r.text


def test_wrong_shape_is_422_with_expected_and_got(server, example):
    short = example["m1"][:-1]
    rows, width = len(example["m1"]), len(example["m1"][0])
    r = httpx.post(f"{server}/wander/v1/predict", json={"inputs": {**example, "m1": short}}, headers=AUTH)
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == "inputs.m1"
    assert f"{rows} x {width}" in err["message"] and f"{rows - 1} x {width}" in err["message"], err


def test_body_over_limit_is_413(server):
    big = b'{"inputs": {"m0": [' + b"0.0," * 60_000 + b'0.0]}}'
    r = httpx.post(f"{server}/wander/v1/predict", content=big, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.text


def test_burst_beyond_queue_gets_503_and_nothing_hangs(server, example):
    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            async def one() -> int:
                try:
                    return (await client.post(f"{server}/burst/v1/predict", json={"inputs": example})).status_code
                except httpx.TimeoutException:
                    return -1
            return list(await asyncio.gather(*(one() for _ in range(60))))

    codes = asyncio.run(run())
    print(f"burst of 60: {codes.count(200)} x 200, {codes.count(503)} x 503")
    assert len(codes) == 60
    assert set(codes) <= {200, 503}, codes  # -1 would mean a request hung past the timeout
    assert codes.count(503) > 0 and codes.count(200) > 0, codes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=24)
rows = st.lists(st.lists(st.floats(allow_nan=False, width=32) | st.integers(-5, 5), min_size=0, max_size=33),
                min_size=0, max_size=9)
near_valid = st.fixed_dictionaries({"inputs": st.dictionaries(st.sampled_from(["m0", "m1", "m2"]),
                                                              rows | json_values, max_size=3)})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | near_valid)
def test_random_bodies_never_5xx(server, body):
    r = httpx.post(f"{server}/wander/v1/predict", content=json.dumps(body),
                   headers={**AUTH, "content-type": "application/json"}, timeout=30)
    assert r.status_code < 500, (body, r.status_code, r.text)


def test_adapters_share_encoder_tensors_in_process(checkpoints, s3_server):
    """Same config -> deep copy that reuses frozen params; other method -> built, then tied."""
    store = ModelStore(ServeArgs(checkpoint=checkpoints["base"],
                                 adapters={"same": checkpoints["base"], "houlsby": checkpoints["adapter"]}))
    base = store.base.model
    for aid in ("same", "houlsby"):
        model = store.load_adapter(aid).model
        for name, p in model.encoders.named_parameters():
            bp = dict(base.encoders.named_parameters())[name]
            assert p is bp and p.data_ptr() == bp.data_ptr(), (aid, name)
        base_ptrs = {q.data_ptr() for q in base.parameters()}
        own = [p for p in model.parameters() if p.data_ptr() not in base_ptrs]
        assert own and all(p.requires_grad for p in own), aid  # only trainable weights are copies
    # the clone's head is its own tensor: loading adapter weights never writes into the base
    assert store.load_adapter("same").model.head.weight is not base.head.weight


def test_deploy_serves_the_shipped_config(server, checkpoints, example):
    """``polymodal deploy`` path: serve/config.yaml (its deployments: options included) with
    overrides, deployed beside the fixture's apps, answers over HTTP."""
    from polymodal.serving.deploy import deploy

    port = int(server.rsplit(":", 1)[1])
    (url,) = deploy(str(ROOT / "serve" / "config.yaml"),
                    ["wander.name=deployed", "wander.route_prefix=/deployed", "wander.args.token_env=null",
                     f"wander.args.checkpoint={checkpoints['base_run']}", f"http_options.port={port}"])
    assert url == f"{server}/deployed"
    r = httpx.post(f"{url}/v1/predict", json={"inputs": example}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], _in_process_probs(checkpoints["base"], example),
                               atol=1e-5)
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_serve_config_checks_strictly(tmp_path):
    assert check_serve_config(ROOT / "serve" / "config.yaml") == []
    text = (ROOT / "serve" / "config.yaml").read_text().replace("max_ongoing_requests: 8",
                                                                "max_concurent_queries: 8")
    bad = tmp_path / "config.yaml"
    bad.write_text(text)
    errors = check_serve_config(bad, root=ROOT)
    assert any("max_concurent_queries" in e for e in errors), errors


def test_polymodal_serve_check(tmp_path, capsys):
    from polymodal.cli import main

    assert main(["serve", "check", str(ROOT / "serve" / "config.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("config.yaml: OK")
    bad = tmp_path / "config.yaml"
    bad.write_text((ROOT / "serve" / "config.yaml").read_text().replace("max_ongoing_requests: 8",
                                                                         "max_concurent_queries: 8"))
    assert main(["serve", "check", str(bad), "--root", str(ROOT)]) == 1
    out = capsys.readouterr()
    assert "max_concurent_queries" in out.err and "1 error(s)" in out.out


def test_builder_rejects_unknown_args_and_empty_token(monkeypatch):
    with pytest.raises(ValueError, match="max_batch"):
        app_builder({"checkpoint": "x", "max_batch": 4})
    with pytest.raises(ValueError, match="args.max_batch_size"):
        parse_args({"checkpoint": "x", "max_batch_size": 0})
    monkeypatch.setenv("EMPTY_TOKEN_FOR_TEST", "")
    with pytest.raises(Exception, match="EMPTY_TOKEN_FOR_TEST"):
        read_token("EMPTY_TOKEN_FOR_TEST")
