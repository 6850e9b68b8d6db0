"""``POST /v1/sql`` and ``GET /v1/tables``: formats, limits, and every refusal."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from kprobe.lake import LakeSettings, LakeWriter
from kprobe.query_api.errors import NotAcceptable
from kprobe.query_api.sql import negotiate
from tests.unit.test_compute_scenario import T0
from tests.unit.test_query_api_http import (  # noqa: F401 - fixtures
    ClientFactory,
    analysed_lake_fixture,
    analysed_template,
    assert_problem,
    make_client_fixture,
    tokens_fixture,
)

COUNT_SPANS = "SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name"


def test_json_result(make_client: ClientFactory) -> None:
    response = make_client().post("/v1/sql", json={"sql": COUNT_SPANS})
    assert response.status_code == 200 and response.headers["x-kprobe-truncated"] == "false"
    body = response.json()
    assert body["columns"] == [{"name": "name", "type": "string"},
                               {"name": "n", "type": "int64"}]
    assert body["rows"] == [["POST /payments", 1], ["risk.check", 1],
                            ["settlement.write", 1]]
    assert body["row_count"] == 3 and body["truncated"] is False


def test_arrow_and_parquet_by_accept(make_client: ClientFactory) -> None:
    client = make_client()
    arrow = client.post("/v1/sql", json={"sql": COUNT_SPANS},
                        headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.column("n").to_pylist() == [1, 1, 1]
    parquet = client.post("/v1/sql", json={"sql": COUNT_SPANS},
                          headers={"Accept": "application/vnd.apache.parquet"})
    assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 3
    refused = client.post("/v1/sql", json={"sql": COUNT_SPANS}, headers={"Accept": "text/csv"})
    assert_problem(refused, 406, "not-acceptable", "text/csv")


def test_accept_negotiation() -> None:
    assert negotiate(None) == "json" and negotiate("*/*") == "json"
    assert negotiate("text/html, application/vnd.apache.parquet;q=0.9") == "parquet"
    assert negotiate("application/json;q=0.1, application/vnd.apache.arrow.stream") == "arrow"
    with pytest.raises(NotAcceptable):
        negotiate("application/json;q=0")


def test_binary_and_non_finite_values_are_json_safe(make_client: ClientFactory) -> None:
    body = make_client().post("/v1/sql", json={
        "sql": "SELECT 'abc'::BLOB AS b, 'nan'::DOUBLE AS x, 1.5::DECIMAL(4,2) AS d, "
               "[1, 2] AS l, TIMESTAMP '2026-01-01 14:00:00' AS t"}).json()
    assert body["rows"] == [["YWJj", None, 1.5, [1, 2], "2026-01-01T14:00:00"]]


def test_row_limit_truncates(make_client: ClientFactory) -> None:
    client = make_client(sql_max_rows=50)
    response = client.post("/v1/sql", json={"sql": "SELECT * FROM range(100)",
                                            "max_rows": 10})
    assert response.json()["row_count"] == 10 and response.json()["truncated"] is True
    assert response.headers["x-kprobe-truncated"] == "true"
    # the server's cap wins over what the client asks for
    capped = client.post("/v1/sql", json={"sql": "SELECT * FROM range(100)",
                                          "max_rows": 1000}).json()
    assert capped["row_count"] == 50 and capped["truncated"]


def test_time_limit_interrupts_the_statement(make_client: ClientFactory) -> None:
    client = make_client(sql_timeout_s=5)
    response = client.post("/v1/sql", json={
        "sql": "SELECT count(*) FROM range(1000000000000)", "timeout_s": 0.3})
    assert_problem(response, 422, "query-time-limit", "0.3 s limit")
    # the connection was closed, the next statement runs normally
    assert client.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 200


@pytest.mark.parametrize("sql,reason", [
    ("SELECT * FROM read_csv('/etc/passwd')", "Cannot access file \"/etc/passwd\""),
    ("SELECT * FROM '/etc/passwd'", "does not exist"),
    ("SELECT * FROM read_text('/etc/hostname')", "file system operations are disabled"),
    ("SELECT * FROM 'https://example.com/x.parquet'", "file system operations are disabled"),
    ("COPY spans TO '/tmp/kprobe-leak.csv'", "COPY statements are not allowed"),
    ("ATTACH '/tmp/kprobe-other.db' AS other", "ATTACH statements are not allowed"),
    ("INSTALL httpfs", "not allowed"),
    ("LOAD httpfs", "LOAD statements are not allowed"),
    ("PRAGMA database_list", "PRAGMA statements are not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("CREATE TABLE x AS SELECT 1", "CREATE statements are not allowed"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("EXPLAIN ANALYZE COPY spans TO '/tmp/x.csv'", "COPY statements are not allowed"),
])
def test_refusals(make_client: ClientFactory, sql: str, reason: str) -> None:
    response = make_client().post("/v1/sql", json={"sql": sql})
    slug = "query-failed" if "does not exist" in reason else "sql-refused"
    assert_problem(response, 400, slug, reason)


def test_read_only_statement_kinds(make_client: ClientFactory) -> None:
    client = make_client()
    for sql in ("WITH s AS (SELECT * FROM spans) SELECT count(*) FROM s", "DESCRIBE spans",
                "SUMMARIZE spans", "EXPLAIN SELECT * FROM spans", "SHOW TABLES"):
        assert client.post("/v1/sql", json={"sql": sql}).status_code == 200, sql


def test_tables_with_schemas(make_client: ClientFactory) -> None:
    tables = {t["name"]: t for t in make_client().get("/v1/tables").json()["tables"]}
    assert set(tables) >= {"sched", "spans", "syscalls", "causal_edges"}
    spans = tables["spans"]
    assert spans["version"] is not None and spans["time_column"] == "start_ns"
    assert spans["partition_columns"] == ["node", "hour"]
    columns = {c["name"]: c for c in spans["columns"]}
    assert columns["start_ns"] == {"name": "start_ns", "type": "int64", "nullable": False}


# -- freshness and admission ---------------------------------------------------------------
def test_a_commit_is_in_the_very_next_answer(analysed_lake: Path,
                                             make_client: ClientFactory) -> None:
    """The service keeps its Delta tables open between requests: GIVEN tables already read
    (cached), WHEN a commit lands THEN the next request has its rows, every time."""
    client = make_client()
    count = {"sql": "SELECT count(*) FROM lost WHERE node = 'fresh'"}
    assert client.post("/v1/sql", json=count).json()["rows"] == [[0]]
    versions = []
    for i in range(1, 4):
        LakeWriter.from_settings(LakeSettings(lake=str(analysed_lake), node="fresh"),
                                 f"fresh-{i}").append(
            "lost", {"ts_ns": [T0 + i], "source": ["test"], "count": [i]})
        assert client.post("/v1/sql", json=count).json()["rows"] == [[i]]
        tables = {t["name"]: t for t in client.get("/v1/tables").json()["tables"]}
        versions.append(tables["lost"]["version"])
    assert versions == sorted(set(versions))


def _hold_the_only_slot(client: TestClient) -> threading.Thread:
    """A statement that runs until its 2 s limit, started on another thread; returns once
    it holds the SQL slot."""
    assert client.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 200
    admission = client.app.state.sql_admission[1]  # type: ignore[attr-defined]
    held = threading.Thread(target=client.post, args=("/v1/sql",), kwargs={"json": {
        "sql": "SELECT count(*) FROM range(1000000000000)", "timeout_s": 2}})
    held.start()
    deadline = time.monotonic() + 10
    while admission.admitted < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return held


def test_a_full_replica_answers_503_at_once(make_client: ClientFactory) -> None:
    # GIVEN one SQL slot, no queue, and the slot taken
    client = make_client(sql_max_concurrent=1, sql_max_queued=0)
    held = _hold_the_only_slot(client)
    # WHEN another statement arrives THEN it is refused at once, with when to retry
    started = time.monotonic()
    refused = client.post("/v1/sql", json={"sql": "SELECT 1"})
    assert time.monotonic() - started < 1
    assert_problem(refused, 503, "overloaded", "already running or queued")
    assert refused.headers["retry-after"] == "1"
    held.join()
    # AND once the slot is free, statements run again
    assert client.post("/v1/sql", json={"sql": "SELECT 1"}).status_code == 200


def test_a_queued_statement_gives_up_after_its_wait(make_client: ClientFactory) -> None:
    client = make_client(sql_max_concurrent=1, sql_max_queued=1, sql_queue_wait_s=0.3)
    held = _hold_the_only_slot(client)
    refused = client.post("/v1/sql", json={"sql": "SELECT 1"})
    assert_problem(refused, 503, "overloaded", "within 0.3 s")
    assert refused.headers["retry-after"] == "1"
    held.join()
