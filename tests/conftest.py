"""Fixtures shared by all tests (helpers live in tests/support.py)."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite runs gRPC servers and clients inside the pytest process (tests/integration/
# test_otlp_grpc.py) and, later, replays that fork this same process. gRPC's fork support
# re-creates its threads in a forked child, and a multithreaded child cannot enter a user
# namespace (unshare: EINVAL): every replay after the gRPC tests failed. kprobe itself
# replays in a process of its own (the replay worker); the suite's process must not carry
# gRPC's fork handlers either. Set before anything imports grpc.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

# Ray keeps state across ray.init/ray.shutdown in one process. A local cluster started while
# RAY_AUTH_MODE is unset (kprobe's connect_ray(None), as test_compute_follow_ray does) makes
# Ray turn token authentication on for the whole process: it sets RAY_AUTH_MODE=token in
# os.environ and reloads its C++ config, and ray.shutdown undoes neither. A cluster started
# here later in another mode then has a GCS and a driver that disagree: the GCS's calls to
# the driver fail ("Missing authorization header" in the driver's log), the GCS takes the
# owner for dead, and every actor this process owns dies "cancelled before it started
# running" (test_replay_fuzz's Ray fuzz in full runs; tests/integration/
# test_ray_process_state.py). So one mode for the suite's process, set before anything
# imports ray, and no test may leave it (or the cluster address) changed.
#
# That mode is token authentication, Ray's default: a Ray GCS listens on every interface
# whatever its node address, so a cluster without auth is open to the network while the
# tests run. The token is the suite's own (a file only root reads, removed at exit), so the
# suite never writes ~/.ray/auth_token; every process it starts (`kprobe analyze
# --ray-address`, Ray's workers) inherits the mode and the token file.
_RAY_TOKEN_DIR = Path(tempfile.mkdtemp(prefix="kprobe-tests-ray-"))
_RAY_TOKEN = _RAY_TOKEN_DIR / "auth_token"
_RAY_TOKEN.touch(mode=0o600)
_RAY_TOKEN.write_text(secrets.token_hex(32))
atexit.register(shutil.rmtree, _RAY_TOKEN_DIR, ignore_errors=True)
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_RAY_TOKEN)
_RAY_SESSION_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


def _ray_session_env() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in _RAY_SESSION_ENV}


@pytest.fixture(autouse=True)
def _ray_session_env_unchanged() -> Iterator[None]:
    """Fails the test that leaves the environment of the next Ray session in this process
    changed (see above: its actors would die before they start)."""
    before = _ray_session_env()
    yield
    after = _ray_session_env()
    assert after == before, (
        f"this test changed the Ray environment of the suite's process: {before} -> {after} "
        f"(an in-process ray.init with RAY_AUTH_MODE unset does: set it first)")


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """An empty local lake directory."""
    path = tmp_path / "lake"
    path.mkdir()
    return path
