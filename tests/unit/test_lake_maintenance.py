"""Retention drops whole old hours only; compaction merges files without changing rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from kprobe.lake import LakeSettings, LakeWriter, connect, resolve
from kprobe.lake.maintenance import compact, retain
from kprobe.lake.timespec import parse_duration

HOUR = 3_600_000_000_000
NOW = 1_767_225_600_000_000_000 + 48 * HOUR + 30 * 60 * 10**9  # 2026-01-03T00:30Z


def test_parse_duration() -> None:
    assert parse_duration("24h") == 24 * HOUR
    assert parse_duration("90m") == 90 * 60 * 10**9
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_retain_drops_hours_older_than_keep_and_keeps_the_rest(lake_dir: Path) -> None:
    settings = LakeSettings(lake=str(lake_dir))
    writer = LakeWriter.from_settings(settings)
    # one row per hour, for the 30 hours before NOW
    ts = [NOW - h * HOUR for h in range(30)]
    writer.append("sched", pa.table({"ts_ns": ts}))
    location = resolve(settings)
    [report] = retain(location, 24 * HOUR, tables=["sched"], vacuum_after_hours=0, now_ns=NOW)
    assert len(report.dropped_hours) == 5  # hours 25..29 before NOW are wholly older
    con = connect(location)
    oldest_kept = con.execute("select min(ts_ns) from sched").fetchone()[0]
    assert oldest_kept == NOW - 24 * HOUR  # the hour holding the cutoff is kept whole
    assert con.execute("select count(*) from sched").fetchone() == (25,)
    assert report.vacuumed_files > 0  # the dropped files are gone from disk
    assert not any("2026-01-01T19" in str(p) for p in lake_dir.rglob("*.parquet"))


def test_compact_merges_small_files_and_keeps_every_row(lake_dir: Path) -> None:
    settings = LakeSettings(lake=str(lake_dir))
    writer = LakeWriter.from_settings(settings)
    for i in range(6):
        writer.append("net", pa.table({"ts_ns": [NOW + i], "bytes": [i]}))
    location = resolve(settings)
    [report] = compact(location, tables=["net"], vacuum_after_hours=0)
    assert report.removed_files == 6 and report.added_files == 1
    con = connect(location)
    assert con.execute("select count(*), sum(bytes) from net").fetchone() == (6, 15)
    assert len(list(lake_dir.rglob("*.parquet"))) == 1


def test_an_agents_writer_appends_exactly_once_across_compactions_behind_its_back(
        lake_dir: Path) -> None:
    # GIVEN an agent's long-lived writer appending a batch per flush (a file each), and a
    # maintenance job compacting the same table between its commits (the chart's CronJob)
    settings = LakeSettings(lake=str(lake_dir))
    writer = LakeWriter.from_settings(settings)
    writer.checkpoint_every = 5  # reloads from checkpoints several times in the run
    location = resolve(settings)
    removed = 0
    for i in range(40):
        writer.append("net", pa.table({"ts_ns": [NOW + i], "bytes": [i]}))
        if i % 13 == 12:
            [report] = compact(location, tables=["net"], vacuum_after_hours=0)
            removed += report.removed_files

    # THEN every batch landed once, the compactions merged files, and the table is left
    # with the files appended since the last compaction plus the merged one
    assert removed >= 36
    con = connect(location)
    assert con.execute("select count(*), count(distinct batch_id), sum(bytes) from net"
                       ).fetchone() == (40, 40, sum(range(40)))
    # (compactions after appends 13, 26, 39; then append 40 made one more file)
    assert len(DeltaTable(location.for_deltalake("net")).file_uris()) == 2
