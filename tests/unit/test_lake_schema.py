"""Schema v1: every DESIGN.md table exists with its key columns, and rows round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kprobe.lake import LakeSettings, LakeWriter, SchemaError, connect, resolve
from kprobe.lake._batches import conform, hour_label, hour_labels
from kprobe.lake.schema import TABLE_NAMES, TABLES

# The contract from DESIGN.md: these columns must exist in these tables.
KEY_COLUMNS = {
    "sched": "ts_ns cpu kind prev_pid prev_tid prev_state next_pid next_tid waker_pid "
    "waker_tid wakee_pid wakee_tid",
    "offcpu": "ts_ns dur_ns pid tid state wait_reason kstack_id waker_pid waker_tid",
    "syscalls": "ts_ns dur_ns pid tid cpu nr name ret fd args",
    "syscall_data": "ts_ns pid tid seq nr arg_index offset data blob blob_offset",
    "blobs": "ts_ns blob size data",
    "net": "ts_ns pid tid kind saddr sport daddr dport bytes state srtt_us sock_id",
    "mem": "ts_ns dur_ns pid tid kind nr_reclaimed memcg address",
    "block_io": "ts_ns dur_ns pid tid dev sector bytes rwbs",
    "processes": "ts_ns pid ppid comm exe argv cgroup container_id exit_code",
    "kstacks": "stack_id frames",
    "spans": "trace_id span_id parent_span_id service name kind start_ns end_ns status pid "
    "tid attributes",
    "lost": "ts_ns source count",
    "agent_meta": "ts_ns kernel agent_version boot_id mono_to_epoch_ns config",
    "causal_edges": "window src dst kind delay_ns evidence",
    # evidence capture's sums (capture_agent/bpf/sched.bpf.c, net.bpf.c)
    "cpu_slices": "ts_ns dur_ns cpu pid tid oncpu_ns runq_ns switches",
    "net_slices": "ts_ns dur_ns pid tid saddr sport daddr dport sent_bytes recv_bytes sock_id",
}


def test_every_design_table_has_its_key_columns_and_node() -> None:
    assert set(TABLE_NAMES) == set(KEY_COLUMNS)
    for table, columns in KEY_COLUMNS.items():
        names = TABLES[table].column_names
        for column in [*columns.split(), "node", "hour", "batch_id"]:
            assert column in names, f"{table}.{column}"


def test_no_unsigned_types_because_delta_has_none() -> None:
    for spec in TABLES.values():
        for field in spec.schema:
            assert not pa.types.is_unsigned_integer(field.type), f"{spec.name}.{field.name}"


def test_time_columns_are_int64_ns() -> None:
    for spec in TABLES.values():
        assert spec.schema.field(spec.time_column).type == pa.int64()
        for field in spec.schema:
            if field.name.endswith("_ns"):
                assert field.type == pa.int64(), f"{spec.name}.{field.name}"


def test_hour_label_is_utc() -> None:
    # 2024-03-10T01:59:59.999999999Z and the next nanosecond
    ts = 1710035999_999999999
    assert hour_label(ts) == "2024-03-10T01"
    assert hour_label(ts + 1) == "2024-03-10T02"
    labels = hour_labels(np.array([ts, ts + 1, ts + 1 + 3600 * 10**9], dtype=np.int64))
    assert labels.to_pylist() == ["2024-03-10T01", "2024-03-10T02", "2024-03-10T03"]


def test_hour_labels_for_widely_spread_timestamps() -> None:
    ts = np.array([0, 10**18, 2 * 10**18], dtype=np.int64)
    assert hour_labels(ts).to_pylist() == ["1970-01-01T00", "2001-09-09T01", "2033-05-18T03"]


def test_conform_fills_missing_nullable_columns_and_casts() -> None:
    data = pa.table({"ts_ns": [1, 2], "pid": pa.array([7, 8], pa.int64())})
    out = conform(TABLES["syscalls"], data, node="n1", batch_id="w-1")
    assert out.schema == TABLES["syscalls"].schema
    assert out.column("pid").type == pa.int32()
    assert out.column("tid").null_count == 2
    assert out.column("node").to_pylist() == ["n1", "n1"]
    assert out.column("batch_id").to_pylist() == ["w-1", "w-1"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pa.table({"ts_ns": [1], "bogus": [1]}), "unknown column(s) bogus"),
        (pa.table({"pid": [1]}), "required column ts_ns is missing"),
        (pa.table({"ts_ns": pa.array([1, None], pa.int64())}), "ts_ns: 1 null value(s)"),
        (pa.table({"ts_ns": [1], "pid": ["x"]}), "syscalls.pid: cannot store string"),
    ],
)
def test_conform_rejects_bad_batches_with_the_column_named(data: pa.Table, message: str) -> None:
    with pytest.raises(SchemaError, match="syscalls") as err:
        conform(TABLES["syscalls"], data, node="n", batch_id="b")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_every_table_round_trips_through_the_lake(lake_dir: Path) -> None:
    """GIVEN one synthetic row per table WHEN appended and read back THEN values are equal."""
    settings = LakeSettings(lake=str(lake_dir), node="node-a")
    writer = LakeWriter.from_settings(settings)
    rows = {
        "syscalls": {"ts_ns": [1_700_000_000_000_000_000], "pid": [10], "args": [[1, 2, 3]],
                     "name": ["read"], "ret": [-11]},
        "syscall_data": {"ts_ns": [1_700_000_000_000_000_001], "data": [b"\x00\xffhello"],
                         "truncated": [True]},
        "processes": {"ts_ns": [1_700_000_000_000_000_002], "argv": [["a", "b c"]],
                      "exit_code": [3]},
        "kstacks": {"ts_ns": [1], "stack_id": [5], "frames": [["schedule", "io_schedule"]]},
    }
    for table in TABLE_NAMES:
        spec = TABLES[table]
        data = rows.get(table) or {
            f.name: [1 if pa.types.is_integer(f.type) else "x"]
            for f in spec.fields
            if not f.nullable
        }
        writer.append(table, pa.table(data))
    con = connect(resolve(settings))
    for table, data in rows.items():
        got = con.sql(f"select * from {table}").to_arrow_table().to_pylist()
        assert len(got) == 1
        for column, values in data.items():
            assert got[0][column] == values[0], (table, column)
        assert got[0]["node"] == "node-a"
    for table in TABLE_NAMES:
        assert con.execute(f"select count(*) from {table}").fetchone() == (1,), table
