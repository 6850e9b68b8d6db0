"""Open tables kept between reads (``TableCache``) and the shared DuckDB database
(``LakeDatabase``): never an answer older than the last commit, and the lockdown holds on
every cursor."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import duckdb
import pytest

from kprobe.lake import LakeDatabase, LakeSettings, LakeWriter, TableCache, resolve
from kprobe.lake.storage import LakeLocation

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _location(lake_dir: Path) -> LakeLocation:
    return resolve(LakeSettings(lake=str(lake_dir)))


def _commit(lake_dir: Path, count: int) -> None:
    """One commit of one row, from a writer of its own (writer ids are per batch here)."""
    LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node="n1"), f"w{count}").append(
        "lost", {"ts_ns": [T0 + count], "source": ["test"], "count": [count]})


def _rows(db: LakeDatabase) -> int:
    with db.session(["lost"]) as con:
        [(n,)] = con.execute("SELECT count(*) FROM lost").fetchall()
    return int(n)


def test_every_read_after_a_commit_sees_it(lake_dir: Path) -> None:
    # GIVEN a database whose cache already holds the table (and one not created yet)
    db = LakeDatabase(_location(lake_dir))
    assert _rows(db) == 0 and db.tables.snapshot("lost").version is None
    versions: list[int] = []
    for i in range(1, 6):
        # WHEN a commit lands THEN the very next read has it, every time
        _commit(lake_dir, i)
        assert _rows(db) == i
        version = db.tables.snapshot("lost").version
        assert version is not None
        versions.append(version)
    assert versions == sorted(set(versions))  # one new version per commit


def test_a_removed_table_reads_as_not_created_not_as_its_old_files(lake_dir: Path) -> None:
    # GIVEN a database whose cache holds a table with rows
    db = LakeDatabase(_location(lake_dir))
    _commit(lake_dir, 1)
    _commit(lake_dir, 2)
    assert _rows(db) == 2
    # WHEN the table's directory is removed (deltalake's handle does not notice: it would
    # still list the two removed Parquet files, and every read would fail on them)
    shutil.rmtree(lake_dir / "v1" / "lost")
    # THEN it reads as a table not created yet, and a new commit is read again
    assert _rows(db) == 0 and db.tables.snapshot("lost").version is None
    _commit(lake_dir, 3)
    assert _rows(db) == 1


def test_an_unchanged_table_is_not_rebuilt(lake_dir: Path) -> None:
    _commit(lake_dir, 1)
    cache = TableCache(_location(lake_dir))
    first = cache.snapshot("lost")
    again = cache.snapshot("lost")
    assert again is first  # same dataset object: only the log was checked
    _commit(lake_dir, 2)
    assert cache.snapshot("lost").version == first.version + 1  # type: ignore[operator]


def test_a_staleness_allowance_shares_one_check(lake_dir: Path) -> None:
    _commit(lake_dir, 1)
    cache = TableCache(_location(lake_dir), max_staleness_s=60)
    first = cache.snapshot("lost")
    checks = cache.checks
    _commit(lake_dir, 2)
    # within the allowance the earlier check answers (documented: commits up to 60 s late)
    assert cache.snapshot("lost") is first and cache.checks == checks


def test_concurrent_readers_share_checks_and_all_see_the_commit(lake_dir: Path) -> None:
    _commit(lake_dir, 1)
    cache = TableCache(_location(lake_dir))
    before = cache.snapshot("lost").version
    _commit(lake_dir, 2)
    seen: list[int | None] = []
    start = threading.Barrier(16)

    def read() -> None:
        start.wait()
        seen.append(cache.snapshot("lost").version)

    checks = cache.checks
    threads = [threading.Thread(target=read) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert before is not None and seen == [before + 1] * 16
    assert cache.checks - checks <= 16


def test_cursors_are_locked_down_and_do_not_share_state(lake_dir: Path) -> None:
    _commit(lake_dir, 1)
    db = LakeDatabase(_location(lake_dir), threads=1, memory_limit="1GiB")
    with db.session(["lost"]) as con:
        for statement in ("SELECT * FROM read_csv('/etc/passwd')", "SET threads = 2",
                          "INSTALL httpfs", "ATTACH '/tmp/kprobe-other.db' AS other"):
            with pytest.raises(duckdb.Error):
                con.execute(statement)
        con.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    with db.session(["spans"]) as con:
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT * FROM scratch")  # the last session's temp table is gone
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT * FROM lost")  # only the tables asked for are there
        [(threads, limit)] = con.execute(
            "SELECT current_setting('threads'), current_setting('memory_limit')").fetchall()
    assert int(threads) == 1 and limit.replace(" ", "").startswith("1.0GiB")


def test_a_session_keeps_its_version_while_a_commit_lands(lake_dir: Path) -> None:
    _commit(lake_dir, 1)
    db = LakeDatabase(_location(lake_dir))
    with db.session(["lost"]) as con:
        _commit(lake_dir, 2)
        time.sleep(0.01)
        # a statement sees one version: the one its session started with
        assert con.execute("SELECT count(*) FROM lost").fetchall() == [(1,)]
    assert _rows(db) == 2


def test_old_log_files_are_cleaned_up_and_a_reader_behind_them_still_reads(lake_dir: Path) -> None:
    from deltalake import DeltaTable

    from kprobe.lake.writer import LOG_RETENTION

    # GIVEN a table made by the writer: its log keeps LOG_RETENTION of commits
    writer = LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node="n1"))
    writer.append("lost", {"ts_ns": [T0], "source": ["test"], "count": [0]})
    log_dir = lake_dir / "v1" / "lost" / "_delta_log"
    dt = DeltaTable(str(log_dir.parent))
    assert dt.metadata().configuration["delta.logRetentionDuration"] == LOG_RETENTION
    # and a reader that has it open
    cache = TableCache(_location(lake_dir))
    assert cache.snapshot("lost").version is not None
    # WHEN the retention is shortened to nothing and 60 commits follow
    dt.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})
    for i in range(1, 61):
        writer.append("lost", {"ts_ns": [T0 + i], "source": ["test"], "count": [i]})
    # THEN the commit files before the last checkpoint are gone
    commits = sorted(log_dir.glob("*.json"))
    assert len(commits) < 30, [c.name for c in commits]
    # and the reader, whose next commit file was deleted, still reads everything
    snapshot = cache.snapshot("lost")
    assert snapshot.version == DeltaTable(str(log_dir.parent)).version()
    assert snapshot.dataset.count_rows() == 61
