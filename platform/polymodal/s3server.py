"""An embedded S3 server (moto) for the demo and the tests.

It binds 127.0.0.1 only and accepts the dummy credentials from :meth:`EmbeddedS3.env`.
Objects live in this process's memory and vanish when it exits::

    with EmbeddedS3() as s3:
        os.environ.update(s3.env())
        storage.write_text("s3://polymodal/hello.txt", "hi")

moto keeps its buckets in module-level state, so every server in one process serves the
same objects, and a server stopped and started again on its port still has them: that is how
the fault tests take storage away in the middle of a read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

from polymodal.errors import StorageError, require

_HOST = "127.0.0.1"  # never 0.0.0.0: this server takes any credentials
_DUMMY_KEY = "testing"
_REGION = "us-east-1"


def _handler_class() -> type:
    MotoRequestHandler = require("moto.server", "demo", "the embedded S3 server").MotoRequestHandler

    class TrackedHandler(MotoRequestHandler):
        """moto's request handler that registers its connection with the server.

        Clients keep HTTP/1.1 connections open; :meth:`EmbeddedS3.stop` closes them so a
        stop looks to clients like a server process that went away, not just a closed port.
        """

        def setup(self) -> None:
            super().setup()
            with self.server.live_lock:
                self.server.live_connections.add(self.connection)

        def finish(self) -> None:
            with self.server.live_lock:
                self.server.live_connections.discard(self.connection)
            super().finish()

    return TrackedHandler


class EmbeddedS3:
    """Context manager running a moto S3 server on 127.0.0.1.

    Parameters
    ----------
    port
        TCP port; 0 lets the OS pick a free one (read it back from :attr:`endpoint_url`).
    buckets
        Buckets created on start; ones that already exist are kept.
    quiet
        Silence the per-request access log.
    """

    def __init__(self, port: int = 0, buckets: Iterable[str] = ("polymodal",), *, quiet: bool = True) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise StorageError(f"port must be an integer in 0..65535, got {port!r}")
        self.port = port
        self.buckets = tuple(buckets)
        self.quiet = quiet
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid after :meth:`start`."""
        if self._server is None:
            raise StorageError("EmbeddedS3 is not running; call start() or use it in a `with` block")
        return f"http://{_HOST}:{self.port}"

    def start(self) -> "EmbeddedS3":
        """Start the server (idempotent) and create the buckets.

        After a :meth:`stop` it starts again on the same port with the same objects.
        """
        if self._server is not None:
            return self
        moto_server = require("moto.server", "demo", "the embedded S3 server")
        DomainDispatcherApplication, create_backend_app = moto_server.DomainDispatcherApplication, \
            moto_server.create_backend_app
        from werkzeug.serving import ThreadedWSGIServer

        if self.quiet:
            # werkzeug logs every request at INFO to stderr; keep test and demo output readable.
            wz = logging.getLogger("werkzeug")
            if wz.level == logging.NOTSET:
                wz.setLevel(logging.WARNING)
        # Bound here, in the caller's thread: werkzeug's own bind calls sys.exit on a busy
        # port, and moto's ThreadedMotoServer then waits forever for a thread that died.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # As werkzeug does: a port freed by stop() is reusable at once, not after TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((_HOST, self.port))
            listener.listen(ThreadedWSGIServer.request_queue_size)
        except OSError as exc:
            listener.close()
            raise StorageError(
                f"cannot start the embedded S3 server on {_HOST}:{self.port}: {exc}; "
                "pick another port (--port) or 0 for any free one") from None
        port = listener.getsockname()[1]
        try:
            server = ThreadedWSGIServer(_HOST, port, DomainDispatcherApplication(create_backend_app),
                                        handler=_handler_class(), fd=listener.fileno())
        finally:
            listener.close()  # the server holds its own duplicate of the descriptor
        server.live_connections = set()
        server.live_lock = threading.Lock()
        thread = threading.Thread(target=server.serve_forever, name=f"embedded-s3-{port}", daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        self.port = int(port)
        try:
            self._create_buckets()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_buckets(self) -> None:
        import boto3
        from botocore.exceptions import ClientError

        client = boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=_REGION,
            aws_access_key_id=_DUMMY_KEY, aws_secret_access_key=_DUMMY_KEY)
        for bucket in self.buckets:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                # moto keeps state per process, so a second server sees earlier buckets.
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                     "BucketAlreadyExists"):
                    raise StorageError(f"cannot create bucket {bucket!r} on {self.endpoint_url}: {exc}") from exc

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3/s3fs/polymodal at this server."""
        url = self.endpoint_url
        return {
            "AWS_ACCESS_KEY_ID": _DUMMY_KEY,
            "AWS_SECRET_ACCESS_KEY": _DUMMY_KEY,
            "AWS_DEFAULT_REGION": _REGION,
            "POLYMODAL_S3_ENDPOINT_URL": url,
            "AWS_ENDPOINT_URL": url,
        }

    def stop(self) -> None:
        """Stop the server and drop its open client connections; safe to call twice.

        Objects stay in this process (see the module docstring); :meth:`start` serves them again.
        """
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()  # serve_forever returns and closes the listening socket
        if thread is not None:
            thread.join()
        with server.live_lock:
            live = list(server.live_connections)
        for conn in live:
            # A keep-alive connection would otherwise go on being served by its handler thread.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "EmbeddedS3":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_forever(port: int = 9000, buckets: Iterable[str] = ("polymodal",)) -> None:
    """Run an embedded S3 server until Ctrl-C (``polymodal s3 serve``).

    Prints ``export`` lines to paste into other shells so they use this server.
    """
    with EmbeddedS3(port=port, buckets=buckets) as s3:
        print(f"# embedded S3 on {s3.endpoint_url} (buckets: {', '.join(s3.buckets) or 'none'}); "
              "data lives in memory until Ctrl-C")
        for key, value in s3.env().items():
            print(f"export {key}={value}")
        sys.stdout.flush()
        stop = threading.Event()
        try:
            # Short waits keep the main thread responsive to SIGINT.
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            print("# stopping embedded S3", file=sys.stderr)
