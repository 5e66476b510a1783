"""Fuzzing helpers shared by the Serve tests: a raw ASGI client, the one check every reply must
pass (2xx with a body of the response model, or a 4xx whose JSON ``detail`` says what is wrong),
hypothesis settings and budgets, and request-body strategies: JSON values at their edges, bodies
shaped like a valid request with edits planted (:func:`like`), keys dropped, added or retyped
(:func:`mutated`), and odd encodings (:func:`encoded`).

Used by ``tests/spine/test_serve_fuzz.py`` (hand-written strategies for three systems) and by
``tests/spine/test_every_task.py``, which fuzzes every registered task from its own example request.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

PREDICT, UPLOAD = "/v1/predict", "/v1/predict/upload"
#: every status the app may answer; anything else (5xx above all) fails the test
ALLOWED = {200, 400, 401, 404, 405, 406, 413, 415, 422}


def budget(quick: int, long: int) -> pytest.MarkDecorator:
    """``n`` examples: ``quick`` in make test, ``long`` under the faults marker."""
    return pytest.mark.parametrize("n", [pytest.param(quick, id="quick"),
                                         pytest.param(long, id="long", marks=pytest.mark.faults)])


def fuzz(n: int) -> settings:
    # derandomize: make test sees the same examples every run; no example database for the same reason
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ----------------------------------------------------------------------------- raw ASGI client


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    consumed: int  # request body bytes the app pulled before answering

    def json(self) -> Any:
        return strict_json(self.body)


def strict_json(data: bytes) -> Any:
    """JSON as a browser reads it: NaN and Infinity are not JSON."""
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} in a JSON response")

    return json.loads(data, parse_constant=refuse)


class Client:
    """Raw ASGI requests on one event loop: header bytes and body chunks reach the app as given."""

    def __init__(self, app: Any):
        self.app, self.loop = app, asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def request(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]] = (),
                chunks: Iterable[bytes] = (b"",)) -> Reply:
        parts = list(chunks) or [b""]
        messages = [{"type": "http.request", "body": c, "more_body": i < len(parts) - 1} for i, c in enumerate(parts)]
        consumed, status, out_headers, body = 0, 0, {}, []

        async def receive() -> dict[str, Any]:
            nonlocal consumed
            if not messages:
                return {"type": "http.disconnect"}
            consumed += len(messages[0]["body"])
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, out_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                out_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message["headers"]}
            else:
                body.append(message.get("body", b""))

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
                 "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
                 "headers": [(k.lower(), v) for k, v in headers], "client": ("127.0.0.1", 5000),
                 "server": ("testserver", 80)}
        self.loop.run_until_complete(self.app(scope, receive, send))
        return Reply(status, out_headers, b"".join(body), consumed)

    def post_json(self, body: Any, headers: Iterable[tuple[bytes, bytes]] = (), path: str = PREDICT) -> Reply:
        return self.request("POST", path, [(b"content-type", b"application/json"), *headers],
                            [json.dumps(body).encode()])


def check(reply: Reply, response_model: type[BaseModel], context: Any = None) -> None:
    """2xx with a body of the response model, or a 4xx with a JSON reason; nothing else."""
    where = (context, reply.status, reply.body[:600])
    assert reply.status in ALLOWED, where
    if reply.status >= 400:
        detail = reply.json().get("detail")
        assert isinstance(detail, str) and detail.strip(), where
    else:
        assert reply.headers.get("content-type") == "application/json", where
        response_model.model_validate(reply.json())  # finite numbers where the schema says number


# ----------------------------------------------------------------------------- JSON values


surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
texts = st.text(max_size=12) | surrogates | st.sampled_from(["", " ", "\x00", "\u202e", "a" * 3000])
numbers = (st.integers() | st.sampled_from([2 ** 63, -2 ** 64, 10 ** 400])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0.0, -0.0, 5e-324, 3.4e38, 3.5e38, 1e308, -1e308]))
json_values = st.recursive(st.none() | st.booleans() | numbers | texts,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=20)
#: edge values planted among ordinary features: float32's edges, past them, and what JSON lacks
EDGES = [0.0, -0.0, 1e-40, 3e38, -3e38, 1e39, 1e300, float("nan"), float("inf"), float("-inf")]


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy, share: float = 0.9) -> st.SearchStrategy:
    """``good`` with probability ``share``: most fields of a body must be sound for the rest of it
    to reach the model, where the interesting failures are."""
    return st.integers(0, 999).flatmap(lambda i: good if i < 1000 * share else bad)


def mutated(bodies: st.SearchStrategy[dict]) -> st.SearchStrategy[Any]:
    """A body as generated, or with one key dropped, added, or its value replaced by any JSON."""
    def apply(body: dict, op: str, pick: int, junk: Any) -> Any:
        paths = [()]
        stack = [((), body)]
        while stack:
            path, node = stack.pop()
            for key, value in node.items():
                paths.append((*path, key))
                if isinstance(value, dict):
                    stack.append(((*path, key), value))
        path = paths[pick % len(paths)]
        if not path:
            return junk if op == "retype" else body
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        if op == "drop":
            del parent[path[-1]]
        elif op == "extra":
            parent[f"{path[-1]}_extra"] = junk
        elif op == "retype":
            parent[path[-1]] = junk
        return body

    ops = mostly(st.just("keep"), st.sampled_from(["drop", "extra", "retype"]), 0.6)
    return st.builds(apply, bodies, ops, st.integers(0, 99), json_values)


def encoded(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON bytes (NaN/Infinity tokens included, as Python writes them), sometimes truncated, in
    UTF-16, deeply nested, or not JSON at all."""
    as_json = bodies.map(lambda b: json.dumps(b).encode())
    return mostly(as_json, st.one_of(
        st.tuples(as_json, st.integers(0, 400)).map(lambda t: t[0][:t[1]]),
        bodies.map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-16", "surrogatepass")),
        st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(1, 3_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.binary(max_size=64),
        st.just(b'{"x": 1' + b"0" * 5000 + b"}")), 0.8)  # beyond Python's int-digits limit


# ----------------------------------------------------------------------------- bodies like a valid one


def _paths(body: Any) -> tuple[list[tuple], list[tuple]]:
    """The paths of ``body``'s leaves and of its lists (lists of numbers count as leaves' parents)."""
    leaves, lists = [], []
    stack: list[tuple[tuple, Any]] = [((), body)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            stack += [((*path, k), v) for k, v in node.items()]
        elif isinstance(node, list):
            lists.append(path)
            stack += [((*path, i), v) for i, v in enumerate(node)]
        else:
            leaves.append(path)
    return leaves, lists


def _edge(value: Any, pick: int, junk: Any) -> Any:
    """An edge value of ``value``'s own kind (``pick`` chooses), or ``junk`` (any JSON)."""
    if isinstance(value, bool):
        return [not value, None, junk][pick % 3]
    if isinstance(value, (int, float)):
        return [*EDGES, -1, 0, 2 ** 63, 10 ** 400, -value, junk][pick % (len(EDGES) + 5)]
    if isinstance(value, str):
        return ["", " ", value[: len(value) // 2], value + "\ud800", "\x00", value * 50, junk][pick % 7]
    return junk


def like(valid: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies shaped like ``valid`` with a few edits planted: a leaf set to an edge value of its
    kind (float32's edges, NaN, huge integers, empty, halved or doubled strings, a lone
    surrogate), or a list emptied, cut to one item, halved, or grown by repeating its last item.
    Built from any task's example request, so a new system is fuzzed without new strategies."""
    leaves, lists = _paths(valid)

    def apply(edits: list[tuple[str, int, int, Any]]) -> dict[str, Any]:
        body = copy.deepcopy(valid)
        for op, where, pick, junk in edits:
            paths = leaves if op == "leaf" else lists
            if not paths:
                continue
            *parents, last = paths[where % len(paths)]
            node = body
            try:
                for key in parents:
                    node = node[key]
                value = node[last]
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed this path
            if op == "leaf":
                node[last] = _edge(value, pick, junk)
            elif isinstance(value, list):
                size = len(value)
                node[last] = ([] if pick % 4 == 0 else value[:1] if pick % 4 == 1 else value[: size // 2]
                              if pick % 4 == 2 else value + value[-1:] * [1, 10, 1000][pick % 3])
        return body

    edit = st.tuples(st.sampled_from(["leaf", "leaf", "list"]), st.integers(0, 10 ** 6), st.integers(0, 99),
                     json_values)
    return st.builds(apply, mostly(st.lists(edit, min_size=1, max_size=3), st.just([]), 0.8))


def fuzz_json_bodies(client: Client, valid: dict[str, Any], response_model: type[BaseModel], n: int,
                     bodies: st.SearchStrategy[Any] | None = None,
                     auth: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """``n`` fuzzed JSON bodies to the predict route (``bodies``, by default :func:`like` ``valid``,
    then :func:`mutated` and :func:`encoded`): each answer passes :func:`check`; then ``valid`` is
    still served (200)."""
    auth = tuple(auth)
    strategy = encoded(mostly(mutated(bodies if bodies is not None else like(valid)), json_values))

    @fuzz(n)
    @given(body=strategy)
    def one(body: bytes) -> None:
        check(client.request("POST", PREDICT, [(b"content-type", b"application/json"), *auth], [body]),
              response_model, body[:300])

    one()
    reply = client.post_json(valid, auth)
    check(reply, response_model)
    assert reply.status == 200, reply.body  # the app still serves after all of that
