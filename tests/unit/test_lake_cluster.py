"""Joining or starting Ray (lake/cluster.py), without starting Ray (the cluster tests are
integration tests): a cluster of our own is sized and on loopback, a joined one is not;
an address nobody answers on fails fast, in one line; every caller goes through it."""

from __future__ import annotations

import ast
import inspect
import sys

import pytest

from kprobe.compute import ray_driver
from kprobe.lake import ClusterUnavailable, cluster
from kprobe.lake.cluster import (
    check_reachable,
    connect_ray,
    init_kwargs,
    ray_address,
    unauthenticated_refusal,
)
from kprobe.query_api import replays
from kprobe.replay_sandbox import fuzz_pool
from tests.support import free_port


def test_local_cluster_is_sized_but_a_joined_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = init_kwargs(ray_address(None), num_cpus=2, object_store_bytes=100 << 20)
    assert local["address"] is None and local["num_cpus"] == 2
    assert local["object_store_memory"] == 100 << 20 and local["include_dashboard"] is False
    assert local["_node_ip_address"] == "127.0.0.1"
    joined = init_kwargs(ray_address("10.0.0.5:6379"), num_cpus=2)
    assert joined["address"] == "10.0.0.5:6379" and "num_cpus" not in joined
    assert "_node_ip_address" not in joined
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == "10.0.0.5:6379"
    assert "num_cpus" not in init_kwargs(ray_address(None), num_cpus=2)


def test_unreachable_address_fails_fast() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(ClusterUnavailable, match=f"cannot reach Ray at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=1)
    with pytest.raises(ClusterUnavailable, match="cannot reach Ray"):
        check_reachable(f"ray://127.0.0.1:{port}", timeout_s=1)
    check_reachable("auto")  # not an address to probe: left to Ray
    check_reachable(None)


@pytest.mark.parametrize("module", [ray_driver, fuzz_pool, replays])
def test_nobody_else_calls_ray_init(module: object) -> None:
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "init"
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "ray"]
    assert not calls


def test_a_cluster_of_our_own_without_auth_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """RAY_AUTH_MODE=disabled would open a cluster of our own to anyone who reaches its
    ports: kprobe refuses to start it, in one line, before Ray is asked; Ray's default
    (unset, token) and joining someone's cluster are not refused."""
    monkeypatch.setenv("RAY_AUTH_MODE", "Disabled")
    assert "without authentication" in (unauthenticated_refusal(None) or "")
    assert "without authentication" in (unauthenticated_refusal("local") or "")
    assert unauthenticated_refusal("10.0.0.5:6379") is None
    monkeypatch.setattr(cluster, "check_reachable", lambda where: None)
    imported = "ray" in sys.modules
    with pytest.raises(ClusterUnavailable, match="^RAY_AUTH_MODE=disabled: kprobe does not"):
        connect_ray(None, num_cpus=1)
    # refused before Ray was imported: its import fixes the auth mode for the whole process
    # (imported here with the mode disabled, every later token cluster of it fails)
    assert ("ray" in sys.modules) == imported
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert unauthenticated_refusal(None) is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert unauthenticated_refusal(None) is None
