"""Transactions, explanations, trace graphs, Cypher and timelines over the payment scenario.

The scenario (tests/unit/test_compute_scenario.py): payment 98721 in payment-handler (pid
100, tid 101) times out at 800 ms against a 750 ms deadline, delayed 790 ms by memcg
reclaim driven by batch-job pid 4721.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kprobe.compute.explain import explain
from kprobe.compute.explain_model import Explanation
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, LakeWriter, resolve
from kprobe.query_api.cypher_guard import check_read_only
from kprobe.query_api.errors import CypherRefused
from tests.unit.test_compute_scenario import T0, WINDOW_END, WINDOW_START
from tests.unit.test_query_api_http import (  # noqa: F401 - fixtures
    ClientFactory,
    analysed_lake_fixture,
    analysed_template,
    assert_problem,
    make_client_fixture,
    tokens_fixture,
)

TRACE = "t1".ljust(32, "0")
RANGE = {"from": str(WINDOW_START), "to": str(WINDOW_END)}


# -- transactions ---------------------------------------------------------------------------
def test_failed_transactions_with_their_root_cause(make_client: ClientFactory) -> None:
    client = make_client()
    page = client.get("/v1/transactions", params={"status": "failed", **RANGE}).json()
    [txn] = page["items"]
    assert txn["trace_id"] == TRACE and txn["business_id"] == "98721"
    assert txn["failed"] and txn["concept"] == "Payment"
    assert txn["failure"]["failure_kind"] == "timeout"
    assert txn["failure"]["root_cause_kind"] == "memory_pressure"
    assert txn["links"]["explain"] == f"/v1/transactions/{TRACE}/explain"
    assert page["next_cursor"] is None and page["next"] is None
    assert client.get("/v1/transactions", params={"status": "ok"}).json()["items"] == []
    # outside the analysed range: an empty page, not an error
    assert client.get("/v1/transactions", params={"from": "2020-01-01T00:00:00Z",
                                                  "to": "2020-01-02T00:00:00Z"}
                      ).json()["items"] == []


def test_transactions_page_by_cursor(analysed_lake: Path, make_client: ClientFactory,
                                     tmp_path: Path) -> None:
    # GIVEN four more (healthy) payments, analysed
    from kprobe.compute.analysis import run_window
    from kprobe.compute.window import Window
    from tests.unit.test_compute_scenario import Scenario

    sc = Scenario()
    for i in range(4):
        sc.span(f"p{i}", "r", None, "payment-handler", "POST /payments", 100 + i, 101 + i,
                pid=100, tid=101, kind="SERVER", attrs={"payment.id": 5000 + i})
    sc.write(analysed_lake)
    run_window(resolve(LakeSettings(lake=str(analysed_lake))), Window(WINDOW_START, WINDOW_END),
               ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
    client = make_client()
    seen: list[str] = []
    url: str | None = "/v1/transactions?limit=2"
    while url:
        page = client.get(url).json()
        assert len(page["items"]) <= 2
        seen.extend(t["trace_id"] for t in page["items"])
        url = page["next"]
    assert len(seen) == 5 and len(set(seen)) == 5  # every transaction once, in time order
    assert seen[0] == TRACE
    healthy = client.get("/v1/transactions", params={"status": "ok"}).json()["items"]
    assert len(healthy) == 4 and not any(t["failed"] for t in healthy)
    assert_problem(client.get("/v1/transactions", params={"cursor": "!!"}), 400,
                   "bad-request", "cursor")
    assert_problem(client.get("/v1/transactions", params={"from": "yesterday"}), 400,
                   "bad-request", "from:")


# -- explain ----------------------------------------------------------------------------------
def test_explain_is_the_cli_json(analysed_lake: Path, make_client: ClientFactory,
                                 tmp_path: Path) -> None:
    body = make_client().get("/v1/transactions/98721/explain").json()
    expected = explain(resolve(LakeSettings(lake=str(analysed_lake))), "98721",
                       ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
    assert body == Explanation(query="98721", transactions=expected).model_dump(mode="json")
    # data, not CLI lines: the kernel step is typed, its words are a label and a detail
    kernel = [st for st in body["transactions"][0]["steps"] if st["kind"] == "kernel"]
    assert kernel[0]["label"] == "memcg reclaim 790 ms" and kernel[0]["driver"]["pid"] == 4721
    assert "text" not in body["transactions"][0]
    missing = make_client().get("/v1/transactions/nope/explain")
    assert_problem(missing, 404, "transaction-not-found", "'nope'")
    assert_problem(make_client().get("/v1/transactions/98721/explain",
                                     params={"window": "20200101T000000Z_60s"}),
                   404, "graph-not-found")


# -- graph ------------------------------------------------------------------------------------
def test_trace_graph_for_a_force_layout(make_client: ClientFactory) -> None:
    graph = make_client().get(f"/v1/traces/{TRACE}/graph").json()
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert all(link["source"] in nodes and link["target"] in nodes for link in graph["links"])
    root = nodes[f"{TRACE}:" + "a".ljust(16, "0")]
    assert root["group"] == "span" and root["failed"] and root["colour"] == "#c62828"
    [episode] = [n for n in nodes.values() if n["group"] == "kernel_episode"]
    assert episode["kind"] == "memory_pressure" and episode["colour"] == "#c62828"
    [top] = [link for link in graph["links"] if link["source"] == episode["id"]
             and link["rel"] == "CAUSED_BY" and link["rank"] == 1]
    assert nodes[top["target"]]["group"] == "process" and nodes[top["target"]]["pid"] == 4721
    reclaim = [link for link in graph["links"] if link["rel"] == "DELAYED_BY"
               and link["kind"] == "memory_pressure"]
    assert reclaim and max(link["delay_ns"] for link in reclaim) == 790_000_000
    assert {"CHILD_OF", "DELAYED_BY", "CAUSED_BY"} <= {link["rel"] for link in graph["links"]}
    assert [entry["colour"] for entry in graph["legend"]][-1] == "#c62828"
    assert_problem(make_client().get(f"/v1/traces/{'f' * 32}/graph"), 404,
                   "transaction-not-found")


# -- cypher -----------------------------------------------------------------------------------
def test_cypher_reads_every_window(make_client: ClientFactory) -> None:
    body = make_client().post("/v1/graph/cypher", json={
        "cypher": "MATCH (s:Span) WHERE s.failed AND s.trace_id = $t "
                  "RETURN s.name AS name ORDER BY name", "params": {"t": TRACE}}).json()
    assert [c["name"] for c in body["columns"]] == ["window", "name"]
    assert [row[1] for row in body["rows"]] == ["POST /payments"]
    assert len(body["windows"]) == 1
    capped = make_client().post("/v1/graph/cypher", json={
        "cypher": "MATCH (s:Span) RETURN s.id", "max_rows": 1}).json()
    assert capped["row_count"] == 1 and capped["truncated"]


def test_cypher_refusals_reach_nothing(make_client: ClientFactory, tmp_path: Path) -> None:
    target = tmp_path / "leak.csv"
    client = make_client()
    for statement, reason in (
            (f"COPY (MATCH (s:Span) RETURN s.id) TO '{target}'", "COPY is not allowed"),
            ("LOAD FROM '/etc/passwd' (file_format='csv') RETURN *", "LOAD is not allowed"),
            ("MATCH (s:Span) SET s.name = 'x'", "SET is not allowed"),
            ("MATCH (s:Span) DETACH DELETE s", "DETACH is not allowed"),
            ("CREATE (:Thread {id: 'x'})", "CREATE is not allowed"),
            ("INSTALL httpfs", "INSTALL is not allowed"),
            ("CALL threads=1", "CALL threads is not allowed")):
        response = client.post("/v1/graph/cypher", json={"cypher": statement})
        assert_problem(response, 400, "cypher-refused", reason)
    assert not target.exists()
    failed = client.post("/v1/graph/cypher", json={"cypher": "MATCH (s:Nope) RETURN s"})
    assert_problem(failed, 400, "cypher-failed", "Nope")


@pytest.mark.parametrize("statement", [
    "MATCH (s:Span) WHERE s.name = 'DELETE me; CREATE' RETURN s.id",  # inside a string
    "MATCH (s:Span) // SET in a comment\nRETURN s.settled_by_reason",
    "MATCH (s:Span)-[d:DELAYED_BY]->(e) RETURN e.set, count(*);",  # a property named set
    "CALL show_tables() RETURN *",
    "MATCH (s:Span {name: $name}) RETURN s",
])
def test_cypher_guard_allows_reads(statement: str) -> None:
    assert check_read_only(statement)


@pytest.mark.parametrize("statement,reason", [
    ("MATCH (n) DELETE n", "DELETE"), ("merge (n:Span {id: 'x'})", "MERGE"),
    ("MATCH (n) REMOVE n.name", "REMOVE"), ("DROP TABLE Span", "DROP"),
    ("EXPORT DATABASE '/tmp/x'", "EXPORT"), ("IMPORT DATABASE '/tmp/x'", "IMPORT"),
    ("ATTACH '/tmp/x.lbug' AS x (dbtype lbug)", "ATTACH"), ("USE x", "USE"),
    ("LOAD EXTENSION httpfs", "LOAD"), ("CALL table_info", "CALL table_info"),
    ("RETURN 1; RETURN 2", "one statement"), ("MATCH (s) RETURN 'x", "unterminated"),
    ("BEGIN TRANSACTION", "BEGIN"), ("   ", "empty"),
])
def test_cypher_guard_refuses(statement: str, reason: str) -> None:
    with pytest.raises(CypherRefused, match=reason):
        check_read_only(statement)


# -- timeline ---------------------------------------------------------------------------------
def test_timeline_raw(make_client: ClientFactory) -> None:
    body = make_client().get("/v1/timeline", params={"pid": 100, **RANGE}).json()
    threads = body["sections"]["threads"]
    assert threads["mode"] == "raw" and threads["lanes"] == [{"node": "n1", "tid": 101,
                                                             "pid": 100}]
    rows = [dict(zip(threads["dimensions"], row)) for row in threads["data"]]
    states = {r["state"] for r in rows}
    assert {"running", "blocked"} <= states
    blocked = next(r for r in rows if r["state"] == "blocked")
    assert blocked["reason"] == "reclaim" and blocked["end"] - blocked["start"] == 300_000_000
    spans = body["sections"]["spans"]
    assert spans["mode"] == "raw" and spans["rows_total"] == 3
    memory = body["sections"]["memory"]
    assert [dict(zip(memory["dimensions"], r))["kind"] for r in memory["data"]] == [
        "memcg_reclaim"]


def test_timeline_downsamples_wide_ranges(analysed_lake: Path,
                                          make_client: ClientFactory) -> None:
    # GIVEN 5000 syscalls of pid 100 over the window
    n = 5000
    ts = WINDOW_START + np.arange(n, dtype=np.int64) * ((WINDOW_END - WINDOW_START) // n)
    names = np.array(["read", "write", "fsync", "futex"])[np.arange(n) % 4]
    writer = LakeWriter(resolve(LakeSettings(lake=str(analysed_lake))), "n1")
    writer.append("syscalls", pa.table({"ts_ns": ts, "dur_ns": np.full(n, 1000),
                                        "pid": np.full(n, 100, np.int32),
                                        "tid": np.full(n, 101, np.int32),
                                        "name": names, "ret": np.zeros(n, np.int64)}))
    body = make_client().get("/v1/timeline", params={"pid": 100, "max_points": 100,
                                                     **RANGE}).json()
    syscalls = body["sections"]["syscalls"]
    assert syscalls["mode"] == "buckets" and syscalls["rows_total"] == n
    assert len(syscalls["data"]) <= 100
    rows = [dict(zip(syscalls["dimensions"], r)) for r in syscalls["data"]]
    assert sum(r["count"] for r in rows) == n
    assert {r["category"] for r in rows} == {"read", "write", "fsync", "futex"}
    assert all(0 <= r["start"] < WINDOW_END - WINDOW_START for r in rows)
    # a server allowing 10 000 points per section sends them raw
    raw = make_client(timeline_max_points=10_000).get(
        "/v1/timeline", params={"tid": 101, "max_points": 10_000, **RANGE}).json()
    assert raw["sections"]["syscalls"]["mode"] == "raw"
    assert len(raw["sections"]["syscalls"]["data"]) == n


def test_timeline_needs_a_process_and_a_range(make_client: ClientFactory) -> None:
    client = make_client()
    assert_problem(client.get("/v1/timeline", params=RANGE), 400, "bad-request", "pid or tid")
    assert_problem(client.get("/v1/timeline", params={"pid": 1, "from": str(T0),
                                                      "to": str(T0)}),
                   400, "bad-request", "after from")
    assert_problem(client.get("/v1/timeline", params={"pid": 1, "from": "x", "to": "now"}),
                   400, "bad-request", "from: not a time")
    assert_problem(client.get("/v1/timeline", params={"pid": 1}), 422, "invalid-request")



def test_explain_is_cached_per_snapshot_and_never_stale(analysed_lake: Path,
                                                        make_client: ClientFactory,
                                                        tmp_path: Path) -> None:
    from kprobe.compute.analysis import run_window
    from kprobe.compute.window import Window
    from tests.unit.test_compute_scenario import Scenario

    client = make_client()
    url = "/v1/transactions/98721/explain"
    first = client.get(url)
    cache = client.app.state.causal_cache[1]  # type: ignore[attr-defined]
    assert client.get(url).content == first.content and cache.hits == 1
    assert "ledger.post" not in first.text
    graph_url = f"/v1/traces/{TRACE}/graph"
    assert "ledger.post" not in client.get(graph_url).text
    assert client.get(graph_url).status_code == 200 and cache.hits == 2
    # WHEN the trace gains a failed operation and the window is analysed again
    sc = Scenario()
    sc.span("t1", "d", "a", "payment-handler", "ledger.post", -740, -700, pid=100, tid=101,
            status="ERROR", message="ledger refused", attrs={"payment.id": 98721})
    sc.write(analysed_lake)
    run_window(resolve(LakeSettings(lake=str(analysed_lake))), Window(WINDOW_START, WINDOW_END),
               ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))
    # THEN the next explanation is computed from the new snapshot, not served from the cache
    after = client.get(url)
    assert after.status_code == 200 and "ledger.post" in after.text
    assert after.json() == Explanation(query="98721", transactions=explain(
        resolve(LakeSettings(lake=str(analysed_lake))), "98721",
        ComputeSettings(graph_cache_dir=tmp_path / "graph-cache"))).model_dump(mode="json")
    # AND the trace graph follows the same rule
    graph = client.get(graph_url).json()
    assert any(n.get("name") == "ledger.post" for n in graph["nodes"])


def test_concurrent_misses_of_one_answer_compute_it_once() -> None:
    import threading
    import time

    from kprobe.query_api.cache import AnswerCache

    cache = AnswerCache(entries=2)
    calls: list[int] = []

    def slow() -> bytes:
        calls.append(1)
        time.sleep(0.2)
        return b"answer"

    got: list[bytes] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_compute("k", slow)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [b"answer"] * 8 and len(calls) == 1
    # bounded: the oldest answer goes first
    cache.get_or_compute("a", lambda: b"a")
    cache.get_or_compute("b", lambda: b"b")
    cache.get_or_compute("k", slow)
    assert len(calls) == 2
