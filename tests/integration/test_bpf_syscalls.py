"""The syscalls sensor on the real kernel, with a program whose syscalls and bytes are known.

Root only. tests/programs/syscall_io.c writes N bytes M times to a file, fsyncs, reads them
back, preads a region larger than the payload cap, and makes a few syscalls whose output
it prints (getrandom, pipe2, clock_gettime, fstat, readv, recvmsg).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import sample_offset
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.families._maps import read_percpu
from kprobe.capture_agent.layouts import EventKind
from kprobe.capture_agent.sensor import TARGET_HINT_SLOTS, Sensor, object_path
from tests.support import require, require_root, run_ready_go

N, M, BIG = 1000, 5, 100_000  # bytes per write, writes, bytes of the big pread
STAT_SIZE_OFFSET, STAT_INO_OFFSET = 48, 8  # in x86_64 struct stat


def require_root_and_objects() -> None:
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")


def written(j: int) -> bytes:
    """What syscall_io's write number j wrote."""
    return bytes((7 * j + 13 * i + 1) & 0xFF for i in range(N))


def big_pattern() -> bytes:
    return bytes((7 * i + 3) & 0xFF for i in range(BIG))


@dataclass
class IoRun:
    pid: int
    out: dict[str, str]  # syscall_io's "done" line
    rows: pa.Table  # lake table `syscalls`
    data: pa.Table  # lake table `syscall_data`
    drops: dict[EventKind | int, int]

    def calls(self, name: str) -> list[dict[str, object]]:
        mine = self.rows.filter(pc.and_(pc.equal(self.rows["pid"], self.pid),
                                        pc.equal(self.rows["name"], name)))
        return sorted(mine.to_pylist(), key=lambda r: r["seq"])  # type: ignore[arg-type,return-value]

    def region(self, seq: int, arg: int) -> bytes:
        return syscalls.region_bytes(self.data).get((self.pid, seq, arg), b"")

    def chunks(self, seq: int) -> list[dict[str, object]]:
        rows = self.data.filter(pc.and_(pc.equal(self.data["tid"], self.pid),
                                        pc.equal(self.data["seq"], seq)))
        return sorted(rows.to_pylist(), key=lambda r: (r["arg_index"], r["offset"]))  # type: ignore[arg-type,return-value]


def run_io(binary: Path, path: Path, config: syscalls.SyscallsConfig,
           targeted: bool = True,
           before_go: Callable[[Sensor, int], None] | None = None) -> IoRun:
    with Sensor(syscalls.sensor_spec(config)) as sensor:
        with subprocess.Popen([str(binary), str(path), str(N), str(M), str(BIG)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
            try:
                assert proc.stdin is not None and proc.stdout is not None
                word, pid = proc.stdout.readline().split()
                assert word == "ready"
                if targeted:
                    sensor.add_targets([int(pid)])
                if before_go:
                    before_go(sensor, int(pid))
                proc.stdin.write("go\n")
                proc.stdin.flush()
                done = proc.stdout.readline().split()
                assert done and done[0] == "done", done
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
        events = sensor.ring("syscall_events").drain()
        big = sensor.ring("syscall_data").drain()
        small = sensor.ring("syscall_data_small").drain()
        drops = sensor.drops()
    clock = sample_offset()
    assert events.dtype == syscalls.SYSCALL_EVENT
    tables = [syscalls.syscall_data_table(b, clock) for b in (big, small)]
    return IoRun(int(pid), dict(kv.split("=", 1) for kv in done[1:]),
                 syscalls.syscalls_table(events, clock), pa.concat_tables(tables), drops)


@pytest.fixture
def syscall_io(programs: Path) -> Path:
    return programs / "syscall_io"


def test_a_targets_writes_and_reads_are_rows_in_order_with_their_bytes(
        syscall_io: Path, tmp_path: Path) -> None:
    require_root_and_objects()
    # GIVEN the sensor with payloads, targeting syscall_io
    # WHEN it writes N bytes M times, fsyncs and reads them back (and the rest)
    run = run_io(syscall_io, tmp_path / "io.dat", syscalls.SyscallsConfig(capture_payloads=True))
    fd = int(run.out["fd"])
    assert run.drops == {}

    # THEN exactly M writes of N bytes to the file, by the program's thread, in order
    writes = [r for r in run.calls("write") if r["fd"] == fd]
    assert [r["ret"] for r in writes] == [N] * M + [BIG]
    assert {r["tid"] for r in writes} == {run.pid}
    assert all(r["args"][2] == N for r in writes[:M])  # type: ignore[index]
    assert all(r["dur_ns"] > 0 and r["comm"] == "syscall_io" for r in writes)  # type: ignore[operator]
    # and the fsync after them
    fsyncs = run.calls("fsync")
    assert [(r["fd"], r["ret"]) for r in fsyncs] == [(fd, 0)]
    assert fsyncs[0]["seq"] > writes[M - 1]["seq"]  # type: ignore[operator]

    # and every syscall of the thread is there: seq runs 1, 2, 3, ... with no gap, and
    # the last one is exit_group (recorded at entry: no return value, no duration)
    mine = run.rows.filter(pc.equal(run.rows["tid"], run.pid)).sort_by("seq")
    seqs = mine["seq"].to_pylist()
    assert seqs == list(range(1, len(seqs) + 1))
    assert mine["ts_ns"].to_pylist() == sorted(mine["ts_ns"].to_pylist())
    last = mine.slice(len(mine) - 1).to_pylist()[0]
    assert (last["name"], last["ret"], last["dur_ns"]) == ("exit_group", None, None)

    # and each read's payload is the bytes it read: what write j wrote
    reads = [r for r in run.calls("read") if r["fd"] == fd]
    assert [r["ret"] for r in reads] == [N] * M
    for j, r in enumerate(reads):
        assert run.region(r["seq"], 1) == written(j), f"read {j}"  # type: ignore[arg-type]
        assert [(c["offset"], c["total_len"], c["truncated"]) for c in run.chunks(r["seq"])] == [  # type: ignore[arg-type]
            (0, N, False)]

    # and a read larger than the cap is cut at the cap, flagged, with its real length
    (pread,) = run.calls("pread64")
    assert pread["ret"] == BIG
    chunks = run.chunks(pread["seq"])  # type: ignore[arg-type]
    cap = syscalls.PAYLOAD_CAP_DEFAULT
    assert [c["offset"] for c in chunks] == list(range(0, cap, syscalls.SYSCALL_DATA_CHUNK))
    assert {(c["total_len"], c["truncated"], c["arg_index"]) for c in chunks} == {
        (BIG, True, 1)}
    assert run.region(pread["seq"], 1) == big_pattern()[:cap]  # type: ignore[arg-type]

    # and getrandom's payload is what the program printed
    (rnd,) = run.calls("getrandom")
    assert run.region(rnd["seq"], 0) == bytes.fromhex(run.out["random"])  # type: ignore[arg-type]
    assert rnd["fd"] is None

    # and the other outputs the replay needs
    (readv,) = run.calls("readv")
    file_start = written(0)[:310]
    assert run.region(readv["seq"], 1) == file_start  # type: ignore[arg-type]
    # glibc's fstat() is newfstatat(fd, "", buf, AT_EMPTY_PATH): struct stat in argument 2
    (fstat,) = [r for r in run.calls("fstat") + run.calls("newfstatat") if r["fd"] == fd]
    stat = run.region(fstat["seq"], 1 if fstat["name"] == "fstat" else 2)  # type: ignore[arg-type]
    assert len(stat) == 144
    assert struct.unpack_from("<q", stat, STAT_SIZE_OFFSET)[0] == int(run.out["size"])
    assert struct.unpack_from("<Q", stat, STAT_INO_OFFSET)[0] == int(run.out["ino"])
    (pipe2,) = run.calls("pipe2")
    read_end, write_end = (int(x) for x in run.out["pipe"].split(","))
    assert run.region(pipe2["seq"], 0) == struct.pack("<ii", read_end, write_end)  # type: ignore[arg-type]
    (clock,) = run.calls("clock_gettime")
    sec, nsec = (int(x) for x in run.out["clock"].split(","))
    assert run.region(clock["seq"], 1) == struct.pack("<qq", sec, nsec)  # type: ignore[arg-type]
    (recvmsg,) = run.calls("recvmsg")
    assert recvmsg["fd"] == int(run.out["recv_fd"]) and recvmsg["ret"] == 14
    assert run.region(recvmsg["seq"], 1) == b"hello, recvmsg"  # type: ignore[arg-type]
    msghdr = run.region(recvmsg["seq"], syscalls.PAYLOAD_ARG_MSGHDR)  # type: ignore[arg-type]
    assert len(msghdr) == 56 and struct.unpack_from("<Q", msghdr, 24)[0] == 2  # msg_iovlen
    assert run.region(recvmsg["seq"], syscalls.PAYLOAD_ARG_MSG_NAME) == b""  # type: ignore[arg-type]

    # and a 32-bit syscall keeps its i386 number (getpid is 20 there)
    (ia32,) = run.calls("ia32_syscall_20")
    assert ia32["ret"] == run.pid and ia32["nr"] == 20 and ia32["fd"] is None

    # and each write carries the bytes it sent (what a replay checks outputs against)
    for j, w in enumerate(writes[:M]):
        assert run.region(w["seq"], 1) == written(j), f"write {j}"  # type: ignore[arg-type]
    assert run.region(writes[M]["seq"], 1) == big_pattern()[:syscalls.PAYLOAD_CAP_DEFAULT]  # type: ignore[arg-type]
    # and failed syscalls carry no payload
    data_seqs = set(run.data["seq"].to_pylist())
    failed = mine.filter(pc.less(mine["ret"], 0))["seq"].to_pylist()
    assert not data_seqs & set(failed)
    # and the data rows share their syscall's timestamp
    by_seq = dict(zip(mine["seq"].to_pylist(), mine["ts_ns"].to_pylist(), strict=True))
    assert all(by_seq[s] == t for s, t in zip(run.data["seq"].to_pylist(),
                                               run.data["ts_ns"].to_pylist(), strict=True))


def test_a_region_just_over_a_chunk_continues_in_the_small_ring(
        syscall_io: Path, tmp_path: Path) -> None:
    require_root_and_objects()
    # GIVEN a cap of one big chunk plus 200 bytes
    cap = syscalls.SYSCALL_DATA_CHUNK + 200
    config = syscalls.SyscallsConfig(capture_payloads=True, payload_cap=cap)
    # WHEN the program preads more than that
    run = run_io(syscall_io, tmp_path / "io.dat", config)
    (pread,) = run.calls("pread64")
    chunks = run.chunks(pread["seq"])  # type: ignore[arg-type]
    # THEN two chunks (4096 bytes, then 200 from the small ring) make the capped prefix
    assert [(c["offset"], len(c["data"])) for c in chunks] == [  # type: ignore[arg-type]
        (0, syscalls.SYSCALL_DATA_CHUNK), (syscalls.SYSCALL_DATA_CHUNK, 200)]
    assert all(c["truncated"] and c["total_len"] == BIG for c in chunks)
    assert run.region(pread["seq"], 1) == big_pattern()[:cap]  # type: ignore[arg-type]
    # and reads under the cap are whole
    reads = [r for r in run.calls("read") if r["fd"] == int(run.out["fd"])]
    assert run.region(reads[-1]["seq"], 1) == written(M - 1)  # type: ignore[arg-type]


def test_without_payloads_there_are_rows_and_no_bytes(syscall_io: Path, tmp_path: Path) -> None:
    require_root_and_objects()
    run = run_io(syscall_io, tmp_path / "io.dat", syscalls.SyscallsConfig())
    assert len(run.calls("write")) >= M and len(run.calls("read")) >= M
    assert run.data.num_rows == 0


def test_an_untargeted_process_produces_no_rows(syscall_io: Path, tmp_path: Path) -> None:
    require_root_and_objects()
    # GIVEN the sensor loaded with payloads and no target
    # WHEN syscall_io runs untargeted
    run = run_io(syscall_io, tmp_path / "io.dat",
                 syscalls.SyscallsConfig(capture_payloads=True), targeted=False)
    # THEN nothing at all is recorded (no process is a target)
    assert run.rows.num_rows == 0 and run.data.num_rows == 0
    assert run.drops == {}


def _set(sensor: Sensor, name: str, key: int) -> None:
    libbpf.map_update(sensor.map_fd(name), struct.pack("<I", key), b"\x01")


def test_the_target_hint_only_filters(syscall_io: Path, tmp_path: Path) -> None:
    """The kernel checks a process's slot of `target_hint` (tgid % TARGET_HINT_SLOTS, set
    for every target, never cleared) before the `targets` hash: 0 ends the check."""
    require_root_and_objects()
    config = syscalls.SyscallsConfig()
    # GIVEN an untargeted process whose slot is set (as a target of the same slot, or one
    # gone, leaves it) WHEN it runs THEN it is still not captured: `targets` decides
    shared_slot = run_io(syscall_io, tmp_path / "a.dat", config, targeted=False,
                         before_go=lambda s, pid: _set(s, "target_hint", pid % TARGET_HINT_SLOTS))
    assert shared_slot.rows.num_rows == 0 and shared_slot.drops == {}
    # control: a key in `targets` alone, its slot 0 (never so: add_targets and the kernel
    # set the slot first), is not captured: the hint really is consulted first
    no_hint = run_io(syscall_io, tmp_path / "b.dat", config, targeted=False,
                     before_go=lambda s, pid: _set(s, "targets", pid))
    assert no_hint.rows.num_rows == 0
    # and both set, as add_targets does: captured
    def both_set(sensor: Sensor, pid: int) -> None:
        _set(sensor, "target_hint", pid % TARGET_HINT_SLOTS)
        _set(sensor, "targets", pid)

    both = run_io(syscall_io, tmp_path / "c.dat", config, targeted=False, before_go=both_set)
    assert len(both.calls("write")) >= M


# After "go": 200 quick getppid calls, one 50 ms sleep, one stat of a missing path.
_QUICK_SLOW_FAILED = r"""
import os, sys, time
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
for _ in range(200):
    os.getppid()
time.sleep(0.05)
try:
    os.stat("/nonexistent/kprobe-evidence")
except FileNotFoundError:
    pass
print("done", flush=True)
"""


def _quick_slow_failed(bound_ns: int) -> tuple[pa.Table, int]:
    """The target's rows (pid, name, ret, dur_ns) and the calls counted instead."""
    with Sensor(syscalls.sensor_spec(syscalls.SyscallsConfig(min_syscall_ns=bound_ns))) \
            as sensor:
        (_, pid), done = run_ready_go([sys.executable, "-c", _QUICK_SLOW_FAILED],
                                      lambda ready: sensor.add_targets([int(ready[1])]))
        assert done == ["done"]
        rows = syscalls.syscalls_table(sensor.ring("syscall_events").drain(), sample_offset())
        counted = int(read_percpu(sensor.map_fd("syscalls_below_bound"), np.dtype("<u8"),
                                  "syscalls_below_bound").sum())
        assert sensor.drops() == {}
    return rows.filter(pc.equal(rows["pid"], int(pid))), counted


def test_evidence_capture_writes_slow_and_failed_calls_and_counts_the_quick_ones() -> None:
    require_root_and_objects()
    # GIVEN evidence capture's bound of 20 ms on a target's syscalls (no payloads)
    # WHEN it makes 200 quick getppid calls, sleeps 50 ms and fails a stat
    rows, counted = _quick_slow_failed(20_000_000)
    names = rows["name"].to_pylist()
    # THEN the sleep, the failed stat and the exit are rows; no getppid is
    sleeps = rows.filter(pc.match_substring_regex(rows["name"], "nanosleep|select"))
    assert sleeps.num_rows >= 1 and max(sleeps["dur_ns"].to_pylist()) >= 45_000_000, names
    failed = rows.filter(pc.equal(rows["ret"], -2))  # ENOENT
    assert failed.num_rows >= 1 and set(failed["name"].to_pylist()) & {
        "stat", "newfstatat", "statx"}, names
    assert "exit_group" in names and "getppid" not in names, names
    # and the quick ones are counted, not lost
    assert counted >= 200, counted
    # control: without the bound, the same run writes every getppid
    rows, counted = _quick_slow_failed(0)
    assert rows["name"].to_pylist().count("getppid") >= 200 and counted == 0
