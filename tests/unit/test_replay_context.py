"""What a replay loads besides bytes: reads recorded by identity, the exec's context and
descriptors, process trees, and the precise word on what a recording cut (synthetic rows in
the lake schema; no root, no kernel)."""

from __future__ import annotations

import struct

import pyarrow as pa

from kprobe.lake.schema import TABLES
from kprobe.replay_sandbox._state import EngineState
from kprobe.replay_sandbox.context import (
    FILE_ID,
    OPENED,
    ProcessContext,
    descriptors,
)
from kprobe.replay_sandbox.recording import ProcessInfo, Recording

PID = 500
START = 1_700_000_000_000_000_000
PROC = ProcessInfo(pid=PID, node="n", exe="/usr/bin/cat", argv=["cat"], env=[], cwd="/",
                   start_ns=START)
S_IFREG, S_IFCHR, S_IFIFO = 0o100000, 0o020000, 0o010000
PIPEFS, SOCKFS, EXT4 = 0x50495045, 0x534F434B, 0xEF53


def _syscalls(rows: list[tuple[int, int, int, int, int, list[int]]]) -> pa.Table:
    """(pid, tid, seq, nr, ret, args) -> a syscalls table."""
    return pa.Table.from_pylist([
        {"ts_ns": START + seq * 1000, "dur_ns": 500, "pid": pid, "tid": tid, "cpu": 0,
         "comm": "cat", "nr": nr, "name": "", "ret": ret, "fd": -1, "args": args, "seq": seq}
        for pid, tid, seq, nr, ret, args in rows], schema=TABLES["syscalls"].payload_schema)


def _data(rows: list[dict[str, object]]) -> pa.Table:
    base = {"ts_ns": START, "pid": PID, "tid": PID, "seq": 1, "nr": 0, "arg_index": 1,
            "offset": 0, "data": None, "total_len": 0, "truncated": False, "blob": None,
            "blob_offset": None}
    return pa.Table.from_pylist([{**base, **r} for r in rows],
                                schema=TABLES["syscall_data"].payload_schema)


def _file_id(fd: int, mode: int, magic: int, ino: int = 7, pos: int = 0) -> bytes:
    return FILE_ID.pack(0x800001, ino, 100, 1, 2, pos, fd, mode, 0, magic)


CONTENT = b"".join(b"line %04d\n" % i for i in range(1000))


def test_a_read_by_identity_serves_its_slice_of_the_stored_content() -> None:
    table = _syscalls([(PID, PID, 1, 257, 3, [-100, 0, 0]), (PID, PID, 2, 0, 200, [3, 0, 200]),
                       (PID, PID, 3, 0, 200, [3, 0, 200])])
    data = _data([
        {"seq": 1, "nr": 257, "arg_index": OPENED,
         "data": _file_id(3, S_IFREG, EXT4) + b"/srv/ledger.txt"},
        {"seq": 2, "data": _file_id(3, S_IFREG, EXT4, pos=0), "total_len": 200,
         "blob": "aa", "blob_offset": 0},
        {"seq": 3, "data": _file_id(3, S_IFREG, EXT4, pos=200), "total_len": 200,
         "blob": "aa", "blob_offset": 200}])
    rec = Recording.from_tables(PROC, table, data, blobs={"aa": CONTENT})
    first, second = rec.threads[PID][1], rec.threads[PID][2]
    assert first.outs == [(1, 0, CONTENT[:200])] and second.outs == [(1, 0, CONTENT[200:400])]
    assert not first.truncated and first.cut is None
    # the kernel's path of the opened file is known (notes, files opened for real)
    assert rec.threads[PID][0].path == "/srv/ledger.txt"


def test_content_not_stored_falls_back_to_bytes_or_is_named_with_its_reason() -> None:
    table = _syscalls([(PID, PID, 1, 0, 300, [3, 0, 300]), (PID, PID, 2, 0, 300, [3, 0, 300])])
    data = _data([
        # seq 1: a fresh file: the kernel also copied its bytes (whole)
        {"seq": 1, "data": _file_id(3, S_IFREG, EXT4), "total_len": 300, "blob": "",
         "blob_offset": 0},
        {"seq": 1, "data": CONTENT[:300], "total_len": 300},
        # seq 2: nothing but the identity, and the agent could not store the content
        {"seq": 2, "data": _file_id(3, S_IFREG, EXT4), "total_len": 300, "blob": "",
         "blob_offset": 300, "truncated": True}])
    rec = Recording.from_tables(PROC, table, data)
    whole, lost = rec.threads[PID]
    assert whole.outs == [(1, 0, CONTENT[:300])] and not whole.truncated
    assert lost.truncated and lost.cut is not None
    arg, held, total, why = lost.cut
    assert (arg, held, total) == (1, 0, 300) and "changed or went away" in why


def test_a_payload_cut_at_the_cap_says_so() -> None:
    table = _syscalls([(PID, PID, 1, 0, 200_000, [3, 0, 262_144])])
    data = _data([{"seq": 1, "data": CONTENT[:4096], "offset": 0, "total_len": 200_000,
                   "truncated": True}])
    [row] = Recording.from_tables(PROC, table, data).threads[PID]
    assert row.cut == (1, 4096, 200_000, "cut at the recorder's --payload-cap")


def test_the_exec_context_and_descriptor_table_parse() -> None:
    rlimits = [v for i in range(16) for v in (i * 10, (1 << 64) - 1)]
    raw = struct.pack("<10I32Q65s7x", 0o27, 1, 1000, 1000, 1000, 1000, 100, 100, 100, 100,
                      *rlimits, b"ledger-node-7")
    context = ProcessContext.parse(raw)
    assert context is not None
    assert (context.umask, context.uid, context.gid, context.hostname) == (
        0o27, 1000, 100, "ledger-node-7")
    assert context.rlimits["nofile"] == (70, (1 << 64) - 1) and context.ids_mapped
    table = descriptors(
        _file_id(0, S_IFCHR | 0o620, 0x1CD1) + _file_id(1, S_IFIFO, PIPEFS, ino=88)
        + _file_id(2, S_IFREG, EXT4) + _file_id(7, 0o140777, SOCKFS, ino=99),
        {0: b"/dev/pts/3", 2: b"/var/log/gw.log"})
    assert [d.describe() for d in table] == [
        "0 tty /dev/pts/3", "1 pipe pipe:[88]", "2 file /var/log/gw.log", "7 socket socket:[99]"]


def test_the_descriptor_table_is_the_recorded_one_not_an_inference() -> None:
    # GIVEN a process that started with fd 9 open, which it never uses
    table = _syscalls([(PID, PID, 1, 257, 3, [-100, 0, 0])])
    fds = b"".join(_file_id(fd, S_IFCHR, 0x1CD1) for fd in (0, 1, 2, 9))
    process = ProcessInfo(**{**PROC.__dict__, "descriptors": descriptors(fds, {})})
    rec = Recording.from_tables(process, table, _data([]))
    assert rec.initial_fds == frozenset({0, 1, 2, 9})
    # (without it, a process's fd table was guessed from its calls: 9 was not there)
    assert Recording.from_tables(PROC, table, _data([])).initial_fds == frozenset({0, 1, 2})


def test_a_tree_holds_each_process_from_its_fork_and_compares_its_outputs() -> None:
    child = ProcessInfo(pid=PID + 1, node="n", exe="/usr/bin/gzip", argv=["gzip", "-c"],
                        env=[], cwd="", start_ns=START + 5_000, exit_code=0)
    table = _syscalls([
        (PID, PID, 1, 1, 6, [1, 0, 6]),
        (PID, PID, 5, 56, PID + 1, [0x1200011, 0, 0]),  # clone: the child
        (PID + 1, PID + 1, 1, 1, 3, [1, 0, 3]),  # before its fork: not its own (pid reuse)
        (PID + 1, PID + 1, 9, 1, 4, [1, 0, 4]),
        (PID + 7, PID + 7, 9, 1, 4, [1, 0, 4])])  # not in the tree
    table = table.set_column(0, "ts_ns", pa.array([START + 1000, START + 5000, START + 1000,
                                                   START + 9000, START + 9000]))
    data = _data([{"seq": 1, "nr": 1, "data": b"hello\n", "total_len": 6},
                  {"pid": PID + 1, "tid": PID + 1, "seq": 9, "nr": 1, "data": b"gz!!",
                   "total_len": 4}])
    rec = Recording.from_tables(PROC, table, data, children={PID + 1: child})
    assert sorted(rec.threads) == [PID, PID + 1] and len(rec.threads[PID + 1]) == 1
    assert rec.pid_of(PID + 1) == PID + 1 and rec.pid_of(PID) == PID
    assert rec.outputs() == {1: b"hello\n"} and rec.outputs(PID + 1) == {1: b"gz!!"}
    assert "/usr/bin/gzip" in rec.real_paths


def test_cpu_clock_ids_name_recorded_threads() -> None:
    # a thread's CPU clock id encodes its tid (~tid << 3 | 6): the kernel gives the program
    # the sandbox's tid (pthread_getcpuclockid), the recording has the recorded one
    rec = Recording(PROC, {PID: []})
    state = EngineState(rec)
    state.rec_to_ns = {PID: 2, 31619: 7}
    recorded, sandboxed = (~31619 << 3) | 6, (~7 << 3) | 6
    assert state.canonical_clock(sandboxed & 0xFFFF_FFFF) == recorded
    assert state.canonical_clock(recorded & 0xFFFF_FFFF) == recorded
    assert state.canonical_clock(1) == 1  # CLOCK_MONOTONIC
