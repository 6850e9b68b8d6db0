"""One user statement over the lake with a row limit and a time limit, and its encodings.

The statement goes through the lake's own guard (DuckDB's parser: one read-only statement)
and runs on a cursor of the process's ``lake.LakeDatabase``, whose external access and
configuration were locked when it was created: no files, URLs, extensions, ATTACH or SET,
whatever the statement contains. The cursor holds the statement's tables at their newest
versions and is closed afterwards. The time limit is DuckDB's ``interrupt()`` of that
cursor, fired by a timer thread.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from lake.errors import QueryError
from lake.query import fetch, referenced_tables
from lake.reader import LakeDatabase
from lake.schema import PARTITION_COLUMNS, TABLES
from lake.sql_guard import check_read_only
from query_api.errors import NotAcceptable, QueryTimeLimit

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
_ALIASES = {JSON: "json", "application/*": "json", "*/*": "json", ARROW: "arrow",
            "application/vnd.apache.arrow.file": None, PARQUET: "parquet",
            "application/x-parquet": "parquet", "application/parquet": "parquet"}
Format = Literal["json", "arrow", "parquet"]
MEDIA: dict[str, str] = {"json": JSON, "arrow": ARROW, "parquet": PARQUET}


@dataclass(frozen=True)
class SqlResult:
    table: pa.Table
    truncated: bool
    elapsed_s: float


def run_statement(db: LakeDatabase, sql: str, max_rows: int,
                  timeout_s: float) -> SqlResult:
    """Run one read-only statement; QueryTimeLimit after ``timeout_s``."""
    started = time.perf_counter()
    statement = check_read_only(sql)
    with db.session(referenced_tables(statement)) as con:
        fired = threading.Event()
        state = threading.Lock()
        finished = False

        def interrupt() -> None:
            # never after the statement ended: the cursor may be closing
            with state:
                if not finished:
                    fired.set()
                    con.interrupt()

        timer = threading.Timer(timeout_s, interrupt)
        timer.daemon = True
        timer.start()
        try:
            result = fetch(con, statement, max_rows)
        except duckdb.Error as err:
            if fired.is_set() or isinstance(err, duckdb.InterruptException):
                raise QueryTimeLimit(f"the statement ran past the {timeout_s:g} s limit: "
                                     "narrow it (a WHERE on hour or ts_ns, fewer columns, a "
                                     "LIMIT)") from None
            raise QueryError(" ".join(str(err).split())) from None
        finally:
            with state:
                finished = True
            timer.cancel()
    return SqlResult(result.table, result.truncated, time.perf_counter() - started)


def negotiate(accept: str | None) -> Format:
    """The result format an Accept header asks for (JSON when it does not say)."""
    if not accept or not accept.strip():
        return "json"
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        fmt = _ALIASES.get(media.lower())
        if fmt and q > 0:
            choices.append((-q, i, fmt))
    if not choices:
        raise NotAcceptable(f"cannot answer Accept: {accept[:200]}; use {JSON}, {ARROW} "
                            f"or {PARQUET}")
    return min(choices)[2]  # type: ignore[return-value]


def encode(result: SqlResult, fmt: Format) -> bytes:
    if fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, result.table.schema) as writer:
            writer.write_table(result.table)
        arrow: bytes = sink.getvalue().to_pybytes()
        return arrow
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(result.table, sink)
        parquet: bytes = sink.getvalue().to_pybytes()
        return parquet
    raise ValueError(fmt)


def json_body(result: SqlResult) -> dict[str, Any]:
    table = result.table
    columns = [json_column(col, field.type) for col, field in zip(table.columns, table.schema)]
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
        "rows": [list(row) for row in zip(*columns)] if columns else [],
        "row_count": table.num_rows,
        "truncated": result.truncated,
        "elapsed_ms": round(result.elapsed_s * 1000, 3),
    }


def json_column(column: pa.ChunkedArray | pa.Array, typ: pa.DataType) -> list[Any]:
    """A column as JSON-ready Python values (converted per value only where JSON needs it)."""
    values: list[Any] = column.to_pylist()
    if _plain(typ):
        return values
    return [jsonable(v) for v in values]


def _plain(typ: pa.DataType) -> bool:
    if pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return True
    if pa.types.is_boolean(typ) or pa.types.is_null(typ):
        return True
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        return _plain(typ.value_type)
    return False


def jsonable(value: Any) -> Any:
    """Bytes as base64, decimals and non-finite floats made JSON-safe, times as ISO 8601."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


def describe_tables(versions: Callable[[str], int | None]) -> list[dict[str, Any]]:
    """Schema v1 of every table, with its Delta version (None when not created yet)."""
    out = []
    for name, spec in TABLES.items():
        out.append({
            "name": name, "doc": spec.doc, "time_column": spec.time_column,
            "partition_columns": list(PARTITION_COLUMNS), "version": versions(name),
            "columns": [{"name": f.name, "type": str(f.type), "nullable": f.nullable}
                        for f in spec.schema],
        })
    return out
