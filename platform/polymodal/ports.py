"""Local TCP ports for the servers polymodal starts on 127.0.0.1 (Ray's heads in tests, the demo's
Serve proxy, a process group's rendezvous)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may take it before the
    caller binds it; callers that can, retry)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
