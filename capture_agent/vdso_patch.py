"""Make a target's vDSO clock reads real syscalls, so the syscall path records them.

A clock read answered by the vDSO never enters the kernel: the only way to see it is a
uprobe on libc's ``clock_gettime`` (two traps per read: ~0.9-1.1 us on a 2-vCPU VM, against
17 ns unrecorded), and it misses what libc binds to the vDSO directly (``gettimeofday``,
``time``) and runtimes that call the vDSO themselves (Go, HotSpot). Rewriting each vDSO
entry point of the target as ``mov eax, NR; syscall; ret`` (as the replay sandbox does in
its tracee, and as rr does while recording) makes every one of them a real syscall: the
kernel's own answer, recorded at its exit with its output (~0.4-0.5 us).

The rewrite is made with every thread of the target stopped (``PTRACE_SEIZE`` +
``PTRACE_INTERRUPT``, then detached): a thread that ran the first instructions of an entry
point while its bytes changed would resume in the middle of the new ones. A thread stopped
inside the bytes to rewrite postpones the rewrite to the next try. What a stop costs the
target: its threads stop for the rewrite (tens of microseconds per thread), and, as under
``strace -p`` or a debugger's attach, a blocking call that Linux does not restart after a
stop (``epoll_wait``, ``semop``, ...) returns EINTR once.

A fork inherits the rewritten vDSO; an exec maps a fresh one, rewritten at the agent's next
poll of its targets (clock reads of the new image before then are not recorded; a replay
synthesizes them). The command ``kprobe run`` starts is rewritten at its exec, before it
runs (``ExecWatch``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from kprobe.capture_agent.elfsyms import dynamic_functions
from kprobe.capture_agent.errors import BpfAttachError, VdsoPatchError

# vDSO entry points and the syscall each becomes (x86-64)
VDSO_SYSCALLS: dict[str, int] = {
    "__vdso_clock_gettime": 228,
    "__vdso_gettimeofday": 96,
    "__vdso_time": 201,
    "__vdso_getcpu": 309,
}
STUB_LEN = 8
log = logging.getLogger(__name__)

_PTRACE_CONT = 7
_PTRACE_GETREGS = 12
_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_O_TRACEEXEC = 0x10
_PTRACE_EVENT_EXEC = 4
_PTRACE_EVENT_STOP = 128
_PTRACE_LISTEN = 0x4208
_STOP_SIGNALS = {19, 20, 21, 22}  # SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU
_WALL = 0x40000000
_RIP = 16  # index of rip in struct user_regs_struct
_SIGTRAP = 5

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def stub(nr: int) -> bytes:
    """``mov eax, nr`` (b8 imm32); ``syscall`` (0f 05); ``ret`` (c3)."""
    return b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05\xc3"


@dataclass(frozen=True)
class PatchResult:
    patched: bool  # the entry points are syscall stubs now (False: try again later)
    entries: int  # entry points rewritten by this call (0: already were, or busy)
    threads: int  # threads stopped for it
    sample: tuple[int, bytes] | None = None  # an entry point and its stub (still_rewritten)


def _sample(todo: dict[int, bytes]) -> tuple[int, bytes] | None:
    return min(todo.items()) if todo else None


def still_rewritten(pid: int, address: int, code: bytes) -> bool:
    """Does ``pid`` still hold ``code`` at ``address``? (No after an exec: the new image's
    vDSO is elsewhere and fresh; no if the process is gone.)"""
    try:
        mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return True  # gone: the targets' walk drops it
    try:
        return os.pread(mem, len(code), address) == code
    except OSError:
        return False  # unmapped there now
    finally:
        os.close(mem)


def _ptrace(request: int, tid: int, addr: int = 0, data: int = 0) -> int:
    ret = _libc.ptrace(request, tid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def vdso_range(pid: int) -> tuple[int, int] | None:
    """``(start, end)`` of ``pid``'s [vdso] mapping, or None (none mapped)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
            for line in maps:
                if line.rstrip().endswith("[vdso]"):
                    start, end = line.split(None, 1)[0].split("-")
                    return int(start, 16), int(end, 16)
    except OSError as err:
        raise VdsoPatchError(f"process {pid}: cannot read its maps ({err.strerror})") from err
    return None


def _entries(pid: int, mem: int) -> dict[int, bytes]:
    """Absolute address -> stub, for each clock entry point of ``pid``'s vDSO."""
    found = vdso_range(pid)
    if found is None:
        raise VdsoPatchError(f"process {pid}: no vDSO mapped (clock reads already trap)")
    start, end = found
    image = os.pread(mem, end - start, start)
    try:
        offsets = dynamic_functions(image, list(VDSO_SYSCALLS), f"vDSO of {pid}")
    except BpfAttachError as err:
        raise VdsoPatchError(str(err)) from err
    return {start + offset: stub(VDSO_SYSCALLS[name]) for name, offset in offsets.items()}


def _seize_all(pid: int) -> dict[int, int]:
    """Stop every thread of ``pid``: tid -> signal to hand back at detach. Threads started
    meanwhile are found by listing again until no new one appears."""
    stopped: dict[int, int] = {}
    try:
        while True:
            tids = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - set(stopped)
            if not tids:
                return stopped
            for tid in sorted(tids):
                try:
                    _ptrace(_PTRACE_SEIZE, tid)
                except OSError as err:
                    if err.errno == errno.ESRCH:
                        continue  # the thread exited meanwhile
                    raise
                stopped[tid] = 0
                _ptrace(_PTRACE_INTERRUPT, tid)
                _, status = os.waitpid(tid, _WALL)
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    del stopped[tid]
                    continue
                sig = os.WSTOPSIG(status)
                if sig != _SIGTRAP or status >> 16 == 0:
                    stopped[tid] = sig  # a signal on its way: delivered at detach
    except BaseException:
        _detach_all(stopped)
        raise


def _detach_all(stopped: dict[int, int]) -> None:
    for tid, sig in stopped.items():
        try:
            _ptrace(_PTRACE_DETACH, tid, 0, sig)
        except OSError:
            pass  # exited while stopped


def _ip(tid: int) -> int:
    regs = (ctypes.c_ulonglong * 27)()
    _ptrace(_PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return int(regs[_RIP])


def _write_stubs(mem: int, todo: dict[int, bytes]) -> None:
    for address, code in todo.items():
        os.pwrite(mem, code, address)


class ExecWatch:
    """The agent's own child (``kprobe run``), rewritten at each exec before its new image
    runs a single instruction: traced for its execs alone (``PTRACE_O_TRACEEXEC``), so the
    kernel stops it at each one; its fresh vDSO is rewritten there. Signals pass through
    as they came; a stop signal leaves it stopped (``PTRACE_LISTEN``) until SIGCONT.

    Create it, and call ``wait``, from one thread, the only one of the process that waits
    for this child: a tracer's stops are reported to any thread of it that waits."""

    def __init__(self, pid: int, rewritten: Callable[[PatchResult], None]) -> None:
        self.pid = pid
        self.rewritten = rewritten
        self.failures = 0
        _ptrace(_PTRACE_SEIZE, pid, 0, _PTRACE_O_TRACEEXEC)

    def wait(self) -> int:
        """Follow the child until it ends; its wait status (as ``os.waitpid`` gives it)."""
        while True:
            _, status = os.waitpid(self.pid, _WALL)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return status
            sig, event = os.WSTOPSIG(status), status >> 16
            try:
                if event == _PTRACE_EVENT_EXEC:
                    self._rewrite()
                    _ptrace(_PTRACE_CONT, self.pid)
                elif event == _PTRACE_EVENT_STOP:
                    if sig in _STOP_SIGNALS:  # a group stop: stays stopped until SIGCONT
                        _ptrace(_PTRACE_LISTEN, self.pid)
                    else:
                        _ptrace(_PTRACE_CONT, self.pid)
                else:  # a signal on its way to the child: deliver it
                    _ptrace(_PTRACE_CONT, self.pid, 0, sig)
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise
                # killed while stopped: its end is the next wait

    def _rewrite(self) -> None:
        """At the exec stop: one thread, stopped; write the stubs into the fresh vDSO."""
        try:
            mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
            try:
                todo = _entries(self.pid, mem)
                _write_stubs(mem, todo)
            finally:
                os.close(mem)
        except (OSError, VdsoPatchError) as err:
            self.failures += 1
            log.warning("process %d: vDSO not rewritten at its exec: %s", self.pid, err)
            return
        self.rewritten(PatchResult(True, len(todo), 1, _sample(todo)))


def patch(pid: int) -> PatchResult:
    """Rewrite ``pid``'s vDSO clock entry points into syscall stubs (idempotent).

    VdsoPatchError when it cannot be done (the process is gone, has no vDSO, or is traced by
    another tracer); a result with ``patched`` False when a thread was inside an entry
    point's first bytes (retry later)."""
    if pid == os.getpid():
        raise VdsoPatchError("the agent does not rewrite its own vDSO")
    try:
        mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    except OSError as err:
        raise VdsoPatchError(f"process {pid}: cannot open its memory ({err.strerror})") from err
    try:
        entries = _entries(pid, mem)
        todo = {a: s for a, s in entries.items() if os.pread(mem, STUB_LEN, a) != s}
        if not todo:
            return PatchResult(True, 0, 0, _sample(entries))
        try:
            stopped = _seize_all(pid)
        except OSError as err:
            raise VdsoPatchError(f"process {pid}: cannot stop its threads ({err.strerror}; "
                             f"traced by another tool?)") from err
        try:
            ips = [_ip(tid) for tid in stopped]
            if any(a < ip < a + STUB_LEN for a in todo for ip in ips):
                return PatchResult(False, 0, len(stopped))
            _write_stubs(mem, todo)
        finally:
            _detach_all(stopped)
        return PatchResult(True, len(todo), len(stopped), _sample(entries))
    except OSError as err:
        raise VdsoPatchError(f"process {pid}: {err.strerror}") from err
    finally:
        os.close(mem)
