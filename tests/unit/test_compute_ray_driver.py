"""The Ray driver's decisions, without starting Ray (the cluster test is an integration test)."""

from __future__ import annotations

import pytest

from compute.errors import DistributedError
from compute.ray_driver import _check_reachable, _init_kwargs
from compute.settings import ComputeSettings
from tests.support import free_port


def test_local_cluster_is_sized_but_a_joined_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local = _init_kwargs(ComputeSettings(ray_num_cpus=2, ray_object_store_mb=100))
    assert local["address"] is None and local["num_cpus"] == 2
    assert local["object_store_memory"] == 100 << 20 and local["include_dashboard"] is False
    joined = _init_kwargs(ComputeSettings(ray_address="10.0.0.5:6379", ray_num_cpus=2))
    assert joined["address"] == "10.0.0.5:6379" and "num_cpus" not in joined
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "num_cpus" not in _init_kwargs(ComputeSettings(ray_num_cpus=2))


def test_unreachable_address_fails_fast() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(DistributedError, match=f"cannot reach Ray at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}", timeout_s=1)
    _check_reachable("auto")  # not an address to probe: left to Ray
    _check_reachable(None)
