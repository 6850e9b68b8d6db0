"""On-demand analysis (query_api/ondemand.py): the decision (analysed / unanalysed / stale),
admission, single flight and the time bound on synthetic windows, then the explain route
over the payment scenario written to a lake nobody analysed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kprobe.compute.graph.store import SnapshotInfo
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.compute.window_lock import is_busy, window_lock
from kprobe.lake import LakeSettings, resolve
from kprobe.query_api import create_app
from kprobe.query_api.auth import add_token
from kprobe.query_api.errors import AnalysisRunning, Overloaded
from kprobe.query_api.ondemand import OnDemand, freshness, needs_recheck, visible, window_for
from kprobe.query_api.settings import ApiSettings
from tests.support import deadline_s
from tests.unit.test_compute_scenario import NODE, T0, Scenario, payment_scenario
from tests.unit.test_query_api_http import assert_problem

S = 1_000_000_000
W = Window(T0, T0 + 60 * S)


def _snap(window: Window, created_ns: int, owned: int | None = None) -> SnapshotInfo:
    manifest: dict[str, Any] = {"created_ns": created_ns}
    if owned is not None:
        manifest["inputs"] = {"owned_spans": owned}
    return SnapshotInfo(window, f"file:///lake/graphs/{window.id}", manifest)


# -- the decision ----------------------------------------------------------------------------
def test_unanalysed_fresh_and_stale() -> None:
    assert freshness(None, 5) == "unanalysed"
    assert freshness(_snap(W, W.end_ns + S, owned=5), 5) == "fresh"
    assert freshness(_snap(W, W.end_ns + S, owned=5), 6) == "stale"  # a span arrived since
    assert freshness(_snap(W, W.end_ns + S, owned=5), 4) == "stale"  # rows went (retention)
    assert freshness(_snap(W, W.end_ns + S, owned=5), None) == "fresh"  # not counted
    assert freshness(_snap(W, W.end_ns + S), 9) == "fresh"  # an old manifest: no count


def test_only_snapshots_made_soon_after_their_window_are_counted_again() -> None:
    assert needs_recheck(_snap(W, W.end_ns + 10 * S), recheck_s=900)
    assert not needs_recheck(_snap(W, W.end_ns + 901 * S), recheck_s=900)


def test_a_node_scoped_caller_sees_only_windows_of_its_nodes() -> None:
    every = _snap(W, 0)
    mine = _snap(Window(W.start_ns, W.end_ns, ("a",)), 0)
    both = _snap(Window(W.start_ns, W.end_ns, ("a", "b")), 0)
    other = _snap(Window(W.start_ns, W.end_ns, ("b",)), 0)
    snaps = [every, mine, both, other]
    assert visible(snaps, None) == snaps
    # the all-nodes window holds b's rows: never shown to a token limited to a
    assert visible(snaps, ("a",)) == [mine]
    assert visible(snaps, ("a", "b")) == [mine, both, other]


def test_the_window_of_a_trace() -> None:
    ten_min = Window(T0 - 300 * S, T0 + 300 * S)
    snaps = [_snap(ten_min, 0)]
    # an existing snapshot holding the trace's start is re-analysed as it is
    assert window_for(T0 + 5 * S, NODE, None, snaps, 60 * S) == ten_min
    # else the aligned window of kprobe analyze's length, of the caller's nodes
    assert window_for(T0 + 5 * S, NODE, None, [], 60 * S) == W
    scoped = window_for(T0 + 5 * S, NODE, ("n1",), snaps, 60 * S)
    assert scoped == Window(T0, T0 + 60 * S, ("n1",)) and scoped.id.endswith("@n1")


# -- bounds ----------------------------------------------------------------------------------
class _Analyses:
    """A stand-in analysis that runs until released and counts its runs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, window: Window, proceed: Callable[[], bool]) -> None:
        if not proceed():
            return
        with self.lock:
            self.started.append(window.id)
        assert self.release.wait(30)


def _never(window: Window, ns: int) -> bool:
    """published_since: no other process publishes these windows."""
    return False


def _ensure_in_thread(od: OnDemand, window: Window, wait_s: float = 30
                      ) -> tuple[threading.Thread, list[BaseException | None]]:
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            od.ensure(window, wait_s)
            result.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            result.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + deadline_s(10)
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_one_analysis_per_window_however_many_ask() -> None:
    analyses = _Analyses()
    outcomes: list[str] = []
    od = OnDemand(analyses, lambda w: False, _never, max_concurrent=2, timeout_s=30,
                  count=outcomes.append)
    threads = [_ensure_in_thread(od, W) for _ in range(5)]
    _until(lambda: len(outcomes) == 5, "five requests seen")
    analyses.release.set()
    for thread, result in threads:
        thread.join(deadline_s(10))
        assert result == [None]
    assert analyses.started == [W.id]  # one analysis served the five
    assert sorted(outcomes) == ["joined"] * 4 + ["started"]
    od.close()


def test_past_capacity_is_refused_with_retry_after() -> None:
    analyses = _Analyses()
    od = OnDemand(analyses, lambda w: False, _never, max_concurrent=1, timeout_s=30)
    first, result = _ensure_in_thread(od, W)
    _until(lambda: analyses.started, "the first analysis started")
    other = Window(W.end_ns, W.end_ns + 60 * S)
    with pytest.raises(Overloaded) as refused:
        od.ensure(other, 1)
    assert int(refused.value.headers["Retry-After"]) >= 1
    analyses.release.set()
    first.join(deadline_s(10))
    assert result == [None] and analyses.started == [W.id]  # the refused one never ran
    od.ensure(other, 5)  # capacity is back
    assert analyses.started == [W.id, other.id]
    od.close()


def test_past_the_time_bound_it_answers_running_and_finishes_in_the_background() -> None:
    analyses = _Analyses()
    od = OnDemand(analyses, lambda w: False, _never, max_concurrent=1, timeout_s=0.2)
    with pytest.raises(AnalysisRunning) as running:
        od.ensure(W)
    assert f"analysis of window {W.id} is running; retry after" in str(running.value)
    assert int(running.value.headers["Retry-After"]) >= 1
    assert od.running == [W.id]  # still going
    analyses.release.set()
    _until(lambda: od.running == [], "the background analysis finished")
    assert analyses.started == [W.id] and od.last_seconds is not None
    od.close()


def test_a_window_another_process_analyses_is_not_analysed_again(tmp_path: Path) -> None:
    location = resolve(LakeSettings(lake=str(tmp_path / "lake")))
    settings = ComputeSettings(graph_cache_dir=tmp_path / "cache")
    analyses = _Analyses()
    analyses.release.set()
    outcomes: list[str] = []
    probes: list[bool] = []

    def busy(window: Window) -> bool:
        probes.append(is_busy(location, window, settings))
        return probes[-1]

    od = OnDemand(analyses, busy, _never, max_concurrent=1, timeout_s=5, count=outcomes.append)
    # GIVEN another holder of the window's lock (an flock on its own open file: the same
    # as another process)
    with window_lock(location, W, settings):
        assert is_busy(location, W, settings)
        with pytest.raises(AnalysisRunning, match="running in another process"):
            od.ensure(W, 0.5)  # it is still running at the bound
    assert analyses.started == []
    assert not is_busy(location, W, settings)  # released with its holder
    # a request that arrives while the other process analyses waits for it, and does not
    # analyse the window again once it is done
    release = threading.Event()

    def other_process() -> None:
        with window_lock(location, W, settings):
            holding.set()
            release.wait(30)

    holding = threading.Event()
    holder = threading.Thread(target=other_process)
    holder.start()
    assert holding.wait(deadline_s(10))
    probes.clear()
    waiter, result = _ensure_in_thread(od, W, 30)
    _until(lambda: True in probes, "the request found it busy")
    release.set()
    waiter.join(deadline_s(10))
    holder.join(deadline_s(10))
    assert result == [None] and analyses.started == [] and outcomes[-1] == "waited"
    od.ensure(W)  # nobody holds it now: analysed here
    assert analyses.started == [W.id]
    od.close()


def test_a_request_that_raced_another_process_to_the_window_does_not_analyse_it_again(
        tmp_path: Path) -> None:
    location = resolve(LakeSettings(lake=str(tmp_path / "lake")))
    settings = ComputeSettings(graph_cache_dir=tmp_path / "cache")
    published: list[tuple[str, int]] = []  # (window id, created_ns) of the lake's snapshots
    ran: list[str] = []
    outcomes: list[str] = []

    def analyse(window: Window, proceed: Callable[[], bool]) -> None:
        # the shape of the API's analysis (compute.analysis.run_window_if): asked under
        # the window's lock
        with window_lock(location, window, settings):
            if proceed():
                ran.append(window.id)

    # GIVEN a request whose probe of the lock came just before another process took it
    od = OnDemand(analyse, lambda w: False,
                  lambda w, ns: any(i == w.id and t >= ns for i, t in published),
                  max_concurrent=1, timeout_s=30, count=outcomes.append)
    holding, release = threading.Event(), threading.Event()

    def other_process() -> None:
        with window_lock(location, W, settings):
            holding.set()
            assert release.wait(30)
            published.append((W.id, time.time_ns()))  # its snapshot, before it lets go

    holder = threading.Thread(target=other_process)
    holder.start()
    assert holding.wait(deadline_s(10))
    waiter, result = _ensure_in_thread(od, W, 30)
    _until(lambda: od.running == [W.id], "the request's analysis waits for the lock")
    release.set()
    waiter.join(deadline_s(10))
    holder.join(deadline_s(10))
    # THEN it is answered by the other process's analysis: not analysed a second time
    assert result == [None] and ran == [] and outcomes == ["waited"]
    # control: a snapshot published before a request asked does not stop its analysis
    od.ensure(W)
    assert ran == [W.id] and outcomes[-1] == "started"
    od.close()


# -- the route over a lake nobody analysed -----------------------------------------------------
@pytest.fixture(name="unanalysed")
def unanalysed_fixture(lake_dir: Path, tmp_path: Path) -> dict[str, Any]:
    payment_scenario().write(lake_dir)  # payment 98721 times out under memcg reclaim
    path = tmp_path / "tokens.json"
    return {"path": path, "lake": lake_dir,
            "reader": add_token(path, "reader", ["read"]),
            "mine": add_token(path, "mine", ["read"], nodes=[NODE]),
            "other": add_token(path, "other", ["read"], nodes=["elsewhere"])}


def _client(unanalysed: dict[str, Any], tmp_path: Path, token: str, **overrides: Any
            ) -> TestClient:
    settings = ApiSettings(tokens_file=unanalysed["path"], allowed_hosts=["localhost"],
                           **overrides)
    app = create_app(settings, LakeSettings(lake=str(unanalysed["lake"]), node="n1"),
                     ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
    client = TestClient(app, base_url="http://localhost", client=("127.0.0.1", 50000),
                        raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {unanalysed[token]}"
    return client


def _started(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('kprobe_api_ondemand_analyses_total{outcome="started"}'):
            return float(line.split()[-1])
    return 0.0


RANGE = {"from": str(T0 - 120 * S), "to": str(T0 + 120 * S)}


def test_the_first_request_analyses_the_window_the_next_reuse_it(
        unanalysed: dict[str, Any], tmp_path: Path) -> None:
    graphs = unanalysed["lake"] / "graphs"
    assert not graphs.exists()
    with _client(unanalysed, tmp_path, "reader") as client:
        first = client.get("/v1/transactions/98721/explain", params=RANGE)
        assert first.status_code == 200, first.text
        [txn] = first.json()["transactions"]
        # the payment starts 750 ms before T0: the aligned minute before T0 owns it
        assert txn["failed"] and txn["window"] == Window(T0 - 60 * S, T0).id
        assert "memory pressure" in json.dumps(txn)
        assert (graphs / txn["window"] / "manifest.json").is_file()
        assert _started(client) == 1
        assert client.get("/v1/transactions/98721/explain", params=RANGE).json() == first.json()
        assert _started(client) == 1  # answered from the snapshot
        # the trace id and a span id find the same window without analysing it again
        trace = txn["trace_id"]
        assert client.get(f"/v1/transactions/{trace}/explain").status_code == 200
        assert _started(client) == 1
    # GIVEN a span that arrived for the window after its analysis
    late = Scenario()
    late.span("late", "late", None, "payment-handler", "POST /payments", -20_000, -19_990,
              pid=100, tid=101, kind="SERVER", attrs={"payment.id": "70001"})
    late.write(unanalysed["lake"])
    # (the scenario's window closed months before its analysis, which the default
    # analyze_recheck_s takes as final: count it again anyway)
    with _client(unanalysed, tmp_path, "reader", analyze_recheck_s=10**9) as client:
        assert client.get("/v1/transactions/98721/explain", params=RANGE).status_code == 200
        assert _started(client) == 1  # stale: analysed again
        assert client.get("/v1/transactions/70001/explain", params=RANGE).status_code == 200
        assert _started(client) == 1  # and the late payment is in it


def test_node_scope_applies_to_what_is_analysed_and_returned(
        unanalysed: dict[str, Any], tmp_path: Path) -> None:
    with _client(unanalysed, tmp_path, "other") as client:
        assert_problem(client.get("/v1/transactions/98721/explain", params=RANGE), 404,
                       "graph-not-found")
        assert _started(client) == 0  # nothing of node elsewhere names it: nothing analysed
        assert_problem(client.post("/v1/sql", json={"sql": "SELECT 1"}), 403,
                       "insufficient-scope", "limited to nodes")
        assert_problem(client.get("/v1/transactions"), 403, "insufficient-scope")
        assert client.get("/v1/whoami").json()["nodes"] == ["elsewhere"]
    with _client(unanalysed, tmp_path, "mine") as client:
        answer = client.get("/v1/transactions/98721/explain", params=RANGE)
        assert answer.status_code == 200, answer.text
        assert answer.json()["transactions"][0]["window"].endswith(f"@{NODE}")
    with _client(unanalysed, tmp_path, "reader") as client:
        # an unscoped reader may read every window: the node's answers it
        answer = client.get("/v1/transactions/98721/explain", params=RANGE)
        assert answer.json()["transactions"][0]["window"].endswith(f"@{NODE}")
        assert _started(client) == 0
    with _client(unanalysed, tmp_path, "other") as client:
        # a snapshot now holds the payment, but it is not a window of node elsewhere
        assert_problem(client.get("/v1/transactions/98721/explain", params=RANGE), 404,
                       "transaction-not-found")


def test_unknown_and_disabled(unanalysed: dict[str, Any], tmp_path: Path) -> None:
    with _client(unanalysed, tmp_path, "reader") as client:
        assert_problem(client.get("/v1/transactions/NOPE-1/explain", params=RANGE), 404,
                       "graph-not-found")
        assert _started(client) == 0
    with _client(unanalysed, tmp_path, "reader", analyze_on_demand=False) as client:
        assert_problem(client.get("/v1/transactions/98721/explain", params=RANGE), 404,
                       "graph-not-found")
        assert _started(client) == 0


def test_the_lock_stays_exclusive_when_its_file_is_removed_on_release(tmp_path: Path) -> None:
    location = resolve(LakeSettings(lake=str(tmp_path / "lake")))
    settings = ComputeSettings(graph_cache_dir=tmp_path / "cache")
    acquired, done = threading.Event(), threading.Event()

    def second() -> None:
        with window_lock(location, W, settings):  # waits for the first holder
            acquired.set()
            assert done.wait(30)

    with window_lock(location, W, settings):
        waiter = threading.Thread(target=second)
        waiter.start()
        _until(lambda: waiter.is_alive(), "the second holder waits")
        assert not acquired.is_set()
    assert acquired.wait(deadline_s(10))
    # the second holder holds the lock at the path, not the removed file it first opened
    assert is_busy(location, W, settings)
    done.set()
    waiter.join(deadline_s(10))
    assert not is_busy(location, W, settings)
    assert not list((tmp_path / "lake" / "graphs" / ".locks").iterdir())
