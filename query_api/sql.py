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
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from kprobe.lake.errors import LakeError, LakeUnavailable, QueryError, one_line
from kprobe.lake.query import referenced_tables
from kprobe.lake.reader import LakeDatabase
from kprobe.lake.schema import PARTITION_COLUMNS, TABLES
from kprobe.lake.sealing import sealing_error
from kprobe.lake.sql_guard import check_read_only
from kprobe.query_api.errors import NotAcceptable, QueryTimeLimit, ResultTooLarge
from kprobe.query_api.payload_scope import refused

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
    # why it was cut ("rows" or "bytes") and where the next page starts (offset + rows)
    truncated_by: str | None = None
    next_offset: int | None = None
    offset: int = 0  # the first row's place in the statement's whole answer


def run_statement(db: LakeDatabase, sql: str, max_rows: int, timeout_s: float,
                  max_bytes: int = 64 << 20, offset: int = 0,
                  payloads: bool = False) -> SqlResult:
    """Run one read-only statement; QueryTimeLimit after ``timeout_s``, rows cut at
    ``max_rows`` or ``max_bytes`` (``truncated``; ``next_offset`` continues). Sensitive
    columns are there only with ``payloads`` (query_api/payload_scope.py)."""
    started = time.perf_counter()
    statement = check_read_only(sql)
    tables = referenced_tables(statement)
    with db.session(tables, payloads=payloads) as con:
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
            table, cut_by = bounded_fetch(con, statement, max_rows, max_bytes, offset)
        except (duckdb.Error, pa.ArrowException, OSError) as err:
            # an interrupt while pyarrow reads DuckDB's stream arrives as pyarrow's OSError
            if fired.is_set() or isinstance(err, duckdb.InterruptException):
                raise QueryTimeLimit(f"the statement ran past the {timeout_s:g} s limit: "
                                     "narrow it (a WHERE on hour or ts_ns, fewer columns, a "
                                     "LIMIT)") from None
            raise (refused(str(err), tables) or sealing_error(err)
                   or statement_error(err)) from None
        finally:
            with state:
                finished = True
            timer.cancel()
    return SqlResult(table, cut_by is not None, time.perf_counter() - started, cut_by,
                     offset + table.num_rows if cut_by else None, offset)


def bounded_fetch(con: duckdb.DuckDBPyConnection, statement: str, max_rows: int,
                  max_bytes: int, offset: int = 0) -> tuple[pa.Table, str | None]:
    """At most ``max_rows`` rows and ``max_bytes`` Arrow bytes of the statement's answer,
    from row ``offset`` on, read in small batches so nothing much bigger than the limit is
    ever held; and why it was cut (None: it was not)."""
    relation = con.sql(statement)
    if offset:
        relation = relation.limit(max_rows + 1, offset)
    reader = relation.to_arrow_reader(_FETCH_BATCH_ROWS)
    batches: list[pa.RecordBatch] = []
    rows = size = 0
    cut: str | None = None
    for batch in reader:
        if rows + batch.num_rows > max_rows:
            batch, cut = batch.slice(0, max_rows - rows), "rows"
        if size + batch.nbytes > max_bytes:
            fitted = _fit_bytes(batch, max_bytes - size)
            if fitted.num_rows == 0 and rows == 0:
                one = batch.slice(0, 1).nbytes
                raise ResultTooLarge(
                    f"one row of the answer takes {one} bytes, over the limit of "
                    f"{max_bytes} bytes per answer: select fewer or smaller columns")
            batch, cut = fitted, "bytes"
        batches.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if cut:
            break
    if cut is None and rows == max_rows:
        # exactly max_rows so far: is there more?
        nxt = reader.read_next_batch() if rows else None
        if nxt is not None and nxt.num_rows:
            cut = "rows"
    return pa.Table.from_batches(batches, schema=reader.schema), cut


def _fit_bytes(batch: pa.RecordBatch, budget: int) -> pa.RecordBatch:
    n = batch.num_rows
    n = min(n, int(n * budget / batch.nbytes)) if batch.nbytes and budget > 0 else 0
    while n > 0 and batch.slice(0, n).nbytes > budget:
        n = n * 3 // 4
    return batch.slice(0, n)


# DuckDB error texts that mean the lake's storage or files are broken, not the statement
_STORAGE_FAULTS = re.compile(
    r"could not open parquet|parquet magic bytes|invalid parquet|corrupt|ioerror|"
    r"io error|no such file|not found.*\.parquet|requested range was invalid|"
    r"unexpected end of (stream|file)|checksum", re.IGNORECASE)


def statement_error(err: Exception) -> LakeError:
    """A DuckDB failure as ours: storage faults (a torn or missing data file) are the
    lake's (503), the rest the statement's (400)."""
    text = one_line(err, 600)
    if _STORAGE_FAULTS.search(text) and "Permission Error" not in text:
        return LakeUnavailable(f"lake data unreadable: {text}")
    return QueryError(text)


_FETCH_BATCH_ROWS = 2048


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


def json_body(result: SqlResult, deadline: float | None = None,
              max_bytes: int | None = None) -> tuple[bytes, SqlResult]:
    """The JSON answer, encoded a slice of rows at a time (the GIL is released between
    slices, so other requests are served meanwhile) before ``deadline`` (perf_counter
    time; QueryTimeLimit after it), and cut to ``max_bytes`` at a row boundary (the
    result returned says how many rows went out)."""
    table = result.table
    head = {"columns": [{"name": f.name, "type": str(f.type)} for f in table.schema]}
    pieces: list[str] = []
    size = 0
    sent = 0
    for start in range(0, table.num_rows, _JSON_SLICE_ROWS):
        if deadline is not None and time.perf_counter() > deadline:
            raise QueryTimeLimit("encoding the answer ran past the statement's time limit: "
                                 "ask for fewer rows or columns")
        rows = table_rows(table.slice(start, _JSON_SLICE_ROWS))
        text = json.dumps(rows, ensure_ascii=False, allow_nan=False)[1:-1]
        if max_bytes is not None and size + len(text) > max_bytes:
            for row in rows:  # the slice that crosses the limit, row by row
                one = json.dumps(row, ensure_ascii=False, allow_nan=False)
                if size + len(one) + 1 > max_bytes:
                    break
                pieces.append(one)
                size += len(one) + 1
                sent += 1
            break
        if text:
            pieces.append(text)
            size += len(text) + 1
            sent += len(rows)
    if sent < table.num_rows:
        result = SqlResult(table.slice(0, sent), True, result.elapsed_s, "bytes",
                           result.offset + sent, result.offset)
    body = json.dumps({**head, "rows": None, "row_count": sent, "truncated": result.truncated,
                       "truncated_by": result.truncated_by,
                       "next_offset": result.next_offset,
                       "elapsed_ms": round(result.elapsed_s * 1000, 3)},
                      ensure_ascii=False, allow_nan=False)
    rows_json = "[" + ",".join(pieces) + "]"
    return body.replace('"rows": null', '"rows": ' + rows_json, 1).encode(), result


def table_rows(table: pa.Table) -> list[list[Any]]:
    columns = [json_column(col, field.type) for col, field in zip(table.columns, table.schema)]
    return [list(row) for row in zip(*columns)] if columns else []


_JSON_SLICE_ROWS = 2048


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
