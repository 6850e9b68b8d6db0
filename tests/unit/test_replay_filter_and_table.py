"""The seccomp filter, the syscall table, the vDSO parser and register/wait decoding."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest
from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

from kprobe.replay_sandbox import ptrace_ffi, vdso
from kprobe.replay_sandbox.seccomp import (
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_TRACE,
    build_program,
    compile_filter,
    run_program,
)
from kprobe.replay_sandbox.syscall_table import (
    BY_NAME,
    SPECS,
    TRAPPED,
    VDSO_SYSCALLS,
    Layout,
    Policy,
    canonical_sockaddr,
    capture,
    fd_of,
    name_of,
    write_outputs,
)
from tests.support import require


def test_filter_traces_exactly_the_served_syscalls() -> None:
    # GIVEN the filter for the table WHEN each number is evaluated
    prog = build_program(TRAPPED)
    for nr in range(0, 460):
        verdict = run_program(prog, nr)
        # THEN served numbers stop for the tracer and everything else runs
        assert verdict == (SECCOMP_RET_TRACE if nr in TRAPPED else SECCOMP_RET_ALLOW), nr


def test_filter_kills_foreign_abis() -> None:
    prog = build_program(TRAPPED)
    assert run_program(prog, 0x40000000 | 1) == SECCOMP_RET_KILL_PROCESS  # x32
    assert run_program(prog, 1, arch=0x40000003) == SECCOMP_RET_KILL_PROCESS  # i386


def test_filter_compiles_to_c_structures() -> None:
    compiled = compile_filter({0, 1})
    assert compiled.fprog.len == len(build_program({0, 1}))
    assert ctypes.sizeof(compiled.instructions[0]) == 8  # struct sock_filter


def test_filter_refuses_more_than_its_jumps_can_reach() -> None:
    with pytest.raises(ValueError):
        build_program(range(300))


def test_numbers_agree_with_python_ptrace() -> None:
    aliases = {283: "timerfd"}  # python-ptrace keeps the pre-2.6.25 name
    for nr, spec in SPECS.items():
        if nr in SYSCALL_NAMES:
            assert SYSCALL_NAMES[nr] in (spec.name, aliases.get(nr)), nr
    assert name_of(441) == "epoll_pwait2" and name_of(9999) == "syscall_9999"


def test_every_region_names_a_real_argument() -> None:
    for spec in SPECS.values():
        for region in (*spec.outs, *spec.ins):
            assert 0 <= region.arg < 6, spec.name
            if region.layout is Layout.IOVEC:
                assert 0 <= region.count_arg < 6
        assert all(0 <= i < 6 for i in spec.compare), spec.name
        if spec.policy is Policy.WAIT:
            assert spec.timeout_arg is not None and spec.timeout_kind in ("ms", "timeval",
                                                                          "timespec")


def test_vdso_entries_map_to_served_syscalls() -> None:
    for name, nr in VDSO_SYSCALLS.items():
        assert nr in SPECS, name


def test_fd_column_is_a_signed_int() -> None:
    assert fd_of(BY_NAME["openat"].nr, (0xFFFFFF9C, 0, 0, 0, 0, 0)) == -100
    assert fd_of(BY_NAME["read"].nr, (7, 0, 0, 0, 0, 0)) == 7
    assert fd_of(BY_NAME["getpid"].nr, (7, 0, 0, 0, 0, 0)) == -1


class FakeMemory:
    """A sparse address space for capture/serve round trips."""

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}

    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.bytes[addr + i] = b

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.bytes.get(addr + i, 0) for i in range(length))

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        out = bytearray()
        while len(out) < limit and self.bytes.get(addr + len(out), 0):
            out.append(self.bytes[addr + len(out)])
        return bytes(out)


def test_readv_bytes_are_scattered_over_the_iovecs() -> None:
    # GIVEN a readv into two buffers of 3 and 10 bytes that returned 8 bytes
    mem = FakeMemory()
    mem.write(0x1000, struct.pack("<QQQQ", 0x2000, 3, 0x3000, 10))
    mem.write(0x2000, b"abc")
    mem.write(0x3000, b"defgh")
    args = (5, 0x1000, 2, 0, 0, 0)
    readv = BY_NAME["readv"].nr
    # WHEN captured THEN the payload is one logical chunk under the iovec argument
    rows = capture(SPECS[readv].outs, readv, args, 8, mem, 1 << 20)
    assert rows == [(1, 0, b"abcdefgh", 8)]
    # AND served into fresh buffers it lands in the same places
    fresh = FakeMemory()
    fresh.write(0x1000, struct.pack("<QQQQ", 0x2000, 3, 0x3000, 10))
    write_outputs(readv, args, [(1, 0, b"abcdefgh")], fresh, fresh.write)
    assert fresh.read(0x2000, 3) == b"abc" and fresh.read(0x3000, 5) == b"defgh"


def test_recvfrom_captures_buffer_and_address() -> None:
    mem = FakeMemory()
    mem.write(0x100, b"payload")
    mem.write(0x200, struct.pack("<HH4s", 2, 0x5000, bytes([127, 0, 0, 1])))
    mem.write(0x300, struct.pack("<I", 16))
    nr = BY_NAME["recvfrom"].nr
    rows = capture(SPECS[nr].outs, nr, (3, 0x100, 64, 0, 0x200, 0x300), 7, mem, 1 << 20)
    assert rows[0] == (1, 0, b"payload", 7)
    assert rows[1][0] == 4 and len(rows[1][2]) == 16
    assert rows[2] == (5, 0, struct.pack("<I", 16), 4)


def test_paths_are_captured_as_c_strings() -> None:
    mem = FakeMemory()
    mem.write(0x500, b"/etc/hosts\0garbage")
    nr = BY_NAME["openat"].nr
    assert capture(SPECS[nr].ins, nr, (0xFFFFFF9C, 0x500, 0, 0, 0, 0), 3, mem, 99) == [
        (1, 0, b"/etc/hosts", 10)]


def test_socket_addresses_compare_without_their_padding() -> None:
    unix_a = struct.pack("<H", 1) + b"/run/x.sock\0" + b"\x11" * 20
    unix_b = struct.pack("<H", 1) + b"/run/x.sock\0" + b"\x99" * 20
    assert canonical_sockaddr(unix_a) == canonical_sockaddr(unix_b)
    inet_a = struct.pack("<HH4s8s", 2, 80, b"\x7f\0\0\1", b"\1" * 8)
    inet_b = struct.pack("<HH4s8s", 2, 80, b"\x7f\0\0\1", b"\2" * 8)
    assert canonical_sockaddr(inet_a) == canonical_sockaddr(inet_b)
    assert canonical_sockaddr(inet_a) != canonical_sockaddr(
        struct.pack("<HH4s8s", 2, 81, b"\x7f\0\0\1", b"\1" * 8))


def test_vdso_symbols_of_this_process() -> None:
    # GIVEN this process's own vDSO (readable without privileges)
    found = vdso.find_vdso(os.getpid())
    require(found is not None, "a vDSO mapped in this process")
    assert found is not None
    start, end = found
    with open("/proc/self/mem", "rb") as mem:
        mem.seek(start)
        image = mem.read(end - start)
    # WHEN its dynamic symbols are parsed THEN the clock entry points are inside the image
    symbols = vdso.dynamic_symbols(image)
    offset, size = symbols["__vdso_clock_gettime"]
    assert 0 < offset < end - start and size >= 8


def test_vdso_stub_is_mov_syscall_ret() -> None:
    assert vdso.stub(228) == bytes.fromhex("b8e4000000") + b"\x0f\x05\xc3"


def test_user_regs_layout_matches_the_kernel() -> None:
    assert ctypes.sizeof(ptrace_ffi.UserRegs) == 27 * 8
    assert ptrace_ffi.UserRegs.orig_rax.offset == 15 * 8
    assert ptrace_ffi.UserRegs.rip.offset == 16 * 8


def test_wait_status_decoding() -> None:
    seccomp_stop = ptrace_ffi.Stop(1, (ptrace_ffi.EVENT_SECCOMP << 8 | 5) << 8 | 0x7F)
    assert seccomp_stop.stopped and seccomp_stop.sig == 5
    assert seccomp_stop.event == ptrace_ffi.EVENT_SECCOMP
    exited = ptrace_ffi.Stop(1, 3 << 8)
    assert exited.exited and exited.exit_code == 3
    assert ptrace_ffi.to_signed(0xFFFF_FFFF_FFFF_FFFE) == -2
