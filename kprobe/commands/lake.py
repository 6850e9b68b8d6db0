"""``kprobe lake retain|compact``: lake housekeeping."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from kprobe.commands._common import (
    add_format_option,
    add_lake_option,
    lake_settings,
    lake_source,
    positive_int,
    require_kprobe_tables,
)
from kprobe.errors import CommandError
from kprobe.lake import TABLE_NAMES, payload_keys, resolve
from kprobe.lake.maintenance import TableReport, compact, retain
from kprobe.lake.timespec import parse_duration


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "lake", help="lake housekeeping: retention, compaction, payload keys",
        description="retain: drop hours past --keep; compact: merge small files (run it "
        "every few minutes where agents write); new-key: a payload encryption key.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    ret = actions.add_parser("retain", help="drop hour partitions older than --keep, vacuum")
    ret.add_argument("--keep", required=True, metavar="DURATION",
                     help="drop hours older than this, e.g. 24h, 7d")
    ret.add_argument("--keep-payloads", metavar="DURATION",
                     help="keep what programs exchanged (syscall_data, the environments in "
                     "processes.env) only this long, e.g. 24h (default: as --keep)")
    _common(ret)

    key = actions.add_parser(
        "new-key", help="make a payload encryption key (X25519) and make it the active one",
        description="Adds a key to --key-file (the readers' file: replays, kprobe serve, "
        "kprobe sql; created mode 0600) as the active key, and writes --public-out (the "
        "agents' file: public halves only, to seal with). Point KPROBE_PAYLOAD_KEY_FILE at "
        "the agents' file on capture nodes and at the readers' file where payloads are read.")
    key.add_argument("--key-file", required=True, type=Path, metavar="PATH",
                     help="the readers' key file (created mode 0600, or a key added to it)")
    key.add_argument("--public-out", type=Path, metavar="PATH",
                     help="also write the agents' file (the active public key only)")
    key.set_defaults(func=_new_key)

    com = actions.add_parser("compact", help="merge small files into large ones, vacuum")
    com.add_argument("--target-size-mb", type=positive_int, default=128, metavar="MB",
                     help="size to merge files up to, in MiB (default 128)")
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
    try:
        vacuum_h = parse_duration(args.vacuum_after, allow_zero=True) // 3_600_000_000_000
        if args.action == "retain":
            keep = parse_duration(args.keep)
            keep_payloads = (parse_duration(args.keep_payloads)
                             if args.keep_payloads is not None else None)
    except ValueError as err:
        raise CommandError(str(err)) from None
    location = resolve(lake_settings(args))
    require_kprobe_tables(location, lake_source(args))
    if args.action == "retain":
        reports = retain(location, keep, keep_payloads_ns=keep_payloads, tables=args.table,
                         vacuum_after_hours=vacuum_h)
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
        if r.scrubbed_hours:
            hours += f", sensitive columns nulled in hours {', '.join(r.scrubbed_hours)}"
        print(f"{r.table}: removed {r.removed_files} file(s), added {r.added_files}, "
              f"vacuumed {r.vacuumed_files}{hours}")


def _new_key(args: argparse.Namespace) -> int:
    try:
        kid = payload_keys.new_key(args.key_file, args.public_out)
    except OSError as err:
        raise CommandError(f"cannot write the key file: {err.strerror or err}") from None
    print(f"key {kid} is now active in {args.key_file}"
          + (f"; agents' file {args.public_out}" if args.public_out else ""))
    return 0
