"""A classic-BPF seccomp filter that sends the served syscalls to the tracer.

``SECCOMP_RET_TRACE`` stops the tracee once per trapped syscall (the tracer sets
``PTRACE_O_TRACESECCOMP``); every other syscall costs ~40 ns more and runs untouched.
The filter is built in the parent and installed by the forked child just before exec,
so the child allocates nothing.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable

from replay_sandbox import ptrace_ffi

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SYS_SECCOMP = 317

# cBPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06

_OFFSET_NR = 0
_OFFSET_ARCH = 4
_MAX_JUMP = 255


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(SockFilter))]


def build_program(trapped: Iterable[int]) -> list[tuple[int, int, int, int]]:
    """Instructions ``(code, jt, jf, k)``: kill foreign ABIs, trace ``trapped``, allow the rest.

    A linear list of compares: each jumps forward to one shared RET TRACE, so up to ~250
    numbers fit the 8-bit jump offsets. Sorted so the common low numbers match first.
    """
    numbers = sorted(set(trapped))
    if len(numbers) > _MAX_JUMP - 2:
        raise ValueError(f"too many trapped syscalls for a linear filter: {len(numbers)}")
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
        (_JGE_K, 0, 1, X32_SYSCALL_BIT),
        (_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
    ]
    count = len(numbers)
    for i, nr in enumerate(numbers):
        # after this compare: (count - i - 1) more compares, then RET ALLOW, then RET TRACE
        prog.append((_JEQ_K, count - i, 0, nr))
    prog.append((_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append((_RET_K, 0, 0, SECCOMP_RET_TRACE))
    return prog


def run_program(prog: list[tuple[int, int, int, int]], nr: int,
                arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate the filter in Python on ``struct seccomp_data`` (for tests)."""
    data = struct.pack("<iI", nr, arch) + bytes(56)
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == _LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == _JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == _JGE_K:
            pc += 1 + (jt if acc >= k else jf)
        elif code == _RET_K:
            return k
        else:
            raise ValueError(f"opcode {code:#x}")


class CompiledFilter:
    """The filter as C structures, kept alive until the child has installed it."""

    def __init__(self, prog: list[tuple[int, int, int, int]]) -> None:
        self.instructions = (SockFilter * len(prog))(*(SockFilter(*insn) for insn in prog))
        self.fprog = SockFprog(len(prog), self.instructions)

    def install(self) -> int:
        """In the child: no_new_privs, then seccomp(2). 0 on success, else -errno."""
        if ptrace_ffi.prctl(ptrace_ffi.PR_SET_NO_NEW_PRIVS, 1) != 0:
            return -ptrace_ffi.errno()
        if ptrace_ffi.raw_syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0,
                                  ctypes.c_void_p(ctypes.addressof(self.fprog))) != 0:
            return -ptrace_ffi.errno()
        return 0


def compile_filter(trapped: Iterable[int]) -> CompiledFilter:
    return CompiledFilter(build_program(trapped))
