"""Building a Recording from lake-schema tables, and loading one from a local lake."""

from __future__ import annotations

import struct
from pathlib import Path

import pyarrow as pa
import pytest

from kprobe.lake import LakeWriter
from kprobe.lake.schema import TABLES
from kprobe.lake.storage import LakeSettings, resolve
from kprobe.replay_sandbox.errors import RecordingError
from kprobe.replay_sandbox.lake_source import load, parse_process
from kprobe.replay_sandbox.recording import ProcessInfo, Recording
from kprobe.replay_sandbox.report import compare_outputs

PID = 4242
START = 1_700_000_000_000_000_000
PROC = ProcessInfo(pid=PID, node="n1", exe="/bin/cat", argv=["cat", "f"], env=["A=1"],
                   cwd="/srv", start_ns=START, exit_code=0)


def _syscalls(rows: list[tuple[int, int, int, int, int, list[int]]]) -> pa.Table:
    """(tid, seq, ts offset us, nr, ret, args) -> a syscalls table."""
    return pa.Table.from_pylist([
        {"ts_ns": START + ts * 1000, "dur_ns": 500, "pid": PID, "tid": tid, "cpu": 0,
         "comm": "cat", "nr": nr, "name": "", "ret": ret, "fd": -1, "args": args, "seq": seq}
        for tid, seq, ts, nr, ret, args in rows], schema=TABLES["syscalls"].payload_schema)


def _data(rows: list[tuple[int, int, int, int, bytes]]) -> pa.Table:
    """(tid, seq, nr, arg_index, data) -> a syscall_data table."""
    return pa.Table.from_pylist([
        {"ts_ns": START, "pid": PID, "tid": tid, "seq": seq, "nr": nr, "arg_index": arg,
         "offset": 0, "data": data, "total_len": len(data), "truncated": False}
        for tid, seq, nr, arg, data in rows], schema=TABLES["syscall_data"].payload_schema)


def test_rows_are_split_per_thread_and_ordered_across_threads() -> None:
    # GIVEN two threads whose served calls interleave, and a munmap nobody traps
    table = _syscalls([
        (PID, 1, 10, 0, 5, [0, 0, 5, 0, 0, 0]),  # read
        (PID, 2, 20, 11, 0, [4096, 4096, 0, 0, 0, 0]),  # munmap: runs for real, untrapped
        (PID + 1, 1, 15, 1, 5, [1, 0, 5, 0, 0, 0]),  # write in the other thread
        (PID, 3, 30, 3, 0, [3, 0, 0, 0, 0, 0]),  # close
    ])
    # WHEN loaded
    rec = Recording.from_tables(PROC, table)
    # THEN only trapped calls are kept, per thread in seq order, ordered across threads
    assert [r.name for r in rec.threads[PID]] == ["read", "close"]
    assert [r.name for r in rec.threads[PID + 1]] == ["write"]
    orders = sorted((r.order, r.name) for rows in rec.threads.values() for r in rows)
    assert [name for _, name in orders] == ["read", "write", "close"]
    assert rec.total_rows == 4


def test_opens_of_mapped_files_are_opened_for_real() -> None:
    # GIVEN a library opened then mapped, and a data file opened then read
    table = _syscalls([
        (PID, 1, 1, 257, 3, [-100, 0, 0, 0, 0, 0]),
        (PID, 2, 2, 9, 0, [0, 4096, 1, 2, 3, 0]),  # mmap(fd 3)
        (PID, 3, 3, 3, 0, [3, 0, 0, 0, 0, 0]),
        (PID, 4, 4, 257, 3, [-100, 0, 0, 0, 0, 0]),
        (PID, 5, 5, 0, 10, [3, 0, 64, 0, 0, 0]),
    ])
    data = _data([(PID, 1, 257, 1, b"/lib/libc.so.6"), (PID, 4, 257, 1, b"/srv/data")])
    rec = Recording.from_tables(PROC, table, data)
    opens = [r for r in rec.threads[PID] if r.name == "openat"]
    assert [r.open_for_real for r in opens] == [True, False]
    assert rec.real_paths == ("/lib/libc.so.6",)


def test_bytes_in_and_out_are_told_apart_by_the_table() -> None:
    table = _syscalls([(PID, 1, 1, 257, 3, [-100, 0, 0, 0, 0, 0]),
                       (PID, 2, 2, 0, 4, [3, 0, 64, 0, 0, 0]),
                       (PID, 3, 3, 1, 4, [1, 0, 4, 0, 0, 0])])
    data = _data([(PID, 1, 257, 1, b"/srv/f"), (PID, 2, 0, 1, b"abcd"),
                  (PID, 3, 1, 1, b"abcd")])
    rec = Recording.from_tables(PROC, table, data)
    openat, read, write = rec.threads[PID]
    assert openat.ins == {1: b"/srv/f"} and not openat.outs
    assert read.outs == [(1, 0, b"abcd")] and not read.ins
    assert write.ins == {1: b"abcd"}
    assert rec.outputs() == {1: b"abcd"}


def test_inherited_descriptors_are_found() -> None:
    # GIVEN a process that reads fd 5 it never opened, and whose first open returns 7
    table = _syscalls([(PID, 1, 1, 0, 1, [5, 0, 1, 0, 0, 0]),
                       (PID, 2, 2, 257, 7, [-100, 0, 0, 0, 0, 0])])
    rec = Recording.from_tables(PROC, table)
    assert rec.initial_fds == frozenset({0, 1, 2, 3, 4, 5, 6})


def test_pipe_descriptors_count_as_created() -> None:
    table = _syscalls([(PID, 1, 1, 293, 0, [0, 0, 0, 0, 0, 0]),
                       (PID, 2, 2, 0, 1, [3, 0, 1, 0, 0, 0])])
    data = _data([(PID, 1, 293, 0, struct.pack("<ii", 3, 4))])
    rec = Recording.from_tables(PROC, table, data)
    assert rec.initial_fds == frozenset({0, 1, 2})


def test_restarted_calls_and_other_processes_are_dropped() -> None:
    table = _syscalls([(PID, 1, 1, 0, -512, [0, 0, 1, 0, 0, 0]),
                       (PID, 2, 2, 0, 1, [0, 0, 1, 0, 0, 0])])
    other = _syscalls([(PID, 1, 1, 0, 1, [0, 0, 1, 0, 0, 0])]).set_column(
        2, "pid", pa.array([PID + 7], pa.int32()))
    rec = Recording.from_tables(PROC, pa.concat_tables([table, other]))
    assert [r.seq for r in rec.threads[PID]] == [2]


def test_a_table_without_required_columns_is_refused() -> None:
    with pytest.raises(RecordingError, match="lacks columns"):
        Recording.from_tables(PROC, pa.table({"ts_ns": [1]}))


def test_no_rows_after_exec_is_an_error() -> None:
    early = _syscalls([(PID, 1, 1, 0, 1, [0, 0, 1, 0, 0, 0])]).set_column(
        0, "ts_ns", pa.array([START - 1], pa.int64()))
    with pytest.raises(RecordingError, match="no syscalls"):
        Recording.from_tables(PROC, early)


def test_process_spec_parsing() -> None:
    assert parse_process("123@node-a") == (123, "node-a")
    for bad in ("123", "abc@n", "12@"):
        with pytest.raises(RecordingError):
            parse_process(bad)


def test_load_from_a_local_lake(lake_dir: Path) -> None:
    # GIVEN an exec, its syscalls and their bytes in a local lake, plus another pid's rows
    location = resolve(LakeSettings(lake=str(lake_dir)))
    writer = LakeWriter(location, "n1")
    writer.append("processes", pa.Table.from_pylist([
        {"ts_ns": START, "kind": "exec", "pid": PID, "tid": PID, "exe": "/bin/cat",
         "argv": ["cat", "f"], "env": ["A=1"], "cwd": "/srv", "comm": "cat"},
        {"ts_ns": START + 10**6, "kind": "exit", "pid": PID, "tid": PID, "exit_code": 3}],
        schema=TABLES["processes"].payload_schema))
    writer.append("syscalls", _syscalls([(PID, 1, 5, 0, 4, [0, 0, 64, 0, 0, 0])]))
    writer.append("syscall_data", _data([(PID, 1, 0, 1, b"data")]))
    # WHEN the process is loaded
    rec = load(location, PID, "n1")
    # THEN it has its start, its exit code, its row and the row's bytes
    assert rec.process.exe == "/bin/cat" and rec.process.argv == ["cat", "f"]
    assert rec.process.exit_code == 3 and rec.process.start_ns == START
    (row,) = rec.threads[PID]
    assert row.outs == [(1, 0, b"data")]
    # AND an unknown pid or node is a one-line error
    with pytest.raises(RecordingError, match="no exec of pid"):
        load(location, PID + 1, "n1")
    with pytest.raises(RecordingError, match="no exec of pid"):
        load(location, PID, "n2")


def test_a_write_the_recorder_cut_is_a_gap_any_replayed_byte_fills() -> None:
    """A program wrote 10 bytes in one call and the recorder kept 4 (--payload-cap): the
    recorded stream keeps its offsets (the next write's bytes stay where they were), the
    cut bytes are a gap any replayed byte matches, and a wrong byte outside it still
    differs (the control)."""
    # GIVEN two writes to stdout, the first cut at 4 of its 10 bytes
    table = _syscalls([(PID, 1, 1, 1, 10, [1, 0, 10, 0, 0, 0]),
                       (PID, 2, 2, 1, 3, [1, 0, 3, 0, 0, 0])])
    rows = [{"ts_ns": START, "pid": PID, "tid": PID, "seq": seq, "nr": 1, "arg_index": 1,
             "offset": 0, "data": data, "total_len": total, "truncated": cut}
            for seq, data, total, cut in ((1, b"head", 10, True), (2, b"end", 3, False))]
    data = pa.Table.from_pylist(rows, schema=TABLES["syscall_data"].payload_schema)
    rec = Recording.from_tables(PROC, table, data)
    # THEN the stream is 13 bytes long, with the six cut bytes named as a gap
    assert rec.outputs() == {1: b"head" + bytes(6) + b"end"}
    assert rec.output_gaps() == {1: [(4, 10)]}
    # AND the whole write the replay makes matches it, a wrong kept byte does not
    gaps = rec.output_gaps()
    (same,) = compare_outputs(rec.outputs(), {1: b"head-rest!end"}, unknown=gaps)
    assert same.match and same.first_difference is None
    (other,) = compare_outputs(rec.outputs(), {1: b"head-rest!END"}, unknown=gaps)
    assert not other.match and other.first_difference == 10
    (without,) = compare_outputs(rec.outputs(), {1: b"head-rest!end"})
    assert not without.match and without.first_difference == 4
