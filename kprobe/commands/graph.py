"""``kprobe graph QUERY ARGS`` / ``--cypher``: query the analysed windows' causal graphs."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import pyarrow as pa

from kprobe.commands._common import (
    add_format_option,
    add_lake_option,
    dumps,
    finite,
    open_lake,
)
from kprobe.commands.analyze import compute_settings
from kprobe.commands.sql import render_table
from kprobe.compute.graph import select_snapshots
from kprobe.compute.graph.queries import NAMED_QUERIES, run_cypher, run_named
from kprobe.errors import CommandError
from kprobe.lake.timespec import parse_instant


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    names = "\n".join(f"  {q.name} {' '.join(q.args)}\n      {q.help}"
                      for q in NAMED_QUERIES.values())
    parser = sub.add_parser(
        "graph",
        help="named or Cypher queries over the causal graphs of analysed windows",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a named query (or --cypher STATEMENT) on the graph snapshot of "
        "every analysed window (or those picked with --window/--from/--to); snapshots are "
        "opened read-only.\n\nqueries:\n" + names
        + "\n  windows\n      the analysed windows and their graph sizes",
    )
    parser.add_argument("query", nargs="?", metavar="QUERY",
                        help="a named query, or 'windows'")
    parser.add_argument("args", nargs="*", metavar="ARG", help="the query's arguments")
    parser.add_argument("--cypher", metavar="STATEMENT", help="run this Cypher statement")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a $NAME parameter for --cypher (integers stay integers)")
    parser.add_argument("--window", action="append", default=None, metavar="WINDOW_ID",
                        help="only this window (repeatable)")
    parser.add_argument("--from", dest="start", default=None, metavar="TIME",
                        help="only windows ending after this time (now, -15m, RFC 3339, "
                        "epoch with a unit)")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME",
                        help="only windows starting before this time")
    add_lake_option(parser)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    location = open_lake(args)
    settings = compute_settings()
    if bool(args.query) == bool(args.cypher):
        raise CommandError("give a named query or --cypher STATEMENT (kprobe graph --help)")
    snapshots = select_snapshots(
        location, window_ids=args.window,
        start_ns=parse_instant(args.start) if args.start else None,
        end_ns=parse_instant(args.end) if args.end else None)
    if args.query == "windows" and not args.cypher:
        table = pa.table({
            "window": [s.window_id for s in snapshots],
            "start_ns": pa.array([s.window.start_ns for s in snapshots], pa.int64()),
            "end_ns": pa.array([s.window.end_ns for s in snapshots], pa.int64()),
            "spans": [s.manifest.get("counts", {}).get("Span") for s in snapshots],
            "episodes": [s.manifest.get("counts", {}).get("KernelEpisode") for s in snapshots],
            "graph": [s.uri for s in snapshots]})
        _print(table, args.format)
        return 0
    if args.cypher:
        params = _params(args.param)
        unbound = sorted(set(cypher_parameters(args.cypher)) - set(params))
        if unbound:
            raise CommandError(f"unbound parameter ${unbound[0]} in the statement: pass "
                               f"--param {unbound[0]}=VALUE")
        table = run_cypher(location, snapshots, args.cypher, params, settings)
    else:
        table = run_named(location, snapshots, args.query, args.args, settings)
        if args.query == "root-cause" and table.num_rows == 0:
            where = ", ".join(s.window_id for s in snapshots[:3])
            more = f" and {len(snapshots) - 3} more" if len(snapshots) > 3 else ""
            raise CommandError(f"no failed operation of a transaction, trace or span "
                               f"{args.args[0]!r} in the analysed windows ({where}{more})")
    _print(table, args.format)
    return 0


_STRING_OR_COMMENT = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|//[^\n]*"
                                r"|/\*.*?\*/", re.S)
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def cypher_parameters(statement: str) -> list[str]:
    """The ``$name`` parameters a Cypher statement uses (outside strings and comments)."""
    return _PARAMETER.findall(_STRING_OR_COMMENT.sub(" ", statement))


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--param takes NAME=VALUE, got {pair!r}")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    return params


def _print(table: pa.Table, fmt: str) -> None:
    if fmt == "json":  # NaN and infinities as null: valid JSON
        print(dumps(finite(table).to_pylist()))
    else:
        sys.stdout.write(render_table(table, max_width=80))
