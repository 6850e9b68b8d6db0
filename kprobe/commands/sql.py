"""``kprobe sql "SELECT …"``: one read-only statement over the lake.

Text output shows instants (``ts_ns``, ``start_ns``, ``end_ns`` ...) as UTC times; JSON,
CSV and Parquet keep nanoseconds. Ctrl-C cancels the running statement (exit 130).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kprobe.commands._common import add_lake_option, finite, open_lake
from kprobe.errors import CommandError
from kprobe.lake import LakeLocation, connect
from kprobe.lake.errors import QueryError
from kprobe.lake.query import QueryResult, fetch, referenced_tables
from kprobe.lake.schema import TABLE_NAMES
from kprobe.lake.sql_guard import check_read_only
from kprobe.lake.timespec import format_instant


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "sql",
        help="run one read-only SQL statement over the lake",
        description="Run one read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, "
        f"EXPLAIN) over the lake tables with DuckDB. Tables: {', '.join(TABLE_NAMES)}. "
        "Text output shows instants (*_ns times) in UTC; json, csv and "
        "parquet keep epoch nanoseconds. Ctrl-C cancels the statement (exit 130).",
    )
    parser.add_argument("statement", help="the SQL statement")
    add_lake_option(parser)
    parser.add_argument(
        "--format", choices=("text", "json", "csv", "parquet"), default="text",
        help="output format (parquet needs --output or a pipe)",
    )
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write to FILE instead of stdout (its directory must exist)")
    parser.add_argument(
        "--max-rows", type=int, default=None, metavar="N",
        help="stop after N rows (default: 1000 for text, unlimited otherwise)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    max_rows = args.max_rows
    if max_rows is None and args.format == "text":
        max_rows = 1000
    if max_rows is not None and max_rows < 0:
        raise CommandError("--max-rows must be >= 0")
    if args.output:
        _check_writable(Path(args.output))
    result = run_cancellable(open_lake(args), args.statement, max_rows)
    try:
        if args.format == "parquet":
            if not args.output and sys.stdout.isatty():
                raise CommandError("refusing to write Parquet to a terminal: use --output FILE")
            pq.write_table(result.table, args.output or sys.stdout.buffer)
            return 0
        if args.output:
            with open(args.output, "w", encoding="utf-8", newline="") as out:
                _write_text(result.table, args.format, out, result.truncated)
        else:
            _write_text(result.table, args.format, sys.stdout, result.truncated)
    except OSError as err:
        if isinstance(err, BrokenPipeError):
            raise
        raise CommandError(f"cannot write {args.output or 'the output'}: "
                           f"{err.strerror or err}") from None
    except pa.ArrowException as err:
        raise CommandError(f"cannot write {args.format}: {' '.join(str(err).split())}") from None
    return 0


def run_cancellable(location: LakeLocation, sql: str, max_rows: int | None) -> QueryResult:
    """``lake.query.run_query``, opening the tables and running the statement in a worker
    thread, so that Ctrl-C at any moment of either interrupts DuckDB (which does not look
    at signals while it works) and exits 130 at once."""
    statement = check_read_only(sql)
    tables = referenced_tables(statement)
    outcome: dict[str, Any] = {}
    opened: list[duckdb.DuckDBPyConnection] = []
    # an Event, not Thread.is_alive(): after Ctrl-C interrupted a join() it can say False
    # while the thread still runs (CPython 3.11), and the connection was then closed under
    # the running statement, which waited for it (CI: no answer 90 s after Ctrl-C)
    done = threading.Event()

    def work() -> None:
        try:
            con = connect(location, tables)
            opened.append(con)
            try:
                outcome["result"] = fetch(con, statement, max_rows)
            finally:
                with contextlib.suppress(duckdb.Error):  # a reader still open may hold it
                    con.close()
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=work, name="kprobe-sql", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        # Interrupt until DuckDB gives the thread back (an interrupt does not stick: a
        # statement that had not begun, its tables still opening, would begin after it),
        # within a bound. The CLI then leaves without the interpreter's shutdown, so a
        # thread still inside DuckDB cannot abort or hold it.
        give_up = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < give_up:
            if opened:
                opened[0].interrupt()
            done.wait(0.05)
        outcome.clear()
        raise CommandError("interrupted: the statement was cancelled", 130,
                           leave_now=True) from None
    error = outcome.get("error")
    if isinstance(error, duckdb.Error):
        raise QueryError(" ".join(str(error).split())) from None
    if error is not None:
        raise error
    result: QueryResult = outcome["result"]
    return result


def _check_writable(path: Path) -> None:
    """Refuse before running the statement: an output whose directory does not exist."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"cannot write {path}: directory {parent} does not exist")
    if path.is_dir():
        raise CommandError(f"cannot write {path}: it is a directory")


def _write_text(table: pa.Table, fmt: str, out: Any, truncated: bool) -> None:
    if fmt == "csv":
        buffer = pa.BufferOutputStream()
        pacsv.write_csv(_printable(table), buffer)
        out.write(buffer.getvalue().to_pybytes().decode())
    elif fmt == "json":  # NaN and infinities as null: valid JSON
        json.dump(finite(table).to_pylist(), out, default=_json_default, allow_nan=False)
        out.write("\n")
    elif table.column_names == ["explain_key", "explain_value"]:  # plans are multi-line art
        for key, value in zip(*(c.to_pylist() for c in table.columns)):
            out.write(f"{key}:\n{value}\n")
    else:
        out.write(render_table(table))
        if truncated:
            out.write(f"(stopped at {table.num_rows} rows; use --max-rows or --format csv)\n")


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return str(value)


def _printable(table: pa.Table) -> pa.Table:
    """CSV holds numbers, booleans, text, dates and times: lists and structs become JSON
    text, binary base64, anything else (INTERVAL, durations, maps...) its text."""
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_list(kind) or pa.types.is_struct(kind) or pa.types.is_map(kind):
            column = pa.array([None if v is None else json.dumps(v, default=_json_default)
                               for v in column.to_pylist()], pa.string())
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            column = pa.array([None if v is None else base64.b64encode(v).decode()
                               for v in column.to_pylist()], pa.string())
        elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                  or pa.types.is_boolean(kind) or pa.types.is_string(kind)
                  or pa.types.is_large_string(kind) or pa.types.is_decimal(kind)
                  or pa.types.is_date(kind) or pa.types.is_timestamp(kind)
                  or pa.types.is_null(kind)):
            column = pa.array([None if v is None else _text(v) for v in column.to_pylist()],
                              pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _text(value: object) -> str:
    """A value CSV cannot hold as text: an INTERVAL as months, days and nanoseconds."""
    if isinstance(value, pa.MonthDayNano):
        return f"{value.months} months {value.days} days {value.nanoseconds} ns"
    return str(value)


# Columns that hold instants (epoch ns), shown as UTC times in text tables. Durations
# (dur_ns, delay_ns...) stay numbers.
_INSTANT_NAMES = ("ts_ns", "start_ns", "end_ns", "cutoff_ns", "time_ns", "created_ns")
_EPOCH_FLOOR_NS = 10**17  # after 1973: smaller integers are not instants


def _is_instant(name: str, kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) and (name in _INSTANT_NAMES
                                          or name.endswith(tuple(f"_{n}" for n in
                                                                 _INSTANT_NAMES)))


def render_table(table: pa.Table, max_width: int = 60) -> str:
    """A plain text table for people (right-aligned numbers, truncated wide cells)."""
    names = table.column_names
    instants = [_is_instant(n, t) for n, t in zip(names, table.schema.types)]
    rows = [[_instant(v) if instant else _cell(v, max_width)
             for v, instant in zip(row.values(), instants)] for row in table.to_pylist()]
    numeric = [(pa.types.is_integer(t) or pa.types.is_floating(t)) and not instant
               for t, instant in zip(table.schema.types, instants)]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip() + "\n"

    out = [line(names), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")
    return "".join(out)


def _instant(value: object) -> str:
    if isinstance(value, int) and value >= _EPOCH_FLOOR_NS:
        return format_instant(value)
    return "NULL" if value is None else str(value)


def _cell(value: object, max_width: int) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"
