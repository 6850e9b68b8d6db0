"""Graph snapshots in LadybugDB: bulk load, publish under the lake, named queries, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kprobe.cli import main
from kprobe.compute.analysis import run_window, write_edges
from kprobe.compute.errors import GraphNotFound, QueryNotFound
from kprobe.compute.graph import list_snapshots, open_snapshot, select_snapshots
from kprobe.compute.graph.queries import run_cypher, run_named
from kprobe.compute.ray_driver import analyze_windows
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeLocation, LakeSettings, resolve
from kprobe.lake.query import run_query
from tests.unit.test_compute_causes import _lock_scenario
from tests.unit.test_compute_scenario import (
    WINDOW_END,
    WINDOW_START,
    key,
    payment_scenario,
)

WINDOW = Window(WINDOW_START, WINDOW_END)


@pytest.fixture
def location(lake_dir: Path) -> LakeLocation:
    sc = payment_scenario()
    for pid, comm in ((200, "ledger-api"), (300, "ledger-writer"), (4800, "nightly-report")):
        sc.process(pid, comm, cgroup_id=9 if pid != 200 else 5)
    # both scenarios in one window: two traces, two episodes
    lock = _lock_scenario()
    sc.rows["sched"] += lock.rows["sched"]
    for table in ("offcpu", "mem", "spans"):
        sc.rows[table] += lock.rows[table]
    sc.runs += lock.runs
    sc.write(lake_dir)
    return resolve(LakeSettings(lake=str(lake_dir)))


def test_snapshot_published_and_queried(location: LakeLocation) -> None:
    settings = ComputeSettings()
    # WHEN the window is analysed (in-process: one window)
    outputs, written = analyze_windows(location, [WINDOW], settings)
    assert written == outputs[0].edges.num_rows > 0
    # THEN its snapshot is under {lake}/graphs/{window}/ with a manifest
    [snap] = list_snapshots(location)
    assert snap.window == WINDOW and snap.uri == outputs[0].graph_uri
    directory = location.local_path / "graphs" / WINDOW.id
    assert sorted(p.name for p in directory.iterdir()) == ["graph.lbug", "manifest.json"]
    assert snap.manifest["counts"]["Span"] >= 5 and snap.manifest["counts"]["CAUSED_BY"] >= 3
    snaps = [snap]
    # AND the named queries answer from it
    root = run_named(location, snaps, "root-cause", ["98721"], settings).to_pylist()
    assert (root[0]["rank"], root[0]["cause"], root[0]["target_label"]) == (
        1, "memory_pressure", "KernelEpisode")
    episode = root[0]["target"]
    delayed = run_named(location, snaps, "delayed-by", ["mem:n1:9"], settings).to_pylist()
    # the ledger write through the lock holder, and the holder's own flush span
    assert [(d["trace_id"][:2], d["txn"], d["failed"]) for d in delayed] == [
        ("t3", "L-7", True), ("t4", None, False)]
    delayed = run_named(location, snaps, "delayed-by", [episode], settings).to_pylist()
    assert [d["txn"] for d in delayed] == ["98721"]
    blast = run_named(location, snaps, "blast-radius", ["4721"], settings).to_pylist()
    assert {(b["via"], b["span"]) for b in blast} == {
        ("episode", "POST /payments"), ("episode", "settlement.write")}
    blast = run_named(location, snaps, "blast-radius", ["300", "n1"], settings).to_pylist()
    assert {(b["via"], b["cause"], b["txn"]) for b in blast} >= {
        ("thread", "lock_wait", "L-7"), ("holder", "holder", "L-7")}
    failures = run_named(location, snaps, "failures", [], settings).to_pylist()
    assert {f["txn"] for f in failures} == {"98721", "L-7"}
    # AND the snapshot is read-only for everyone
    with pytest.raises(QueryNotFound, match="read-only"):
        run_cypher(location, snaps, "MATCH (s:Span) SET s.failed = false", {}, settings)
    with open_snapshot(location, snap, settings) as reader:
        assert reader.rows("MATCH (s:Span {id: $id}) RETURN s.concept AS c",
                           {"id": key("a")}) == [{"c": "Payment"}]


def test_reanalysis_replaces_edges_and_snapshot(location: LakeLocation) -> None:
    settings = ComputeSettings()
    first = run_window(location, WINDOW, settings)
    write_edges(location, [first])
    second = run_window(location, WINDOW, settings)
    write_edges(location, [second])
    rows = run_query(location, 'SELECT count(*) AS n, count(DISTINCT "window") AS w '
                               "FROM causal_edges").table.to_pylist()
    assert rows == [{"n": second.edges.num_rows, "w": 1}]
    kinds = run_query(location, "SELECT kind, delay_ns, node FROM causal_edges "
                                "WHERE kind = 'memory_driver' ORDER BY delay_ns DESC"
                      ).table.to_pylist()
    assert kinds[0]["node"] == "all" and kinds[0]["delay_ns"] > 0
    assert len(list_snapshots(location)) == 1
    assert not [p for p in (location.local_path / "graphs").iterdir()
                if p.name.startswith(".") and p.name != ".locks"]
    assert not list((location.local_path / "graphs" / ".locks").iterdir())  # none left


def test_select_snapshots_errors(location: LakeLocation) -> None:
    with pytest.raises(GraphNotFound, match="run kprobe analyze"):
        select_snapshots(location)
    run_window(location, WINDOW, ComputeSettings())
    with pytest.raises(GraphNotFound, match="20260101T000000Z_60s"):
        select_snapshots(location, window_ids=["20260101T000000Z_60s"])
    assert select_snapshots(location, start_ns=WINDOW_START, end_ns=WINDOW_END)


def test_cli_analyze_and_graph(location: LakeLocation,
                               capsys: pytest.CaptureFixture[str]) -> None:
    lake = location.root
    # windows align to their length: 13:59 holds the payment, 14:00 the ledger write
    code = main(["analyze", "--lake", lake, "--from", "2026-01-01T13:59:30Z",
                 "--to", "2026-01-01T14:00:30Z", "--window", "1m", "--executor", "local",
                 "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    ids = ["20260101T135900Z_60s", "20260101T140000Z_60s"]
    assert [w["window"] for w in out["windows"]] == ids
    assert [w["failures"] for w in out["windows"]] == [1, 1] and out["edges_written"] > 0
    assert main(["graph", "--lake", lake, "windows"]) == 0
    listing = capsys.readouterr().out
    assert all(i in listing for i in ids)
    assert main(["explain", "--lake", lake, "98721"]) == 0
    assert "root cause: memory pressure (50 ms too late)" in capsys.readouterr().out
    assert main(["graph", "--lake", lake, "--format", "json", "root-cause", "L-7"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["cause"] == "memory_pressure" and rows[0]["window"] == ids[1]
    assert main(["graph", "--lake", lake, "--cypher",
                 "MATCH (p:Process {pid: $pid}) RETURN p.role AS role",
                 "--param", "pid=4721"]) == 0
    assert "batch job" in capsys.readouterr().out
    assert main(["graph", "--lake", lake, "no-such-query"]) == 2
    assert "unknown query 'no-such-query'" in capsys.readouterr().err
    assert main(["graph", "--lake", lake, "blast-radius"]) == 2
    assert "blast-radius takes PID [NODE]" in capsys.readouterr().err
    assert main(["analyze", "--lake", lake, "--from", "x", "--to", "now"]) == 2
    assert "not a time" in capsys.readouterr().err
    assert main(["analyze", "--lake", lake, "--from=-1m", "--to", "now",
                 "--window", "0s"]) == 2
    assert "duration '0s' must be positive" in capsys.readouterr().err
    assert main(["analyze", "--lake", lake, "--from=-1m", "--to", "now",
                 "--window", "60"]) == 2  # the one grammar: a duration has a unit
    assert "not a duration: '60'" in capsys.readouterr().err
