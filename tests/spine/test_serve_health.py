"""A replica that broke is reported unhealthy (and only then), a damaged model never starts, and
Ray Serve's proxy gets a guard for what it would answer with a bare 500. All in-process and fast;
the same behaviour through Ray Serve, with replicas killed and stalled, is in test_faults_serve.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch
from support import wander_export
from safetensors.torch import load_file, save_file
from starlette.testclient import TestClient

from polymodal.errors import PolymodalError
from polymodal.serving import proxy
from polymodal.serving.app import ModelStore, build_api, local_backend, parse_args


@pytest.fixture(scope="module")
def wander(tmp_path_factory) -> tuple[str, dict]:
    return wander_export(tmp_path_factory.mktemp("health"))


def _client(checkpoint: str) -> tuple[ModelStore, TestClient]:
    store = ModelStore(parse_args({"checkpoint": checkpoint}))
    return store, TestClient(build_api(local_backend(store), None, 1_000_000))


def test_a_replica_is_unhealthy_only_when_a_request_it_answered_before_fails(wander, monkeypatch):
    checkpoint, body = wander
    store, client = _client(checkpoint)
    assert client.post("/v1/predict", json=body).status_code == 200
    assert client.get("/healthz").json() == {"status": "ok", "default_model": "default"}

    # requests that fail for what they ask are the caller's: 422s never count against the replica
    wrong = {"inputs": {k: [row[:-1] for row in v] for k, v in body["inputs"].items()}}
    for _ in range(5):
        assert client.post("/v1/predict", json=wrong).status_code == 422
    assert client.get("/healthz").status_code == 200 and store.health.streak == 0

    # the model breaks (as a dead CUDA context would): every request 500s, then the health check's
    # rerun of the request it answered before fails too, so the replica is reported unhealthy
    def broken(*_a, **_k):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(store.base.model, "forward", broken)
    for _ in range(store.health.streak_limit):
        r = client.post("/v1/predict", json=body)
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"]
        assert "illegal memory" not in r.text  # the reason goes to the log, not to the caller
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["status"] == "unhealthy"
    assert "3 requests in a row failed" in r.json()["detail"] and "illegal memory access" in r.json()["detail"]

    # failures that the canary does not reproduce were the requests' own: healthy, streak reset
    monkeypatch.undo()
    store.health.streak = store.health.streak_limit
    assert client.get("/healthz").status_code == 200 and store.health.streak == 0
    assert client.post("/v1/predict", json=body).status_code == 200


def test_fewer_failures_than_the_limit_or_no_canary_leave_the_replica_healthy(wander, monkeypatch):
    checkpoint, body = wander
    store, client = _client(checkpoint)

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(store.base.model, "forward", broken)
    for _ in range(store.health.streak_limit + 2):
        assert client.post("/v1/predict", json=body).status_code == 500
    # nothing was ever answered, so there is nothing to tell a broken replica from bad requests by
    assert store.health.canary is None and client.get("/healthz").status_code == 200
    monkeypatch.undo()
    assert client.post("/v1/predict", json=body).status_code == 200
    assert store.health.canary is not None and store.health.streak == 0


def test_a_device_that_fails_a_tiny_op_makes_the_replica_unhealthy(wander, monkeypatch):
    checkpoint, _ = wander
    store, client = _client(checkpoint)

    def lost(*_a, **_k):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(torch, "ones", lost)
    r = client.get("/healthz")
    assert r.status_code == 503 and "device cpu" in r.json()["detail"] and "device-side assert" in r.json()["detail"]


def _copy_export(src: str, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst / "model" / "trainable.safetensors"


def test_a_damaged_checkpoint_fails_to_load_naming_the_file_and_weight(wander, tmp_path):
    checkpoint, _ = wander
    truncated = _copy_export(checkpoint, tmp_path / "truncated")
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(PolymodalError, match="cannot read the weights") as err:
        ModelStore(parse_args({"checkpoint": str(tmp_path / "truncated")}))
    assert str(truncated) in str(err.value)

    diverged = _copy_export(checkpoint, tmp_path / "nan")
    weights = load_file(str(diverged))
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[-1]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(diverged))
    with pytest.raises(PolymodalError, match=f"weight {name} holds NaN or inf") as err:
        ModelStore(parse_args({"checkpoint": str(tmp_path / "nan")}))
    assert str(diverged) in str(err.value)


# ----------------------------------------------------------------------------- the proxy guard


def _through_guard(app, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/app/v1/predict", "headers": headers}
    asyncio.run(proxy.ProxyGuard(app)(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert sum(m["type"] == "http.response.start" for m in sent) == 1
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent)


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_proxy_guard_refuses_headers_the_proxy_cannot_decode():
    for name in (b"serve_multiplexed_model_id", b"serve-multiplexed-model-id", b"x-request-id", b"x-session-id"):
        status, headers, body = _through_guard(_ok, [(name, b"\xa0\xff")])
        assert status == 400 and headers[b"content-type"] == b"application/json"
        assert json.loads(body)["detail"] == f"header {name.decode()} is not valid UTF-8"
    # headers the proxy never decodes pass as they are, and so do UTF-8 model ids
    assert _through_guard(_ok, [(b"user-agent", b"caf\xe9")])[0] == 200
    assert _through_guard(_ok, [(b"serve_multiplexed_model_id", "café".encode())])[0] == 200


def test_proxy_guard_turns_a_missing_answer_into_a_clean_503():
    async def gave_up(scope, receive, send):  # Ray's proxy after ActorDiedError: no message at all
        return None

    async def raised(scope, receive, send):
        raise RuntimeError("replica died")

    for app in (gave_up, raised):
        status, headers, body = _through_guard(app, [])
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert "retry" in json.loads(body)["detail"]

    async def half_sent(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("connection lost mid-body")

    with pytest.raises(RuntimeError, match="mid-body"):  # only closing the connection is left
        _through_guard(half_sent, [])


def test_proxy_guard_is_what_rays_proxy_imports(monkeypatch):
    from ray._common.utils import import_attr
    from starlette.middleware import Middleware

    monkeypatch.delenv(proxy.PROXY_CALLBACK_ENV, raising=False)
    monkeypatch.delenv(proxy.PROXY_READY_ENV, raising=False)
    proxy.install()
    import os

    assert os.environ[proxy.PROXY_CALLBACK_ENV] == proxy.PROXY_CALLBACK
    assert os.environ[proxy.PROXY_READY_ENV] == proxy.PROXY_READY_S  # a busy machine's proxy gets 60 s to start
    made = import_attr(proxy.PROXY_CALLBACK)()
    assert len(made) == 1 and isinstance(made[0], Middleware) and made[0].cls is proxy.ProxyGuard
    monkeypatch.setenv(proxy.PROXY_CALLBACK_ENV, "mine:callback")
    proxy.install()  # an explicit setting wins
    assert os.environ[proxy.PROXY_CALLBACK_ENV] == "mine:callback"
