"""Syscalls family: mirror of bpf/syscalls.h, the payload table, sensor configuration, and
batches -> lake tables ``syscalls`` and ``syscall_data``.

Rings (one record size each):
  syscall_events      struct syscall_event            a completed syscall of a target
  syscall_data        struct syscall_data_event       payload bytes, chunks <= 4 KiB
  syscall_data_small  struct syscall_data_small_event payload bytes, chunks <= 256 bytes

Only targeted processes are captured (``targets`` map, or ``target_all``). Attach points:
``tp_btf/sys_enter`` and ``tp_btf/sys_exit``. Measured on the 2-vCPU VM with a getppid
loop (``tests/bench/bench_syscall_overhead.py``, median of 5 runs; the kernel alone takes
~77 ns per getppid; CPU speed here varies up to 2x between runs):

  ns added per syscall                      untargeted process   targeted (no payloads)
  empty tp_btf programs (the floor)         +38
  tp_btf sys_enter + sys_exit (shipped)     +42..48              +132..137
  per-syscall tracepoints (all 720)         +75..91              +143..190
  targeted read(64 B) with its payload: +263 over a plain read (~105 ns)

A ring kept above ``wakeup_fill_pct`` between drains makes every record force a wakeup
(an IPI: a VM exit here): the same read then costs +690 ns. Size the rings for the
targets' peak rate over one drain interval (a 4 MiB small-data ring holds ~12.8 k
payloads).

Per-syscall tracepoints are built on the same two raw tracepoints in the kernel, and
each adds a perf record per syscall before the program runs: no saving for the
processes not captured, and ~720 attachments plus tracefs for full capture.

Payloads (``capture_payloads``): at the exit of a successful syscall listed in
``PAYLOAD_TABLE``, the bytes it exchanged with user memory: what the kernel wrote there
(read buffers, struct stat, ...: a replay's inputs) and what it read from there (write
buffers, paths, socket addresses: what a replay checks its outputs against), at most
``payload_cap`` per region (default 64 KiB); a longer region is flagged ``truncated`` with
its real ``total_len``. At exec, the new image's argv (arg 1), environment (arg 2) and
file (arg 0) come as payload rows of the execve (``NR_EXECVE``), read by the kernel at
``sched_process_exec``: /proc, read later by the agent, may already show the next exec.
Rows of ``syscall_data`` join ``syscalls`` on (pid, tid, seq) (and share its ``ts_ns``).
Layout of structured arguments, the replay's contract (``replay_sandbox/syscall_table.py``):
iovec payloads are one region whose ``offset``
counts in the concatenated bytes; recvmsg gives its iovec payload as argument 1 and
pseudo-arguments 6 (msg_name), 7 (msg_control), 8 (the struct msghdr after the call).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent import syscall_names
from kprobe.capture_agent.clock import ClockSample, sample_offset
from kprobe.capture_agent.elfsyms import emulated_probe_offset, function_offsets
from kprobe.capture_agent.errors import BpfAttachError, CaptureAgentError
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array
from kprobe.capture_agent.families._maps import read_percpu
from kprobe.capture_agent.families.base import ProbeFamily, UprobePlaces
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

SYSCALLS_LAYOUT_VERSION = 3
TASK_COMM_LEN = 16
SYSCALL_ARGS = 6
SYSCALL_NR_MAX = syscall_names.NR_MAX
PAYLOAD_REGIONS = 4
SYSCALL_DATA_CHUNK = 4096
SYSCALL_DATA_SMALL_CHUNK = 256

SYSCALL_FLAG_NO_RETURN = 0x1
SYSCALL_FLAG_TRUNCATED = 0x2
SYSCALL_FLAG_PAYLOAD_LOST = 0x4
SYSCALL_FLAG_COMPAT = 0x8
SYSCALL_FLAG_VDSO = 0x10
DATA_FLAG_TRUNCATED = 0x1
DATA_FLAG_FAULT = 0x2
DATA_FLAG_FILE = 0x4  # a regular file's read by identity: data is a FILE_ID
DATA_FLAG_ALSO_FILE = 0x8  # bytes of a read also given by identity (a fresh file)
DATA_FLAG_DELETED = 0x10  # a kernel path of a file unlinked since
PAYLOAD_ARG_MSG_NAME = 6
PAYLOAD_ARG_MSG_CONTROL = 7
PAYLOAD_ARG_MSGHDR = 8
PAYLOAD_ARG_CWD = 10  # execve, chdir, fchdir: the working directory after the call
PAYLOAD_ARG_CONTEXT = 11  # execve: PROC_CONTEXT
PAYLOAD_ARG_FDS = 12  # execve: the descriptors the image starts with, FILE_ID[]
PAYLOAD_ARG_OPENED = 13  # open family: FILE_ID of the new descriptor, then its path
PAYLOAD_ARG_FD_PATH = 16  # execve: the path of descriptor N is argument 16 + N
FD_TABLE_MAX = 64
PATH_DEPTH_MAX = 64
RLIMITS = 16
NR_EXECVE = 59  # at exec: argv (arg 1), environment (2), file (0) as execve payloads

PAYLOAD_CAP_DEFAULT = 64 << 10
PAYLOAD_CAP_MAX = 16 << 20  # chunk offsets are u32; keeps the kernel's copy loop short


class PayloadSize(enum.IntEnum):
    """``enum payload_size_kind``: C name = ``PAYLOAD_`` + member name."""

    NONE = 0
    RET = 1
    FIXED = 2
    RET_TIMES = 3
    ARG_TIMES = 4
    DEREF = 5
    FDSET = 6
    IOCTL = 7
    FLOCK = 8
    CSTRING = 9


class PayloadLayout(enum.IntEnum):
    """``enum payload_layout``: C name = ``PAYLOAD_`` + member name."""

    FLAT = 0
    IOVEC = 1
    MSGHDR = 2
    LAYOUT_MASK = 0x7F
    INPUT = 0x80  # flag: bytes the call reads; FLAT ones are also captured when it fails


SYSCALL_EVENT = record_dtype(
    [
        ("start_ns", "<u8"),
        ("seq", "<u8"),
        ("ret", "<i8"),
        ("args", "<u8", (SYSCALL_ARGS,)),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("nr", "<i4"),
        ("__pad", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
    ]
)


def _data_dtype(chunk: int) -> np.dtype:
    return record_dtype(
        [
            ("start_ns", "<u8"),
            ("seq", "<u8"),
            ("total_len", "<u8"),
            ("pid", "<u4"),
            ("tid", "<u4"),
            ("offset", "<u4"),
            ("len", "<u4"),
            ("nr", "<i4"),
            ("arg_index", "u1"),
            ("__pad", "u1", (3,)),
            ("data", "u1", (chunk,)),
        ]
    )


SYSCALL_DATA_EVENT = _data_dtype(SYSCALL_DATA_CHUNK)
SYSCALL_DATA_SMALL_EVENT = _data_dtype(SYSCALL_DATA_SMALL_CHUNK)

# struct file_id: the data of a DATA_FLAG_FILE chunk, of PAYLOAD_ARG_FDS (an array) and
# the head of PAYLOAD_ARG_OPENED
FILE_ID = np.dtype([
    ("dev", "<u8"),  # kernel encoding: major << 20 | minor
    ("ino", "<u8"),
    ("size", "<i8"),
    ("mtime_ns", "<i8"),
    ("ctime_ns", "<i8"),
    ("pos", "<i8"),  # a read: offset of its first byte; a descriptor: f_pos
    ("fd", "<i4"),
    ("mode", "<u4"),
    ("flags", "<u4"),
    ("magic", "<u4"),
])

# struct proc_context: the data of PAYLOAD_ARG_CONTEXT
PROC_CONTEXT = np.dtype([
    ("umask", "<u4"),
    ("ids_mapped", "<u4"),
    ("uid", "<u4"),
    ("euid", "<u4"),
    ("suid", "<u4"),
    ("fsuid", "<u4"),
    ("gid", "<u4"),
    ("egid", "<u4"),
    ("sgid", "<u4"),
    ("fsgid", "<u4"),
    ("rlimits", "<u8", (RLIMITS * 2,)),
    ("nodename", "S65"),
    ("__pad", "u1", (7,)),
])

PAYLOAD_REGION = np.dtype(
    [("n", "<u4"), ("arg", "u1"), ("size_kind", "u1"), ("layout", "u1"), ("len_arg", "u1")]
)
PAYLOAD_SPEC = np.dtype([("regions", PAYLOAD_REGION, (PAYLOAD_REGIONS,))])


# -- the payload table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A payload region: bytes the syscall writes (or reads) through argument ``arg``."""

    arg: int
    size: PayloadSize
    n: int = 0  # FIXED: bytes; *_TIMES: multiplier
    len_arg: int = 0  # the argument the size (or the iovec count) depends on
    layout: PayloadLayout = PayloadLayout.FLAT
    input: bool = False  # read by the call (kept even when it fails: what it tried to send)


def _ret(arg: int) -> Region:
    return Region(arg, PayloadSize.RET)


def _fixed(arg: int, n: int) -> Region:
    return Region(arg, PayloadSize.FIXED, n)


def _ret_times(arg: int, n: int) -> Region:
    return Region(arg, PayloadSize.RET_TIMES, n)


def _arg_times(arg: int, len_arg: int, n: int) -> Region:
    return Region(arg, PayloadSize.ARG_TIMES, n, len_arg)


def _deref(arg: int, len_arg: int) -> Region:
    return Region(arg, PayloadSize.DEREF, 0, len_arg)


def _fdset(arg: int, nfds_arg: int) -> Region:
    return Region(arg, PayloadSize.FDSET, 0, nfds_arg)


def _iovec(arg: int, count_arg: int) -> Region:
    return Region(arg, PayloadSize.RET, 0, count_arg, PayloadLayout.IOVEC)


def _cstring(arg: int) -> Region:
    return Region(arg, PayloadSize.CSTRING, input=True)


def _sized(arg: int, len_arg: int) -> Region:
    """``args[len_arg]`` bytes at ``args[arg]`` (connect's address and its length)."""
    return Region(arg, PayloadSize.ARG_TIMES, 1, len_arg, input=True)


def _sent(arg: int, len_arg: int) -> Region:
    """Bytes a write takes: as many as it returns; if it fails, the ``args[len_arg]`` it
    offered (what a send hitting EPIPE or a reset tried to say)."""
    return Region(arg, PayloadSize.RET, 0, len_arg, input=True)


def _sent_iovec(arg: int, count_arg: int) -> Region:
    return Region(arg, PayloadSize.RET, 0, count_arg, PayloadLayout.IOVEC, input=True)


_STAT = 144  # struct stat (x86_64)
_STATFS = 120
_TIMESPEC = 16
_RUSAGE = 144
_SIGINFO = 128
_SOCKADDR_OUT = (_deref(1, 2), _fixed(2, 4))  # the address, then *addrlen
_FDSETS = (_fdset(1, 0), _fdset(2, 0), _fdset(3, 0), _fixed(4, _TIMESPEC))

_PATH = (_cstring(0),)
_AT_PATH = (_cstring(1),)

# syscall name -> its payload regions, in the order they are emitted. Inputs (what the call
# read from user memory) are listed after outputs; the replay's table
# (replay_sandbox/syscall_table.py) says which arguments are which.
PAYLOAD_TABLE: Mapping[str, tuple[Region, ...]] = MappingProxyType({
    # writes: the bytes that left, as many as the return value says were taken
    "write": (_sent(1, 2),),
    "pwrite64": (_sent(1, 2),),
    "writev": (_sent_iovec(1, 2),),
    "pwritev": (_sent_iovec(1, 2),),
    "pwritev2": (_sent_iovec(1, 2),),
    "sendto": (_sent(1, 2), _sized(4, 5)),
    "sendmsg": (Region(1, PayloadSize.RET, layout=PayloadLayout.MSGHDR, input=True),),
    "connect": (_sized(1, 2),),
    "bind": (_sized(1, 2),),
    # paths the call looked up (a replay checks it asks for the same files)
    "open": _PATH,
    "openat": _AT_PATH,
    "openat2": _AT_PATH,
    "creat": _PATH,
    "access": _PATH,
    "faccessat": _AT_PATH,
    "faccessat2": _AT_PATH,
    "unlink": _PATH,
    "unlinkat": _AT_PATH,
    "mkdir": _PATH,
    "mkdirat": _AT_PATH,
    "rmdir": _PATH,
    "chdir": _PATH,
    "rename": (_cstring(0), _cstring(1)),
    "renameat": (_cstring(1), _cstring(3)),
    "renameat2": (_cstring(1), _cstring(3)),
    "link": (_cstring(0), _cstring(1)),
    "symlink": (_cstring(0), _cstring(1)),
    "chmod": _PATH,
    "fchmodat": _AT_PATH,
    "truncate": _PATH,
    "inotify_add_watch": _AT_PATH,
    "setsockopt": (_sized(3, 4),),
    "epoll_ctl": (Region(3, PayloadSize.FIXED, 12, input=True),),
    # reads: the return value says how many bytes arrived
    "read": (_ret(1),),
    "pread64": (_ret(1),),
    "readv": (_iovec(1, 2),),
    "preadv": (_iovec(1, 2),),
    "preadv2": (_iovec(1, 2),),
    "recvfrom": (_ret(1), _deref(4, 5), _fixed(5, 4)),
    "recvmsg": (Region(1, PayloadSize.RET, layout=PayloadLayout.MSGHDR),),
    "getdents": (_ret(1),),
    "getdents64": (_ret(1),),
    "getrandom": (_ret(0),),
    "readlink": (_ret(1), _cstring(0)),
    "readlinkat": (_ret(2), _cstring(1)),
    "getcwd": (_ret(0),),
    "getxattr": (_ret(2), _cstring(0), _cstring(1)),
    "lgetxattr": (_ret(2), _cstring(0), _cstring(1)),
    "fgetxattr": (_ret(2), _cstring(1)),
    "sched_getaffinity": (_ret(2),),
    "getgroups": (_ret_times(1, 4),),
    # the stat family and other fixed-size answers
    "stat": (_fixed(1, _STAT), _cstring(0)),
    "fstat": (_fixed(1, _STAT),),
    "lstat": (_fixed(1, _STAT), _cstring(0)),
    "newfstatat": (_fixed(2, _STAT), _cstring(1)),
    "statx": (_fixed(4, 256), _cstring(1)),
    "statfs": (_fixed(1, _STATFS), _cstring(0)),
    "fstatfs": (_fixed(1, _STATFS),),
    "ioctl": (Region(2, PayloadSize.IOCTL, 0, 1),),
    "fcntl": (Region(2, PayloadSize.FLOCK, 0, 1),),
    "uname": (_fixed(0, 390),),
    "sysinfo": (_fixed(0, 112),),
    "times": (_fixed(0, 32),),
    "getrusage": (_fixed(1, _RUSAGE),),
    "getrlimit": (_fixed(1, 16),),
    "prlimit64": (_fixed(3, 16),),
    "getresuid": (_fixed(0, 4), _fixed(1, 4), _fixed(2, 4)),
    "getresgid": (_fixed(0, 4), _fixed(1, 4), _fixed(2, 4)),
    "getcpu": (_fixed(0, 4), _fixed(1, 4)),
    "getitimer": (_fixed(1, 32),),
    "wait4": (_fixed(1, 4), _fixed(3, _RUSAGE)),
    "waitid": (_fixed(2, _SIGINFO), _fixed(4, _RUSAGE)),
    "rt_sigtimedwait": (_fixed(1, _SIGINFO),),
    "io_getevents": (_ret_times(3, 32),),
    # clocks (the vDSO answers most reads without a syscall; a replay needs those that are)
    "clock_gettime": (_fixed(1, _TIMESPEC),),
    "clock_getres": (_fixed(1, _TIMESPEC),),
    "gettimeofday": (_fixed(0, 16), _fixed(1, 8)),
    "time": (_fixed(0, 8),),
    # waits: which descriptors are ready
    "poll": (_arg_times(0, 1, 8),),
    "ppoll": (_arg_times(0, 1, 8), _fixed(2, _TIMESPEC)),
    "select": _FDSETS,
    "pselect6": _FDSETS,
    "epoll_wait": (_ret_times(1, 12),),
    "epoll_pwait": (_ret_times(1, 12),),
    "epoll_pwait2": (_ret_times(1, 12),),
    # sockets and descriptors
    "accept": _SOCKADDR_OUT,
    "accept4": _SOCKADDR_OUT,
    "getsockname": _SOCKADDR_OUT,
    "getpeername": _SOCKADDR_OUT,
    "getsockopt": (_deref(3, 4), _fixed(4, 4)),
    "timerfd_settime": (_fixed(3, 32),),
    "timerfd_gettime": (_fixed(1, 32),),
    "pipe": (_fixed(0, 8),),
    "pipe2": (_fixed(0, 8),),
    "socketpair": (_fixed(3, 8),),
    # file offsets the kernel advanced (loff_t in/out arguments, when given)
    "sendfile": (_fixed(2, 8),),
    "copy_file_range": (_fixed(1, 8), _fixed(3, 8)),
    "splice": (_fixed(1, 8), _fixed(3, 8)),
})


def payload_specs(table: Mapping[str, tuple[Region, ...]] = PAYLOAD_TABLE) -> np.ndarray:
    """The table as the kernel reads it: ``PAYLOAD_SPEC`` per syscall number."""
    specs = np.zeros(SYSCALL_NR_MAX, PAYLOAD_SPEC)
    for name, regions in table.items():
        if len(regions) > PAYLOAD_REGIONS:
            raise ValueError(f"{name}: {len(regions)} output regions, at most {PAYLOAD_REGIONS}")
        if any(r.layout is PayloadLayout.MSGHDR for r in regions) and len(regions) > 1:
            raise ValueError(f"{name}: a msghdr region expands to four; it must be alone")
        entry = specs[syscall_names.number_of(name)]["regions"]
        for i, r in enumerate(regions):
            layout = int(r.layout) | (PayloadLayout.INPUT if r.input else 0)
            entry[i] = (r.n, r.arg, int(r.size), layout, r.len_arg)
    return specs


def _rodata_value(specs: np.ndarray) -> int:
    """A byte array as the integer ``Sensor`` writes into ``.rodata`` (little-endian)."""
    return int.from_bytes(specs.tobytes(), "little")


# -- the family -----------------------------------------------------------------------------

SYSCALL_KINDS = (EventKind.SYSCALL,)
DATA_KINDS = (EventKind.SYSCALL_DATA, EventKind.SYSCALL_DATA_SMALL)

FAMILY = Family(
    name="syscalls",
    object_file="syscalls.bpf.o",
    structs=MappingProxyType({
        "syscall_event": SYSCALL_EVENT,
        "syscall_data_event": SYSCALL_DATA_EVENT,
        "syscall_data_small_event": SYSCALL_DATA_SMALL_EVENT,
        "payload_region": PAYLOAD_REGION,
        "payload_spec": PAYLOAD_SPEC,
        "file_id": FILE_ID,
        "proc_context": PROC_CONTEXT,
    }),
    enums=MappingProxyType({
        "syscalls_constants": {
            "SYSCALLS_LAYOUT_VERSION": SYSCALLS_LAYOUT_VERSION,
            "SYSCALL_ARGS": SYSCALL_ARGS,
            "SYSCALL_NR_MAX": SYSCALL_NR_MAX,
            "PAYLOAD_REGIONS": PAYLOAD_REGIONS,
            "SYSCALL_DATA_CHUNK": SYSCALL_DATA_CHUNK,
            "SYSCALL_DATA_SMALL_CHUNK": SYSCALL_DATA_SMALL_CHUNK,
            "SYSCALL_FLAG_NO_RETURN": SYSCALL_FLAG_NO_RETURN,
            "SYSCALL_FLAG_TRUNCATED": SYSCALL_FLAG_TRUNCATED,
            "SYSCALL_FLAG_PAYLOAD_LOST": SYSCALL_FLAG_PAYLOAD_LOST,
            "SYSCALL_FLAG_COMPAT": SYSCALL_FLAG_COMPAT,
            "DATA_FLAG_TRUNCATED": DATA_FLAG_TRUNCATED,
            "DATA_FLAG_FAULT": DATA_FLAG_FAULT,
            "PAYLOAD_ARG_MSG_NAME": PAYLOAD_ARG_MSG_NAME,
            "PAYLOAD_ARG_MSG_CONTROL": PAYLOAD_ARG_MSG_CONTROL,
            "PAYLOAD_ARG_MSGHDR": PAYLOAD_ARG_MSGHDR,
            "SYSCALL_FLAG_VDSO": SYSCALL_FLAG_VDSO,
            "NR_EXECVE": NR_EXECVE,
            "DATA_FLAG_FILE": DATA_FLAG_FILE,
            "DATA_FLAG_ALSO_FILE": DATA_FLAG_ALSO_FILE,
            "DATA_FLAG_DELETED": DATA_FLAG_DELETED,
            "PAYLOAD_ARG_CWD": PAYLOAD_ARG_CWD,
            "PAYLOAD_ARG_CONTEXT": PAYLOAD_ARG_CONTEXT,
            "PAYLOAD_ARG_FDS": PAYLOAD_ARG_FDS,
            "PAYLOAD_ARG_OPENED": PAYLOAD_ARG_OPENED,
            "PAYLOAD_ARG_FD_PATH": PAYLOAD_ARG_FD_PATH,
            "FD_TABLE_MAX": FD_TABLE_MAX,
            "PATH_DEPTH_MAX": PATH_DEPTH_MAX,
            "RLIMITS": RLIMITS,
        },
        "payload_size_kind": {f"PAYLOAD_{k.name}": int(k) for k in PayloadSize},
        "payload_layout": {f"PAYLOAD_{k.name}": int(k) for k in PayloadLayout},
    }),
    rings=MappingProxyType({
        "syscall_events": SYSCALL_EVENT,
        "syscall_data": SYSCALL_DATA_EVENT,
        "syscall_data_small": SYSCALL_DATA_SMALL_EVENT,
    }),
    layout_version=SYSCALLS_LAYOUT_VERSION,
)


@dataclass(frozen=True)
class SyscallsConfig:
    """What the syscalls sensor records. Sizes are bytes (rings: power of two pages)."""

    capture_payloads: bool = False
    payload_cap: int = PAYLOAD_CAP_DEFAULT  # bytes per payload region of a syscall
    # with payloads: clock_gettime answered by the vDSO, through a uprobe pair on libc.
    # Measured here: ~1.2 us per clock read of a target (17 us with the probe at the
    # function's first instruction), against 17 ns without; off, a replay synthesizes
    # those clocks from the surrounding syscalls.
    vdso_clocks: bool = True
    # with payloads: reads of regular files by identity (the agent stores each version's
    # content once, capture_agent/file_store.py) instead of their bytes; a file changed
    # less than fresh_file_ns before the read also keeps its bytes, up to fresh_file_cap
    # (a temporary file may be gone before the agent reads it)
    files_by_identity: bool = True
    fresh_file_ns: int = 5_000_000_000
    fresh_file_cap: int = 1 << 20
    target_all: bool = False  # every process is a target (expensive: every syscall)
    # evidence capture without payloads: calls that returned sooner (and did not fail) are
    # counted, not written (syscalls_below_bound); 0: every call is a row
    min_syscall_ns: int = 0
    wakeup_fill_pct: int = 50
    # Ring sizes: what arrives in one drain interval (0.1 s) at the rate to absorb, plus
    # headroom; every mapped page of a ring is resident in the agent. syscall_events: 1 M
    # syscalls/s (the benchmark's goal) x 128-byte slots x 0.1 s = 12.8 MB -> 16 MiB (131 ms
    # of that rate; the 50 % wakeup drains early, after 65 ms). The payload rings are only
    # written with ``capture_payloads``; otherwise they shrink to one record's pages.
    events_ring_bytes: int = 16 << 20
    data_ring_bytes: int = 16 << 20
    small_data_ring_bytes: int = 4 << 20
    idle_data_ring_bytes: int = 8 << 10  # syscall_data without payloads: one 4168-byte slot
    idle_small_data_ring_bytes: int = 4 << 10  # syscall_data_small: twelve 328-byte slots


# libc's clock_gettime, answered by the vDSO without a syscall: a uprobe records it
# (gettimeofday and time are IFUNCs bound to the vDSO itself: no libc code to probe)
CLOCK_FUNCTIONS = {"clock_gettime": "on_clock_gettime"}
CLOCK_PROGRAMS = (*CLOCK_FUNCTIONS.values(), "on_clock_return")


def find_libc() -> str | None:
    """The C library this machine's programs load (the one mapped by this process)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if path.rsplit("/", 1)[-1].startswith("libc.so"):
                    return path
    except OSError:
        pass
    return None


_offsets_cache: dict[tuple[int, int], dict[str, int]] = {}


def _clock_uprobes(libc: str) -> UprobePlaces:
    st = os.stat(libc)
    key = (st.st_dev, st.st_ino)
    if key not in _offsets_cache:  # one ELF read per distinct libc file
        _offsets_cache[key] = {  # past the entry, where the kernel need not single-step
            fn: emulated_probe_offset(libc, at)
            for fn, at in function_offsets(libc, list(CLOCK_FUNCTIONS)).items()}
    offsets = _offsets_cache[key]
    places: UprobePlaces = {
        prog: ((libc, offsets[fn], False),) for fn, prog in CLOCK_FUNCTIONS.items()}
    places["on_clock_return"] = tuple((libc, offsets[fn], True) for fn in CLOCK_FUNCTIONS)
    return places


def process_libc(pid: int) -> str | None:
    """The C library process ``pid`` has mapped, as a path the agent can open (through
    the process's own root: a container's libc is not the host's)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n").rsplit("/", 1)[-1].startswith(
                        "libc.so"):
                    return f"/proc/{pid}/root{parts[5].strip()}"
    except OSError:
        pass
    return None


def uprobe_places_for(pid: int) -> UprobePlaces:
    """Where the clock uprobes go in process ``pid``: its libc's clock_gettime (the
    agent's own libc for a process that maps none yet, e.g. before its exec)."""
    libc = process_libc(pid) or find_libc()
    if libc is None:
        return {}
    try:
        return _clock_uprobes(libc)
    except (OSError, BpfAttachError):  # gone, or a libc without clock_gettime
        return {}


def sensor_spec(config: SyscallsConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or SyscallsConfig()
    if not 0 < c.payload_cap <= PAYLOAD_CAP_MAX:
        raise CaptureAgentError(f"payload cap {c.payload_cap}: must be 1..{PAYLOAD_CAP_MAX} bytes")
    if not 0 < c.fresh_file_cap <= PAYLOAD_CAP_MAX:
        raise CaptureAgentError(f"fresh file cap {c.fresh_file_cap}: must be "
                                f"1..{PAYLOAD_CAP_MAX} bytes")
    libc = find_libc() if c.capture_payloads and c.vdso_clocks else None
    return SensorSpec(
        family=FAMILY,
        uprobes=_clock_uprobes(libc) if libc else {},
        # per target process (the agent attaches as targets appear), unless every process
        # is a target anyway
        uprobes_per_process=not c.target_all,
        disabled=frozenset() if libc else frozenset(CLOCK_PROGRAMS),
        config={
            "capture_payloads": int(c.capture_payloads),
            "payload_cap": c.payload_cap,
            "payload_specs": _rodata_value(payload_specs()),
            "files_by_identity": int(c.files_by_identity),
            # inode times are wall-clock: the freshness test needs the offset from the
            # kernel's monotonic clock (a clock step later only moves the window)
            "mono_to_real_ns": sample_offset().mono_to_epoch_ns,
            "fresh_file_ns": c.fresh_file_ns,
            "fresh_file_cap": c.fresh_file_cap,
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
            "min_syscall_ns": 0 if c.capture_payloads else c.min_syscall_ns,
        },
        ring_bytes={
            "syscall_events": c.events_ring_bytes,
            "syscall_data": c.data_ring_bytes if c.capture_payloads else c.idle_data_ring_bytes,
            "syscall_data_small": (c.small_data_ring_bytes if c.capture_payloads
                                   else c.idle_small_data_ring_bytes),
        },
        shared_maps=shared_maps or {},
    )


# -- batches -> lake tables -------------------------------------------------------------------


def _args_column(nr: np.ndarray | syscall_names.SyscallIndex, args: np.ndarray) -> pa.Array:
    """list<int64> of each syscall's own arguments (the first nargs of six registers)."""
    counts = syscall_names.arg_counts(nr)
    keep = np.arange(SYSCALL_ARGS)[None, :] < counts[:, None]
    values = args.view(np.int64)[keep]  # row-major: each row's arguments in order
    offsets = np.zeros(len(counts) + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))


_SYSCALL_KINDS = tuple(int(k) for k in SYSCALL_KINDS)
_DATA_KINDS = tuple(int(k) for k in DATA_KINDS)


def _masked(values: np.ndarray, null: np.ndarray) -> pa.Array:
    return pa.array(values, mask=null if null.any() else None)


def syscalls_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``SYSCALL_EVENT`` -> rows of lake table ``syscalls`` (vectorised).

    exit / exit_group (``SYSCALL_FLAG_NO_RETURN``) have null ``ret`` and ``dur_ns``. A
    32-bit program's syscalls (``SYSCALL_FLAG_COMPAT``) are named ``ia32_syscall_<nr>``
    (i386 numbers), with all six argument registers and no ``fd``.

    Each field of the records is read once (a strided read costs ~4 ns per record).
    """
    hdr = check_header(batch, FAMILY, _SYSCALL_KINDS)
    start = batch["start_ns"].astype(np.int64)
    nr = batch["nr"].astype(np.int32)
    args = np.ascontiguousarray(batch["args"])
    no_return = (hdr.flags & SYSCALL_FLAG_NO_RETURN) != 0
    compat = (hdr.flags & SYSCALL_FLAG_COMPAT) != 0
    vdso = (hdr.flags & SYSCALL_FLAG_VDSO) != 0
    numbers = syscall_names.index(nr)
    names = syscall_names.names_array(numbers)
    if vdso.any():  # clock reads through the vDSO (answered there, or a syscall it made)
        names = pc.if_else(pa.array(vdso), pc.binary_join_element_wise("vdso:", names, ""),
                           names)
    if compat.any():
        names = pc.if_else(pa.array(compat), syscall_names.numbered("ia32_syscall_", nr), names)
        # outside the x86_64 table: no fd, 6 args
        numbers = syscall_names.index(np.where(compat, -1, nr))
    columns = {
        "ts_ns": pa.array(clock.to_epoch(start)),
        "dur_ns": _masked(batch["hdr"]["ktime_ns"].astype(np.int64) - start, no_return),
        "pid": int_array(batch["pid"]),
        "tid": int_array(batch["tid"]),
        "cpu": int_array(hdr.cpu),
        "comm": comm_array(batch["comm"]),
        "nr": pa.array(nr, pa.int32()),
        "name": names,
        "ret": _masked(batch["ret"].astype(np.int64), no_return),
        "fd": syscall_names.fd_column(numbers, args),
        "args": _args_column(numbers, args),
        "seq": pa.array(batch["seq"].astype(np.int64)),
    }
    return pa.table(columns, schema=table_spec("syscalls").payload_schema)


_BINARY_VIEW = np.dtype([("len", "<i4"), ("prefix", "u1", (4,)), ("buffer", "<i4"),
                         ("offset", "<i4")])  # Arrow's 16-byte binary view, non-inline form
_INLINE = 12  # Arrow stores values of up to 12 bytes in the view itself
_VIEW_ROWS = 1 << 18  # rows per view array: offsets into the batch stay below 2 GiB


def _data_column(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Each chunk's first ``len`` bytes as one binary value, without a loop per chunk.

    Arrow binary *views* point into the records where they lie, and one cast copies the
    valid bytes out in C++: 4-16x faster than gathering them in numpy (a boolean mask over
    every slot's full width, 4 KiB for a few hundred valid bytes).
    """
    n, width = data.shape
    if n > _VIEW_ROWS:
        return pa.concat_arrays([_data_column(data[i:i + _VIEW_ROWS], lengths[i:i + _VIEW_ROWS])
                                 for i in range(0, n, _VIEW_ROWS)])
    if n == 0:
        return pa.array([], pa.binary())
    lengths = np.minimum(lengths.astype(np.int64), width).astype(np.int32)
    row_stride = data.strides[0]
    views = np.zeros(n, _BINARY_VIEW)
    views["len"] = lengths
    views["prefix"] = data[:, :4]
    views["offset"] = np.arange(n, dtype=np.int32) * np.int32(row_stride)
    short = lengths <= _INLINE
    if short.any():
        inline = data[short, :_INLINE].copy()
        inline[np.arange(_INLINE)[None, :] >= lengths[short][:, None]] = 0
        views.view(np.uint8).reshape(n, 16)[short, 4:] = inline
    span = (n - 1) * row_stride + width  # from the first row's data to the last's end
    records = pa.foreign_buffer(data.__array_interface__["data"][0], span, base=data)
    view_array = pa.Array.from_buffers(pa.binary_view(), n,
                                       [None, pa.py_buffer(views), records])
    return view_array.cast(pa.binary())


def syscall_data_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``SYSCALL_DATA_EVENT`` or ``SYSCALL_DATA_SMALL_EVENT`` -> rows of lake
    table ``syscall_data`` (vectorised). ``truncated``: the region was capped, or its
    memory could not be read (then ``data`` is empty)."""
    flags = check_header(batch, FAMILY, _DATA_KINDS).flags
    by_file = (flags & DATA_FLAG_FILE) != 0
    blob: pa.Array = pa.nulls(len(batch), pa.string())
    blob_offset: pa.Array = pa.nulls(len(batch), pa.int64())
    if by_file.any():  # the agent's file store names the content (blob "" until then)
        where = pa.array(by_file)
        blob = pc.if_else(where, pa.scalar("", pa.string()), blob)
        pos = np.ascontiguousarray(batch["data"][:, _FILE_POS:_FILE_POS + 8]).view("<i8")[:, 0]
        blob_offset = pa.array(pos, pa.int64(), mask=~by_file)
    columns = {
        "ts_ns": pa.array(clock.to_epoch(batch["start_ns"])),
        "pid": int_array(batch["pid"]),
        "tid": int_array(batch["tid"]),
        "seq": pa.array(batch["seq"].astype(np.int64)),
        "nr": int_array(batch["nr"]),
        "arg_index": int_array(batch["arg_index"]),
        "offset": pa.array(batch["offset"].astype(np.int64)),
        "data": _data_column(batch["data"], batch["len"]),
        "total_len": pa.array(batch["total_len"].astype(np.int64)),
        "truncated": pa.array((flags & (DATA_FLAG_TRUNCATED | DATA_FLAG_FAULT)) != 0),
        "blob": blob,
        "blob_offset": blob_offset,
    }
    return pa.table(columns, schema=table_spec("syscall_data").payload_schema)


_FILE_FIELDS = FILE_ID.fields
assert _FILE_FIELDS is not None
_FILE_POS = int(_FILE_FIELDS["pos"][1])  # where a file_id holds the read's offset


def region_bytes(rows: pa.Table) -> dict[tuple[int, int, int], bytes]:
    """(tid, seq, arg_index) -> the bytes of that region, chunks joined in offset order.
    For tests and tools reading a few syscalls (a Python loop per region)."""
    ordered = rows.sort_by([("tid", "ascending"), ("seq", "ascending"),
                            ("arg_index", "ascending"), ("offset", "ascending")])
    out: dict[tuple[int, int, int], bytearray] = {}
    for tid, seq, arg, data in zip(*(ordered[c].to_pylist()
                                     for c in ("tid", "seq", "arg_index", "data")), strict=True):
        out.setdefault((tid, seq, arg), bytearray()).extend(data or b"")
    return {k: bytes(v) for k, v in out.items()}


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "syscall_events": ("syscalls", syscalls_table),
    "syscall_data": ("syscall_data", syscall_data_table),
    "syscall_data_small": ("syscall_data", syscall_data_table),
}


class SyscallsFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        o = self.options
        return sensor_spec(SyscallsConfig(capture_payloads=o.payloads, payload_cap=o.payload_cap,
                                          vdso_clocks=o.vdso_clocks, target_all=o.target_all,
                                          files_by_identity=o.files_by_identity,
                                          min_syscall_ns=self._min_syscall_ns()),
                           shared_maps=shared_maps)

    def _min_syscall_ns(self) -> int:
        o = self.options
        return o.min_offcpu_ns if o.capture == "evidence" and not o.payloads else 0

    def below_bound(self, sensor: Sensor) -> dict[str, int]:
        if not self._min_syscall_ns():
            return {}
        counts = read_percpu(sensor.map_fd("syscalls_below_bound"), np.dtype("<u8"),
                             "syscalls_below_bound")
        return {"syscall": int(counts.sum())}

    def uprobe_places(self) -> Callable[[int], UprobePlaces]:
        return uprobe_places_for

__all__ = [
    "SyscallsFamily",
    "FAMILY",
    "PAYLOAD_TABLE",
    "RING_TABLES",
    "SYSCALL_DATA_EVENT",
    "SYSCALL_DATA_SMALL_EVENT",
    "SYSCALL_EVENT",
    "PayloadLayout",
    "PayloadSize",
    "Region",
    "SyscallsConfig",
    "payload_specs",
    "region_bytes",
    "sensor_spec",
    "syscall_data_table",
    "syscalls_table",
]
