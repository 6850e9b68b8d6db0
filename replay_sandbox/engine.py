"""The replay engine: run the recorded program under ptrace and serve its syscalls.

One stop loop owns every tracee (this module: events, cross-thread order, matching, the
report; ``serving`` answers I/O, ``timing`` answers clocks and waits, ``_state`` holds
the shared state). A trapped syscall of the replayed process is matched to the next
recorded row of its thread, then served by its policy (``syscall_table.Policy``): result
and bytes come from the log and the syscall does not run, or it runs for real (memory,
threads, fd-table changes) in the recorded order. Outputs are compared, never performed.

Exact mode stops at the first divergence. What-if mode (injections, changed arguments,
environment or command line) keeps going: it matches leniently, decides waits with
timeouts in virtual time, and lets the sandbox answer calls the recording does not have.

Multi-threaded programs run one thread at a time. Served syscalls follow the recorded
cross-thread order (a thread whose row is not the earliest unserved one is held at its
stop), and a run token lets one thread run user code at a time, handed over by the
recorded timing of each thread's stretch of user code (``_state.runs_first``); futex
calls are ordering hints (a recorded futex wait says the lock was taken) and, like the
wait family, hand the token on while they block for real. Descriptor numbers are forced
to the recorded ones (timestamps cannot order an open against another thread's close).
If nothing can move for ``hold_timeout_s``, the rows waited for are given up and the
report says so.

What this cannot reproduce: user-space data races between syscalls (no instruction
counting: rr needs hardware perf counters, which this VM lacks), signals from real
timers, and child processes (they run for real, unserved).
"""


from __future__ import annotations

import ctypes
import os
import resource
import signal
import struct
import sys
import tempfile
import threading
import time

from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox import vdso
from kprobe.replay_sandbox._state import (
    EXECVE,
    FCNTL,
    LOOKAHEAD,
    MASK,
    RUN_FOR_REAL,
    Proc,
    ReplayOptions,
    StopReplay,
    Task,
    ns_tid,
    recorded_call,
    runs_first,
    tgid,
)
from kprobe.replay_sandbox.context import RLIM_INFINITY, RLIMIT_NAMES, ProcessContext
from kprobe.replay_sandbox.errors import RecordingError, SandboxError, TracerError
from kprobe.replay_sandbox.limits import ReplayCgroup
from kprobe.replay_sandbox.mapped_files import changed_notes
from kprobe.replay_sandbox.recording import Recording, Row, redaction_notes
from kprobe.replay_sandbox.report import (
    CallInfo,
    ChildReport,
    Divergence,
    ReplayReport,
    compare_outputs,
    preview,
)
from kprobe.replay_sandbox.runtimes import runtime_notes
from kprobe.replay_sandbox.sandbox import HOST_UID, LaunchSpec, spawn
from kprobe.replay_sandbox.seccomp import compile_filter
from kprobe.replay_sandbox.serving import RECEIVES, RESTARTS, IoServing
from kprobe.replay_sandbox.syscall_table import (
    CSTRING,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    SPECS,
    TRAPPED,
    Layout,
    Policy,
    SyscallSpec,
    canonical_sockaddr,
    fd_of,
)

__all__ = ["Engine", "ReplayOptions", "replay"]

# sched_yield, wait4, waitid, pause, rt_sigsuspend, rt_sigtimedwait (futex is a SYNC row)
BLOCKING_CALLS = frozenset({24, 61, 247, 34, 130, 128})
WAIT_CHILD = frozenset({61, 247})  # wait4, waitid
CLOCK_ID_CALLS = frozenset({228, 229, 230})  # clock_gettime, clock_getres, clock_nanosleep

# KPROBE_REPLAY_TRACE=1: one stderr line per served stop (row matched or not), to find
# where a replay leaves its recording before the divergence report does
_TRACE = bool(os.environ.get("KPROBE_REPLAY_TRACE"))
_OPEN, _OPENAT = 2, 257
_OPENS_AT = frozenset({_OPEN, _OPENAT})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SETTINGS = (b"/proc/sys/", b"/sys/")  # kernel settings: read-only in the sandbox
_SIGTRAP = int(signal.SIGTRAP)
# Policy members as module names for the per-stop path: ``Policy.SERVE`` is a lookup
# through the enum's metaclass (~75 ns here), asked up to ten times a served stop
_SERVE, _OUTPUT, _WAIT, _NEW_FD, _CLOCK, _SIGNAL, _SYNC, _MAP = (
    Policy.SERVE, Policy.OUTPUT, Policy.WAIT, Policy.NEW_FD, Policy.CLOCK, Policy.SIGNAL,
    Policy.SYNC, Policy.MAP)
_SIGN64 = 1 << 63


class Engine(IoServing):
    """Replays one recording; ``run()`` returns the report."""

    # -- public ----------
    def run(self) -> ReplayReport:
        spec = self._launch_spec()
        # execve is trapped too: in the sandbox, bwrap's final exec gets the recorded argv[0];
        # and the calls that may block on another thread, which pass the run token on
        filt = compile_filter(TRAPPED | {EXECVE} | BLOCKING_CALLS)
        old_affinity = os.sched_getaffinity(0)
        if spec.cpu is not None:
            P.pin_to_cpu(0, spec.cpu)
        started = time.perf_counter()
        # memory.max and pids.max for the sandbox's processes, removed after the replay
        cgroup = ReplayCgroup(self.opts.limits)
        watchdog = threading.Timer(self.opts.timeout_s, self._on_deadline)
        watchdog.daemon = True
        # orphans of the sandbox (bwrap's processes die in any order when killed) come to
        # this process, which reaps them, instead of to the host's init
        subreaper = ctypes.c_int(0)
        P.prctl(P.PR_GET_CHILD_SUBREAPER, ctypes.addressof(subreaper))
        P.prctl(P.PR_SET_CHILD_SUBREAPER, 1)
        try:
            self.notes.extend(cgroup.create())
            root = spawn(spec, filt, cgroup)
            self.tasks[root] = Task(root)
            self.seen_pids.add(root)
            self._deadline = time.monotonic() + self.opts.timeout_s
            # a tracee stuck in a real wait must not hang the caller: at the deadline a
            # watchdog kills the tracees (ours, by pid), which ends the blocking waitpid
            watchdog.start()
            P.resume(root)
            self._loop()
        except StopReplay:
            pass
        except TracerError:
            # The watchdog kills the tracees at the deadline from its own thread, maybe while
            # this one handles a stop: ptrace and memory calls on them then fail (ESRCH).
            # That replay ran out of time; it did not fail.
            if not self.deadline_hit:
                self._stderr_tail()
                raise
            self._timed_out()
        except BaseException:
            self._stderr_tail()  # removes the temporary file
            raise
        finally:
            watchdog.cancel()
            self._kill_all()
            self._reap_orphans()
            P.prctl(P.PR_SET_CHILD_SUBREAPER, subreaper.value)
            self._limit_usage(cgroup.usage())
            context = self.rec.process.context
            self.sandbox_info = {"host_uid": HOST_UID if self.opts.sandbox else 0,
                                 # what the program saw when recorded, and is told again
                                 "recorded_ids": None if context is None else {
                                     "uid": context.uid, "euid": context.euid,
                                     "gid": context.gid, "egid": context.egid,
                                     "as_its_namespace_saw_them": context.ids_mapped},
                                 "cgroups": sorted({str(p) for p in cgroup.dirs.values()}),
                                 "limits": self.opts.limits.to_json()}
            cgroup.remove()
            os.sched_setaffinity(0, old_affinity)
        wall = time.perf_counter() - started
        if self.deadline_hit and self.status == "completed":
            self._timed_out()  # the tracees died at the deadline before the loop looked
        if self.target is None and self.status == "completed":
            raise SandboxError(f"the recorded program never started: {self._stderr_tail()}")
        return self._report(wall)

    # -- launch ----------
    def _launch_spec(self) -> LaunchSpec:
        proc = self.rec.process
        env = list(proc.env)
        if self.opts.env_set:
            keep = [e for e in env if e.split("=", 1)[0] not in self.opts.env_set]
            env = keep + [f"{k}={v}" for k, v in self.opts.env_set.items()]
        argv = self.opts.argv if self.opts.argv is not None else list(proc.argv)
        self.notes.extend(redaction_notes(env, argv))
        exe = self.opts.exe or proc.exe
        self.notes.extend(runtime_notes(exe, self.rec.real_paths))
        self.notes.extend(changed_notes(self.rec.mapped_files))
        if not argv:
            argv = [exe]
        self.exec_argv0 = argv[0].encode()
        self.exec_pwd = next((e for e in env if e.startswith("PWD=")), None)
        cpu = self.opts.cpu
        if cpu == -1:
            cpu = max(os.sched_getaffinity(0))
        if self.opts.stderr_path is None:
            handle, path = tempfile.mkstemp(prefix="kprobe-replay-", suffix=".stderr")
            os.close(handle)
            self._stderr_path, self._stderr_tmp = path, True
        else:
            self._stderr_path, self._stderr_tmp = self.opts.stderr_path, False
        # host files a changed command line names are shown read-only (private /tmp hides them)
        named = [a for a in argv[1:] if self.opts.argv is not None and a.startswith("/")
                 and os.path.exists(a)]
        context = proc.context
        spec = LaunchSpec(exe=exe, argv=argv, env=env, cwd=proc.cwd, sandbox=self.opts.sandbox,
                          ro_paths=self.rec.real_paths, named_paths=tuple(named),
                          named_any=self.opts.named_files == "any",
                          exe_recorded=exe == proc.exe, hidden=self.opts.hidden_paths,
                          initial_fds=frozenset(self.rec.initial_fds), cpu=cpu,
                          stderr_path=self._stderr_path, limits=self.opts.limits,
                          notes=self.notes,
                          hostname=context.hostname if context and context.hostname
                          else "replay",
                          umask=context.umask if context else None,
                          recorded_rlimits=_recorded_rlimits(context),
                          placeholder_kinds={d.fd: d.kind for d in proc.descriptors or ()})
        return spec

    def _limit_usage(self, usage: dict[str, float]) -> None:
        """The cgroup's verdict, in the stats and, when a limit was hit, in the notes."""
        self.stats.update({k: int(v) for k, v in usage.items()})
        limits = self.opts.limits
        if usage.get("oom_kills"):
            self.notes.append(f"the sandbox hit its memory limit ({limits.memory >> 20} MiB): "
                              f"the kernel killed {int(usage['oom_kills'])} process(es)")
        if usage.get("pids_limit_hits"):
            self.notes.append(f"the sandbox hit its process limit ({limits.processes}): "
                              f"{int(usage['pids_limit_hits'])} fork(s) or thread(s) refused")

    def _stderr_tail(self) -> str:
        try:
            with open(self._stderr_path, encoding="utf-8", errors="replace") as f:
                text = f.read()[-400:].strip()
        except OSError:
            text = ""
        finally:
            if self._stderr_tmp:
                try:
                    os.unlink(self._stderr_path)
                except OSError:
                    pass
        return text.replace("\n", " | ") or "no message"

    # -- the stop loop ----------
    def _loop(self) -> None:
        tasks, stats, seen = self.tasks, self.stats, self.seen_pids
        while True:
            # the wait status is decoded here, without a Stop per stop (P.Stop's fields)
            waited = self._wait()
            if waited is None:
                return
            pid, status = waited
            task = tasks.get(pid)
            if task is None:  # a new task's first stop can precede its parent's event
                task = tasks[pid] = Task(pid, awaiting_sigstop=True)
            sig, event = (status >> 8) & 0xFF, (status >> 16) & 0xFF
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(task, P.Stop(pid, status))
            elif sig == _SIGTRAP and event:
                if event == P.EVENT_SECCOMP:
                    self._on_seccomp(task)
                elif event in (P.EVENT_FORK, P.EVENT_VFORK, P.EVENT_CLONE):
                    self._on_new_task(task)
                    self._resume(task)
                elif event == P.EVENT_EXEC:
                    self._on_exec(task)
                    self._resume(task)
                else:
                    self._resume(task)
            elif sig == P.SYSCALL_STOP_SIG:
                self._on_syscall_exit(task)
            elif event == P.EVENT_STOP:
                self._resume(task)
            elif sig == signal.SIGSTOP and task.awaiting_sigstop:
                task.awaiting_sigstop = False
                if task.announced:
                    self._resume(task)
                else:  # it must not run before we know whose thread it is
                    task.parked = True
            elif sig == signal.SIGSEGV and self._emulate_tsc(task):
                self._resume(task)
            else:
                self._resume(task, sig)
            stats["stops"] += 1
            seen.add(pid)
            if self.release_pending:
                self._schedule()
            if self.served_tasks > 1 and self.fd_waiters:  # several_threads
                self._retry_fd_waits()

    def _retry_fd_waits(self) -> None:
        for task in list(self.tasks.values()):
            if task.fd_wait is not None and not self._fd_is_open(task, task.fd_wait[0]):
                _fd, move, _give_up = task.fd_wait
                task.fd_wait = None
                move(task)
                self._resume(task)

    @property
    def fd_waiters(self) -> bool:
        return any(t.fd_wait is not None for t in self.tasks.values())

    def _wait(self) -> tuple[int, int] | None:
        """The next stop (pid, wait status); None when every tracee is gone. Held threads
        make it poll."""
        while True:
            if not self.tasks:
                # Every tracee is gone. Do not wait for "no children": the process running
                # the engine may have other children (a multiprocessing helper, a server)
                # that waitpid(-1) would block on forever.
                return None
            if self.deadline_hit or time.monotonic() > self._deadline:
                self._timed_out()
                raise StopReplay
            if not (self.served_tasks > 1 and self._stuck()):  # one thread: never stuck
                try:
                    return os.waitpid(-1, P.WALL)
                except ChildProcessError:
                    return None
            give_up = time.monotonic() + self.opts.hold_timeout_s
            pause = 20e-6
            while time.monotonic() < give_up:
                try:
                    pid, status = os.waitpid(-1, P.WALL | os.WNOHANG)
                except ChildProcessError:
                    return None
                if pid:
                    return pid, status
                if self.fd_waiters:
                    self._retry_fd_waits()
                time.sleep(pause)
                pause = min(pause * 2, 2e-3)
            self._relax()

    def _stuck(self) -> bool:
        """Tasks wait for their turn and none of the others is running (each is waiting
        too, or blocked in a real wait): no stop may come, so the wait must poll."""
        if not self.several_threads:
            return False
        served = [t for t in self.tasks.values() if t.proc is not None]
        if not any(t.held or t.wants_token or t.fd_wait is not None for t in served):
            return False
        return not any(not (t.held or t.wants_token or t.fd_wait is not None or t.finished
                            or t.in_wait) for t in served)

    def _timed_out(self) -> None:
        self.status = "timeout"
        self.notes.append(f"replay stopped after {self.opts.timeout_s:g} s of wall time")

    def _on_deadline(self) -> None:
        self.deadline_hit = True
        for tid in list(self.tasks):
            P.kill_quietly(tid)

    def _gone(self, task: Task, stop: P.Stop) -> None:
        self.tasks.pop(task.tid, None)
        proc = task.proc
        if proc is None:
            return
        proc.threads -= 1
        self.served_tasks -= 1
        self._release_token(task)
        self.release_pending = True  # a lone thread left parked must get going
        if task.mark_at_exit is not None:
            self._mark(task.mark_at_exit)
            task.mark_at_exit = None
        left = task.rows[task.pos:]
        if left:  # its remaining rows must not hold the other threads back
            self._abandon([r.order for r in left])
        if task.tid != proc.pid:
            return
        # rows that are hints, not calls to reproduce, do not say the recording continues
        left = [r for r in left if not (r.vdso or r.taken or SPECS[r.nr].policy in (
            Policy.SYNC, Policy.MAP))]
        proc.mem.close()
        self.procs.pop(proc.pid, None)
        if proc is not self.target:
            self._child_ended(task, proc, stop, left)
            return
        self._last_shift = task.shift_ns
        if stop.exited:
            self.exit_code = stop.exit_code
        else:
            self.exit_signal = stop.term_sig
        if self.exact and self.status == "completed":
            self._check_end(task, left)

    def _child_ended(self, task: Task, proc: Proc, stop: P.Stop, left: list[Row]) -> None:
        """A process of the tree ended: kept for the report and, in exact mode, checked
        against its recorded end."""
        code = stop.exit_code if stop.exited else None
        sig = None if stop.exited else stop.term_sig
        self.child_exits[proc.rec_pid] = (code, sig)
        info = self.rec.children.get(proc.rec_pid)
        if not self.exact or self.status != "completed" or info is None:
            return
        recorded = info.exit_code
        how = f"killed by signal {sig}" if sig is not None else f"exit code {code}"
        want = (f"exit code {recorded}" if recorded is None or recorded >= 0
                else f"killed by signal {-recorded}")
        if left and recorded is not None:
            reason = f"process {proc.rec_pid} ended ({how}) where its recording continues"
        elif recorded is not None and (code if sig is None else -sig) != recorded:
            reason = f"process {proc.rec_pid} ended with {how}, recorded {want}"
            left = []
        else:
            return
        self.status = "diverged"
        row = left[0] if left else None
        self.divergence = Divergence(reason, task.rec_tid, task.tid, row.seq if row else None,
                                     recorded_call(row) if row else None, None)

    def _check_end(self, task: Task, left: list[Row]) -> None:
        """Exact mode: the process must end where and how the recording did."""
        recorded = self.rec.process.exit_code  # -N: killed by signal N
        how = (f"killed by signal {self.exit_signal}" if self.exit_signal is not None
               else f"exit code {self.exit_code}")
        ended = -self.exit_signal if self.exit_signal is not None else self.exit_code
        if left and recorded is not None:
            reason = f"the process ended ({how}) where the recording continues"
        elif recorded is not None and ended != recorded:
            want = (f"killed by signal {-recorded}" if recorded < 0
                    else f"exit code {recorded}")
            reason = f"the process ended with {how}, recorded {want}"
            left = []
        else:
            return
        self.status = "diverged"
        row = left[0] if left else None
        self.divergence = Divergence(reason, task.rec_tid, task.tid, row.seq if row else None,
                                     recorded_call(row) if row else None, None)

    def _kill_all(self) -> None:
        for tid in list(self.tasks):
            P.kill_quietly(tid)
        while self.tasks:  # not "until ECHILD": this process may have unrelated children
            try:
                pid, status = os.waitpid(-1, P.WALL)
            except ChildProcessError:
                break
            task = self.tasks.get(pid)
            if os.WIFSTOPPED(status):
                P.kill_quietly(pid)  # a task that appeared meanwhile
            elif task is not None:
                self._gone(task, P.Stop(pid, status))
        for proc in list(self.procs.values()):
            proc.mem.close()

    def _reap_orphans(self) -> None:
        """Reap the sandbox's processes re-parented to this process (a child subreaper
        during the replay); only pids it traced, never another child of this process."""
        pending = set(self.seen_pids)
        deadline = time.monotonic() + 1.0
        while pending:
            for pid in list(pending):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG | P.WALL)
                except ChildProcessError:  # not (or no longer) this process's child
                    pending.discard(pid)
                    continue
                if done:
                    pending.discard(pid)
            if not pending or time.monotonic() > deadline:
                return
            time.sleep(0.005)

    # -- process events ----------
    def _on_exec(self, task: Task) -> None:
        if task.proc is not None:  # the program exec'd again: new image, same process
            task.proc.mem.close()
            task.proc.mem = P.TraceeMemory(task.tid)
            self._patch_vdso(task.proc)
            return
        self.execs_seen += 1
        if self.execs_seen != (2 if self.opts.sandbox else 1) or self.target is not None:
            return
        rec = self.rec
        proc = Proc(task.tid, P.TraceeMemory(task.tid), rec.process.pid, ns_tid(task.tid))
        for fd in rec.initial_fds:
            proc.fd_kind[fd] = "unknown"
        self.procs[task.tid] = proc
        self.target = proc
        self.rec_to_ns[rec.process.pid] = proc.ns_pid
        self._patch_vdso(proc)
        self._adopt(task, proc, rec.main_tid)

    def _adopt(self, task: Task, proc: Proc, rec_tid: int) -> None:
        task.proc = proc
        proc.threads += 1
        self.served_tasks += 1
        task.rec_tid = rec_tid
        task.rows = self.rec.threads.get(rec_tid, [])
        task.ns_tid = ns_tid(task.tid)
        self.rec_to_ns[rec_tid] = task.ns_tid
        first = task.rows[0].ts_ns if task.rows else self.rec.process.start_ns
        task.now_ns = first
        if not task.rows:
            self.notes.append(f"thread {task.tid} has no recorded syscalls (recorded tid "
                              f"{rec_tid}); its calls are synthesized")

    def _adopt_child(self, task: Task, parent: Task, rec_pid: int) -> None:
        """A process of the tree (``--tree``) forked: served from its own recording, with
        what a fork copies (descriptors, the patched vDSO), at its parent's time shift."""
        parent_proc = parent.process
        proc = Proc(task.tid, P.TraceeMemory(task.tid), rec_pid, ns_tid(task.tid))
        proc.vdso_returns = dict(parent_proc.vdso_returns)
        proc.fd_kind = dict(parent_proc.fd_kind)
        proc.fd_path = dict(parent_proc.fd_path)
        proc.live_fds = set(parent_proc.live_fds)
        self.procs[task.tid] = proc
        self._adopt(task, proc, rec_pid)
        task.shift_ns = parent.shift_ns
        task.now_ns += parent.shift_ns if task.rows else parent.now_ns - task.now_ns
        self.stats["processes"] += 1

    def _patch_vdso(self, proc: Proc) -> None:
        patched = vdso.patch(proc.pid, proc.mem)
        proc.vdso_returns = dict(patched.return_points) if patched else {}
        if patched is None:
            self.notes.append("no vDSO in the tracee: clock reads already trap")

    def _on_new_task(self, parent: Task) -> None:
        new_tid = P.event_msg(parent.tid)
        task = self.tasks.get(new_tid)
        if task is None:
            task = self.tasks[new_tid] = Task(new_tid, awaiting_sigstop=True)
        task.announced = True
        proc = parent.proc
        if proc is not None:
            rec_tid = parent.pending_child_rec
            parent.pending_child_rec = None
            if tgid(new_tid) == proc.pid:
                self._adopt(task, proc, rec_tid if rec_tid is not None else -new_tid)
                # threads run side by side: the new one starts at its own first call,
                # shifted as its parent was (its virtual time is its own from there)
                task.shift_ns = parent.shift_ns
                task.now_ns += parent.shift_ns if task.rows else parent.now_ns - task.now_ns
            else:
                child = self.rec.children.get(rec_tid) if rec_tid is not None else None
                if rec_tid is not None:  # waits and kills name the recorded pid
                    self.rec_to_ns[rec_tid] = ns_tid(new_tid)
                if child is not None:
                    self._adopt_child(task, parent, child.pid)
                else:
                    self.notes.append(f"child process {new_tid} (recorded pid {rec_tid}) "
                                      f"runs for real, unserved")
        if task.parked:
            task.parked = False
            self._resume(task)

    # -- seccomp stops ----------
    def _on_seccomp(self, task: Task) -> None:
        task.rewind = None  # a new call: the last one's exit, if it had a stop, is past
        if task.injecting:  # a call the tracer made it run: let it
            self._resume(task)
            return
        regs = P.get_regs(task.tid, task.regs)
        nr = regs.orig_rax
        if task.proc is None:
            if nr == EXECVE and self.execs_seen == 1 and self.opts.sandbox:
                self._set_argv0(task, regs)
            self._resume(task)
            return
        if nr in WAIT_CHILD:
            self._on_wait_child(task, regs)
            return
        if nr in BLOCKING_CALLS:
            self._on_blocking_call(task)
            return
        self._serve(task, regs)

    def _set_argv0(self, task: Task, regs: P.UserRegs) -> None:
        """bwrap cannot set argv[0]: point its final execve's argv[0] at the recorded one.
        And bwrap sets PWD to the directory it changed to: give the environment's PWD
        back its recorded value (a program may have been started with a stale one, and a
        shell checks it against its working directory)."""
        argv0 = self.exec_argv0 or b""
        mem = P.TraceeMemory(task.tid)
        try:
            where = (regs.rsp - 16384 - len(argv0)) & ~15
            mem.write(where, argv0 + b"\0")
            mem.write(regs.rsi, struct.pack("<Q", where))
            self._restore_pwd(mem, regs.rdx, where)
        finally:
            mem.close()

    def _restore_pwd(self, mem: P.TraceeMemory, envp: int, below: int) -> None:
        recorded = self.exec_pwd
        at = envp
        for _ in range(65536):
            pointer = struct.unpack("<Q", mem.read(at, 8))[0]
            if not pointer:
                return
            if mem.read_cstring(pointer, 4) == b"PWD=":
                if recorded is None:  # not in the recorded environment: drop it
                    rest = []
                    follow = at + 8
                    while True:
                        nxt = struct.unpack("<Q", mem.read(follow, 8))[0]
                        rest.append(nxt)
                        if not nxt:
                            break
                        follow += 8
                    mem.write(at, struct.pack(f"<{len(rest)}Q", *rest))
                    return
                value = recorded.encode(errors="surrogateescape") + b"\0"
                place = (below - 64 - len(value)) & ~15
                mem.write(place, value)
                mem.write(at, struct.pack("<Q", place))
                return
            at += 8

    def _serve(self, task: Task, regs: P.UserRegs) -> None:
        proc = task.proc
        assert proc is not None
        nr = regs.orig_rax
        spec = SPECS.get(nr)
        if spec is None:  # not ours to serve (the filter traps only the table)
            self._resume(task)
            return
        policy = spec.policy
        via_vdso = regs.rip in proc.vdso_returns
        if policy is _CLOCK or via_vdso:
            self._serve_clock(task, regs, spec, via_vdso)
            return
        if policy is _MAP:
            self._on_map(task, regs, spec)
            return
        if policy is _SYNC:
            # a real synchronisation: holding it could only deadlock (the thread another
            # one waits for would never wake it); its row, if any, is simply done
            head = task.head()
            if head is not None and head.nr == nr:
                self._consume(task, task.pos)
            self._on_blocking_call(task)
            return
        row = self._skip_sync_rows(task)
        if row is not None and not self._my_turn(task, row):
            self._hold(task)
            return
        task.held = False
        args = regs.syscall_args()
        if proc.live_fds and spec.fd_arg is not None and fd_of(nr, args) in proc.live_fds:
            self._on_live_fd(task, regs, spec, args)
            return
        index = task.pos
        if (not self.exact and spec.nr in RECEIVES and fd_of(nr, args) in proc.fd_peer
                and (row is None or not self._matches(task, regs, spec, row, args))):
            self._serve_from_peer(task, regs, spec, args)
            return
        if _TRACE:
            print(f"stop tid={task.rec_tid} nr={nr} {spec.name} args={[hex(a) for a in args[:3]]} "
                  f"row={None if row is None else (row.seq, row.name, row.ret)}", file=sys.stderr)
        if row is None or not self._matches(task, regs, spec, row, args):
            found = None if self.exact else self._look_ahead(task, regs, spec, args)
            if found is None:
                self._unmatched(task, regs, spec, row, args)
                return
            index = found
            row = task.rows[index]
        # A call that runs for real (fd table, threads, signals) may race with the next
        # thread's: with several threads, the order moves on only once it has returned.
        defer = proc.threads > 1 and (policy in RUN_FOR_REAL or (
            nr == FCNTL and (args[1] & 0xFFFF_FFFF) in (F_DUPFD, F_DUPFD_CLOEXEC)))
        if policy in RUN_FOR_REAL:  # the kernel may restart it: see _undo
            task.rewind = (index, task.now_ns, task.shift_ns, task.synth_clock)
        self._consume(task, index, defer)
        self.stats["served"] += 1
        if policy is _SERVE:
            self._serve_row(task, regs, spec, row, args)
        elif policy is _OUTPUT:
            self._serve_output(task, regs, spec, row, args)
        elif policy is _WAIT:
            self._serve_wait(task, regs, spec, row, args)
        elif policy is _NEW_FD:
            self._serve_new_fd(task, regs, spec, row, args)
        elif policy is _SIGNAL:
            self._serve_signal(task, regs, spec, row, args)
        else:
            self._run_real(task, regs, spec, row, args)

    # -- order across threads ----------

    def _schedule(self) -> None:
        """After a stop: serve the held thread whose row has come, or, if no thread is
        running, give the run token to one that waits only for it."""
        while self.release_pending:
            self.release_pending = False
            for task in list(self.tasks.values()):
                if task.held:
                    row = task.head()
                    if row is None or self._my_turn(task, row):
                        task.held = False
                        self._serve(task, task.regs)
            for proc in {t.proc for t in self.tasks.values() if t.wants_token}:
                if proc is None or proc.pid in self.tokens:
                    continue
                waiting = [t for t in self.tasks.values() if t.wants_token and t.proc is proc]
                chosen = next((c for c in waiting if not any(
                    o is not c and runs_first(o, o.pos, c, c.pos) for o in waiting)),
                    waiting[0])
                chosen.wants_token = False
                # the rule is pairwise, not an order: the choice made here is final
                self._resume(chosen, chosen.park_sig, chosen=True)

    def _on_blocking_call(self, task: Task) -> None:
        """futex, sched_yield, the wait family: they run for real and may block on another
        thread, so the token goes to another thread until the call returns."""
        if task.process.threads <= 1:
            self._resume(task)
            return
        self.stats["scheduling_points"] += 1
        task.in_wait = True
        self._release_token(task)

        def returned(task: Task, regs: P.UserRegs) -> None:
            task.in_wait = False  # it runs again once it holds the token

        task.at_exit = returned
        self._resume(task)

    def _relax(self) -> None:
        """Nothing moved while threads were held: the rows they wait for are not coming
        (a thread blocked for real on a held one, or one that left the recording). Give
        those rows up so the earliest held thread can go."""
        for task in list(self.tasks.values()):
            if task.fd_wait is not None:
                _fd, _move, give_up = task.fd_wait
                task.fd_wait = None
                give_up(task)
                self._resume(task)
        held = [t for t in self.tasks.values()
                if (t.held or t.wants_token) and t.head() is not None]
        if not held:
            for task in self.tasks.values():
                task.held = False
            self.release_pending = True
            self._schedule()
            return
        order = min(t.rows[t.pos].order for t in held)
        if _TRACE:
            waiting = [(r.tid, r.seq, r.name) for rows in self.rec.threads.values() for r in rows
                       if self.frontier <= r.order < order and not self.consumed[r.order]]
            print(f"relax: giving up {waiting[:10]}; held "
                  f"{[(t.rec_tid, t.rows[t.pos].seq, t.rows[t.pos].name) for t in held]}",
                  file=sys.stderr)
        given_up = self._abandon(range(self.frontier, order))
        self.stats["relaxed"] += 1
        self.notes.append(f"cross-thread order relaxed: {given_up} recorded syscalls of other "
                          f"threads did not come within {self.opts.hold_timeout_s:g} s")
        self.release_pending = True
        self._schedule()

    def _abandon(self, orders: range | list[int]) -> int:
        consumed = self.consumed
        count = 0
        for order in orders:
            if not consumed[order]:
                consumed[order] = 1
                count += 1
        frontier = self.frontier
        while frontier < len(consumed) and consumed[frontier]:
            frontier += 1
        self.frontier = frontier
        self.release_pending = True
        self.stats["abandoned"] += count
        return count

    # -- matching ----------
    def _matches(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row,
                 args: tuple[int, ...]) -> bool:
        if row.nr != spec.nr:
            return False
        # Outputs match by call and descriptor; their bytes are compared as they are kept
        # (_serve_output): a value derived from a clock read through the vDSO (invisible to
        # the recorder, so approximated here) can change an output's bytes and length
        # without changing what the program does, and the report shows the difference.
        output = spec.policy is _OUTPUT
        loose = output or not self.exact
        recorded_args = row.args
        for i in spec.compare:  # what-if compares only the descriptor
            value = args[i] & MASK  # signed as the lake's int64 columns (P.to_signed)
            if value >= _SIGN64:
                value -= 1 << 64
            if value != recorded_args[i] and (not loose or spec.fd_arg == i):
                if i == 0 and spec.nr in CLOCK_ID_CALLS and self.canonical_clock(
                        args[0]) == self.canonical_clock(recorded_args[0] & MASK):
                    continue
                return False
        if output:
            return True
        for region in spec.ins:
            recorded = row.ins.get(region.arg)
            if recorded is None or region.layout is Layout.MSGHDR:
                continue
            if region.size is CSTRING:
                actual = task.process.mem.read_cstring(args[region.arg])
                if actual != recorded:
                    return False
            elif region.size.kind == "sockaddr":
                actual = self._read_in(task, spec, region.arg, args, len(recorded))
                if canonical_sockaddr(actual) != canonical_sockaddr(recorded):
                    return False
            elif self.exact:
                actual = self._read_in(task, spec, region.arg, args, len(recorded))
                if actual != recorded:
                    return False
        return True

    def _on_map(self, task: Task, regs: P.UserRegs, spec: SyscallSpec) -> None:
        """mmap: placed where the recording's was, when there is one to follow; never a
        point of order between threads, nor a divergence by itself (a mapping is neither
        input nor output: a program whose later calls depend on an address shows it there).

        The row followed is the thread's next one if it matches (only futex, clock and
        other mmap rows before it), else the earliest unserved match of another thread of
        the process: which thread maps memory can depend on a race in user space (glibc
        gives a thread a new malloc arena or one another made, by who got there first),
        but a mapping belongs to the process. Else the call runs as the program made it."""
        args = regs.syscall_args()
        row = self._own_map(task, regs, spec, args)
        if row is None:
            row = self._map_of_another_thread(task, regs, spec, args)
        self.stats["maps"] += 1
        if row is None:
            self.stats["maps_unrecorded"] += 1
            self._resume(task)
            return
        self._serve_map(task, regs, spec, row, args)

    def _own_map(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                 args: tuple[int, ...]) -> Row | None:
        rows = task.rows
        for index in range(task.pos, min(len(rows), task.pos + LOOKAHEAD)):
            row = rows[index]
            if row.nr == spec.nr and not row.taken and self._matches(task, regs, spec, row,
                                                                      args):
                self._consume(task, index)
                return row
            if not (row.taken or row.vdso or SPECS[row.nr].policy in (Policy.SYNC,
                                                                        Policy.MAP)):
                return None
        return None

    def _map_of_another_thread(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                               args: tuple[int, ...]) -> Row | None:
        """The earliest unserved matching mmap row of another thread of the process,
        taken from it (its thread passes over it when it gets there)."""
        proc = task.process
        best: Row | None = None
        for tid, rows in self.rec.threads.items():
            if tid == task.rec_tid or self.rec_pid_of(tid) != proc.rec_pid:
                continue
            for row in rows:
                if (row.nr == spec.nr and not self.consumed[row.order] and not row.taken
                        and (best is None or row.order < best.order)
                        and self._matches(task, regs, spec, row, args)):
                    best = row
                    break
        if best is not None:
            best.taken = True
            self._mark(best)
            self.stats["maps_of_other_threads"] += 1
        return best

    def rec_pid_of(self, tid: int) -> int:
        """The recorded process of a recorded thread."""
        return self.rec.pid_of(tid)

    def _look_ahead(self, task: Task, regs: P.UserRegs, spec: SyscallSpec,
                    args: tuple[int, ...]) -> int | None:
        """What-if: the next recorded row of the same call on the same fd / path, if near.

        Only calls that consume recorded input look ahead; outputs and waits never skip
        recorded rows (the data they stand for is still due)."""
        if spec.policy in (Policy.OUTPUT, Policy.WAIT):
            return None
        end = min(len(task.rows), task.pos + LOOKAHEAD)
        for index in range(task.pos + 1, end):
            row = task.rows[index]
            if SPECS[row.nr].policy is Policy.WAIT:
                return None
            if self._matches(task, regs, spec, row, args):
                return index
        return None

    def _unmatched(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row | None,
                   args: tuple[int, ...]) -> None:
        if row is None and self.exact and self.rec.process.exit_code is None:
            self.status = "end_of_recording"  # the recording stops before the process did
            raise StopReplay
        proc = task.process
        info = self.rec.info(proc.rec_pid)
        recorded_end = info.exit_code if info is not None else None
        if (row is None and task.tid == proc.pid and recorded_end is not None
                and recorded_end < 0 and self.exact):
            # The recording ends here because a signal from outside killed the process (a
            # service stopped with SIGTERM): it comes here again, where the recording ends.
            self.stats["recorded_kills"] += 1
            self.notes.append(f"process {proc.rec_pid} was killed by signal {-recorded_end} "
                              f"where its recording ends: the replay sends it there")
            task.finished = True
            self._release_token(task)
            os.kill(task.tid, -recorded_end)
            self._resume(task)
            return
        if self._runtime_probe(task, spec, args):
            return
        if (row is None and task.tid != proc.pid and proc is self.target
                and self.rec.process.exit_code is not None
                and task.rec_tid not in self.rec.exited):
            # The recording of this thread ends here because another thread ended the
            # process (exit_group) while it ran: it stays at this stop until the process
            # ends again, as it did then.
            task.finished = True
            self.stats["threads_parked"] += 1
            self._release_token(task)
            return
        if self.exact:
            self._diverge(task, regs, spec, row, args)
        self._synthesize(task, regs, spec, args)

    def _runtime_probe(self, task: Task, spec: SyscallSpec, args: tuple[int, ...]) -> bool:
        """A read-only open of a kernel setting (/proc/sys, /sys) the recording does not
        have is a runtime's probe whose moment depends on a race between threads, not an
        input of the program: glibc's malloc reads /proc/sys/vm/overcommit_memory once,
        in whichever thread first trims its heap, and which arena a thread gets is decided
        by who got to a lock first. It runs for real in the sandbox (read-only /proc and
        /sys), as do the calls on its descriptor, and the report says so."""
        if spec.nr not in _OPENS_AT or task.proc is None:
            return False
        path_arg, flags_arg = (0, 1) if spec.nr == _OPEN else (1, 2)
        if args[flags_arg] & _WRITE_FLAGS:
            return False
        path = task.process.mem.read_cstring(args[path_arg])
        if not path.startswith(_SETTINGS) or b"/.." in path:
            return False
        self.stats["runtime_probes"] += 1
        self.notes.append(f"thread {task.rec_tid} read {path.decode(errors='replace')}, "
                          "which its recording does not have (a runtime's probe of a kernel "
                          "setting): the sandbox answered it")
        self._run_live(task, spec, "file")
        return True

    def _diverge(self, task: Task, regs: P.UserRegs, spec: SyscallSpec, row: Row | None,
                 args: tuple[int, ...]) -> None:
        reason = self._why(task, spec, row, args)
        if self.first_cut is not None:  # the likely cause: the notes say which and how
            reason += (f" (after a call served with a cut payload: thread {self.first_cut[0]}"
                       f" seq {self.first_cut[1]})")
        self.status = "diverged"
        self.divergence = Divergence(
            reason=reason, tid=task.rec_tid, replay_tid=task.tid,
            seq=row.seq if row else None,
            expected=recorded_call(row) if row else None,
            actual=self._actual_call(task, spec, args, row))
        raise StopReplay

    def _why(self, task: Task, spec: SyscallSpec, row: Row | None,
             args: tuple[int, ...]) -> str:
        if row is None:
            return f"{spec.name} after the end of thread {task.rec_tid}'s recording"
        if row.nr != spec.nr:
            return f"expected {row.name}, got {spec.name}"
        for i in spec.compare:
            if P.to_signed(args[i]) != row.args[i]:
                return (f"{spec.name} argument {i} differs: expected {row.args[i]}, "
                        f"got {P.to_signed(args[i])}")
        for region in spec.ins:
            recorded = row.ins.get(region.arg)
            if recorded is None:
                continue
            actual = (task.process.mem.read_cstring(args[region.arg])
                      if region.size is CSTRING
                      else self._read_in(task, spec, region.arg, args, len(recorded)))
            if region.size.kind == "sockaddr":
                actual, recorded = canonical_sockaddr(actual), canonical_sockaddr(recorded)
            if actual != recorded:
                at = next((i for i, (a, b) in enumerate(zip(actual, recorded)) if a != b),
                          min(len(actual), len(recorded)))
                return f"{spec.name} argument {region.arg} bytes differ at offset {at}"
        return f"{spec.name} does not match"

    def _actual_call(self, task: Task, spec: SyscallSpec, args: tuple[int, ...],
                     row: Row | None) -> CallInfo:
        data: dict[str, str | None] = {}
        for region in spec.ins:
            if not args[region.arg]:
                continue
            if region.size is CSTRING:
                data[str(region.arg)] = preview(
                    task.process.mem.read_cstring(args[region.arg]))
            else:
                length = (args[2] & 0xFFFF_FFFF) if spec.policy is Policy.OUTPUT else 256
                data[str(region.arg)] = preview(self._read_in(task, spec, region.arg, args,
                                                              min(length, 4096)))
        return CallInfo(spec.name, spec.nr, [P.to_signed(a) for a in args], None, data)

    def _on_syscall_exit(self, task: Task) -> None:
        regs = P.get_regs(task.tid, task.regs)
        rewind, task.rewind = task.rewind, None
        if rewind is not None and task.proc is not None and P.to_signed(regs.rax) in RESTARTS:
            self._undo(task, rewind)
        handler, task.at_exit = task.at_exit, None
        if handler is not None and task.proc is not None:
            handler(task, regs)
        row, task.mark_at_exit = task.mark_at_exit, None
        if row is not None:
            self._mark(row)
        if task.fd_wait is None:
            self._resume(task)

    # -- the report ----------
    def _report(self, wall: float) -> ReplayReport:
        proc = self.rec.process
        root = proc.pid
        replayed = {fd: bytes(data) for (pid, fd), data in self.replayed.items() if pid == root}
        written = {fd: n for (pid, fd), n in self.output_bytes.items() if pid == root}
        recorded, gaps = self.rec.output_streams()
        if self.status != "completed":  # compare only what the replay got to
            recorded = {fd: data[:written.get(fd, 0)] for fd, data in recorded.items()}
        for fd, ranges in sorted(gaps.items()):
            self.notes.append(
                f"fd {fd}: {sum(e - s for s, e in ranges)} bytes the program wrote were cut "
                f"by the recorder (--payload-cap); the replay's bytes there are not compared")
        cut = sorted(fd for (_pid, fd), n in self.output_bytes.items()
                     if n > len(self.replayed.get((_pid, fd), b"")))
        if cut:
            limits = self.opts.limits
            self.notes.append(
                f"output over the cap ({limits.output_per_fd >> 20} MiB per descriptor, "
                f"{limits.output_total >> 20} MiB in all) on fd {', '.join(map(str, cut))}: "
                f"the bytes past it were counted, not kept or compared")
        if self.stats["truncated"] > 3:
            self.notes.append(f"{self.stats['truncated']} served calls in all had less than "
                              f"they read (the first ones above)")
        if self.peer_bytes:
            self.notes.append(
                f"{self.peer_bytes} bytes the program did not read in the recording were "
                f"served from what its peers sent (their recorded sends), at the times they "
                f"sent them")
        if self.stats["outputs_differ"] and self.stats["clock_reads"] and not self.stats[
                "truncated"]:
            self.notes.append(
                f"{self.stats['outputs_differ']} outputs had other bytes than recorded; clock "
                f"reads through the vDSO are invisible to the recorder and are interpolated "
                f"from the surrounding syscalls here, so times a program prints may differ")
        stops = max(1, self.stats["stops"])
        stats: dict[str, float] = {k: float(v) for k, v in self.stats.items()}
        stats["wall_s"] = round(wall, 4)
        stats["us_per_stop"] = round(wall / stops * 1e6, 2)
        main = next((t for t in self.tasks.values()
                     if t.proc is not None and t.tid == t.proc.pid), None)
        stats["virtual_shift_ms"] = round((main.shift_ns if main else self._last_shift) / 1e6, 3)
        # the tracer's own peak memory (its process's, so far): outputs past the caps are
        # counted, never held, so this stays flat however much the program writes
        stats["tracer_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                           / 1024, 1)
        self._stderr_tail()
        return ReplayReport(
            status=self.status,
            mode=self.mode,
            process={"pid": proc.pid, "node": proc.node, "exe": self.opts.exe or proc.exe,
                     "argv": self.opts.argv if self.opts.argv is not None else proc.argv},
            exit_code=self.exit_code, exit_signal=self.exit_signal,
            recorded_exit_code=proc.exit_code, divergence=self.divergence,
            outputs=compare_outputs(recorded, replayed, written, gaps),
            children=self._children_report(),
            injections={i.text: self.injected.get(i.text, 0) for i in self.opts.injections},
            stats=stats, notes=self.notes, replayed_outputs=replayed,
            sandbox=self.sandbox_info)


    def _children_report(self) -> list[ChildReport]:
        """Each process of the tree besides the root: how it ended, what it wrote."""
        out = []
        for pid, info in sorted(self.rec.children.items()):
            written = {fd: n for (p, fd), n in self.output_bytes.items() if p == pid}
            replayed = {fd: bytes(d) for (p, fd), d in self.replayed.items() if p == pid}
            recorded, gaps = self.rec.output_streams(pid)
            code, sig = self.child_exits.get(pid, (None, None))
            if self.status != "completed":
                recorded = {fd: d[:written.get(fd, 0)] for fd, d in recorded.items()}
            out.append(ChildReport(pid, info.exe, list(info.argv), code, sig, info.exit_code,
                                   pid in self.child_exits,
                                   compare_outputs(recorded, replayed, written, gaps),
                                   replayed))
        return out


def _recorded_rlimits(context: ProcessContext | None) -> dict[int, tuple[int, int]]:
    """resource -> (soft, hard) as ``resource`` takes them (RLIM_INFINITY: -1)."""
    if context is None:
        return {}
    out = {}
    for number, name in enumerate(RLIMIT_NAMES):
        soft, hard = context.rlimits.get(name, (RLIM_INFINITY, RLIM_INFINITY))
        out[number] = (-1 if soft == RLIM_INFINITY else soft,
                       -1 if hard == RLIM_INFINITY else hard)
    return out


def replay(recording: Recording, options: ReplayOptions | None = None) -> ReplayReport:
    """Replay ``recording`` and return the report (see ``Engine``)."""
    if not recording.threads:
        raise RecordingError("the recording has no syscalls to replay")
    return Engine(recording, options).run()
