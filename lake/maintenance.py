"""Keeping the lake small and fast: retention of old hours, compaction of small files.

Both are ordinary Delta commits: readers keep working during them, and a reader that
started before sees its snapshot until it finishes. Files are removed from storage only by
vacuum, after ``vacuum_after`` (default one hour) so that such readers are not broken.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pyarrow.dataset as pads
from deltalake import DeltaTable

from kprobe.lake._batches import hour_label
from kprobe.lake._deltaio import open_table, translate_errors
from kprobe.lake.schema import TABLE_NAMES, spec
from kprobe.lake.storage import LakeLocation


@dataclass
class TableReport:
    table: str
    removed_files: int = 0
    added_files: int = 0
    vacuumed_files: int = 0
    dropped_hours: list[str] = field(default_factory=list)
    scrubbed_hours: list[str] = field(default_factory=list)  # sensitive columns nulled


def delete_where(location: LakeLocation, table: str, predicate: str) -> None:
    """Delete the rows of ``table`` matching ``predicate`` (SQL over the table's columns,
    built by the caller from trusted values) in one Delta commit; a table not created yet
    has nothing to delete."""
    with translate_errors(f"delete from {table}"):
        dt = open_table(location, table)
        if dt is not None:
            dt.delete(predicate)


def retain(
    location: LakeLocation,
    keep_ns: int,
    *,
    keep_payloads_ns: int | None = None,
    tables: list[str] | None = None,
    vacuum_after_hours: int = 1,
    now_ns: int | None = None,
) -> list[TableReport]:
    """Drop every hour partition older than ``keep_ns`` (whole hours only), then vacuum.

    An hour is dropped when all of it is older than the cutoff, so nothing newer than
    ``keep_ns`` is ever removed.

    ``keep_payloads_ns`` (shorter): what programs exchanged is kept only that long. A table
    that is all payload (``syscall_data``, ``blobs``) loses its hours
    past it; a table with sensitive columns beside its events (``processes.env``) keeps its
    rows and gets those columns nulled in the hours past it (a rewrite of those hours'
    files, once: an hour already nulled is not rewritten again). The files replaced leave
    storage at the vacuum after ``vacuum_after_hours``.
    """
    now = time.time_ns() if now_ns is None else now_ns
    cutoff = hour_label(now - keep_ns)  # the hour holding the cutoff instant is kept
    payload_cutoff = cutoff if keep_payloads_ns is None else hour_label(
        now - min(keep_ns, keep_payloads_ns))
    reports = []
    for name in tables or list(TABLE_NAMES):
        report = TableReport(name)
        table_spec = spec(name)
        drop_before = payload_cutoff if table_spec.all_payload else cutoff
        with translate_errors(f"retain {name}"):
            dt = open_table(location, name)
            if dt is None:
                continue
            hours = {p["hour"] for p in dt.partitions()}
            old = sorted(h for h in hours if h < drop_before)
            if old:
                # Partition-only predicate: whole files are removed, no rewrite.
                metrics = dt.delete(f"hour < '{drop_before}'")
                report.removed_files = int(metrics.get("num_removed_files", 0))
                report.dropped_hours = old
            if table_spec.sensitive and not table_spec.all_payload:
                scrub = sorted(h for h in hours if drop_before <= h < payload_cutoff)
                report.scrubbed_hours = _scrub(dt, scrub, table_spec.sensitive)
            report.vacuumed_files = len(
                dt.vacuum(
                    retention_hours=vacuum_after_hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                )
            )
        reports.append(report)
    return reports


def _scrub(dt: DeltaTable, hours: list[str], columns: tuple[str, ...]) -> list[str]:
    """Null ``columns`` in those of ``hours`` that still hold a value; the hours rewritten."""
    if not hours:
        return []
    holding = pads.field(columns[0]).is_valid()
    for column in columns[1:]:
        holding = holding | pads.field(column).is_valid()
    found = dt.to_pyarrow_dataset().to_table(
        columns=["hour"], filter=pads.field("hour").isin(hours) & holding)
    dirty = sorted(set(found.column("hour").to_pylist()))
    if dirty:  # hour labels are YYYY-MM-DDTHH (hour_label): nothing to escape
        listed = ", ".join(f"'{h}'" for h in dirty)
        dt.update(updates=dict.fromkeys(columns, "NULL"), predicate=f"hour IN ({listed})")
    return dirty


def compact(
    location: LakeLocation,
    *,
    tables: list[str] | None = None,
    target_size: int = 128 * 1024 * 1024,
    vacuum_after_hours: int = 1,
) -> list[TableReport]:
    """Merge small files in each partition into files of about ``target_size`` bytes."""
    reports = []
    for name in tables or list(TABLE_NAMES):
        report = TableReport(name)
        with translate_errors(f"compact {name}"):
            dt = open_table(location, name)
            if dt is None:
                continue
            metrics = dt.optimize.compact(target_size=target_size)
            report.removed_files = int(metrics.get("numFilesRemoved", 0))
            report.added_files = int(metrics.get("numFilesAdded", 0))
            report.vacuumed_files = len(
                dt.vacuum(
                    retention_hours=vacuum_after_hours,
                    dry_run=False,
                    enforce_retention_duration=False,
                )
            )
        reports.append(report)
    return reports
