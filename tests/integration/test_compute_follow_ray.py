"""``kprobe analyze --follow --executor ray``: windows that close together run as Ray tasks
on one local cluster kept across polls (real Ray)."""

from __future__ import annotations

from pathlib import Path

from kprobe.compute.explain import explain
from kprobe.compute.follow import Follower, FollowOptions
from kprobe.compute.ray_driver import start_ray
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, resolve
from tests.support import require
from tests.unit.test_compute_follow import W0, S, marker
from tests.unit.test_compute_scenario import T0, payment_scenario


def test_windows_closing_together_run_on_one_ray_cluster(lake_dir: Path) -> None:
    import importlib.util

    require(importlib.util.find_spec("ray") is not None, "ray (pip install kprobe[ray])")
    import ray
    payment_scenario().write(lake_dir)
    marker(lake_dir, "n1", T0 + 65 * S)  # two windows closed at once
    settings = ComputeSettings(ray_num_cpus=2)
    follower = Follower(resolve(LakeSettings(lake=str(lake_dir))), settings,
                        FollowOptions(start_ns=W0 - 60 * S, window_ns=60 * S,
                                      executor="ray"))
    assert start_ray(settings) is True
    try:
        assert start_ray(settings) is False  # already up: kept, not started again
        outputs = follower.step(T0 + 90 * S)
        assert [o.window.start_ns for o in outputs] == [W0 - 60 * S, W0]
        assert ray.is_initialized()  # the follower's cluster outlives the poll
        assert explain(follower.location, "98721", settings)
        assert follower.step(T0 + 90 * S) == []
    finally:
        ray.shutdown()
