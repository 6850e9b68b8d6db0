"""Running one user statement against the lake, read-only, with a row limit."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

from kprobe.lake.errors import QueryError
from kprobe.lake.reader import connect
from kprobe.lake.schema import TABLE_NAMES
from kprobe.lake.sealing import sealing_error
from kprobe.lake.sql_guard import check_read_only
from kprobe.lake.storage import LakeLocation


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    truncated: bool  # more rows existed than the limit allowed


def referenced_tables(sql: str) -> list[str]:
    """Lake tables a statement names; all of them when it names none (SHOW TABLES)."""
    try:
        names = duckdb.get_table_names(sql)
    except duckdb.Error:
        names = set()
    found = [t for t in TABLE_NAMES if t in names]
    return found or list(TABLE_NAMES)


def fetch(con: duckdb.DuckDBPyConnection, statement: str,
          max_rows: int | None = None) -> QueryResult:
    """Run a checked statement on ``con``; at most ``max_rows`` rows. Raises duckdb.Error,
    or the PayloadSealError that sealed payloads raised in it (lake/sealing.py)."""
    try:
        reader = con.sql(statement).to_arrow_reader(65_536)
        batches: list[pa.RecordBatch] = []
        rows = 0
        truncated = False
        for batch in reader:
            if max_rows is not None and rows + batch.num_rows > max_rows:
                batches.append(batch.slice(0, max_rows - rows))
                truncated = True
                break
            batches.append(batch)
            rows += batch.num_rows
    except duckdb.Error as err:
        sealing = sealing_error(err)
        if sealing is not None:
            raise sealing from None
        raise
    return QueryResult(pa.Table.from_batches(batches, schema=reader.schema), truncated)


def run_query(location: LakeLocation, sql: str, max_rows: int | None = None) -> QueryResult:
    """Check ``sql`` is one read-only statement, run it, return at most ``max_rows`` rows."""
    statement = check_read_only(sql)
    con = connect(location, referenced_tables(statement))
    try:
        return fetch(con, statement, max_rows)
    except duckdb.Error as err:
        raise QueryError(" ".join(str(err).split())) from None
    finally:
        con.close()
