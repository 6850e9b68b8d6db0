"""x86_64 syscalls the replay traps, how each is served, and where its bytes go.

This table is the replay's half of the ``syscall_data`` contract (DESIGN.md "Lake"): for a
syscall that *produces* input (read, recvfrom, fstat, clock_gettime, ...), ``syscall_data``
holds the bytes the kernel wrote into user memory through argument ``arg_index``, at byte
``offset`` from that argument's pointer (``outs`` below). For a syscall that *consumes*
bytes from user memory (write, sendto, openat's path, connect's address, ...), it holds
the bytes the kernel read through that argument (``ins``), so a replay can check what the
program says against what it said when recorded. Any recorder (the eBPF agent, the test
reference recorder) must follow the same layout. Conventions for structured arguments:

* iovec arguments (readv, writev, preadv, ...): ``arg_index`` is the iovec array argument
  and ``offset`` is the offset into the *concatenated* payload (the first ``ret`` bytes).
* ``recvmsg`` / ``sendmsg``: ``arg_index`` 1 carries the iovec payload as above;
  pseudo-argument 6 is ``msg_name``'s bytes, 7 is ``msg_control``'s bytes and 8 is the
  ``struct msghdr`` (56 bytes) after the call (only ``msg_namelen``, ``msg_controllen``
  and ``msg_flags`` are served from it).

Syscalls not listed run for real and are not trapped (memory, threads, signals, exit):
seccomp lets them through at a cost of ~40 ns.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES as _PTRACE_NAMES


class Policy(enum.IntEnum):
    SERVE = 1  # not executed: return value and output bytes come from the log
    OUTPUT = 2  # not executed: the bytes are compared with the log and kept for the report
    NEW_FD = 3  # not executed: a placeholder fd takes the recorded number (or a real open)
    REAL = 4  # trapped to keep the recorded order and check the result, then run for real
    WAIT = 5  # not executed: the outcome (ready or timed out) is decided in virtual time
    CLOCK = 6  # not executed: the value comes from the log or the virtual clock
    SIGNAL = 7  # run for real with the recorded pids translated to the sandbox's
    SYNC = 8  # futex: run for real; an ordering point between threads, matched loosely
    MAP = 9  # mmap: run for real where the recording's mapping was (the address space
    # the program sees is the recorded one: it may read /proc/self/maps, or choose hints)


# How many bytes an argument received (or supplied). Evaluated by ``region_size``.
@dataclass(frozen=True)
class Size:
    kind: str  # ret | fixed | arg_times | ret_times | deref | arg | fdset | cstring | ioctl | flock
    n: int = 0  # fixed size, or multiplier
    arg: int = -1  # the argument the size depends on


RET = Size("ret")
CSTRING = Size("cstring")
IOCTL = Size("ioctl")
FLOCK = Size("flock")


def FIXED(n: int) -> Size:  # noqa: N802 - reads like a type in the table
    return Size("fixed", n)


def ARG_TIMES(arg: int, n: int) -> Size:  # noqa: N802
    return Size("arg_times", n, arg)


def RET_TIMES(n: int) -> Size:  # noqa: N802
    return Size("ret_times", n)


def DEREF(arg: int) -> Size:  # noqa: N802 - length is the int the syscall left at *args[arg]
    return Size("deref", 0, arg)


def ARG(arg: int) -> Size:  # noqa: N802 - length is the value of args[arg]
    return Size("arg", 0, arg)


def FDSET(nfds_arg: int) -> Size:  # noqa: N802
    return Size("fdset", 0, nfds_arg)


def SOCKADDR(len_arg: int) -> Size:  # noqa: N802 - a socket address of args[len_arg] bytes
    return Size("sockaddr", 0, len_arg)


class Layout(enum.IntEnum):
    FLAT = 0  # bytes at args[arg_index] + offset
    IOVEC = 1  # logical offset into the payload of the iovec array at args[arg_index]
    MSGHDR = 2  # struct msghdr at args[arg_index] (payload in its iovecs; pseudo args 6-8)


@dataclass(frozen=True)
class Region:
    arg: int
    size: Size
    layout: Layout = Layout.FLAT
    count_arg: int = -1  # IOVEC: the argument holding the number of iovecs


@dataclass(frozen=True)
class SyscallSpec:
    nr: int
    name: str
    policy: Policy
    fd_arg: int | None = None  # the argument that names a file descriptor
    compare: tuple[int, ...] = ()  # integer arguments that must match in exact mode
    outs: tuple[Region, ...] = ()  # memory the kernel writes (served from the log)
    ins: tuple[Region, ...] = ()  # memory the kernel reads (compared with the log)
    new_fd_flags_arg: int | None = None  # NEW_FD: argument with O_CLOEXEC / O_NONBLOCK
    timeout_arg: int | None = None  # WAIT: where the timeout is
    timeout_kind: str = ""  # ms | timeval | timespec
    extra: dict[str, int] = field(default_factory=dict)


def _r(arg: int, size: Size) -> Region:
    return Region(arg, size)


def _iov(arg: int, count_arg: int) -> Region:
    return Region(arg, RET, Layout.IOVEC, count_arg)


def _msg(arg: int) -> Region:
    return Region(arg, RET, Layout.MSGHDR)


S, OUT, N, R, W, C, G = (Policy.SERVE, Policy.OUTPUT, Policy.NEW_FD, Policy.REAL, Policy.WAIT,
                         Policy.CLOCK, Policy.SIGNAL)
_STAT = FIXED(144)  # struct stat
_SOCKADDR_OUT = (_r(1, DEREF(2)), _r(2, FIXED(4)))

_SPECS: tuple[SyscallSpec, ...] = (
    # -- reads ----------
    SyscallSpec(0, "read", S, 0, (0, 2), (_r(1, RET),)),
    SyscallSpec(17, "pread64", S, 0, (0, 2, 3), (_r(1, RET),)),
    SyscallSpec(19, "readv", S, 0, (0, 2), (_iov(1, 2),)),
    SyscallSpec(295, "preadv", S, 0, (0, 2, 3), (_iov(1, 2),)),
    SyscallSpec(327, "preadv2", S, 0, (0, 2, 3, 5), (_iov(1, 2),)),
    SyscallSpec(45, "recvfrom", S, 0, (0, 2, 3),
                (_r(1, RET), _r(4, DEREF(5)), _r(5, FIXED(4)))),
    SyscallSpec(47, "recvmsg", S, 0, (0, 2), (_msg(1),)),
    SyscallSpec(78, "getdents", S, 0, (0, 2), (_r(1, RET),)),
    SyscallSpec(217, "getdents64", S, 0, (0, 2), (_r(1, RET),)),
    SyscallSpec(318, "getrandom", S, None, (1, 2), (_r(0, RET),)),
    SyscallSpec(89, "readlink", S, None, (2,), (_r(1, RET),), (_r(0, CSTRING),)),
    SyscallSpec(267, "readlinkat", S, 0, (0, 3), (_r(2, RET),), (_r(1, CSTRING),)),
    SyscallSpec(79, "getcwd", S, None, (1,), (_r(0, RET),)),
    SyscallSpec(191, "getxattr", S, None, (3,), (_r(2, RET),), (_r(0, CSTRING), _r(1, CSTRING))),
    SyscallSpec(192, "lgetxattr", S, None, (3,), (_r(2, RET),),
                (_r(0, CSTRING), _r(1, CSTRING))),
    SyscallSpec(193, "fgetxattr", S, 0, (0, 3), (_r(2, RET),), (_r(1, CSTRING),)),
    # -- the stat family and other queries ----------
    SyscallSpec(4, "stat", S, None, (), (_r(1, _STAT),), (_r(0, CSTRING),)),
    SyscallSpec(5, "fstat", S, 0, (0,), (_r(1, _STAT),)),
    SyscallSpec(6, "lstat", S, None, (), (_r(1, _STAT),), (_r(0, CSTRING),)),
    SyscallSpec(262, "newfstatat", S, 0, (0, 3), (_r(2, _STAT),), (_r(1, CSTRING),)),
    SyscallSpec(332, "statx", S, 0, (0, 2, 3), (_r(4, FIXED(256)),), (_r(1, CSTRING),)),
    SyscallSpec(137, "statfs", S, None, (), (_r(1, FIXED(120)),), (_r(0, CSTRING),)),
    SyscallSpec(138, "fstatfs", S, 0, (0,), (_r(1, FIXED(120)),)),
    SyscallSpec(21, "access", S, None, (1,), (), (_r(0, CSTRING),)),
    SyscallSpec(269, "faccessat", S, 0, (0, 2), (), (_r(1, CSTRING),)),
    SyscallSpec(439, "faccessat2", S, 0, (0, 2, 3), (), (_r(1, CSTRING),)),
    SyscallSpec(8, "lseek", S, 0, (0, 1, 2)),
    SyscallSpec(16, "ioctl", S, 0, (0, 1), (_r(2, IOCTL),)),
    SyscallSpec(72, "fcntl", S, 0, (0, 1), (_r(2, FLOCK),)),
    SyscallSpec(63, "uname", S, None, (), (_r(0, FIXED(390)),)),
    SyscallSpec(99, "sysinfo", S, None, (), (_r(0, FIXED(112)),)),
    SyscallSpec(100, "times", S, None, (), (_r(0, FIXED(32)),)),
    SyscallSpec(98, "getrusage", S, None, (0,), (_r(1, FIXED(144)),)),
    SyscallSpec(97, "getrlimit", S, None, (0,), (_r(1, FIXED(16)),)),
    SyscallSpec(160, "setrlimit", S, None, (0,)),
    SyscallSpec(302, "prlimit64", S, None, (1,), (_r(3, FIXED(16)),)),
    SyscallSpec(204, "sched_getaffinity", S, None, (1,), (_r(2, RET),)),
    SyscallSpec(115, "getgroups", S, None, (0,), (_r(1, RET_TIMES(4)),)),
    SyscallSpec(118, "getresuid", S, None, (),
                (_r(0, FIXED(4)), _r(1, FIXED(4)), _r(2, FIXED(4)))),
    SyscallSpec(120, "getresgid", S, None, (),
                (_r(0, FIXED(4)), _r(1, FIXED(4)), _r(2, FIXED(4)))),
    SyscallSpec(39, "getpid", S),
    SyscallSpec(110, "getppid", S),
    SyscallSpec(186, "gettid", S),
    SyscallSpec(102, "getuid", S),
    SyscallSpec(104, "getgid", S),
    SyscallSpec(107, "geteuid", S),
    SyscallSpec(108, "getegid", S),
    SyscallSpec(111, "getpgrp", S),
    SyscallSpec(121, "getpgid", S),
    SyscallSpec(124, "getsid", S),
    SyscallSpec(95, "umask", S, None, (0,)),
    # credentials: the program sees the recorded ones (getuid is served), so changing them
    # is served too; the sandbox's own (an unprivileged uid) never change
    SyscallSpec(105, "setuid", S, None, (0,)),
    SyscallSpec(106, "setgid", S, None, (0,)),
    SyscallSpec(113, "setreuid", S, None, (0, 1)),
    SyscallSpec(114, "setregid", S, None, (0, 1)),
    SyscallSpec(116, "setgroups", S, None, (0,)),
    SyscallSpec(117, "setresuid", S, None, (0, 1, 2)),
    SyscallSpec(119, "setresgid", S, None, (0, 1, 2)),
    SyscallSpec(122, "setfsuid", S, None, (0,)),
    SyscallSpec(123, "setfsgid", S, None, (0,)),
    SyscallSpec(309, "getcpu", C, None, (), (_r(0, FIXED(4)), _r(1, FIXED(4)))),
    # -- clocks ----------
    SyscallSpec(228, "clock_gettime", C, None, (0,), (_r(1, FIXED(16)),)),
    SyscallSpec(229, "clock_getres", S, None, (0,), (_r(1, FIXED(16)),)),
    SyscallSpec(96, "gettimeofday", C, None, (), (_r(0, FIXED(16)), _r(1, FIXED(8)))),
    SyscallSpec(201, "time", C, None, (), (_r(0, FIXED(8)),)),
    # -- waits ----------
    SyscallSpec(7, "poll", W, None, (1,), (_r(0, ARG_TIMES(1, 8)),),
                timeout_arg=2, timeout_kind="ms"),
    SyscallSpec(271, "ppoll", W, None, (1,), (_r(0, ARG_TIMES(1, 8)), _r(2, FIXED(16))),
                timeout_arg=2, timeout_kind="timespec"),
    SyscallSpec(23, "select", W, None, (0,),
                (_r(1, FDSET(0)), _r(2, FDSET(0)), _r(3, FDSET(0)), _r(4, FIXED(16))),
                timeout_arg=4, timeout_kind="timeval"),
    SyscallSpec(270, "pselect6", W, None, (0,),
                (_r(1, FDSET(0)), _r(2, FDSET(0)), _r(3, FDSET(0)), _r(4, FIXED(16))),
                timeout_arg=4, timeout_kind="timespec"),
    SyscallSpec(232, "epoll_wait", W, 0, (0, 2), (_r(1, RET_TIMES(12)),),
                timeout_arg=3, timeout_kind="ms"),
    SyscallSpec(281, "epoll_pwait", W, 0, (0, 2), (_r(1, RET_TIMES(12)),),
                timeout_arg=3, timeout_kind="ms"),
    SyscallSpec(441, "epoll_pwait2", W, 0, (0, 2), (_r(1, RET_TIMES(12)),),
                timeout_arg=3, timeout_kind="timespec"),
    SyscallSpec(35, "nanosleep", W, None, (), timeout_arg=0, timeout_kind="timespec"),
    SyscallSpec(230, "clock_nanosleep", W, None, (0, 1), timeout_arg=2,
                timeout_kind="timespec"),
    # -- outputs ----------
    SyscallSpec(1, "write", OUT, 0, (0, 2), (), (_r(1, RET),)),
    SyscallSpec(18, "pwrite64", OUT, 0, (0, 2, 3), (), (_r(1, RET),)),
    SyscallSpec(20, "writev", OUT, 0, (0, 2), (), (_iov(1, 2),)),
    SyscallSpec(296, "pwritev", OUT, 0, (0, 2, 3), (), (_iov(1, 2),)),
    SyscallSpec(328, "pwritev2", OUT, 0, (0, 2, 3, 5), (), (_iov(1, 2),)),
    SyscallSpec(44, "sendto", OUT, 0, (0, 2, 3), (), (_r(1, RET), _r(4, SOCKADDR(5)))),
    SyscallSpec(46, "sendmsg", OUT, 0, (0, 2), (), (_msg(1),)),
    # -- sockets and descriptors without output ----------
    SyscallSpec(42, "connect", S, 0, (0, 2), (), (_r(1, SOCKADDR(2)),)),
    SyscallSpec(49, "bind", S, 0, (0, 2), (), (_r(1, SOCKADDR(2)),)),
    SyscallSpec(50, "listen", S, 0, (0, 1)),
    SyscallSpec(48, "shutdown", S, 0, (0, 1)),
    SyscallSpec(54, "setsockopt", S, 0, (0, 1, 2, 4), (), (_r(3, ARG(4)),)),
    SyscallSpec(55, "getsockopt", S, 0, (0, 1, 2), (_r(3, DEREF(4)), _r(4, FIXED(4)))),
    SyscallSpec(51, "getsockname", S, 0, (0,), _SOCKADDR_OUT),
    SyscallSpec(52, "getpeername", S, 0, (0,), _SOCKADDR_OUT),
    SyscallSpec(233, "epoll_ctl", S, 0, (0, 1, 2), (), (_r(3, FIXED(12)),)),
    SyscallSpec(254, "inotify_add_watch", S, 0, (0, 2), (), (_r(1, CSTRING),)),
    SyscallSpec(286, "timerfd_settime", S, 0, (0, 1), (_r(3, FIXED(32)),)),
    SyscallSpec(287, "timerfd_gettime", S, 0, (0,), (_r(1, FIXED(32)),)),
    SyscallSpec(74, "fsync", S, 0, (0,)),
    SyscallSpec(75, "fdatasync", S, 0, (0,)),
    SyscallSpec(277, "sync_file_range", S, 0, (0, 1, 2, 3)),
    SyscallSpec(221, "fadvise64", S, 0, (0, 1, 2, 3)),
    SyscallSpec(77, "ftruncate", S, 0, (0, 1)),
    SyscallSpec(285, "fallocate", S, 0, (0, 1, 2, 3)),
    SyscallSpec(91, "fchmod", S, 0, (0, 1)),
    SyscallSpec(93, "fchown", S, 0, (0, 1, 2)),
    SyscallSpec(81, "fchdir", S, 0, (0,)),
    SyscallSpec(73, "flock", S, 0, (0, 1)),
    # -- transfers inside the kernel: no user memory, so no bytes to serve or compare ------
    SyscallSpec(40, "sendfile", S, 0, (0, 1, 3), (_r(2, FIXED(8)),)),
    SyscallSpec(326, "copy_file_range", S, 0, (0, 2, 4, 5),
                (_r(1, FIXED(8)), _r(3, FIXED(8)))),
    SyscallSpec(275, "splice", S, 0, (0, 2, 4, 5), (_r(1, FIXED(8)), _r(3, FIXED(8)))),
    SyscallSpec(276, "tee", S, 0, (0, 1, 2, 3)),
    # -- path operations: side effects are not performed, results come from the log ----------
    SyscallSpec(80, "chdir", S, None, (), (), (_r(0, CSTRING),)),
    SyscallSpec(83, "mkdir", S, None, (1,), (), (_r(0, CSTRING),)),
    SyscallSpec(258, "mkdirat", S, 0, (0, 2), (), (_r(1, CSTRING),)),
    SyscallSpec(84, "rmdir", S, None, (), (), (_r(0, CSTRING),)),
    SyscallSpec(87, "unlink", S, None, (), (), (_r(0, CSTRING),)),
    SyscallSpec(263, "unlinkat", S, 0, (0, 2), (), (_r(1, CSTRING),)),
    SyscallSpec(82, "rename", S, None, (), (), (_r(0, CSTRING), _r(1, CSTRING))),
    SyscallSpec(264, "renameat", S, 0, (0, 2), (), (_r(1, CSTRING), _r(3, CSTRING))),
    SyscallSpec(316, "renameat2", S, 0, (0, 2, 4), (), (_r(1, CSTRING), _r(3, CSTRING))),
    SyscallSpec(86, "link", S, None, (), (), (_r(0, CSTRING), _r(1, CSTRING))),
    SyscallSpec(88, "symlink", S, None, (), (), (_r(0, CSTRING), _r(1, CSTRING))),
    SyscallSpec(90, "chmod", S, None, (1,), (), (_r(0, CSTRING),)),
    SyscallSpec(268, "fchmodat", S, 0, (0, 2), (), (_r(1, CSTRING),)),
    SyscallSpec(76, "truncate", S, None, (1,), (), (_r(0, CSTRING),)),
    SyscallSpec(280, "utimensat", S, 0, (0, 3)),
    # -- new descriptors ----------
    SyscallSpec(2, "open", N, None, (1,), (), (_r(0, CSTRING),), new_fd_flags_arg=1),
    SyscallSpec(257, "openat", N, 0, (0, 2), (), (_r(1, CSTRING),), new_fd_flags_arg=2),
    SyscallSpec(85, "creat", N, None, (), (), (_r(0, CSTRING),)),
    SyscallSpec(41, "socket", N, None, (0, 1, 2), new_fd_flags_arg=1),
    SyscallSpec(43, "accept", N, 0, (0,), _SOCKADDR_OUT),
    SyscallSpec(288, "accept4", N, 0, (0, 3), _SOCKADDR_OUT, new_fd_flags_arg=3),
    SyscallSpec(213, "epoll_create", N, None, ()),
    SyscallSpec(291, "epoll_create1", N, None, (0,), new_fd_flags_arg=0),
    SyscallSpec(284, "eventfd", N, None, (0,)),
    SyscallSpec(290, "eventfd2", N, None, (0, 1), new_fd_flags_arg=1),
    SyscallSpec(283, "timerfd_create", N, None, (0, 1), new_fd_flags_arg=1),
    SyscallSpec(289, "signalfd4", N, 0, (0, 2, 3), new_fd_flags_arg=3),
    SyscallSpec(253, "inotify_init", N, None, ()),
    SyscallSpec(294, "inotify_init1", N, None, (0,), new_fd_flags_arg=0),
    # -- run for real, in the recorded order ----------
    SyscallSpec(3, "close", R, 0, (0,)),
    SyscallSpec(436, "close_range", R, None, (0, 1, 2)),
    SyscallSpec(32, "dup", R, 0, (0,)),
    SyscallSpec(33, "dup2", R, 0, (0, 1)),
    SyscallSpec(292, "dup3", R, 0, (0, 1, 2)),
    SyscallSpec(22, "pipe", R, None, (), (_r(0, FIXED(8)),)),
    SyscallSpec(293, "pipe2", R, None, (1,), (_r(0, FIXED(8)),)),
    SyscallSpec(53, "socketpair", R, None, (0, 1, 2), (_r(3, FIXED(8)),)),
    SyscallSpec(56, "clone", R, None, (0,)),
    SyscallSpec(435, "clone3", R, None, ()),
    SyscallSpec(57, "fork", R, None, ()),
    SyscallSpec(58, "vfork", R, None, ()),
    # -- waits for children: run for real (they block), for the recorded child, with the
    # recorded rusage (engine: _on_wait_child) ----------
    SyscallSpec(61, "wait4", R, None, (), (_r(1, FIXED(4)), _r(3, FIXED(144)))),
    SyscallSpec(247, "waitid", R, None, (), (_r(2, FIXED(128)), _r(4, FIXED(144)))),
    # -- memory placed where it was: mmap at the recorded address ---------------------------
    SyscallSpec(9, "mmap", Policy.MAP, 4, (1, 2, 3, 4)),
    # -- synchronisation between threads: contended locks show as futex calls ---------------
    SyscallSpec(202, "futex", Policy.SYNC, None, ()),
    SyscallSpec(449, "futex_waitv", Policy.SYNC, None, ()),
    SyscallSpec(62, "kill", G, None, (1,)),
    SyscallSpec(200, "tkill", G, None, (1,)),
    SyscallSpec(234, "tgkill", G, None, (2,)),
)

SPECS: dict[int, SyscallSpec] = {s.nr: s for s in _SPECS}
BY_NAME: dict[str, SyscallSpec] = {s.name: s for s in _SPECS}
TRAPPED: frozenset[int] = frozenset(SPECS)

# Names for every number, ours first (python-ptrace's table stops before some new ones).
_EXTRA_NAMES = {441: "epoll_pwait2", 442: "mount_setattr", 449: "futex_waitv",
                439: "faccessat2", 436: "close_range", 435: "clone3"}
NAMES: dict[int, str] = {**dict(_PTRACE_NAMES), **_EXTRA_NAMES, **{s.nr: s.name for s in _SPECS}}
# lowest number wins: python-ptrace's table also lists x32 numbers (512+) for some names
NUMBERS: dict[str, int] = {name: nr for nr, name in sorted(NAMES.items(), reverse=True)}

# vDSO entry points and the syscall each one is rewritten to call.
VDSO_SYSCALLS: dict[str, int] = {
    "__vdso_clock_gettime": 228,
    "__vdso_gettimeofday": 96,
    "__vdso_time": 201,
    "__vdso_getcpu": 309,
    "__vdso_getrandom": 318,
}

EVENTFD2 = 290
O_CLOEXEC = 0o2000000
O_NONBLOCK = 0o4000
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TRUNC = 0o1000
MAP_FIXED = 0x10
MAP_FIXED_NOREPLACE = 0x100000
F_DUPFD = 0
F_DUPFD_CLOEXEC = 1030
F_GETLK = 5
F_OFD_GETLK = 36
FD_CREATORS: frozenset[int] = frozenset(
    s.nr for s in _SPECS if s.policy is Policy.NEW_FD
) | {32, 33, 292, 22, 293, 53}
SOCKET_CREATORS: frozenset[int] = frozenset({41, 43, 288, 53})
CLONES: frozenset[int] = frozenset({56, 435, 57, 58})
READ_FAMILY: frozenset[int] = frozenset({0, 17, 19, 295, 327, 45, 47})
RECV_FAMILY: frozenset[int] = frozenset({45, 47})
WRITE_FAMILY: frozenset[int] = frozenset({1, 18, 20, 296, 328, 44, 46})
IN_KERNEL_COPIES: frozenset[int] = frozenset({40, 326, 275, 276})  # bytes never seen

# Legacy tty ioctls carry no size in their number; everything else encodes it (_IOC).
_IOCTL_SIZES = {0x5401: 36, 0x5413: 8, 0x541B: 4, 0x540F: 4, 0x5411: 4, 0x5429: 4}


def name_of(nr: int) -> str:
    return NAMES.get(nr, f"syscall_{nr}")


def is_error(ret: int) -> bool:
    return -4095 <= ret < 0


def fd_of(nr: int, args: tuple[int, ...] | list[int]) -> int:
    """The ``fd`` column: the descriptor argument as a signed int, or -1."""
    spec = SPECS.get(nr)
    if spec is None or spec.fd_arg is None:
        return -1
    value = args[spec.fd_arg] & 0xFFFF_FFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class Memory(Protocol):
    """What region evaluation needs from a tracee (TraceeMemory satisfies it)."""

    def read(self, addr: int, length: int) -> bytes: ...

    def read_cstring(self, addr: int, limit: int = 4096) -> bytes: ...


def _u32(mem: Memory, addr: int) -> int:
    return int(struct.unpack("<I", mem.read(addr, 4))[0])


def region_size(region: Region, nr: int, args: tuple[int, ...], ret: int, mem: Memory) -> int:
    """Bytes in ``region`` after the syscall returned ``ret`` (-1 = a C string)."""
    size = region.size
    kind = size.kind
    if kind == "ret":
        return max(ret, 0)
    if kind == "fixed":
        return size.n
    if kind == "arg_times":
        return (args[size.arg] & 0xFFFF_FFFF) * size.n
    if kind == "ret_times":
        return max(ret, 0) * size.n
    if kind in ("arg", "sockaddr"):
        return args[size.arg] & 0xFFFF_FFFF
    if kind == "deref":
        return _u32(mem, args[size.arg]) if args[size.arg] else 0
    if kind == "fdset":
        return ((args[size.arg] & 0xFFFF_FFFF) + 63) // 64 * 8
    if kind == "cstring":
        return -1
    if kind == "ioctl":
        request = args[1] & 0xFFFF_FFFF
        if request in _IOCTL_SIZES:
            return _IOCTL_SIZES[request]
        return (request >> 16) & 0x3FFF if (request >> 30) & 2 else 0
    if kind == "flock":
        return 32 if (args[1] & 0xFFFF_FFFF) in (F_GETLK, F_OFD_GETLK) else 0
    raise ValueError(f"unknown size kind {kind}")


def canonical_sockaddr(data: bytes) -> bytes:
    """The meaningful part of a socket address: a unix path stops at its NUL, an inet
    address has no padding. The rest of the buffer is often uninitialised memory."""
    if len(data) < 2:
        return data
    family = int.from_bytes(data[:2], "little")
    if family == 1:  # AF_UNIX: abstract names (leading NUL) keep their full length
        path = data[2:]
        return data if path[:1] == b"\0" else data[:2] + path.split(b"\0", 1)[0]
    if family == 2:  # AF_INET: family, port, address
        return data[:8]
    if family == 10:  # AF_INET6: family, port, flowinfo, address, scope id
        return data[:28]
    return data


def _read_iovecs(mem: Memory, addr: int, count: int) -> list[tuple[int, int]]:
    count = min(count, 1024)
    raw = mem.read(addr, count * 16)
    return [(int(base), int(length)) for base, length in struct.iter_unpack("<QQ", raw)]


def _gather(mem: Memory, iovecs: list[tuple[int, int]], total: int) -> bytes:
    out = bytearray()
    for base, length in iovecs:
        if len(out) >= total:
            break
        take = min(length, total - len(out))
        out += mem.read(base, take)
    return bytes(out)


def _scatter(mem: Memory, iovecs: list[tuple[int, int]], offset: int, data: bytes,
             write: Callable[[int, bytes], None]) -> None:
    position = 0
    for base, length in iovecs:
        if not data:
            return
        end = position + length
        if offset < end:
            start = offset - position
            take = min(length - start, len(data))
            write(base + start, data[:take])
            data = data[take:]
            offset += take
        position = end


def capture(regions: tuple[Region, ...], nr: int, args: tuple[int, ...], ret: int,
            mem: Memory, cap: int) -> list[tuple[int, int, bytes, int]]:
    """Bytes in ``regions`` as ``(arg_index, offset, data, total_len)`` rows (at most ``cap``
    bytes each). Used by recorders at syscall exit and by the replay to read what the
    program passes in."""
    rows: list[tuple[int, int, bytes, int]] = []
    for region in regions:
        addr = args[region.arg]
        if not addr:
            continue
        if region.layout is Layout.IOVEC:
            total = max(ret, 0)
            data = _gather(mem, _read_iovecs(mem, addr, args[region.count_arg]), min(total, cap))
            rows.append((region.arg, 0, data, total))
            continue
        if region.layout is Layout.MSGHDR:
            rows.extend(_capture_msghdr(region.arg, addr, ret, mem, cap))
            continue
        length = region_size(region, nr, args, ret, mem)
        if length == -1:
            data = mem.read_cstring(addr)
            rows.append((region.arg, 0, data, len(data)))
        elif length > 0:
            rows.append((region.arg, 0, mem.read(addr, min(length, cap)), length))
    return rows


def _capture_msghdr(arg: int, addr: int, ret: int, mem: Memory,
                    cap: int) -> list[tuple[int, int, bytes, int]]:
    header = mem.read(addr, 56)
    name, namelen, iov, iovlen, control, controllen, _flags = struct.unpack("<QI4xQQQQi4x",
                                                                             header)
    total = max(ret, 0)
    rows = [(arg, 0, _gather(mem, _read_iovecs(mem, iov, iovlen), min(total, cap)), total)]
    if name and namelen:
        rows.append((6, 0, mem.read(name, min(namelen, 128)), namelen))
    if control and controllen:
        rows.append((7, 0, mem.read(control, min(controllen, cap)), controllen))
    rows.append((8, 0, header, 56))
    return rows


def write_outputs(nr: int, args: tuple[int, ...], chunks: list[tuple[int, int, bytes]],
                  mem: Memory, write: Callable[[int, bytes], None]) -> None:
    """Put recorded output bytes where the syscall would have written them."""
    plan = _OUT_PLANS.get(nr)
    if plan is None:
        plan = _OUT_PLANS[nr] = _out_plan(nr)
    iovecs_at, msghdr = plan
    for arg_index, offset, data in chunks:
        region = iovecs_at.get(arg_index)
        if region is not None:
            iovecs = _read_iovecs(mem, args[arg_index], args[region.count_arg])
            _scatter(mem, iovecs, offset, data, write)
        elif msghdr:
            _write_msghdr(args[1], arg_index, offset, data, mem, write)
        elif arg_index < 6 and args[arg_index]:
            write(args[arg_index] + offset, data)


# nr -> (its iovec output regions by argument, whether an output is a msghdr): built once
# per call number, not at every served call
_OUT_PLANS: dict[int, tuple[dict[int, Region], bool]] = {}


def _out_plan(nr: int) -> tuple[dict[int, Region], bool]:
    spec = SPECS.get(nr)
    if spec is None:
        return {}, False
    return ({r.arg: r for r in spec.outs if r.layout is Layout.IOVEC},
            any(r.layout is Layout.MSGHDR for r in spec.outs))


def _write_msghdr(addr: int, arg_index: int, offset: int, data: bytes, mem: Memory,
                  write: Callable[[int, bytes], None]) -> None:
    header = mem.read(addr, 56)
    name, _nl, iov, iovlen, control, _cl, _f = struct.unpack("<QI4xQQQQi4x", header)
    if arg_index == 1:
        _scatter(mem, _read_iovecs(mem, iov, iovlen), offset, data, write)
    elif arg_index == 6 and name:
        write(name + offset, data)
    elif arg_index == 7 and control:
        write(control + offset, data)
    elif arg_index == 8 and len(data) >= 56:
        write(addr + 8, data[8:12])  # msg_namelen
        write(addr + 40, data[40:48])  # msg_controllen
        write(addr + 48, data[48:52])  # msg_flags
