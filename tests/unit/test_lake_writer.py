"""Writer: one commit per batch, partitioned paths, and retried flushes never duplicate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from kprobe.lake import LakeSettings, LakeWriter, connect, resolve

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


# -- large batches: encoded by the writer, committed as file actions ----------------------
def _syscalls(rows: int, start_ns: int = T0, span_ns: int = 2 * HOUR_NS) -> pa.Table:
    seq = np.arange(rows, dtype=np.int64)
    return pa.table({
        "ts_ns": start_ns + seq * (span_ns // rows),
        "dur_ns": pa.array((seq * 7919) % 50_000, mask=seq % 10 == 0),
        "pid": (seq % 3).astype(np.int32),
        "comm": pa.array(["worker"] * (rows - 1) + [None]),
        "name": pa.array(["read", "write", "x" * 40][i % 3] for i in range(rows)),
        "args": pa.array([[1, 2, int(i)] for i in range(rows)], pa.list_(pa.int64())),
        "seq": seq,
    })


def _adds(lake_dir: Path, table: str) -> list[dict[str, object]]:
    """Add actions without what differs between two writes of the same rows."""
    dt = DeltaTable(str(lake_dir / "v1" / table))
    rows = pa.table(dt.get_add_actions(flatten=True)).to_pylist()
    varying = ("path", "size_bytes", "modification_time")
    return sorted(({k: v for k, v in r.items() if k not in varying and "batch_id" not in k}
                   for r in rows), key=lambda r: str(sorted(r.items())))


def test_a_large_batch_lands_as_write_deltalake_would_write_it(tmp_path: Path) -> None:
    """GIVEN the same batch, spanning two hours, written once by the writer's own encoder
    and once through write_deltalake WHEN both lakes are read THEN they hold the same rows,
    partitions, file statistics and one commit each."""
    lakes = {}
    for path in ("direct", "write_deltalake"):
        lakes[path] = tmp_path / path
        writer = _writer(lakes[path])
        writer.direct_min_rows = 1 if path == "direct" else 10**9
        result = writer.append("syscalls", _syscalls(5_000))
        assert result.version == 1 and not result.duplicate
    adds = {path: _adds(lake_dir, "syscalls") for path, lake_dir in lakes.items()}
    assert adds["direct"] == adds["write_deltalake"]
    assert sorted(a["partition.hour"] for a in adds["direct"]) == ["2026-01-01T00", "2026-01-01T01"]
    assert all(a["max.name"] == "x" * 40 and "min.args" not in a for a in adds["direct"])
    sql = ("select hour, count(*), count(dur_ns), min(ts_ns), max(seq), sum(len(args)),"
           " count(comm), count(distinct name) from syscalls group by hour order by hour")
    answers = {path: connect(resolve(LakeSettings(lake=str(d)))).execute(sql).fetchall()
               for path, d in lakes.items()}
    assert answers["direct"] == answers["write_deltalake"]
    assert [r[1] for r in answers["direct"]] == [2_500, 2_500]


def test_a_retried_large_batch_is_written_once(lake_dir: Path) -> None:
    writer = _writer(lake_dir)
    writer.direct_min_rows = 1
    batch = writer.prepare("syscalls", _syscalls(3_000))
    assert not writer.commit(batch).duplicate
    assert writer.commit(batch).duplicate
    assert _writer(lake_dir).commit(batch).duplicate  # a restarted agent, same writer id
    writer.append("syscalls", _syscalls(10))  # and the next batch still commits
    con = connect(resolve(LakeSettings(lake=str(lake_dir))))
    assert con.execute("select count(*), count(distinct batch_id) from syscalls").fetchone() == (
        3_010, 2)


def test_binary_columns_get_null_counts_but_no_bounds(tmp_path: Path) -> None:
    adds = []
    for direct_min_rows in (1, 10**9):
        lake_dir = tmp_path / str(direct_min_rows)
        writer = _writer(lake_dir)
        writer.direct_min_rows = direct_min_rows
        writer.append("syscall_data", pa.table({
            "ts_ns": [T0, T0 + 1], "data": [b"\x00\xff", None], "truncated": [True, False]}))
        adds.extend(_adds(lake_dir, "syscall_data"))
    direct, through_delta_rs = adds
    assert direct["null_count.data"] == 1  # write_deltalake leaves it out
    assert direct.get("min.data") is None and direct.get("max.data") is None
    assert direct["null_count.seal"] == 2  # stored in the clear: no seal
    assert direct | {"null_count.data": None, "null_count.seal": None} == through_delta_rs
    assert (direct["min.truncated"], direct["max.truncated"]) == (False, True)


@pytest.mark.parametrize("direct_min_rows", [1, 10**9], ids=["direct", "write_deltalake"])
def test_times_and_sequence_numbers_are_delta_encoded(lake_dir: Path,
                                                      direct_min_rows: int) -> None:
    """Near-sorted int64s stored as differences, not through an overflowing dictionary."""
    writer = _writer(lake_dir)
    writer.direct_min_rows = direct_min_rows
    writer.append("syscalls", _syscalls(2_000))
    (path, *_) = sorted((lake_dir / "v1" / "syscalls").rglob("*.parquet"))
    group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings
                 for i in range(group.num_columns)}
    for column in ("ts_ns", "dur_ns", "seq"):
        assert "DELTA_BINARY_PACKED" in encodings[column], column
    assert "RLE_DICTIONARY" in encodings["comm"]


def test_the_writer_checkpoints_often_and_keeps_committing(lake_dir: Path) -> None:
    """GIVEN a writer checkpointing every 3 versions WHEN it commits 8 batches (versions
    1-8) THEN the table has checkpoints at versions 2, 5 and 8, and every batch landed."""
    writer = _writer(lake_dir)
    writer.checkpoint_every = 3
    for i in range(8):
        writer.append("net", pa.table({"ts_ns": [T0 + i]}))
    log_dir = lake_dir / "v1" / "net" / "_delta_log"
    assert sorted(p.name for p in log_dir.glob("*.checkpoint.parquet")) == [
        f"{v:020d}.checkpoint.parquet" for v in (2, 5, 8)]
    dt = DeltaTable(str(lake_dir / "v1" / "net"))
    assert dt.version() == 8 and dt.transaction_version("agentA") == 8
    assert dt.to_pyarrow_table().num_rows == 8


def test_a_writer_whose_commits_were_cleaned_up_by_another_reloads_and_lands(
        lake_dir: Path) -> None:
    """GIVEN writer A that last saw a table at version 1, and writer B that has since
    committed, checkpointed and had the commit files before its checkpoint cleaned up
    (another agent's log clean-up, past the 2-minute retention: A writes this table only
    rarely) WHEN A appends THEN it reloads from the checkpoint and its batch lands once
    (three agents on one lake failed 2-7 commits in 5 minutes with "_delta_log/... not
    found" before)."""
    a, b = _writer(lake_dir, writer_id="a"), _writer(lake_dir, writer_id="b")
    b.checkpoint_every = 3
    a.append("mem", pa.table({"ts_ns": [T0]}))
    for i in range(8):
        b.append("mem", pa.table({"ts_ns": [T0 + 1 + i]}))
    log_dir = lake_dir / "v1" / "mem" / "_delta_log"
    newest = max(int(p.name.split(".")[0]) for p in log_dir.glob("*.checkpoint.parquet"))
    cleaned = [p for p in log_dir.glob("*.json") if int(p.name.split(".")[0]) <= newest]
    for p in cleaned:  # what expired-log clean-up removes
        p.unlink()
    assert cleaned
    result = a.append("mem", pa.table({"ts_ns": [T0 + 100]}))
    assert not result.duplicate and result.rows == 1
    again = a.append("mem", pa.table({"ts_ns": [T0 + 101]}))
    assert again.rows == 1
    dt = DeltaTable(str(lake_dir / "v1" / "mem"))
    assert dt.to_pyarrow_table().num_rows == 11
    assert dt.transaction_version("a") == 3
