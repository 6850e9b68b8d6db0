"""Writer: one commit per batch, partitioned paths, and retried flushes never duplicate."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
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
