"""Reading the lake: a DuckDB connection with one view per table.

DuckDB's own delta/httpfs extensions download at run time and cannot be installed offline,
so each table is registered as ``deltalake``'s pyarrow dataset: DuckDB pushes projections
and filters (partition columns and per-file statistics) down into it. A cursor does not see
what its parent connection registered, so callers query the connection returned here.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pyarrow as pa

from lake.deltaio import open_table, translate_errors
from lake.errors import UnknownTable
from lake.schema import TABLE_NAMES, TABLES
from lake.storage import LakeLocation


def table_dataset(location: LakeLocation, table: str) -> pa.dataset.Dataset | pa.Table:
    """The table as a pyarrow dataset, or an empty table with its schema if not created."""
    if table not in TABLES:
        raise UnknownTable(f"unknown table {table!r}; known: {', '.join(TABLE_NAMES)}")
    with translate_errors(f"open {table}"):
        dt = open_table(location, table)
        if dt is None:
            return TABLES[table].schema.empty_table()
        return dt.to_pyarrow_dataset()


def connect(
    location: LakeLocation,
    tables: Iterable[str] | None = None,
    *,
    lock_down: bool = True,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per lake table.

    With ``lock_down`` (the default), external access is disabled after registration and
    the configuration is locked, so SQL run on this connection cannot read local files or
    URLs, install or load extensions, or attach databases, even if a statement filter let
    something through.
    """
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    for name in tables if tables is not None else TABLE_NAMES:
        con.register(name, table_dataset(location, name))
    if lock_down:
        lock(con)
    return con


def lock(con: duckdb.DuckDBPyConnection) -> None:
    """No files, URLs, extensions or settings changes from here on (call after registering)."""
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
