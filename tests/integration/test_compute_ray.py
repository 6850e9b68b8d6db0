"""`kprobe analyze` on a real Ray cluster gives what it gives in-process, on real captured data.

One small local Ray cluster for the module (2 CPUs, no dashboard, a small object store, its
temporary directory under the test's). The data is real: the agent records the lock
scenario's service (a thread holding the ledger lock makes payments miss their deadline)
for several seconds, and the range is cut into 2 s windows. The same lake, copied, is
analysed by ``kprobe analyze --executor local`` and by ``kprobe analyze --executor ray``
joining the module's cluster; the window summaries, the ``causal_edges`` rows and the
explanation of a failed payment must agree.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kprobe.compute.explain import explain
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, connect, resolve
from tests.e2e.scenarios.harness import ScenarioRun, kprobe, record
from tests.support import require, require_root

_SUMMARY_KEYS = ("window", "owned_spans", "spans", "synthetic_spans", "spans_on_threads",
                 "failures", "cause_edges", "episodes", "root_causes", "domain_events")


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray cluster for this module; its GCS address for `kprobe analyze`."""
    require(importlib.util.find_spec("ray") is not None, "ray (pip install ray)")
    import ray

    temp = tmp_path_factory.mktemp("ray")  # token auth: the suite's mode (tests/conftest.py)
    context = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20,
                       _temp_dir=str(temp), log_to_driver=False, configure_logging=False,
                       _node_ip_address="127.0.0.1")
    try:
        yield str(context.address_info["gcs_address"])  # type: ignore[attr-defined]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> ScenarioRun:
    """Several seconds of a real service under the real agent, with real failures."""
    require_root()
    return record(tmp_path_factory.mktemp("recorded"), "lock", "--ops", "40",
                  "--deadline-ms", "50", "--interval-ms", "150")


def _analyze(lake: Path, run: ScenarioRun, *extra: str) -> dict[str, Any]:
    start = min(op.start_ns for op in run.truth.operations)
    end = max(op.end_ns for op in run.truth.operations)
    proc = kprobe("analyze", "--lake", str(lake), f"--from={start}", f"--to={end}",
                  "--window", "2s", "--format", "json", *extra)
    return dict(json.loads(proc.stdout))


def _edges(lake: Path) -> list[tuple[Any, ...]]:
    con = connect(resolve(LakeSettings(lake=str(lake))))
    return [tuple(r) for r in con.execute(
        "SELECT \"window\", src, dst, kind, delay_ns, evidence FROM causal_edges "
        "ORDER BY ALL").fetchall()]


def _root_cause(lake: Path, payment_id: str) -> dict[str, Any]:
    (result,) = explain(resolve(LakeSettings(lake=str(lake))), payment_id, ComputeSettings())
    root = result.root_cause.model_dump() if result.root_cause else {}
    return {k: root.get(k) for k in ("kind", "target", "delay_ns", "sufficient")}


def test_ray_analysis_of_several_windows_matches_in_process(
        recorded: ScenarioRun, ray_address: str, tmp_path: Path) -> None:
    """GIVEN real captured data spanning several 2 s windows
    WHEN it is analysed in-process and as Ray tasks on the module's cluster
    THEN every window's summary, every causal edge and the root causes are the same."""
    local_lake, ray_lake = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(recorded.lake, local_lake)
    shutil.copytree(recorded.lake, ray_lake)

    local = _analyze(local_lake, recorded, "--executor", "local")
    distributed = _analyze(ray_lake, recorded, "--executor", "ray", "--ray-address",
                           ray_address)

    print(f"{len(local['windows'])} windows, {local['edges_written']} edges, "
          f"{sum(w['failures'] for w in local['windows'])} failures")
    assert len(local["windows"]) >= 3  # several windows, each a Ray task
    assert [{k: w[k] for k in _SUMMARY_KEYS} for w in distributed["windows"]] == \
        [{k: w[k] for k in _SUMMARY_KEYS} for w in local["windows"]]
    assert sum(w["failures"] for w in local["windows"]) >= 1  # real results, not empty ones
    assert distributed["edges_written"] == local["edges_written"] > 0
    assert _edges(ray_lake) == _edges(local_lake)
    for op in recorded.truth.missed()[:3]:
        assert _root_cause(ray_lake, op.payment_id) == _root_cause(local_lake, op.payment_id)


def test_ray_reanalysis_replaces_the_windows_edges(
        recorded: ScenarioRun, ray_address: str, tmp_path: Path) -> None:
    """Analysing the same range twice on Ray leaves one copy of each window's edges."""
    lake = tmp_path / "lake"
    shutil.copytree(recorded.lake, lake)
    first = _analyze(lake, recorded, "--executor", "ray", "--ray-address", ray_address)
    edges = _edges(lake)
    second = _analyze(lake, recorded, "--executor", "ray", "--ray-address", ray_address)
    assert second["edges_written"] == first["edges_written"] == len(edges)
    assert _edges(lake) == edges
