"""The lake's public read surface: ``scan`` prunes partitions (the files of other hours and
nodes are never opened), every connection is locked, ``TableTail`` returns each appended
row once and says when rows were rewritten."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from kprobe import lake
from kprobe.lake import LakeSettings, LakeWriter, TableTail, UnknownTable, resolve, scan

HOUR = 3600 * 10**9
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _write(lake_dir: Path, node: str, times: list[int], writer: str) -> None:
    LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node=node), writer).append(
        "lost", {"ts_ns": times, "source": ["test"] * len(times), "count": [1] * len(times)})


def _count(con: duckdb.DuckDBPyConnection, item: str) -> int:
    [(n,)] = con.execute(f"SELECT count(*) FROM {item} x").fetchall()
    return int(n)


def _files(lake_dir: Path, node: str, hour: str) -> list[Path]:
    return list((lake_dir / "v1" / "lost" / f"node={node}" / f"hour={hour}").glob("*.parquet"))


def test_scan_reads_only_its_nodes_and_hours(lake_dir: Path) -> None:
    # GIVEN rows of two nodes in two hours (00 and 01)
    _write(lake_dir, "n1", [T0 + 5, T0 + HOUR - 1, T0 + HOUR + 5], "w1")
    _write(lake_dir, "n2", [T0 + 7, T0 + HOUR + 7], "w2")
    location = resolve(LakeSettings(lake=str(lake_dir)))
    con = lake.connect(location, ["lost"])
    # THEN the time range is half-open and nodes filter
    assert _count(con, scan("lost", ["n1"], T0, T0 + HOUR)) == 2
    assert _count(con, scan("lost", ["n1"], T0, T0 + HOUR - 1)) == 1
    assert _count(con, scan("lost", ["n1", "n2"], T0, T0 + 2 * HOUR)) == 5
    assert _count(con, scan("lost", [], T0 + HOUR, T0 + 2 * HOUR)) == 2
    assert _count(con, scan("lost", ["n'3"], T0, T0 + 2 * HOUR)) == 0  # quoted, not SQL
    con.close()
    # WHEN the files of hour 01 and of node n2 disappear from storage
    doomed = (_files(lake_dir, "n1", "2026-01-01T01") + _files(lake_dir, "n2", "2026-01-01T00")
              + _files(lake_dir, "n2", "2026-01-01T01"))
    assert len(doomed) == 3
    for path in doomed:
        path.unlink()
    con = lake.connect(location, ["lost"])
    # THEN a scan of n1's hour 00 still answers: it never opened them (pruned) ...
    assert _count(con, scan("lost", ["n1"], T0, T0 + HOUR)) == 2
    assert _count(con, scan("lost", ["n1", "n3"], T0, T0 + HOUR)) == 2  # IN is pushed too
    # ... and the control: a scan that needs them fails
    with pytest.raises(duckdb.Error):
        _count(con, scan("lost", ["n1"], T0, T0 + 2 * HOUR))
    with pytest.raises(duckdb.Error):
        _count(con, scan("lost", ["n2"], T0, T0 + HOUR))
    con.close()


def test_scan_refuses_an_unknown_table() -> None:
    with pytest.raises(UnknownTable, match="unknown table 'lost; drop'"):
        scan("lost; drop", [], 0, 1)


def test_every_connection_is_locked(lake_dir: Path) -> None:
    _write(lake_dir, "n1", [T0], "w1")
    location = resolve(LakeSettings(lake=str(lake_dir)))
    con = lake.connect(location, ["lost"], checkpoint_threshold="1TB")
    assert con.execute("SELECT current_setting('checkpoint_threshold')").fetchone() != (
        "16.0 MiB",)
    with pytest.raises(duckdb.Error):  # the configuration is locked after registration
        con.execute("SET checkpoint_threshold = '16MB'")
    with pytest.raises(duckdb.Error):  # no files
        con.execute(f"SELECT * FROM read_parquet('{lake_dir}/**/*.parquet')").fetchall()
    con.close()


def test_tail_returns_appends_once_and_notices_rewrites(lake_dir: Path) -> None:
    location = resolve(LakeSettings(lake=str(lake_dir)))
    tail = TableTail(location, "lost")
    tail.reset()  # the table does not exist yet
    assert tail.poll() is None
    _write(lake_dir, "n1", [T0, T0 + 1], "w1")
    first = tail.poll()
    assert isinstance(first, lake.Appended) and first.rows.num_rows == 2
    assert set(first.rows.column("node").to_pylist()) == {"n1"}
    assert tail.poll() is None  # nothing new: nothing again
    _write(lake_dir, "n2", [T0 + 2], "w2")
    second = tail.poll()
    assert isinstance(second, lake.Appended) and second.rows.column("ts_ns").to_pylist() == [
        T0 + 2]
    # a delete of one row of n1's file rewrites it: its other row is not sent again
    lake.delete_where(location, "lost", f"ts_ns = {T0}")
    assert isinstance(tail.poll(), lake.Rewritten)
    assert tail.poll() is None
    # a reset starts from the table as it is: what is there already is never returned
    _write(lake_dir, "n1", [T0 + 3], "w3")
    tail.reset()
    assert tail.poll() is None
