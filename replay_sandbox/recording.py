"""A recording: one process's syscalls per thread, in order, with the bytes they moved.

Loaded from the lake (``syscalls`` + ``syscall_data`` + ``processes``) with DuckDB, or
built from Arrow tables with the same schema (tests, the reference recorder). Only the
syscalls the replay traps are kept as rows; the others (mmap, futex, ...) run for real and
are used once, while loading, to decide which opened files must be opened for real (the
ones the program maps into memory).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from kprobe.lake.schema import REDACTED, TABLES
from kprobe.replay_sandbox.context import FILE_ID, KERNEL_ARGS, OPENED, Descriptor, ProcessContext
from kprobe.replay_sandbox.errors import RecordingError
from kprobe.replay_sandbox.peers import PeerStream
from kprobe.replay_sandbox.syscall_table import (
    FD_CREATORS,
    SPECS,
    TRAPPED,
    Layout,
    Policy,
    fd_of,
    name_of,
)

_MMAP = 9
_EXIT = 60
_CLOSE = 3
_DUP2 = 33
_DUP3 = 292
_OPENS = frozenset({2, 257, 437})
_AT_ENTRY = frozenset(nr for nr, s in SPECS.items()
                      if s.policy in (Policy.REAL, Policy.SIGNAL, Policy.SYNC, Policy.MAP))
# A syscall interrupted by a signal and restarted by the kernel: the restart is its own row.
_RESTARTED = frozenset({-512, -513, -514, -516})


@dataclass(frozen=True)
class ProcessInfo:
    """How the recorded process was started (a ``processes`` exec row)."""

    pid: int
    node: str
    exe: str
    argv: list[str]
    env: list[str]
    cwd: str
    start_ns: int
    comm: str = ""
    exit_code: int | None = None
    # what the kernel said it started with (None: recorded without, by an older agent)
    context: ProcessContext | None = None
    descriptors: tuple[Descriptor, ...] | None = None


def redaction_notes(env: list[str], argv: list[str]) -> list[str]:
    """What a recording holds redacted (the agent never stores secrets:
    capture_agent/redaction.py), and how to give it back to a replay."""
    notes = []
    names = [e.split("=", 1)[0] for e in env if REDACTED in e.partition("=")[2]]
    if names:
        notes.append(f"recorded with secrets redacted: environment {', '.join(names)} "
                     f"hold {REDACTED!r}; give real values with --env NAME=value")
    args = [str(i) for i, a in enumerate(argv) if REDACTED in a]
    if args:
        notes.append(f"recorded with secrets redacted: argument(s) {', '.join(args)} hold "
                     f"{REDACTED!r}; give real values with --set-arg N=value")
    return notes


@dataclass(slots=True)
class Row:
    """One recorded, trapped syscall."""

    tid: int
    seq: int
    ts_ns: int
    dur_ns: int
    nr: int
    ret: int
    args: tuple[int, ...]
    fd: int
    outs: list[tuple[int, int, bytes]] = field(default_factory=list)  # (arg, offset, data)
    ins: dict[int, bytes] = field(default_factory=dict)  # arg -> bytes passed in
    truncated: bool = False
    order: int = 0  # position in the cross-thread order of trapped rows
    open_for_real: bool = False  # an open whose fd the program maps into memory
    vdso: bool = False  # a clock read libc answered through the vDSO (no syscall)
    path: str | None = None  # the file the kernel resolved: an open's, a read's by identity
    # a region the recording holds only in part: (arg, bytes held, bytes it had, why)
    cut: tuple[int, int, int, str] | None = None
    taken: bool = False  # served to another thread (an mmap: the process's, not the thread's)
    pid: int = 0  # the recorded process it belongs to (a tree holds several)

    @property
    def name(self) -> str:
        return name_of(self.nr)

    @property
    def end_ns(self) -> int:
        return self.ts_ns + self.dur_ns


@dataclass
class Recording:
    process: ProcessInfo
    threads: dict[int, list[Row]]  # recorded tid -> trapped rows in seq order
    total_rows: int = 0  # every recorded syscall of the process, trapped or not
    initial_fds: frozenset[int] = frozenset({0, 1, 2})  # open when the program started
    real_paths: tuple[str, ...] = ()  # files the program maps: opened for real in replay
    mono_to_epoch_ns: int | None = None  # CLOCK_MONOTONIC -> epoch offset, if known
    # what-if: what the other end of each connection sent, by the (tid, seq) of its connect
    peers: dict[tuple[int, int], PeerStream] = field(default_factory=dict)
    # a process tree (``--tree``): the descendants replayed with it, by recorded pid (their
    # start_ns: the fork), and each recorded thread's process
    children: dict[int, ProcessInfo] = field(default_factory=dict)
    tid_pid: dict[int, int] = field(default_factory=dict)
    # threads whose recording holds their own exit: past their last row, nothing is left
    # to come (a thread without one was ended by another's exit_group while it ran)
    exited: frozenset[int] = frozenset()
    # files the program maps: path -> (size, mtime_ns) its own fstat of them saw
    mapped_files: dict[str, tuple[int, int]] = field(default_factory=dict)

    def pid_of(self, tid: int) -> int:
        """The recorded process of a recorded thread."""
        return self.tid_pid.get(tid) or self.process.pid

    def info(self, pid: int) -> ProcessInfo | None:
        return self.process if pid == self.process.pid else self.children.get(pid)

    @property
    def main_tid(self) -> int:
        return self.process.pid

    @property
    def trapped_rows(self) -> int:
        return sum(len(rows) for rows in self.threads.values())

    def outputs(self, pid: int | None = None) -> dict[int, bytes]:
        """What the recorded process (the root, or ``pid`` of the tree) wrote to each fd
        (write family), concatenated. A call the recorder cut at --payload-cap is zeros
        past what it kept (``output_gaps`` says where), so later offsets stay right."""
        return self.output_streams(pid)[0]

    def output_gaps(self, pid: int | None = None) -> dict[int, list[tuple[int, int]]]:
        """fd -> the [start, end) byte ranges of ``outputs`` the recorder did not keep."""
        return self.output_streams(pid)[1]

    def output_streams(self, pid: int | None = None) -> tuple[
            dict[int, bytes], dict[int, list[tuple[int, int]]]]:
        """``outputs`` and ``output_gaps`` from one pass over the rows."""
        pid = self.process.pid if pid is None else pid
        out: dict[int, bytearray] = defaultdict(bytearray)
        gaps: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row in sorted((r for rows in self.threads.values() for r in rows),
                          key=lambda r: r.order):
            if (row.pid or self.process.pid) != pid:
                continue
            if SPECS[row.nr].policy is Policy.OUTPUT and row.ret > 0:
                # at most ret bytes: a partial write's rest is offered again by the next
                held = b"".join(row.ins[a] for a in sorted(row.ins) if a in (1,))[:row.ret]
                stream = out[row.fd]
                stream += held
                if row.truncated and len(held) < row.ret:
                    gaps[row.fd].append((len(stream), len(stream) + row.ret - len(held)))
                    stream += bytes(row.ret - len(held))
        return {fd: bytes(data) for fd, data in out.items()}, dict(gaps)

    # -- building ----------
    @classmethod
    def from_tables(cls, process: ProcessInfo, syscalls: pa.Table,
                    syscall_data: pa.Table | None = None,
                    mono_to_epoch_ns: int | None = None,
                    blobs: dict[str, bytes] | None = None,
                    children: dict[int, ProcessInfo] | None = None) -> Recording:
        """Rows of ``process.pid`` from tables in the lake schema (extra columns ignored);
        ``blobs``: the contents the reads recorded by identity name (opened); ``children``:
        the descendants replayed with it (``--tree``), each from its fork."""
        starts = {process.pid: process.start_ns}
        starts.update({pid: info.start_ns for pid, info in (children or {}).items()})
        _check_columns("syscalls", syscalls)
        if syscall_data is not None:
            _check_columns("syscall_data", syscall_data)
        cols = {name: syscalls.column(name).to_pylist()
                for name in ("ts_ns", "dur_ns", "pid", "tid", "nr", "ret", "fd", "args", "seq")}
        all_rows: list[Row] = []
        names = syscalls.column("name").to_pylist()
        for ts, dur, pid, tid, nr, ret, fd, args, seq, name in zip(
                cols["ts_ns"], cols["dur_ns"], cols["pid"], cols["tid"], cols["nr"],
                cols["ret"], cols["fd"], cols["args"], cols["seq"], names):
            start = starts.get(pid)
            if start is None or ts < start or ret in _RESTARTED:
                continue
            argv = tuple((args or []) + [0] * (6 - len(args or [])))[:6]
            fd_col = fd_of(nr, argv) if nr in SPECS else (fd if fd is not None else -1)
            all_rows.append(Row(tid, seq, ts, dur or 0, nr, ret if ret is not None else 0,
                                argv, fd_col, vdso=bool(name) and name.startswith("vdso:"),
                                pid=pid))
        if not all_rows:
            raise RecordingError(f"no syscalls recorded for pid {process.pid} on "
                                 f"{process.node} after its exec")
        all_rows.sort(key=lambda r: (r.ts_ns, r.tid, r.seq))
        _mark_real_opens(all_rows)
        trapped = [r for r in all_rows if r.nr in TRAPPED]
        if syscall_data is not None and syscall_data.num_rows:
            _attach_data(set(starts), trapped, syscall_data, blobs or {})
        mapped = _mapped_stats(trapped)  # still in time order here
        # Cross-thread order: served calls complete at once, so they follow the recorded
        # completion order, and so do new descriptors (an open takes its number somewhere
        # inside the call; when the replay meets the number taken or free against the
        # recording, it moves the fd to the recorded number). Calls that act for real are
        # ordered at their entry: a close frees its number at once, a futex wait marks
        # the moment a thread found a lock taken, and a clone's child may make syscalls
        # before the clone returns in the parent.
        trapped.sort(key=lambda r: (r.ts_ns if r.nr in _AT_ENTRY else r.end_ns, r.ts_ns,
                                    r.tid, r.seq))
        threads: dict[int, list[Row]] = defaultdict(list)
        for order, row in enumerate(trapped):
            row.order = order
            threads[row.tid].append(row)
        for rows in threads.values():
            rows.sort(key=lambda r: r.seq)
        real_paths = {path for r in trapped if r.open_for_real
                      for path in [_path_of(r)] if path and path.startswith("/")}
        real_paths |= {c.exe for c in (children or {}).values() if c.exe.startswith("/")}
        initial = (frozenset(d.fd for d in process.descriptors)
                   if process.descriptors is not None
                   else _initial_fds([r for r in trapped if r.pid == process.pid]))
        tid_pid = {r.tid: r.pid for r in all_rows}
        return cls(process, dict(threads), len(all_rows), initial,
                   tuple(sorted(real_paths)), mono_to_epoch_ns, children=dict(children or {}),
                   tid_pid=tid_pid, exited=frozenset(r.tid for r in all_rows if r.nr == _EXIT),
                   mapped_files=mapped)


def _path_of(row: Row) -> str | None:
    """The file an open opened: the kernel's path, else the one the program gave."""
    if row.path is not None:
        return row.path
    path = row.ins.get(1 if row.nr in (257, 437) else 0)
    return path.decode(errors="replace") if path is not None else None


def _initial_fds(rows: list[Row]) -> frozenset[int]:
    """Descriptors the process had at exec: used before created, or below the first one
    it created (the kernel hands out the lowest free number)."""
    initial = {0, 1, 2}
    created: set[int] = set()
    first_created: int | None = None
    # A new fd exists once its call returns; a use needs it when the use starts. (Ordering
    # creations at their entry would misread another thread's open that entered before a
    # close of the same number, and got that number, as a use before creation.)
    for row in sorted(rows, key=lambda r: (r.end_ns if r.nr in FD_CREATORS else r.ts_ns,
                                           r.tid, r.seq)):
        fd = fd_of(row.nr, row.args)
        if fd >= 0 and fd not in created:
            initial.add(fd)
        new: list[int] = []
        if row.nr in FD_CREATORS and row.ret >= 0 and row.nr not in (22, 293, 53):
            new = [row.ret]
        elif row.nr in (22, 293, 53) and row.ret == 0:
            for _arg, _offset, data in row.outs:
                if len(data) >= 8:
                    new = list(struct.unpack_from("<ii", data))
        for fd in new:
            if first_created is None:
                first_created = fd
            created.add(fd)
        if row.nr == _CLOSE:
            created.discard(row.args[0] & 0xFFFF_FFFF)
    if first_created is not None:
        initial.update(range(first_created))
    return frozenset(initial)


_OPTIONAL = frozenset({"blob", "blob_offset"})  # absent: every payload is bytes


def _check_columns(table: str, data: pa.Table) -> None:
    missing = [f.name for f in TABLES[table].fields
               if f.name not in data.column_names and f.name not in _OPTIONAL]
    if missing:
        raise RecordingError(f"{table} table lacks columns: {', '.join(missing)}")


def _mark_real_opens(rows: list[Row]) -> None:
    """An open whose fd is later passed to mmap (before close) must open the real file."""
    open_rows: dict[tuple[int, int], Row] = {}  # (process, fd)
    for row in rows:
        if row.nr in _OPENS and row.ret >= 0:
            open_rows[(row.pid, row.ret)] = row
        elif row.nr == _MMAP:
            fd = row.args[4] & 0xFFFF_FFFF
            if (row.pid, fd) in open_rows:
                open_rows[(row.pid, fd)].open_for_real = True
        elif row.nr == _CLOSE:
            open_rows.pop((row.pid, row.args[0] & 0xFFFF_FFFF), None)
        elif row.nr in (_DUP2, _DUP3):
            open_rows.pop((row.pid, row.args[1] & 0xFFFF_FFFF), None)


_FSTAT = 5
_NEWFSTATAT = 262
AT_EMPTY_PATH = 0x1000
# struct stat on x86-64: 144 bytes, st_size at 48, st_mtim (seconds, nanoseconds) at 88
_STAT_SIZE, _SIZE_AT, _MTIME_AT = 144, 48, 88


def _mapped_stats(rows: list[Row]) -> dict[str, tuple[int, int]]:
    """``path -> (size, mtime_ns)`` the program's first fstat of each file it maps saw
    (``rows`` in time order, their data attached; recorded without payloads: none)."""
    open_paths: dict[tuple[int, int], str] = {}  # (process, fd) -> a mapped file's path
    stats: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row.nr in _OPENS and row.open_for_real and row.ret >= 0:
            path = _path_of(row)
            if path is not None and path.startswith("/"):
                open_paths[(row.pid, row.ret)] = path
        elif row.nr == _CLOSE:
            open_paths.pop((row.pid, row.args[0] & 0xFFFF_FFFF), None)
        elif row.nr in (_DUP2, _DUP3):
            open_paths.pop((row.pid, row.args[1] & 0xFFFF_FFFF), None)
        elif row.ret == 0 and (row.nr == _FSTAT or (
                row.nr == _NEWFSTATAT and row.args[3] & AT_EMPTY_PATH)):
            path = open_paths.get((row.pid, row.args[0] & 0xFFFF_FFFF))
            if path is None or path in stats:
                continue
            buffer_arg = 1 if row.nr == _FSTAT else 2
            stat = next((d for arg, offset, d in row.outs
                         if arg == buffer_arg and offset == 0 and len(d) >= _STAT_SIZE), None)
            if stat is not None:
                (size,) = struct.unpack_from("<q", stat, _SIZE_AT)
                seconds, nanoseconds = struct.unpack_from("<qq", stat, _MTIME_AT)
                stats[path] = (size, seconds * 1_000_000_000 + nanoseconds)
    return stats


def _attach_data(pids: set[int], rows: list[Row], data: pa.Table,
                 blobs: dict[str, bytes]) -> None:
    by_key = {(r.tid, r.seq): r for r in rows}
    names = ("pid", "tid", "seq", "arg_index", "offset", "data", "truncated", "total_len",
             "blob", "blob_offset")
    cols = {name: (data.column(name).to_pylist() if name in data.column_names
                   else [None] * data.num_rows) for name in names}
    ins_parts: dict[tuple[int, int, int], list[tuple[int, bytes]]] = defaultdict(list)
    totals: dict[tuple[int, int, int], int] = {}
    by_identity: dict[tuple[int, int, int], tuple[str, int, int]] = {}
    for dpid, tid, seq, arg, offset, payload, truncated, total, blob, blob_offset in zip(
            *(cols[n] for n in names), strict=True):
        if dpid not in pids:
            continue
        row = by_key.get((tid, seq))
        if row is None:
            continue
        payload = payload or b""
        if arg in KERNEL_ARGS:  # what the kernel resolved: not memory the call wrote
            if arg == OPENED and len(payload) > FILE_ID.size:
                row.path = payload[FILE_ID.size:].decode(errors="surrogateescape")
            continue
        if blob is not None:  # a read recorded by identity: its bytes are in a blob
            by_identity[(tid, seq, arg)] = (blob, blob_offset or 0, total or 0)
            continue
        row.truncated = row.truncated or bool(truncated)
        if total is not None:
            totals[(tid, seq, arg)] = max(total, totals.get((tid, seq, arg), 0))
        if _is_input_arg(row.nr, arg):
            ins_parts[(tid, seq, arg)].append((offset or 0, payload))
        else:
            row.outs.append((arg, offset or 0, payload))
    for (tid, seq, arg), parts in ins_parts.items():
        by_key[(tid, seq)].ins[arg] = b"".join(p for _, p in sorted(parts))
    for (tid, seq, arg), (blob, start, total) in by_identity.items():
        row = by_key[(tid, seq)]
        content = blobs.get(blob) if blob else None
        if content is not None and len(content) >= start + total:
            # the whole content: bytes also captured (a file just written) are not needed
            row.outs = [o for o in row.outs if o[0] != arg] + [(arg, 0,
                                                                content[start:start + total])]
            row.truncated = False
            totals.pop((tid, seq, arg), None)
            continue
        held = sum(len(d) for a, _o, d in row.outs if a == arg)
        why = ("the file changed or went away before the agent stored its content"
               if not blob else "its content is not in the lake (retention?)")
        if held < total:
            row.truncated = True
            row.cut = (arg, held, total, why)
        else:
            row.truncated = False  # the kernel's copy of a fresh file is whole
    for (tid, seq, arg), total in totals.items():
        row = by_key[(tid, seq)]
        if row.cut is not None or not row.truncated:
            continue
        held = sum(len(d) for a, _o, d in row.outs if a == arg) if not _is_input_arg(
            row.nr, arg) else len(row.ins.get(arg, b""))
        if held < total:
            row.cut = (arg, held, total, "cut at the recorder's --payload-cap")


def _is_input_arg(nr: int, arg: int) -> bool:
    spec = SPECS[nr]
    for region in spec.ins:
        if region.arg == arg or (region.layout is Layout.MSGHDR and arg in (6, 7, 8)):
            return True
    return False
