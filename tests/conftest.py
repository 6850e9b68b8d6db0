"""Fixtures shared by all tests (helpers live in tests/support.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite runs gRPC servers and clients inside the pytest process (tests/integration/
# test_otlp_grpc.py) and, later, replays that fork this same process. gRPC's fork support
# re-creates its threads in a forked child, and a multithreaded child cannot enter a user
# namespace (unshare: EINVAL): every replay after the gRPC tests failed. kprobe itself
# replays in a process of its own (the replay worker); the suite's process must not carry
# gRPC's fork handlers either. Set before anything imports grpc.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """An empty local lake directory."""
    path = tmp_path / "lake"
    path.mkdir()
    return path
