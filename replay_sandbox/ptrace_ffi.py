"""ptrace(2), registers, memory and wait-status decoding through ctypes (x86_64 only).

python-ptrace has no PTRACE_SEIZE, seccomp events or pre-exec hooks, so the stop loop owns
these calls directly (DESIGN.md "Measured facts for replay"). Every call here is one
syscall; nothing allocates per stop except the small ctypes register buffer, which callers
reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from dataclasses import dataclass
from typing import Any

from kprobe.replay_sandbox.errors import TracerError

CStrings = ctypes.Array[ctypes.c_char_p]  # a NULL-terminated char *[]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
# The stop loop's calls (GETREGS, SETREGS, CONT, SYSCALL: four a served syscall) go through
# a second handle on ptrace without argtypes: ctypes' per-argument conversion took ~0.5 us
# of a ~1.2 us call here. What each argument is stays exact: request and pid are small
# Python ints, passed as the C ints glibc's variadic ptrace reads them as; addr is None
# (NULL); data is a pointer (byref) or None (NULL, signal 0) or a c_ulong (a signal).
_ptrace_stop = _libc["ptrace"]  # a new function object: _libc.ptrace keeps its argtypes
_ptrace_stop.restype = ctypes.c_long
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_personality = _libc.personality
_personality.restype = ctypes.c_int
_personality.argtypes = (ctypes.c_ulong,)

# requests
PTRACE_TRACEME = 0
PTRACE_PEEKUSER = 3
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207

# options
PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

# events (status >> 16)
EVENT_FORK = 1
EVENT_VFORK = 2
EVENT_CLONE = 3
EVENT_EXEC = 4
EVENT_VFORK_DONE = 5
EVENT_EXIT = 6
EVENT_SECCOMP = 7
EVENT_STOP = 128

WALL = 0x40000000  # __WALL: wait for threads and non-SIGCHLD children too
SYSCALL_STOP_SIG = signal.SIGTRAP | 0x80  # with PTRACE_O_TRACESYSGOOD

PR_SET_NO_NEW_PRIVS = 38
PR_SET_TSC = 26
PR_TSC_SIGSEGV = 2
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
ADDR_NO_RANDOMIZE = 0x0040000

ERRNO_MAX = 4095  # a syscall return in [-4095, -1] is -errno


class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` of x86_64 (sys/user.h)."""

    _fields_ = [
        (name, ctypes.c_ulonglong)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]

    def syscall_args(self) -> tuple[int, int, int, int, int, int]:
        return (self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9)

    def set_syscall_args(self, args: tuple[int, ...] | list[int]) -> None:
        for name, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            setattr(self, name, value & 0xFFFF_FFFF_FFFF_FFFF)


def _fail(what: str, pid: int) -> TracerError:
    err = ctypes.get_errno()
    return TracerError(f"{what} on {pid} failed: {os.strerror(err)}", errno=err)


def ptrace(request: int, pid: int, addr: int = 0, data: Any = 0) -> int:
    """One raw ptrace call; a failure raises TracerError with the errno."""
    ctypes.set_errno(0)
    result = _ptrace(request, pid, addr, data)
    if result == -1 and ctypes.get_errno():
        raise _fail(f"ptrace({request:#x})", pid)
    return int(result)


def get_regs(pid: int, regs: UserRegs) -> UserRegs:
    if _ptrace_stop(PTRACE_GETREGS, pid, None, ctypes.byref(regs)) == -1:
        raise _fail("PTRACE_GETREGS", pid)
    return regs


def set_regs(pid: int, regs: UserRegs) -> None:
    if _ptrace_stop(PTRACE_SETREGS, pid, None, ctypes.byref(regs)) == -1:
        raise _fail("PTRACE_SETREGS", pid)


def resume(pid: int, sig: int = 0, request: int = PTRACE_CONT) -> None:
    """PTRACE_CONT (or PTRACE_SYSCALL) with a signal to deliver (0 = none)."""
    if _ptrace_stop(request, pid, None, ctypes.c_ulong(sig) if sig else None) == -1:
        raise _fail("resume", pid)


def event_msg(pid: int) -> int:
    value = ctypes.c_ulong()
    if _ptrace(PTRACE_GETEVENTMSG, pid, None, ctypes.byref(value)) == -1:
        raise _fail("PTRACE_GETEVENTMSG", pid)
    return int(value.value)


class SigInfo(ctypes.Structure):
    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad0", ctypes.c_int),
        ("si_addr", ctypes.c_ulong),  # union head: faulting address for SIGSEGV
        ("_rest", ctypes.c_byte * 104),
    ]


def sig_info(pid: int) -> SigInfo:
    info = SigInfo()
    if _ptrace(PTRACE_GETSIGINFO, pid, None, ctypes.byref(info)) == -1:
        raise _fail("PTRACE_GETSIGINFO", pid)
    return info


def set_options(pid: int, options: int) -> None:
    if _ptrace(PTRACE_SETOPTIONS, pid, None, options) == -1:
        raise _fail("PTRACE_SETOPTIONS", pid)


def seize(pid: int, options: int) -> None:
    if _ptrace(PTRACE_SEIZE, pid, None, options) == -1:
        raise _fail("PTRACE_SEIZE", pid)


def kill_quietly(pid: int) -> None:
    """SIGKILL a tracee we started; it may already be gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# -- calls made in the forked child before exec (no exceptions beyond the errno) ----------
def traceme() -> int:
    return int(_ptrace(PTRACE_TRACEME, 0, None, None))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return int(_prctl(option, arg2, arg3, arg4, arg5))


def personality(persona: int) -> int:
    return int(_personality(persona))


def raw_syscall(nr: int, *args: int | ctypes.c_void_p) -> int:
    return int(_syscall(ctypes.c_long(nr), *args))


def execve_raw(path: bytes, argv: CStrings, envp: CStrings) -> int:
    """execve through libc with argument arrays built before fork (nothing allocated)."""
    return int(_libc.execve(path, argv, envp))


def c_string_array(items: list[bytes]) -> CStrings:
    array = (ctypes.c_char_p * (len(items) + 1))()
    for i, item in enumerate(items):
        array[i] = item
    array[len(items)] = None
    return array


def errno() -> int:
    return ctypes.get_errno()


# -- wait status ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stop:
    """One waitpid result, decoded."""

    pid: int
    status: int

    @property
    def exited(self) -> bool:
        return os.WIFEXITED(self.status)

    @property
    def killed(self) -> bool:
        return os.WIFSIGNALED(self.status)

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.status)

    @property
    def sig(self) -> int:
        return (self.status >> 8) & 0xFF

    @property
    def event(self) -> int:
        return (self.status >> 16) & 0xFF

    @property
    def exit_code(self) -> int:
        return os.WEXITSTATUS(self.status)

    @property
    def term_sig(self) -> int:
        return os.WTERMSIG(self.status)


# -- tracee memory through /proc/pid/mem ------------------------------------------------------
class TraceeMemory:
    """Reads and writes a stopped tracee's memory with pread/pwrite on /proc/pid/mem.

    One syscall per buffer whatever its size (POKEDATA is one per word: 4 KiB took 3 ms), and
    it writes read-only mappings too (the kernel uses FOLL_FORCE), which the vDSO patch needs.
    Reopen after exec: the file is bound to the address space it was opened on.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise TracerError(f"cannot open memory of {pid}: {err.strerror}") from err

    def read(self, addr: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return os.pread(self.fd, length, addr)
        except OSError as err:
            raise TracerError(f"read {length} bytes at {addr:#x} in {self.pid}: {err.strerror}",
                              errno=err.errno or 0) from err

    def write(self, addr: int, data: bytes) -> None:
        if not data:
            return
        try:
            written = os.pwrite(self.fd, data, addr)
        except OSError as err:
            raise TracerError(f"write {len(data)} bytes at {addr:#x} in {self.pid}: "
                              f"{err.strerror}", errno=err.errno or 0) from err
        if written != len(data):
            raise TracerError(f"short write at {addr:#x} in {self.pid}: {written}/{len(data)}")

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string, read page by page so the last page may end the mapping."""
        out = bytearray()
        while len(out) < limit:
            chunk_len = min(limit - len(out), 4096 - ((addr + len(out)) & 4095))
            try:
                chunk = os.pread(self.fd, chunk_len, addr + len(out))
            except OSError:
                break
            if not chunk:
                break
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                return bytes(out)
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def to_signed(value: int) -> int:
    """A 64-bit register as a signed integer (syscall results, int64 lake columns)."""
    value &= 0xFFFF_FFFF_FFFF_FFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def pin_to_cpu(pid: int, cpu: int) -> None:
    """Tracer and tracee on one CPU: a stop costs 6-8x more across CPUs here."""
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        pass  # a restricted cpuset: run unpinned rather than fail
