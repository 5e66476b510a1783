"""An embedded S3 server (moto) for the demo and the tests.

It binds 127.0.0.1 only and accepts the dummy credentials from :meth:`EmbeddedS3.env`.
Objects live in this process's memory and vanish when it exits::

    with EmbeddedS3() as s3:
        os.environ.update(s3.env())
        storage.write_text("s3://polymodal/hello.txt", "hi")
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any

from polymodal.errors import StorageError

_HOST = "127.0.0.1"  # never 0.0.0.0: this server takes any credentials
_DUMMY_KEY = "testing"
_REGION = "us-east-1"


def _check_port_free(port: int) -> None:
    # moto's server thread dies silently when bind fails and start() then waits forever,
    # so probe the port first and fail loudly instead.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError as exc:
            raise StorageError(
                f"cannot start the embedded S3 server on {_HOST}:{port}: {exc}; "
                "pick another port (--port) or 0 for any free one") from None


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

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``; only valid after :meth:`start`."""
        if self._server is None:
            raise StorageError("EmbeddedS3 is not running; call start() or use it in a `with` block")
        return f"http://{_HOST}:{self.port}"

    def start(self) -> "EmbeddedS3":
        """Start the server (idempotent) and create the buckets."""
        if self._server is not None:
            return self
        from moto.server import ThreadedMotoServer

        if self.port:
            _check_port_free(self.port)
        # Port 0 goes straight to the server's own bind, which avoids the probe-then-bind race.
        if self.quiet:
            # werkzeug logs every request at INFO to stderr; keep test and demo output readable.
            wz = logging.getLogger("werkzeug")
            if wz.level == logging.NOTSET:
                wz.setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address=_HOST, port=self.port, verbose=False)
        server.start()
        self._server = server
        self.port = int(server.get_host_and_port()[1])
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
        """Stop the server; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

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
