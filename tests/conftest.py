"""Shared fixtures: an embedded S3 server for the whole session, fresh prefixes per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from polymodal import storage
from polymodal.s3server import EmbeddedS3


@pytest.fixture(scope="session")
def s3_server() -> Iterator[EmbeddedS3]:
    """One moto S3 server on 127.0.0.1 with bucket ``polymodal``; its env is exported
    into ``os.environ`` for the session (so Ray workers started later inherit it)."""
    server = EmbeddedS3(port=0, buckets=("polymodal",)).start()
    env = server.env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    storage.clear_fs_cache()  # filesystems built before this point saw other settings
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        storage.clear_fs_cache()
        server.stop()


@pytest.fixture
def s3_bucket_uri(s3_server: EmbeddedS3) -> str:
    """A prefix no other test uses: ``s3://polymodal/test-<uuid>``."""
    return f"s3://polymodal/test-{uuid.uuid4().hex}"
