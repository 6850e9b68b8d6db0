"""Shared state of the replay engine and the primitives every part of it uses.

The engine is split by concern: ``_state`` (tracees, options, primitives), ``timing``
(clocks, waits, rdtsc in virtual time), ``serving`` (answering I/O, descriptors, what-if
results) and ``engine`` (the stop loop, events, cross-thread order, matching, the report).
Each builds on the previous one by inheritance, so they share one object and its state.
"""

from __future__ import annotations

import errno as errno_mod
import random
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kprobe.replay_sandbox import clock as vclock
from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox.errors import TracerError
from kprobe.replay_sandbox.injection import Delays, FdKind, Injection
from kprobe.replay_sandbox.limits import Limits
from kprobe.replay_sandbox.peers import PeerCursor
from kprobe.replay_sandbox.recording import Recording, Row
from kprobe.replay_sandbox.report import (
    CallInfo,
    Divergence,
    Status,
    preview,
)
from kprobe.replay_sandbox.syscall_table import (
    SOCKET_CREATORS,
    SPECS,
    Layout,
    Policy,
    SyscallSpec,
    capture,
    fd_of,
)

Mode = Literal["exact", "whatif"]
SYNC_CALLS = frozenset(nr for nr, s in SPECS.items() if s.policy is Policy.SYNC)
# rows a thread passes over at a syscall (``_skip_sync_rows``): futex and mmap hints
SYNC_OR_MAP = frozenset(nr for nr, s in SPECS.items() if s.policy in (Policy.SYNC, Policy.MAP))
# calls whose recorded result changes the descriptor table ``_track_fds`` keeps
_FD_TRACKED = SOCKET_CREATORS | frozenset({2, 257, 85, 22, 293, 32, 33, 292, 233}) | frozenset(
    nr for nr, s in SPECS.items() if s.policy is Policy.NEW_FD)
MASK = 0xFFFF_FFFF_FFFF_FFFF
_PTRACE_CONT, _PTRACE_SYSCALL = P.PTRACE_CONT, P.PTRACE_SYSCALL
SKIP = MASK  # orig_rax = -1: the kernel skips the syscall and returns rax
EXECVE = 59
FCNTL = 72
GETRANDOM = 318
LOOKAHEAD = 64
TSC_PER_NS = 3  # a 3 GHz virtual TSC
LIVE_OPENS = frozenset({2, 257, 85, 437, 41})  # what-if: unrecorded opens/sockets are real
RUN_FOR_REAL = frozenset({Policy.NEW_FD, Policy.REAL, Policy.SIGNAL, Policy.MAP})
WAIT_AS_INPUT = 0  # a ready fd in a wait result is matched as if read
MAX_RW_COUNT = 0x7FFF_F000  # the kernel's largest read/write count
VECTOR_OUTPUT = 1 << 20  # iovec / msghdr outputs: at most this much of what the buffers hold


@dataclass
class ReplayOptions:
    mode: Mode | None = None  # default: exact unless something is changed
    injections: list[Injection] = field(default_factory=list)
    exe: str | None = None  # another program (what-if)
    argv: list[str] | None = None  # another command line (what-if)
    env_set: dict[str, str] = field(default_factory=dict)  # changed variables (what-if)
    sandbox: bool = True
    cpu: int | None = -1  # -1: the last CPU this process may use; None: no pinning
    timeout_s: float = 120.0  # wall clock for the whole replay
    hold_timeout_s: float = 0.5
    stderr_path: str | None = None  # where bwrap's own messages go
    seed: int = 0
    limits: Limits = field(default_factory=Limits)  # rlimits, cgroup, output kept
    hidden_paths: tuple[str, ...] = ()  # host paths the sandbox covers (a local lake)
    # host files under /tmp a changed command line names are shown read-only: any root may
    # read (the CLI: its user is root), or only those anyone may read (requests from the API)
    named_files: Literal["any", "public"] = "any"
    # Timing fuzz (``fuzz``): extra ns before one recorded input arrives, by the recorded
    # (tid, seq) of its row; added where arrivals are computed (``_advance``, and
    # ``timing._serve_wait``, where it can make a wait time out), like an arrival injection
    # that hits that row alone.
    arrival_delays: dict[tuple[int, int], int] = field(default_factory=dict)

    def effective_mode(self) -> Mode:
        if self.mode is not None:
            return self.mode
        changed = (self.injections or self.exe or self.argv is not None or self.env_set
                   or self.arrival_delays)
        return "whatif" if changed else "exact"


class StopReplay(Exception):
    """Ends the stop loop (divergence, end of the recording)."""


@dataclass(eq=False)
class Proc:
    pid: int
    mem: P.TraceeMemory
    rec_pid: int
    ns_pid: int
    vdso_returns: dict[int, int] = field(default_factory=dict)
    fd_kind: dict[int, FdKind] = field(default_factory=dict)
    fd_path: dict[int, str] = field(default_factory=dict)
    epoll_fd: dict[tuple[int, int], int] = field(default_factory=dict)  # (epfd, data) -> fd
    live_fds: set[int] = field(default_factory=set)  # what-if: real fds the recording lacks
    fd_peer: dict[int, PeerCursor] = field(default_factory=dict)  # connected to a known peer
    threads: int = 0  # live threads being served


@dataclass(eq=False)
class Task:
    tid: int
    proc: Proc | None = None  # None: a bwrap/set-up process, never served
    rec_tid: int = 0
    rows: list[Row] = field(default_factory=list)
    pos: int = 0
    now_ns: int = 0
    shift_ns: int = 0
    ns_tid: int = 0
    regs: P.UserRegs = field(default_factory=P.UserRegs)
    at_exit: Callable[[Task, P.UserRegs], None] | None = None
    mark_at_exit: Row | None = None  # a real call: it is done (for the order) when it returns
    held: bool = False
    awaiting_sigstop: bool = False  # a new task's first stop is still to come
    announced: bool = False  # its parent's fork/clone event was handled
    parked: bool = False  # stopped at its first stop, waiting for that event
    # past the end of its recording while the process's recording ends with an exit:
    # never resumed (the process's exit takes it, as it did when recorded)
    finished: bool = False
    restart_row: Row | None = None  # a wait for a child interrupted by a signal, to redo
    # a call run for real, as it was served: (row index, now_ns, shift_ns, synth_clock) to
    # undo it if the kernel restarts it (see ``_undo``); None once its exit was seen
    rewind: tuple[int, int, int, int] | None = None
    pending_child_rec: int | None = None
    synth_clock: int = 0
    injecting: bool = False  # running syscalls the tracer injected (see serving._inject)
    # the run token (several threads): one thread of the program runs user code at a time
    wants_token: bool = False  # stopped, ready to run as soon as it gets the token
    park_sig: int = 0  # the signal to deliver when it does
    in_wait: bool = False  # inside a real blocking call (futex, wait4, ...) without the token
    # waiting for a descriptor number to be free: (fd, then, or else after the hold timeout)
    fd_wait: tuple[int, Callable[[Task], None], Callable[[Task], None]] | None = None

    def head(self) -> Row | None:
        return self.rows[self.pos] if self.pos < len(self.rows) else None

    @property
    def process(self) -> Proc:
        """The served process (only asked of tasks of the replayed program)."""
        assert self.proc is not None
        return self.proc


_NEVER = 1 << 62


def _stretch(task: Task, pos: int) -> tuple[int, int, bool]:
    """The thread's stretch of user code before its row ``pos``, as recorded: when it
    began (the previous syscall's end), when it ended (that row's entry), and whether it
    ended in a futex call (a lock it tried was taken)."""
    rows = task.rows
    if pos >= len(rows):
        return _NEVER, _NEVER, False
    row = rows[pos]
    began = rows[pos - 1].end_ns if pos > 0 else row.ts_ns
    return began, row.ts_ns, row.nr in SYNC_CALLS


def runs_first(a: Task, a_pos: int, b: Task, b_pos: int) -> bool:
    """Should ``a``'s stretch (before its row ``a_pos``) run before ``b``'s?

    The lock a stretch takes is taken somewhere inside it, so timestamps only hint. A
    stretch that ends in a futex wait found its lock taken: whoever began before that wait
    goes first. Otherwise the stretch that reached its syscall first goes first."""
    a_began, a_end, a_waits = _stretch(a, a_pos)
    b_began, b_end, b_waits = _stretch(b, b_pos)
    if b_waits and not a_waits:
        return a_began < b_end
    if a_waits and not b_waits:
        return not b_began < a_end
    return a_end < b_end


def ns_tid(tid: int) -> int:
    """The tid as the sandbox sees it (last NSpid field)."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except OSError:
        pass
    return tid


def tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


class EngineState:
    """State of one replay, and the primitives that serve a stop."""

    deadline_hit = False

    def __init__(self, recording: Recording, options: ReplayOptions | None = None) -> None:
        self.rec = recording
        self.opts = options or ReplayOptions()
        self.mode: Mode = self.opts.effective_mode()
        self.exact = self.mode == "exact"
        self.tasks: dict[int, Task] = {}
        self.seen_pids: set[int] = set()  # every traced task, to reap what is re-parented
        self.sandbox_info: dict[str, object] = {}  # the report's "sandbox"
        self.procs: dict[int, Proc] = {}
        self.served_tasks = 0  # tasks of the replayed program (its threads, its tree) alive
        self.target: Proc | None = None
        self.execs_seen = 0
        self.status: Status = "completed"
        self.divergence: Divergence | None = None
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        # what each process (recorded pid) wrote to each fd: kept up to the caps, and counted
        self.replayed: dict[tuple[int, int], bytearray] = defaultdict(bytearray)
        self.output_bytes: dict[tuple[int, int], int] = defaultdict(int)
        self.child_exits: dict[int, tuple[int | None, int | None]] = {}  # pid -> exit, signal
        self.first_cut: tuple[int, int] | None = None  # (tid, seq) of the first cut payload
        self.kept_bytes = 0
        self.peer_bytes = 0  # what-if: bytes served from recorded peers
        self.notes: list[str] = []
        self.stats: dict[str, int] = defaultdict(int)
        self.injected: dict[str, int] = defaultdict(int)
        self.domains = vclock.ClockDomains(recording.process.start_ns,
                                           recording.mono_to_epoch_ns)
        # cross-thread order of the trapped rows: row.order -> consumed?
        total = max((r.order for rows in recording.threads.values() for r in rows),
                    default=-1) + 1
        self.consumed = bytearray(total)
        self.frontier = 0
        self.release_pending = False
        # per process, the thread allowed to run user code (processes run side by side)
        self.tokens: dict[int, Task] = {}
        self._last_shift = 0
        self.rec_to_ns: dict[int, int] = {}  # recorded pid/tid -> pid/tid in the sandbox
        self.rng = random.Random(self.opts.seed)
        self.exec_argv0: bytes | None = None
        self.exec_pwd: str | None = None  # the recorded environment's PWD=... entry

    def recorded_id(self, value: int) -> int:
        """A pid/tid as the recording knew it: the sandbox's own ids reach the program
        through memory the kernel writes (a thread's tid in its pthread struct) and come
        back in arguments (pthread_getcpuclockid, pthread_kill)."""
        for rec, ns in self.rec_to_ns.items():
            if ns == value:
                return rec
        return value

    def canonical_clock(self, clk: int) -> int:
        """A clock id with the pid or tid of a CPU-time clock (negative ids:
        ``~pid << 3 | type``) in the recording's numbering."""
        low = clk & 0xFFFF_FFFF
        if low < 0x8000_0000:  # a clock id is an int: not negative, so no pid in it
            return low
        clk = P.to_signed(clk & 0xFFFF_FFFF | (-(1 << 32) if clk & 1 << 31 else 0))
        if clk >= 0:
            return clk
        pid = ~(clk >> 3)
        return (~self.recorded_id(pid) << 3) | (clk & 7)

    def _resume(self, task: Task, sig: int = 0, chosen: bool = False) -> None:
        """Let it go on (PTRACE_CONT, or PTRACE_SYSCALL when its exit matters). With several
        threads, only the token holder runs user code; ``chosen`` gives it the token."""
        proc = task.proc
        if proc is not None and proc.threads > 1 and not (task.injecting or task.in_wait):
            # One thread of the program runs user code at a time: of the threads ready to
            # run, the one whose stretch of user code began first in the recording (a free
            # lock is taken somewhere in that stretch: the earliest starter took it first).
            holder = self.tokens.get(proc.pid)
            free = holder is None or holder is task
            if chosen or free and not any(t is not task and t.proc is proc
                                          and self._runs_before(t, task)
                                          for t in self.tasks.values()):
                self.tokens[proc.pid] = task
            else:
                if holder is task:
                    del self.tokens[proc.pid]
                    self.release_pending = True
                task.wants_token = True
                task.park_sig = sig
                return
        request = (_PTRACE_SYSCALL if task.at_exit is not None or task.mark_at_exit is not None
                   else _PTRACE_CONT)
        try:
            P.resume(task.tid, sig, request)
        except TracerError as err:
            if err.errno != errno_mod.ESRCH:  # killed meanwhile: its exit is coming
                raise

    def _my_turn(self, task: Task, row: Row) -> bool:
        """Its row is the earliest unserved one, and no other thread of its process is
        running."""
        if row.order > self.frontier:
            return False
        holder = self.tokens.get(task.process.pid) if self.tokens else None
        return holder is None or holder is task

    def _skip_sync_rows(self, task: Task, clock_read: bool = False) -> Row | None:
        """A recorded futex the replay does not make (the lock was free this time) is
        passed over: contention is a hint for the order, not a call to reproduce. So is,
        at a syscall, a recorded vDSO clock read the replay did not make: the runtime's
        own timed waits (CPython's GIL handoff) read the clock as often as the scheduler
        made them wait, which a replay run one thread at a time does not repeat."""
        rows = task.rows
        row = rows[task.pos] if task.pos < len(rows) else None  # task.head()
        while row is not None and (row.nr in SYNC_OR_MAP
                                   or row.taken or (row.vdso and not clock_read)):
            self._consume(task, task.pos)
            if not row.taken:
                self.stats["clock_skipped" if row.vdso else "sync_skipped"] += 1
            row = task.head()
        return row

    def _runs_before(self, other: Task, task: Task) -> bool:
        """Should ``other`` run user code before ``task`` does? Only if it is ready to: it
        waits for the token, or it is held at the call served next (its stretch follows)."""
        if other.wants_token:
            return runs_first(other, other.pos, task, task.pos)
        head = other.head()
        if other.held and head is not None and head.order <= self.frontier:
            return runs_first(other, other.pos + 1, task, task.pos)
        return False

    @property
    def several_threads(self) -> bool:
        """More than one task is served (threads, or processes of a tree): order matters."""
        return self.served_tasks > 1

    def _hold(self, task: Task) -> None:
        """Keep it at its stop until its turn; another thread may run meanwhile."""
        task.held = True
        self._release_token(task)

    def _release_token(self, task: Task) -> None:
        proc = task.proc
        if proc is not None and self.tokens.get(proc.pid) is task:
            del self.tokens[proc.pid]
            self.release_pending = True

    def _consume(self, task: Task, index: int, defer: bool = False) -> None:
        """Rows up to ``index`` of the thread are done (those before it were skipped)."""
        if index > task.pos:
            for skipped in task.rows[task.pos:index]:
                self._mark(skipped)
                self.stats["skipped"] += 1
        task.pos = index + 1
        if defer:
            task.mark_at_exit = task.rows[index]
        else:
            self._mark(task.rows[index])

    def _undo(self, task: Task, rewind: tuple[int, int, int, int]) -> None:
        """A call run for real returned ERESTART*: a signal came in before it did anything
        (a fork sees a pending signal and backs out), and the kernel runs it again after
        the handler. Its row is the thread's next again, for the restarted call to take.
        Under ptrace this happens where the recording saw nothing: a child's SIGCHLD that
        arrives while the parent sits in the tracer's stop at its next fork is pending when
        the fork begins; unrecorded, the second try met the row after it and diverged."""
        index, task.now_ns, task.shift_ns, task.synth_clock = rewind
        row = task.rows[index]
        task.pos = index
        task.at_exit = None
        task.mark_at_exit = None
        if self.consumed[row.order]:
            self.consumed[row.order] = 0
            self.frontier = min(self.frontier, row.order)
        self.stats["restarted"] += 1

    def _mark(self, row: Row) -> None:
        consumed = self.consumed
        consumed[row.order] = 1
        frontier = self.frontier
        while frontier < len(consumed) and consumed[frontier]:
            frontier += 1
        if frontier != self.frontier:
            self.frontier = frontier
            if self.served_tasks > 1:  # several_threads: only they can be waiting for it
                self.release_pending = True

    def _read_in(self, task: Task, spec: SyscallSpec, arg: int, args: tuple[int, ...],
                 length: int) -> bytes:
        regions = tuple(r for r in spec.ins if r.arg == arg)
        rows = capture(regions, spec.nr, args, length, task.process.mem, length)
        return b"".join(data for a, _o, data, _t in rows if a == arg)

    # -- outputs (kept up to the caps, then counted) ----------
    def _output_room(self, task: Task, fd: int) -> int:
        limits = self.opts.limits
        return max(0, min(limits.output_per_fd - len(self.replayed[(task.process.rec_pid, fd)]),
                          limits.output_total - self.kept_bytes))

    def _keep_output(self, task: Task, fd: int, data: bytes, count: int) -> None:
        """``count`` bytes written to ``fd``, of which ``data`` (a prefix) are kept."""
        room = self._output_room(task, fd)
        key = (task.process.rec_pid, fd)
        if room:
            kept = data[:room]
            self.replayed[key] += kept
            self.kept_bytes += len(kept)
        self.output_bytes[key] += max(count, 0)

    def _offered(self, task: Task, spec: SyscallSpec, args: tuple[int, ...]) -> int:
        """How many bytes an output call hands over: a flat buffer's length (the kernel's
        per-call maximum at most), or what an iovec / msghdr's buffers hold (1 MiB at most),
        without reading the bytes themselves."""
        region = spec.ins[0] if spec.ins else None
        if region is None or region.layout is Layout.FLAT:
            return min(args[2] & 0xFFFF_FFFF_FFFF, MAX_RW_COUNT)
        mem = task.process.mem
        try:
            if region.layout is Layout.MSGHDR:
                iov, iovlen = struct.unpack_from("<QQ", mem.read(args[region.arg], 56), 16)
            else:
                iov, iovlen = args[region.arg], args[region.count_arg]
            raw = mem.read(iov, min(iovlen, 1024) * 16) if iov else b""
        except TracerError:
            return 0
        total = sum(int(length) for _base, length in struct.iter_unpack("<QQ", raw))
        return min(total, VECTOR_OUTPUT)

    def _take_output(self, task: Task, spec: SyscallSpec, args: tuple[int, ...]) -> int:
        """What-if: keep what an output call writes (up to the caps); its return value."""
        fd = fd_of(spec.nr, args)
        offered = self._offered(task, spec, args)
        want = min(offered, self._output_room(task, fd))
        data = self._read_in(task, spec, 1, args, want) if want else b""
        count = offered if len(data) == want else len(data)  # short: unreadable memory
        self._keep_output(task, fd, data, count)
        return count

    # -- serving ----------
    def _finish(self, task: Task, regs: P.UserRegs, ret: int) -> None:
        regs.orig_rax = SKIP
        regs.rax = ret & MASK
        P.set_regs(task.tid, regs)
        self._resume(task)

    def _fuzz_delay(self, row: Row) -> int:
        """Timing fuzz: the extra arrival delay of this one row (0 almost always)."""
        delays = self.opts.arrival_delays
        return delays.get((row.tid, row.seq), 0) if delays else 0

    def _advance(self, task: Task, row: Row, delays: Delays | None = None,
                 arrival: bool = False) -> None:
        """Virtual time after ``row``: its recorded duration, plus injected delay."""
        start = max(task.now_ns, row.ts_ns + task.shift_ns)
        if delays is not None and delays.applied:
            for inj in delays.applied:
                self.injected[inj.text] += 1
        extra = delays.duration_ns if delays else 0
        if arrival:  # waiting for data from outside: it arrives at its (shifted) time
            late = (delays.arrival_ns if delays else 0) + self._fuzz_delay(row)
            end = max(start, row.end_ns + late) + extra
        else:
            end = start + row.dur_ns + extra
        task.now_ns = end
        task.shift_ns = end - row.end_ns
        task.synth_clock = 0

    def _fd_info(self, task: Task, fd: int) -> tuple[int, FdKind, str | None]:
        proc = task.proc
        assert proc is not None
        return fd, proc.fd_kind.get(fd, "unknown"), proc.fd_path.get(fd)

    def _inconsistent(self, task: Task, row: Row, reason: str) -> None:
        if self.exact:
            self.status = "diverged"
            self.divergence = Divergence(reason, task.rec_tid, task.tid, row.seq,
                                         recorded_call(row), None)
            raise StopReplay
        self.notes.append(reason)

    def _track_fds(self, task: Task, row: Row, args: tuple[int, ...]) -> None:
        proc = task.proc
        assert proc is not None
        nr = row.nr
        if row.ret < 0 or nr not in _FD_TRACKED:
            return
        if nr in SOCKET_CREATORS:
            proc.fd_kind[row.ret] = "socket"
        elif nr in (2, 257, 85):
            proc.fd_kind[row.ret] = "file"
            path = row.ins.get(1 if nr == 257 else 0)
            if path is not None:
                proc.fd_path[row.ret] = path.decode(errors="replace")
        elif nr in (22, 293) and row.outs:
            for fd in struct.unpack_from("<ii", row.outs[0][2]):
                proc.fd_kind[fd] = "pipe"
        elif nr in (32, 33, 292):
            proc.fd_kind[row.ret] = proc.fd_kind.get(args[0] & 0xFFFF_FFFF, "unknown")
        elif nr == 233 and 3 in row.ins and len(row.ins[3]) >= 12:
            data = struct.unpack_from("<Q", row.ins[3], 4)[0]
            proc.epoll_fd[(args[0] & 0xFFFF_FFFF, data)] = args[2] & 0xFFFF_FFFF
        elif SPECS[nr].policy is Policy.NEW_FD:
            proc.fd_kind[row.ret] = "other"


def recorded_call(row: Row) -> CallInfo:
    data = {str(arg): preview(value) for arg, value in sorted(row.ins.items())}
    for arg, offset, value in row.outs:
        data[f"{arg} (out{'@' + str(offset) if offset else ''})"] = preview(value)
    return CallInfo(row.name, row.nr, list(row.args), row.ret, data)


