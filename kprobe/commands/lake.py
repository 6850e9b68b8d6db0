"""``kprobe lake retain|compact``: lake housekeeping."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from kprobe.commands._common import add_format_option, add_lake_option, lake_settings
from kprobe.errors import CommandError
from lake import TABLE_NAMES, resolve
from lake.maintenance import TableReport, compact, parse_duration, retain


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("lake", help="lake housekeeping: retention and compaction")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    ret = actions.add_parser("retain", help="drop hour partitions older than --keep, vacuum")
    ret.add_argument("--keep", required=True, metavar="DURATION", help="e.g. 24h, 7d")
    _common(ret)

    com = actions.add_parser("compact", help="merge small files into large ones, vacuum")
    com.add_argument("--target-size-mb", type=int, default=128)
    _common(com)
    parser.set_defaults(func=run)


def _common(parser: argparse.ArgumentParser) -> None:
    add_lake_option(parser)
    add_format_option(parser)
    parser.add_argument("--table", action="append", choices=TABLE_NAMES,
                        help="only this table (repeatable; default all)")
    parser.add_argument("--vacuum-after", default="1h", metavar="DURATION",
                        help="delete unreferenced files older than this (default 1h, so "
                        "readers of older snapshots keep working)")


def run(args: argparse.Namespace) -> int:
    location = resolve(lake_settings(args))
    try:
        vacuum_h = parse_duration(args.vacuum_after) // 3_600_000_000_000
        if args.action == "retain":
            keep = parse_duration(args.keep)
    except ValueError as err:
        raise CommandError(str(err)) from None
    if args.action == "retain":
        reports = retain(location, keep, tables=args.table, vacuum_after_hours=vacuum_h)
    else:
        reports = compact(location, tables=args.table, vacuum_after_hours=vacuum_h,
                          target_size=args.target_size_mb * 1024 * 1024)
    _print(reports, args.format)
    return 0


def _print(reports: list[TableReport], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([asdict(r) for r in reports]))
        return
    for r in reports:
        hours = f", dropped hours {', '.join(r.dropped_hours)}" if r.dropped_hours else ""
        print(f"{r.table}: removed {r.removed_files} file(s), added {r.added_files}, "
              f"vacuumed {r.vacuumed_files}{hours}")
