"""Writer: one commit per batch, partitioned paths, and retried flushes never duplicate."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from lake import LakeSettings, LakeWriter, connect, resolve

HOUR_NS = 3_600_000_000_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def _writer(lake_dir: Path, node: str = "n1", writer_id: str = "agentA") -> LakeWriter:
    return LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node=node), writer_id)


def test_partition_paths_are_node_then_utc_hour(lake_dir: Path) -> None:
    writer = _writer(lake_dir, node="edge-7")
    writer.append("syscalls", pa.table({"ts_ns": [T0, T0 + HOUR_NS + 5]}))
    parts = sorted(p.relative_to(lake_dir).parent.as_posix()
                   for p in lake_dir.rglob("*.parquet"))
    assert parts == [
        "v1/syscalls/node=edge-7/hour=2026-01-01T00",
        "v1/syscalls/node=edge-7/hour=2026-01-01T01",
    ]


def test_each_batch_is_one_delta_commit(lake_dir: Path) -> None:
    writer = _writer(lake_dir)
    first = writer.append("net", pa.table({"ts_ns": [T0, T0 + 1]}))
    second = writer.append("net", pa.table({"ts_ns": [T0 + 2]}))
    assert second.version == (first.version or 0) + 1
    assert first.batch_id == "agentA-1" and second.batch_id == "agentA-2"


def test_retried_commit_of_the_same_batch_writes_nothing_twice(lake_dir: Path) -> None:
    """GIVEN a committed batch WHEN the same prepared batch is committed again (a retry
    after an ambiguous failure) THEN no rows are duplicated and the retry says so."""
    writer = _writer(lake_dir)
    batch = writer.prepare("spans", pa.table({
        "trace_id": ["a" * 32, "a" * 32], "span_id": ["1" * 16, "2" * 16],
        "start_ns": [T0, T0 + 1]}))
    first = writer.commit(batch)
    retry = writer.commit(batch)
    assert not first.duplicate and retry.duplicate
    con = connect(resolve(LakeSettings(lake=str(lake_dir))))
    assert con.execute("select count(*), count(distinct batch_id) from spans").fetchone() == (2, 1)


def test_a_restarted_writer_with_the_same_id_skips_batches_that_landed(lake_dir: Path) -> None:
    """A spooled batch uploaded again after an agent restart is recognised by its id."""
    batch = _writer(lake_dir).prepare("lost", pa.table({"ts_ns": [T0], "count": [3]}))
    _writer(lake_dir).commit(batch)
    again = _writer(lake_dir).commit(batch)  # a new process, same writer id and seq
    assert again.duplicate
    assert DeltaTable(str(lake_dir / "v1" / "lost")).to_pyarrow_table().num_rows == 1


def test_two_writers_do_not_shadow_each_other(lake_dir: Path) -> None:
    a, b = _writer(lake_dir, writer_id="a"), _writer(lake_dir, writer_id="b")
    a.append("mem", pa.table({"ts_ns": [T0]}))
    b.append("mem", pa.table({"ts_ns": [T0]}))  # b's seq 1 is not a's seq 1
    con = connect(resolve(LakeSettings(lake=str(lake_dir))))
    assert con.execute("select count(*) from mem").fetchone() == (2,)


def test_empty_batch_commits_nothing(lake_dir: Path) -> None:
    writer = _writer(lake_dir)
    writer.append("sched", pa.table({"ts_ns": [T0]}))
    result = writer.append("sched", pa.table({"ts_ns": pa.array([], pa.int64())}))
    assert result.rows == 0 and result.version is None


def test_a_writer_with_its_own_id_reads_the_lake_only_for_its_first_commit(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GIVEN a writer whose id it made up (no other writer can use it) WHEN it commits
    batch after batch THEN only the first asks the lake what landed; a retry of a
    committed batch is still recognised, without asking."""
    writer = LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node="n1"))
    reads: list[str] = []
    original = DeltaTable.transaction_version

    def counting(self: DeltaTable, app_id: str) -> int | None:
        reads.append(app_id)
        return original(self, app_id)

    monkeypatch.setattr(DeltaTable, "transaction_version", counting)
    batches = [writer.prepare("mem", pa.table({"ts_ns": [T0 + i]})) for i in range(3)]
    results = [writer.commit(b) for b in batches]
    assert [r.version is not None for r in results] == [True, True, True]
    assert len(reads) == 1
    assert writer.commit(batches[1]).duplicate and len(reads) == 1
    # a batch of another writer id (e.g. from the spool) is always checked against the lake
    other = LakeWriter.from_settings(LakeSettings(lake=str(lake_dir), node="n1"), "other")
    writer.commit(other.prepare("mem", pa.table({"ts_ns": [T0]})))
    assert reads[-1] == "other"
    assert DeltaTable(str(lake_dir / "v1" / "mem")).to_pyarrow_table().num_rows == 4
