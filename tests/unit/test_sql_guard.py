"""The read-only statement filter of `kprobe sql` and `POST /v1/sql`."""

from __future__ import annotations

import pytest

from kprobe.lake.errors import ReadOnlyViolation
from kprobe.lake.sql_guard import check_read_only


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from spans where status = 'ERROR';  ",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "FROM syscalls LIMIT 3",
        "DESCRIBE spans",
        "SHOW TABLES",
        "SUMMARIZE net",
        "EXPLAIN SELECT 1",
        "EXPLAIN ANALYZE SELECT count(*) FROM sched",
    ],
)
def test_read_only_statements_pass(sql: str) -> None:
    assert check_read_only(sql)


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("INSERT INTO spans VALUES (1)", "INSERT statements are not allowed"),
        ("DELETE FROM spans", "DELETE statements are not allowed"),
        ("UPDATE spans SET name = 'x'", "UPDATE statements are not allowed"),
        ("CREATE TABLE t AS SELECT 1", "CREATE statements are not allowed"),
        ("DROP TABLE spans", "DROP statements are not allowed"),
        ("COPY spans TO '/tmp/x.csv'", "COPY statements are not allowed"),
        ("ATTACH '/tmp/x.db'", "ATTACH statements are not allowed"),
        ("INSTALL httpfs", "LOAD statements are not allowed"),
        ("LOAD httpfs", "LOAD statements are not allowed"),
        ("PRAGMA version", "PRAGMA statements are not allowed"),
        ("SET threads = 1", "SET statements are not allowed"),
        ("EXPLAIN ANALYZE COPY spans TO '/tmp/x'", "COPY statements are not allowed"),
        ("SELECT 1; DELETE FROM spans", "exactly one statement allowed, got 2"),
        ("SELEC 1", "cannot parse SQL"),
        ("   ", "empty statement"),
    ],
)
def test_writes_and_escapes_are_refused_with_the_reason(sql: str, reason: str) -> None:
    with pytest.raises(ReadOnlyViolation) as err:
        check_read_only(sql)
    assert reason in str(err.value)
    assert "\n" not in str(err.value)
