"""``kprobe sql "SELECT …"``: one read-only statement over the lake."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from kprobe.commands._common import add_lake_option, lake_settings
from kprobe.errors import CommandError
from lake import resolve
from lake.query import run_query


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "sql",
        help="run one read-only SQL statement over the lake",
        description="Run one read-only statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, "
        "EXPLAIN) over the lake tables with DuckDB. Tables: sched, offcpu, syscalls, "
        "syscall_data, net, mem, block_io, processes, kstacks, spans, lost, agent_meta, "
        "causal_edges.",
    )
    parser.add_argument("statement", help="the SQL statement")
    add_lake_option(parser)
    parser.add_argument(
        "--format", choices=("text", "json", "csv", "parquet"), default="text",
        help="output format (parquet needs --output or a pipe)",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
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
    result = run_query(resolve(lake_settings(args)), args.statement, max_rows=max_rows)
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
    return 0


def _write_text(table: pa.Table, fmt: str, out: Any, truncated: bool) -> None:
    if fmt == "csv":
        buffer = pa.BufferOutputStream()
        pacsv.write_csv(_printable(table), buffer)
        out.write(buffer.getvalue().to_pybytes().decode())
    elif fmt == "json":
        json.dump(table.to_pylist(), out, default=_json_default)
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
    """CSV cannot hold lists or binary: render those columns as JSON / base64 text."""
    columns = []
    for column in table.columns:
        if pa.types.is_list(column.type) or pa.types.is_struct(column.type):
            column = pa.array([None if v is None else json.dumps(v, default=_json_default)
                               for v in column.to_pylist()], pa.string())
        elif pa.types.is_binary(column.type):
            column = pa.array([None if v is None else base64.b64encode(v).decode()
                               for v in column.to_pylist()])
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def render_table(table: pa.Table, max_width: int = 60) -> str:
    """A plain text table for people (right-aligned numbers, truncated wide cells)."""
    names = table.column_names
    rows = [[_cell(v, max_width) for v in row.values()] for row in table.to_pylist()]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]
    widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(parts).rstrip() + "\n"

    out = [line(names), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})\n")
    return "".join(out)


def _cell(value: object, max_width: int) -> str:
    text = "NULL" if value is None else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"
