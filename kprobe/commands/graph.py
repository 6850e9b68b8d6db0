"""``kprobe graph QUERY ARGS`` / ``--cypher``: query the analysed windows' causal graphs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pyarrow as pa

from compute.graph import list_snapshots, select_snapshots
from compute.graph.queries import NAMED_QUERIES, run_cypher, run_named
from kprobe.commands._common import add_format_option, add_lake_option, lake_settings
from kprobe.commands.analyze import compute_settings
from kprobe.commands.sql import render_table
from kprobe.errors import CommandError
from lake import resolve
from lake.timespec import parse_instant


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
    parser.add_argument("--from", dest="start", default=None, metavar="TIME")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME")
    add_lake_option(parser)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    location = resolve(lake_settings(args))
    settings = compute_settings()
    if args.query == "windows" and not args.cypher:
        snaps = list_snapshots(location)
        table = pa.table({
            "window": [s.window_id for s in snaps],
            "spans": [s.manifest.get("counts", {}).get("Span") for s in snaps],
            "episodes": [s.manifest.get("counts", {}).get("KernelEpisode") for s in snaps],
            "graph": [s.uri for s in snaps]})
        _print(table, args.format)
        return 0
    if bool(args.query) == bool(args.cypher):
        raise CommandError("give a named query or --cypher STATEMENT (kprobe graph --help)")
    snapshots = select_snapshots(
        location, window_ids=args.window,
        start_ns=parse_instant(args.start) if args.start else None,
        end_ns=parse_instant(args.end) if args.end else None)
    if args.cypher:
        table = run_cypher(location, snapshots, args.cypher, _params(args.param), settings)
    else:
        table = run_named(location, snapshots, args.query, args.args, settings)
    _print(table, args.format)
    return 0


def _params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--param takes NAME=VALUE, got {pair!r}")
        params[name] = int(value) if value.lstrip("-").isdigit() else value
    return params


def _print(table: pa.Table, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(table.to_pylist(), default=str))
    else:
        sys.stdout.write(render_table(table, max_width=80))
