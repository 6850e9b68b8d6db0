"""Reading the lake: DuckDB connections with one view per table.

DuckDB's own delta/httpfs extensions download at run time and cannot be installed offline,
so each table is registered as ``deltalake``'s pyarrow dataset: DuckDB pushes projections
and filters (partition columns and per-file statistics) down into it. A cursor does not see
what its parent connection registered, so callers query the connection they registered on.

Two ways in, one code path (``lake.tables.TableCache`` opens the tables):

- ``connect()``: a new in-memory database with the tables opened afresh (commands, the
  causal engine, tests).
- ``LakeDatabase``: for a long-lived reader (the HTTP API). One locked-down database per
  process and one cursor per statement (``session()``), with the tables taken from a shared
  ``TableCache``. Measured on 2 cores: a new database costs ~15 ms (``duckdb.connect``) and
  every database brings its own thread pool, so 8 statements on 8 databases ran at 7.5/s
  against 10.8/s as cursors of one database; a cursor costs microseconds and registering a
  cached dataset ~0.5 ms. The cursor is closed after the statement, taking its views and
  any temporary tables with it, so no statement sees another's state.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import duckdb

from kprobe.lake.access import install_opener, register_tables
from kprobe.lake.schema import TABLE_NAMES
from kprobe.lake.storage import LakeLocation
from kprobe.lake.tables import TableCache


def connect(
    location: LakeLocation,
    tables: Iterable[str] | None = None,
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    checkpoint_threshold: str | None = None,
    payloads: bool = True,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per lake table (all when ``tables`` is
    None), the tables opened concurrently.

    ``payloads``: the sensitive columns are there (opened when the location has the payload
    key file), else left out (lake/access.py). Local commands, the causal engine and
    replays read with payloads; the API decides per token (``LakeDatabase.session``).

    The lock policy, the only one: every connection the lake hands out is locked (``_lock``)
    once its tables are registered, so SQL run on it cannot read local files or URLs,
    install or load extensions, attach databases or change settings, even if a statement
    filter let something through. Settings a caller needs are arguments, applied before:
    ``checkpoint_threshold`` for a connection that fills large temporary tables (the causal
    engine's window: checkpointing them only compresses data about to be dropped).
    """
    snapshots = TableCache(location).snapshots(TABLE_NAMES if tables is None else tables)
    con = _database(threads, memory_limit)
    if checkpoint_threshold:
        con.execute("SET checkpoint_threshold = ?", [checkpoint_threshold])
    opened = False
    if payloads and location.payload_key_file and "syscall_data" in snapshots:
        sealed = snapshots["syscall_data"].dataset
        install_opener(con, location.payload_key_file, lambda: sealed)
        opened = True
    register_tables(con, {s.name: s.dataset for s in snapshots.values()},
                    payloads=payloads, opened=opened)
    _lock(con)
    return con


def _lock(con: duckdb.DuckDBPyConnection) -> None:
    """No files, URLs, extensions or settings changes from here on (call after registering).

    These settings belong to the database, so they hold for every cursor of ``con`` too;
    registering Python objects (``con.register``) stays possible from Python only.
    """
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def _database(threads: int | None, memory_limit: str | None, temp_directory: str | None = None,
              max_temp_size: str | None = None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    if temp_directory:  # where a statement over memory_limit spills, and how much
        con.execute("SET temp_directory = ?", [temp_directory])
    if max_temp_size:
        con.execute("SET max_temp_directory_size = ?", [max_temp_size])
    return con


class LakeDatabase:
    """One locked-down DuckDB database over a ``TableCache``; a cursor per statement.

    ``threads`` and ``memory_limit`` bound the database, so they bound all statements of
    this process together (DuckDB has no per-connection memory limit): with N statements
    at once, each may use about ``memory_limit / N`` before spilling or failing.
    """

    def __init__(self, location: LakeLocation, *, threads: int | None = None,
                 memory_limit: str | None = None, max_staleness_s: float = 0.0,
                 temp_directory: str | None = None, max_temp_size: str | None = None
                 ) -> None:
        self.location = location
        self.tables = TableCache(location, max_staleness_s)
        self._db = _database(threads, memory_limit, temp_directory, max_temp_size)
        _lock(self._db)
        self._cursor_lock = threading.Lock()  # the parent connection is not thread-safe
        # Sessions that open sealed payloads get cursors of a second database, the only
        # one with the opening function (lake/access.py): made on first use.
        self._settings = (threads, memory_limit, temp_directory, max_temp_size)
        self._opening_db: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def session(self, tables: Iterable[str] | None = None, *, payloads: bool = False
                ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor with ``tables`` (all when None) registered at their newest versions;
        their sensitive columns only with ``payloads`` (lake/access.py)."""
        snapshots = self.tables.snapshots(TABLE_NAMES if tables is None else tables)
        opening = bool(payloads and self.location.payload_key_file
                       and "syscall_data" in snapshots)
        with self._cursor_lock:
            cursor = (self._opening() if opening else self._db).cursor()
        try:
            register_tables(cursor, {s.name: s.dataset for s in snapshots.values()},
                            payloads=payloads, opened=opening)
            yield cursor
        finally:
            cursor.close()

    def _opening(self) -> duckdb.DuckDBPyConnection:
        """The database whose cursors open sealed payloads (call under the cursor lock)."""
        if self._opening_db is None:
            db = _database(*self._settings)
            assert self.location.payload_key_file is not None
            install_opener(db, self.location.payload_key_file,
                           lambda: self.tables.snapshot("syscall_data").dataset)
            _lock(db)
            self._opening_db = db
        return self._opening_db

    def close(self) -> None:
        with self._cursor_lock:
            self._db.close()
            if self._opening_db is not None:
                self._opening_db.close()
