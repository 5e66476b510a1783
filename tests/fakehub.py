"""A stand-in for the Hugging Face hub on 127.0.0.1, so a test can show that a hub id downloads
(into the standard cache, as on a machine with internet) without touching the network.

It answers the few routes ``huggingface_hub`` uses to fetch a public model: the revision info
(``/api/models/<id>/revision/<rev>``), the file tree (``/api/models/<id>/tree/<rev>``) and the files
themselves (``/<id>/resolve/<rev>/<file>``, HEAD and GET, with the commit and ETag headers the real
hub sends). Each repo is a local folder; every request is logged for the test to inspect.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, str | Path], commit: str = "0123456789abcdef0123456789abcdef01234567"):
        self.repos = {rid: Path(p) for rid, p in repos.items()}
        self.commit = commit
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                      head: bool = False) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj) -> None:
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

            def _missing(self, head: bool = False) -> None:
                self._send(404, b'{"error": "Repository not found"}',
                           {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)

            def _route(self, head: bool) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo = "/".join(parts[2:4])
                    if repo not in hub.repos:
                        return self._missing()
                    if parts[4] == "revision":
                        return self._json({"id": repo, "sha": hub.commit,
                                           "siblings": [{"rfilename": f} for f in hub._files(repo)]})
                    if parts[4] == "tree":
                        root = hub.repos[repo]
                        return self._json([{"type": "file", "path": f, "size": (root / f).stat().st_size,
                                            "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()}
                                           for f in hub._files(repo)])
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, rel = "/".join(parts[:2]), "/".join(parts[4:])
                    if repo not in hub.repos:
                        return self._missing(head)
                    file = hub.repos[repo] / rel
                    if not file.is_file():
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    data = file.read_bytes()
                    return self._send(200, data, {"X-Repo-Commit": hub.commit,
                                                  "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}, head)
                return self._missing(head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler
