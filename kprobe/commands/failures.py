"""``kprobe failures``: failed business transactions in a time range, with root cause and
culprit, a page at a time.

The listing is the API's ``GET /v1/transactions?status=failed`` (one query:
``query_api.causal.list_transactions``), so a page and its cursor mean the same in both.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import pyarrow as pa

from kprobe.commands._common import (
    add_format_option,
    add_lake_option,
    dumps,
    open_lake,
    positive_int,
)
from kprobe.commands.analyze import compute_settings
from kprobe.commands.sql import render_table
from kprobe.compute.explain import fmt_ns
from kprobe.errors import CommandError
from kprobe.lake.timespec import parse_instant
from kprobe.query_api.causal import Cursor, list_transactions

MAX_LIMIT = 10_000


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "failures",
        help="failed transactions in a time range, with root cause and culprit",
        description="List the failed business transactions (a payment that timed out or "
        "erred, or any operation of it that did) of the analysed windows, newest first: "
        "when, which, the failure, its root cause and the process or thread behind it. "
        "Run kprobe analyze for the range first; kprobe explain ID shows one in full. "
        "Large ranges come a page at a time: the last line gives the command for the next "
        "page (--cursor).",
    )
    parser.add_argument("--from", dest="start", default=None, metavar="TIME",
                        help="only transactions starting at or after this time (now, -15m, "
                        "RFC 3339 with a zone, epoch with a unit; default: the first window)")
    parser.add_argument("--to", dest="end", default=None, metavar="TIME",
                        help="only transactions starting before this time (default: the "
                        "last window)")
    parser.add_argument("--service", default=None, metavar="NAME",
                        help="only transactions with an operation of this service")
    parser.add_argument("--kind", default=None, metavar="KIND",
                        help="only this root-cause kind (memory_pressure, cpu_contention, "
                        "disk, network, lock_wait, remote_call, app_cpu, ...) or failure "
                        "kind (timeout, error)")
    parser.add_argument("--limit", type=positive_int, default=50, metavar="N",
                        help=f"at most N per page (default 50, at most {MAX_LIMIT})")
    parser.add_argument("--cursor", default=None, metavar="TOKEN",
                        help="the page after the one that printed this token")
    parser.add_argument("--oldest-first", action="store_true",
                        help="oldest first (default: newest first)")
    add_lake_option(parser)
    add_format_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    location = open_lake(args)
    start = parse_instant(args.start) if args.start else None
    end = parse_instant(args.end) if args.end else None
    if start is not None and end is not None and end <= start:
        raise CommandError("--to must be after --from")
    items, next_cursor = list_transactions(
        location, compute_settings(), status="failed", start_ns=start, end_ns=end,
        limit=min(args.limit, MAX_LIMIT),
        cursor=Cursor.decode(args.cursor) if args.cursor else None, service=args.service,
        order="asc" if args.oldest_first else "desc", kind=args.kind)
    token = next_cursor.encode() if next_cursor else None
    if args.format == "json":
        print(dumps({"items": items, "next_cursor": token}))
        return 0
    if not items:
        print("no failed transactions" + (" on this page" if args.cursor else
                                          " in the analysed windows for that range"))
        return 0
    sys.stdout.write(render_table(_table(items), max_width=60))
    if token:
        print(f"more: {_next_command(args, token)}")
    return 0


def _table(items: list[dict[str, Any]]) -> pa.Table:
    failures = [item["failure"] or {} for item in items]
    return pa.table({
        "start_ns": pa.array([item["start_ns"] for item in items], pa.int64()),
        "transaction": [item["business_id"] or item["txn_id"] or item["trace_id"]
                        for item in items],
        "operation": [f"{item['service']}: {item['name']}" for item in items],
        "took": [fmt_ns(item["dur_ns"]) for item in items],
        "failure": [_failure(f) for f in failures],
        "root_cause": [_root_cause(f) for f in failures],
        "culprit": [_culprit(f.get("culprit")) for f in failures],
    })


def _failure(failure: dict[str, Any]) -> str:
    kind = failure.get("failure_kind") or "error"
    if kind == "timeout" and failure.get("over_ns"):
        return f"timeout, {fmt_ns(failure['over_ns'])} late"
    message = failure.get("status_message")
    return f"{kind}: {message}" if message else kind


def _root_cause(failure: dict[str, Any]) -> str:
    kind = failure.get("root_cause_kind")
    if not kind:
        return "none found"
    delay = failure.get("root_cause_delay_ns")
    return f"{kind} {fmt_ns(delay)}" if delay else str(kind)


def _culprit(culprit: dict[str, Any] | None) -> str:
    if not culprit:
        return ""
    name = culprit.get("role") or culprit.get("comm") or "process"
    if culprit.get("tid") and culprit.get("tid") != culprit.get("pid"):
        return f"{name} TID {culprit['tid']} (PID {culprit['pid']})"
    return f"{name} PID {culprit.get('pid')}"


def _next_command(args: argparse.Namespace, token: str) -> str:
    argv = ["kprobe", "failures"]
    for flag, value in (("--lake", args.lake), ("--from", args.start), ("--to", args.end),
                        ("--service", args.service), ("--kind", args.kind)):
        if value:
            argv.append(f"{flag}={value}")
    if args.limit != 50:
        argv.append(f"--limit={args.limit}")
    if args.oldest_first:
        argv.append("--oldest-first")
    argv.append(f"--cursor={token}")
    return shlex.join(argv)
