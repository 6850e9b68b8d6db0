"""Classic-BPF seccomp filters: the one that sends the served syscalls to the tracer, and
the one that refuses what a replayed program never needs.

Trace filter: ``SECCOMP_RET_TRACE`` stops the tracee once per trapped syscall (the tracer
sets ``PTRACE_O_TRACESECCOMP``); every other syscall costs ~40 ns more and runs untouched.
In the sandbox bubblewrap installs it with the deny filter, just before it execs the
program (``--add-seccomp-fd``), so bwrap's own set-up makes no tracer stop; its final
``execve`` (which the tracer rewrites) already stops. Without the sandbox, the forked
child installs it just before exec (built in the parent: the child allocates nothing).

Deny filter (``DENIED``): mount and the new mount API, namespaces (unshare, setns, clone
with a ``CLONE_NEW*`` flag), bpf, perf_event_open, kexec, kernel modules, ptrace and the
calls that read or write another process (process_vm_*, pidfd_getfd, kcmp), keyrings,
open_by_handle_at, userfaultfd, port I/O, io_uring (its submissions would bypass both
filters and the tracer), swap, reboot, the kernel log, clock setting, … return EPERM.
It is handed to bubblewrap (``--add-seccomp-fd``), which installs it as the very last step
before it execs the program: bwrap itself needs mount, pivot_root and unshare to build the
sandbox, and a filter installed before bwrap's exec would refuse them. A filter can never
be removed and is inherited by every child, and when two filters disagree the kernel takes
the stricter action (ERRNO before TRACE), so a denied call fails without a tracer stop and
whatever the tracer does. ``clone3`` passes its flags in memory, out of a filter's reach;
the sandbox's user namespace limit (``sandbox``) refuses a new user namespace there, and
without one no other namespace can be made (no capability).
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable

from kprobe.replay_sandbox import ptrace_ffi

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SYS_SECCOMP = 317
EPERM = 1
CLONE = 56
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 \
    | 0x20000000 | 0x40000000 | 0x00000080

# x86_64 numbers of the calls the deny filter refuses with EPERM
DENIED: dict[int, str] = {
    165: "mount", 166: "umount2", 155: "pivot_root", 161: "chroot", 272: "unshare",
    308: "setns", 428: "open_tree", 429: "move_mount", 430: "fsopen", 431: "fsconfig",
    432: "fsmount", 433: "fspick", 442: "mount_setattr",
    321: "bpf", 298: "perf_event_open", 246: "kexec_load", 320: "kexec_file_load",
    175: "init_module", 313: "finit_module", 176: "delete_module", 174: "create_module",
    101: "ptrace", 310: "process_vm_readv", 311: "process_vm_writev", 438: "pidfd_getfd",
    312: "kcmp",
    250: "keyctl", 248: "add_key", 249: "request_key",
    304: "open_by_handle_at", 303: "name_to_handle_at", 323: "userfaultfd",
    172: "iopl", 173: "ioperm",
    425: "io_uring_setup", 426: "io_uring_enter", 427: "io_uring_register",
    167: "swapon", 168: "swapoff", 169: "reboot", 103: "syslog", 163: "acct",
    164: "settimeofday", 227: "clock_settime", 170: "sethostname", 171: "setdomainname",
    179: "quotactl", 443: "quotactl_fd", 212: "lookup_dcookie", 153: "vhangup",
    300: "fanotify_init", 134: "uselib", 156: "_sysctl", 180: "nfsservctl",
}

# cBPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0 = 16  # low 32 bits of args[0] (little endian)
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


def build_deny_program() -> list[tuple[int, int, int, int]]:
    """Instructions of the deny filter: kill foreign ABIs, EPERM for ``DENIED`` and for
    clone with a namespace flag, allow the rest."""
    numbers = sorted(DENIED)
    errno_eperm = SECCOMP_RET_ERRNO | EPERM
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
        # after this compare: (count - i - 1) compares, JEQ clone, RET ALLOW, then RET EPERM
        prog.append((_JEQ_K, count - i + 1, 0, nr))
    prog += [
        (_JEQ_K, 2, 0, CLONE),  # clone: to the flags check below
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        (_RET_K, 0, 0, errno_eperm),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        (_JSET_K, 0, 1, CLONE_NEW_FLAGS),
        (_RET_K, 0, 0, errno_eperm),
        (_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
    return prog


def program_bytes(prog: list[tuple[int, int, int, int]]) -> bytes:
    """The program as ``struct sock_filter[]`` (what ``bwrap --add-seccomp-fd`` reads)."""
    return b"".join(struct.pack("<HBBI", *insn) for insn in prog)


def run_program(prog: list[tuple[int, int, int, int]], nr: int,
                arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] = ()) -> int:
    """Evaluate the filter in Python on ``struct seccomp_data`` (for tests)."""
    padded = (tuple(args) + (0,) * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *padded)
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
        elif code == _JSET_K:
            pc += 1 + (jt if acc & k else jf)
        elif code == _RET_K:
            return k
        else:
            raise ValueError(f"opcode {code:#x}")


class CompiledFilter:
    """The filter as C structures, kept alive until the child has installed it."""

    def __init__(self, prog: list[tuple[int, int, int, int]]) -> None:
        self.prog = prog
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
