"""What subcommands share: ``--lake`` and ``--format``, the check that a lake to read is
a kprobe lake, and JSON output that is valid JSON."""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from kprobe.errors import CommandError
from kprobe.lake import TABLE_NAMES, LakeLocation, LakeSettings, filesystem, resolve

FORMATS = ("text", "json")


def add_lake_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lake",
        default=None,
        metavar="URI",
        help="lake root: a path, file:///path or s3://bucket/prefix "
        "(default: $KPROBE_LAKE or file:///var/lib/kprobe/lake)",
    )


def add_format_option(
    parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS
) -> None:
    parser.add_argument("--format", choices=choices, default="text", help="output format")


def lake_settings(args: argparse.Namespace) -> LakeSettings:
    """Settings from the environment, with ``--lake`` taking precedence."""
    uri = getattr(args, "lake", None) or os.environ.get("KPROBE_LAKE")
    return LakeSettings(lake=uri) if uri else LakeSettings()


def lake_source(args: argparse.Namespace) -> str:
    """Where the lake URI came from, for error messages."""
    if getattr(args, "lake", None):
        return "--lake"
    return "$KPROBE_LAKE" if os.environ.get("KPROBE_LAKE") else "the default"


def open_lake(args: argparse.Namespace) -> LakeLocation:
    """The lake a read command reads; refused (exit 2) when no kprobe table is there, so a
    typo or a forgotten ``KPROBE_LAKE`` is one line, not an empty answer."""
    location = resolve(lake_settings(args))
    require_kprobe_tables(location, lake_source(args))
    return location


def require_kprobe_tables(location: LakeLocation, source: str = "--lake") -> None:
    """Raise CommandError unless ``{root}/v1/`` holds at least one kprobe table."""
    fs, root = filesystem(location)
    try:
        entries = fs.get_file_info(pafs.FileSelector(f"{root}/v1", allow_not_found=True))
    except (OSError, pa.ArrowException) as err:
        reason = " ".join(str(err).split())[:200]
        raise CommandError(f"cannot list the lake {location.root} ({source}): {reason}") from None
    found = {e.base_name for e in entries if e.type == pafs.FileType.Directory}
    if not found & set(TABLE_NAMES):
        raise CommandError(
            f"no kprobe tables at {location.root} (from {source}; looked for "
            f"{location.root}/v1/<table>/ with <table> one of spans, sched, offcpu, ...): "
            "not a kprobe lake; check --lake or $KPROBE_LAKE")


def finite(table: pa.Table) -> pa.Table:
    """``table`` with NaN and infinities of its float columns as nulls (JSON has neither)."""
    columns = []
    for column in table.columns:
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, column.type))
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float as None (for documents built in Python)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(document: Any, default: Any = str) -> str:
    """Valid JSON: non-finite floats become null, never ``NaN`` or ``Infinity``."""
    return json.dumps(json_safe(document), default=default, allow_nan=False)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse turns the error into one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def recorded_in(location: LakeLocation, start_ns: int, end_ns: int,
                nodes: tuple[str, ...] = ()) -> dict[str, bool]:
    """Whether ``spans`` and ``sched`` hold any row in ``[start_ns, end_ns)`` (partitions
    pruned, the first row found ends each look)."""
    from kprobe.lake import connect, scan

    con = connect(location, ["spans", "sched"])
    try:
        return {table: con.execute(f"SELECT 1 FROM {scan(table, nodes, start_ns, end_ns)} x "
                                   "LIMIT 1").fetchone() is not None
                for table in ("spans", "sched")}
    finally:
        con.close()
