"""Syscalls batches (synthetic records) -> lake rows, the payload table and the syscall
names. No kernel needed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from kprobe.capture_agent import syscall_names
from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import CaptureAgentError, RingBufferError
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.families.syscalls import PayloadLayout, PayloadSize
from kprobe.capture_agent.layouts import EventKind
from kprobe.lake.schema import spec
from kprobe.replay_sandbox import syscall_table as replay

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=100, taken_at_ns=0)
AT_FDCWD = (1 << 64) - 100  # -100 as the register holds it


def _syscall_batch() -> np.ndarray:
    b = np.zeros(4, syscalls.SYSCALL_EVENT)
    b["hdr"]["version"] = syscalls.SYSCALLS_LAYOUT_VERSION
    b["hdr"]["kind"] = EventKind.SYSCALL
    b["hdr"]["ktime_ns"] = [5_000, 9_000, 12_000, 20_000]
    b["hdr"]["cpu"] = [1, 0, 1, 0]
    b["hdr"]["flags"] = [0, 0, syscalls.SYSCALL_FLAG_NO_RETURN, 0]
    b["start_ns"] = [1_000, 8_500, 12_000, 19_000]
    b["seq"] = [1, 2, 3, 1]
    b["pid"], b["tid"] = 40, [41, 41, 41, 42]
    b["nr"] = [257, 110, 231, 600]  # openat, getppid, exit_group, not x86_64
    b["ret"] = [3, 39, 0, -38]
    b["args"][0] = [AT_FDCWD, 0x7FFF0000, 0o2000000, 0, 0xDEAD, 0xBEEF]
    b["args"][1] = [9, 9, 9, 9, 9, 9]  # registers of a syscall without arguments
    b["args"][2] = [1, 0, 0, 0, 0, 0]
    b["args"][3] = [1, 2, 3, 4, 5, (1 << 64) - 1]
    b["comm"] = b"svc"
    return b


def test_syscall_rows_follow_the_lake_schema() -> None:
    table = syscalls.syscalls_table(_syscall_batch(), CLOCK)
    assert table.schema == spec("syscalls").payload_schema
    openat, getppid, exit_group, unknown = table.to_pylist()
    assert openat["ts_ns"] == CLOCK.mono_to_epoch_ns + 1_000
    assert (openat["dur_ns"], openat["name"], openat["ret"], openat["seq"]) == (
        4_000, "openat", 3, 1)
    assert (openat["pid"], openat["tid"], openat["cpu"], openat["comm"]) == (40, 41, 1, "svc")
    # AT_FDCWD is an int argument: -100, and openat keeps its 4 arguments
    assert openat["fd"] == -100
    assert openat["args"] == [-100, 0x7FFF0000, 0o2000000, 0]
    assert (getppid["name"], getppid["fd"], getppid["args"]) == ("getppid", None, [])
    assert (exit_group["ret"], exit_group["dur_ns"], exit_group["args"]) == (None, None, [1])
    assert (unknown["name"], unknown["fd"], unknown["ret"]) == ("syscall_600", None, -38)
    assert unknown["args"] == [1, 2, 3, 4, 5, -1]  # all six registers, as signed int64


def test_a_32_bit_programs_syscalls_keep_their_i386_numbers() -> None:
    b = _syscall_batch()
    b["hdr"]["flags"][0] |= syscalls.SYSCALL_FLAG_COMPAT
    compat = syscalls.syscalls_table(b, CLOCK).to_pylist()[0]
    assert (compat["nr"], compat["name"], compat["fd"]) == (257, "ia32_syscall_257", None)
    assert len(compat["args"]) == 6


def test_the_fd_column_reads_the_descriptor_argument() -> None:
    nr = np.array([0, 9, 22, 232, 3])  # read, mmap (fd in arg 4), pipe (a pointer), epoll_wait
    args = np.zeros((5, 6), np.uint64)
    args[:, 0] = [7, 0x1000, 0x7FFF, 5, 0xFFFFFFFF]
    args[1, 4] = 12
    assert syscall_names.fd_column(nr, args).to_pylist() == [7, 12, None, 5, -1]


def _ramp(n: int) -> bytes:
    return (np.arange(n) % 251).astype(np.uint8).tobytes()


def _data_batch(dtype: np.dtype, lens: list[int], flags: list[int]) -> np.ndarray:
    b = np.zeros(len(lens), dtype)
    b["hdr"]["version"] = syscalls.SYSCALLS_LAYOUT_VERSION
    b["hdr"]["kind"] = (EventKind.SYSCALL_DATA if dtype == syscalls.SYSCALL_DATA_EVENT
                        else EventKind.SYSCALL_DATA_SMALL)
    b["hdr"]["flags"] = flags
    b["len"] = lens
    b["data"] = 0xEE  # stale ring bytes past len must never show
    for i, n in enumerate(lens):
        b["data"][i, :n] = np.arange(n) % 251
    b["start_ns"] = 7_000
    b["pid"], b["tid"], b["nr"] = 40, 41, 0
    b["seq"] = np.arange(1, len(lens) + 1)
    b["total_len"] = lens
    return b


def test_data_rows_hold_exactly_each_chunks_valid_bytes() -> None:
    small = _data_batch(syscalls.SYSCALL_DATA_SMALL_EVENT, [3, 0, 256, 1],
                        [0, syscalls.DATA_FLAG_FAULT, 0, syscalls.DATA_FLAG_TRUNCATED])
    table = syscalls.syscall_data_table(small, CLOCK)
    assert table.schema == spec("syscall_data").payload_schema
    rows = table.to_pylist()
    assert [r["data"] for r in rows] == [bytes(range(3)), b"", _ramp(256),
                                        b"\x00"]
    assert [r["truncated"] for r in rows] == [False, True, False, True]
    assert rows[0]["ts_ns"] == CLOCK.mono_to_epoch_ns + 7_000
    big = _data_batch(syscalls.SYSCALL_DATA_EVENT, [4096, 300], [0, 0])
    data = syscalls.syscall_data_table(big, CLOCK)["data"].to_pylist()
    assert data == [_ramp(4096), _ramp(300)]


def test_regions_are_joined_in_offset_order_across_both_rings() -> None:
    big = _data_batch(syscalls.SYSCALL_DATA_EVENT, [4096], [0])
    small = _data_batch(syscalls.SYSCALL_DATA_SMALL_EVENT, [10], [0])
    small["offset"] = 4096
    small["data"][0, :10] = 0xAB
    # the small ring's chunk drained first: order comes from the offsets, not the rows
    joined = syscalls.region_bytes(pa.concat_tables(
        [syscalls.syscall_data_table(small, CLOCK), syscalls.syscall_data_table(big, CLOCK)]))
    assert joined[(41, 1, 0)] == _ramp(4096) + b"\xab" * 10


def test_records_of_another_layout_version_or_kind_are_refused() -> None:
    b = _syscall_batch()
    b["hdr"]["version"][1] = 9
    with pytest.raises(RingBufferError, match="layout version 9"):
        syscalls.syscalls_table(b, CLOCK)
    d = _data_batch(syscalls.SYSCALL_DATA_SMALL_EVENT, [1], [0])
    d["hdr"]["kind"] = EventKind.SYSCALL
    with pytest.raises(RingBufferError, match="unexpected record kinds"):
        syscalls.syscall_data_table(d, CLOCK)


def test_the_payload_table_encodes_for_the_kernel() -> None:
    specs = syscalls.payload_specs()
    assert specs.dtype.itemsize == 32 and len(specs) == syscalls.SYSCALL_NR_MAX
    getrandom = specs[syscall_names.number_of("getrandom")]["regions"]
    assert getrandom[0].tolist() == (0, 0, PayloadSize.RET, PayloadLayout.FLAT, 0)
    assert getrandom[1]["size_kind"] == PayloadSize.NONE
    poll = specs[syscall_names.number_of("poll")]["regions"][0]
    assert poll.tolist() == (8, 0, PayloadSize.ARG_TIMES, PayloadLayout.FLAT, 1)
    write = specs[syscall_names.number_of("write")]["regions"]
    # the bytes sent; an input: what a failed write offered (args[2] bytes) is kept too
    assert write[0].tolist() == (0, 1, PayloadSize.RET, PayloadLayout.INPUT, 2)
    assert specs[syscall_names.number_of("getpid")]["regions"]["size_kind"].tolist() == [0] * 4
    with pytest.raises(ValueError, match="at most 4"):
        syscalls.payload_specs({"select": (syscalls.Region(0, PayloadSize.RET),) * 5})
    # the loader writes it into .rodata as one little-endian integer
    config = syscalls.sensor_spec(syscalls.SyscallsConfig(capture_payloads=True)).config
    assert config["payload_specs"].to_bytes(specs.nbytes, "little") == specs.tobytes()
    assert config["capture_payloads"] == 1 and config["payload_cap"] == 64 << 10


@pytest.mark.parametrize("cap", [0, syscalls.PAYLOAD_CAP_MAX + 1])
def test_an_impossible_payload_cap_is_refused(cap: int) -> None:
    with pytest.raises(CaptureAgentError, match="payload cap"):
        syscalls.sensor_spec(syscalls.SyscallsConfig(payload_cap=cap))


def _replay_region(r: replay.Region) -> tuple[object, ...]:
    if r.layout is replay.Layout.IOVEC:
        return (r.arg, "IOVEC", r.count_arg)
    if r.layout is replay.Layout.MSGHDR:
        return (r.arg, "MSGHDR")
    kind = r.size.kind.upper()
    if kind in ("ARG", "SOCKADDR"):  # args[len_arg] bytes: the agent's ARG_TIMES with n = 1
        return (r.arg, "ARG_TIMES", 1, r.size.arg)
    n = r.size.n if kind in ("FIXED", "RET_TIMES", "ARG_TIMES") else 0
    return (r.arg, kind, n, r.size.arg if kind in ("ARG_TIMES", "DEREF", "FDSET") else None)


def _our_region(r: syscalls.Region) -> tuple[object, ...]:
    if r.layout is PayloadLayout.IOVEC:
        return (r.arg, "IOVEC", r.len_arg)
    if r.layout is PayloadLayout.MSGHDR:
        return (r.arg, "MSGHDR")
    kind = r.size.name
    n = r.n if kind in ("FIXED", "RET_TIMES", "ARG_TIMES") else 0
    return (r.arg, kind, n, r.len_arg if kind in ("ARG_TIMES", "DEREF", "FDSET") else None)


def test_every_region_the_replay_serves_or_checks_is_captured_the_same_way() -> None:
    # GIVEN the replay's table of what each syscall writes (served) and reads (checked:
    # write buffers, paths, addresses), the syscall_data contract
    # THEN the agent's payload table has the same regions for each of them, outputs first
    differ = {
        s.name: ([_replay_region(r) for r in s.outs + s.ins],
                 [_our_region(r) for r in syscalls.PAYLOAD_TABLE.get(s.name, ())])
        for s in replay.SPECS.values() if s.outs or s.ins
    }
    assert {k: v for k, v in differ.items() if v[0] != v[1]} == {}


def test_syscall_names_agree_with_the_replays() -> None:
    assert syscall_names.name_of(0) == "read" and syscall_names.name_of(469) == "file_setattr"
    assert syscall_names.name_of(-1) == "syscall_-1"
    same = {nr: name for nr, name in replay.NAMES.items() if nr < syscall_names.NR_MAX}
    assert {nr: syscall_names.name_of(nr) for nr in same} == same
    assert syscall_names.names_array(np.array([39, 512, 1])).to_pylist() == [
        "getpid", "syscall_512", "write"]
