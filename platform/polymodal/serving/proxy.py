"""A guard around Ray Serve's own HTTP proxy, which runs before any polymodal replica sees a request.

Ray Serve 2.60's proxy has two answers that are not clean:

* a header it decodes (the ``serve_multiplexed_model_id`` model id, ``x-request-id``, the session
  id) that is not UTF-8 makes it fail with a bare 500 before routing;
* a request whose replica dies while it is in flight (SIGKILL, OOM, a node lost) gets a bare
  ``500 Internal Server Error`` in text/plain, which a client cannot tell from a bug.

:class:`ProxyGuard` answers the first with a 400 naming the header, and the second with a JSON
503 and ``Retry-After`` (Serve starts a replacement replica; a retry lands on a live one).
Everything else passes through untouched.

Ray loads proxy middlewares only from the ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
environment variable of the proxy's process, so it must be set where the cluster starts:
:func:`install` sets it for a local cluster that polymodal starts itself, and ``k8s/`` sets it
on the head and worker pods. A cluster started without it still serves, minus this guard.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger("ray.serve")

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "polymodal.serving.proxy:middlewares"
#: Serve's controller restarts a proxy that is not ready after 3 checks of this many seconds (5 by
#: default): on a saturated laptop or CI runner a proxy's process takes longer than 15 s to start,
#: and ``serve.start`` then fails with ActorDiedError (seen beside a 2-process CPU hog on 2 cores)
PROXY_READY_ENV, PROXY_READY_S = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "20"
RETRY_AFTER_S = 1

# headers the proxy decodes as UTF-8 (names compared lowercase with "-" read as "_")
_DECODED = ("serve_multiplexed_model_id", "x_request_id",
            os.environ.get("RAY_SERVE_SESSION_ID_HEADER_KEY", "x-session-id").lower().replace("-", "_"))


def install() -> None:
    """Have the Serve proxies of a Ray cluster started by this process use :class:`ProxyGuard`,
    and give them 60 s to start (:data:`PROXY_READY_S` x 3) instead of Serve's 15 s.

    Call before ``ray.init`` starts a local cluster (its processes inherit this environment);
    it changes nothing on a cluster that is already running. Explicit settings win."""
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    os.environ.setdefault(PROXY_READY_ENV, PROXY_READY_S)


def middlewares() -> list[Any]:
    """What Ray's proxy imports through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyGuard)]


def undecodable_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The name of the first header the proxy would decode that is not valid UTF-8, if any."""
    for key, value in headers:
        try:
            name = key.decode("ascii").lower()
        except UnicodeDecodeError:
            return repr(key)[2:-1]
        if name.replace("-", "_") in _DECODED:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return name
    return None


async def send_json(send: Any, status: int, body: dict[str, Any],
                    headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    """A whole JSON answer through an ASGI ``send`` (used here and by the app's own guard)."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *headers]})
    await send({"type": "http.response.body", "body": payload})


class ProxyGuard:
    """Pure ASGI middleware around Ray Serve's proxy app (see the module docstring)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        bad = undecodable_header(scope.get("headers", []))
        if bad is not None:
            return await send_json(send, 400, {"detail": f"header {bad} is not valid UTF-8"})
        started = False

        async def watched(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:
                raise  # the answer is half sent: only closing the connection is left
            logger.exception("Serve's proxy failed before answering %s", scope.get("path"))
        if not started:
            # the proxy gave up without an answer: in practice the replica died mid-request
            await send_json(send, 503, {"detail": "the replica handling this request stopped before it "
                                                  "answered (it is being replaced); retry"},
                            ((b"retry-after", str(RETRY_AFTER_S).encode()),))
