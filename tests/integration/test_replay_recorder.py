"""A reference recorder for the replay tests, and tests of what it produces.

NOT the product's recorder: the recorder of record is the eBPF capture agent
(``kprobe run --payloads``), which writes the same ``syscalls`` / ``syscall_data`` /
``processes`` rows into the lake. This one exists so the replay engine can be tested
before (and independently of) the agent. It runs a program under ptrace, stopping at
every syscall entry and exit (slow, and it does not matter here), and at each exit copies
the bytes the syscall wrote into, or read from, user memory as ``syscall_table`` says.
Like the replay, it patches the vDSO so clock reads are syscalls and get recorded; an
eBPF recording cannot see vDSO reads (the replay synthesizes those).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from kprobe.lake.schema import TABLES
from kprobe.replay_sandbox import ptrace_ffi as P
from kprobe.replay_sandbox import vdso
from kprobe.replay_sandbox.recording import ProcessInfo, Recording
from kprobe.replay_sandbox.syscall_table import SPECS, capture, fd_of, name_of
from tests.support import require_root

_CAP = 1 << 24  # bytes kept per argument (the agent caps lower; see truncated)
_OPTIONS = (P.PTRACE_O_TRACESYSGOOD | P.PTRACE_O_TRACECLONE | P.PTRACE_O_TRACEFORK
            | P.PTRACE_O_TRACEVFORK | P.PTRACE_O_TRACEEXEC | P.PTRACE_O_EXITKILL)


@dataclass
class RecordedRun:
    process: ProcessInfo
    syscalls: pa.Table
    syscall_data: pa.Table
    processes: pa.Table
    stdout: bytes
    exit_code: int | None
    vdso_patched: bool = False
    notes: list[str] = field(default_factory=list)

    def recording(self) -> Recording:
        return Recording.from_tables(self.process, self.syscalls, self.syscall_data)


_ENDS = frozenset({60, 231})  # exit, exit_group


@dataclass
class _Entry:
    ts_ns: int
    nr: int
    args: tuple[int, ...]


def record(argv: list[str], *, cwd: str | None = None, env: list[str] | None = None,
           exe: str | None = None, stdin_path: str = "/dev/null", patch_vdso: bool = True,
           timeout_s: float = 60.0, pin: bool = True) -> RecordedRun:
    """Run ``argv`` under the reference recorder; return the rows in the lake schema.

    ``pin`` puts tracer and program on one CPU: the program's threads then do not run
    while the tracer stamps a stop, so the timestamps order the threads' syscalls as
    they happened (a ptrace recorder on several CPUs stamps late and out of order).
    """
    exe = exe or argv[0]
    cwd = cwd or os.getcwd()
    env = env if env is not None else [f"{k}={v}" for k, v in os.environ.items()]
    # stdout is a pipe, as for most services (cat copies file to file with copy_file_range,
    # whose bytes never pass through user memory)
    read_end, write_end = os.pipe()
    old_affinity = os.sched_getaffinity(0)
    if pin:
        os.sched_setaffinity(0, {max(old_affinity)})
    pid = os.fork()
    if pid == 0:
        try:
            stdin = os.open(stdin_path, os.O_RDONLY)
            os.dup2(stdin, 0)
            os.dup2(write_end, 1)
            os.close(read_end)
            os.chdir(cwd)
            P.traceme()
            os.kill(os.getpid(), signal.SIGSTOP)
            os.execve(exe, argv, dict(e.split("=", 1) for e in env))
        finally:
            os._exit(127)
    os.close(write_end)
    chunks: list[bytes] = []
    drain = threading.Thread(target=_drain, args=(read_end, chunks), daemon=True)
    drain.start()
    try:
        run = _trace(pid, argv, cwd, env, patch_vdso, timeout_s)
    finally:
        os.sched_setaffinity(0, old_affinity)
        drain.join(timeout=10)
    run.stdout = b"".join(chunks)
    return run


def _drain(fd: int, chunks: list[bytes]) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)


def _trace(pid: int, argv: list[str], cwd: str, env: list[str], patch_vdso: bool,
           timeout_s: float) -> RecordedRun:
    _, status = os.waitpid(pid, P.WALL)
    assert os.WIFSTOPPED(status), status
    P.set_options(pid, _OPTIONS)
    P.resume(pid, 0, P.PTRACE_SYSCALL)
    regs = P.UserRegs()
    entries: dict[int, _Entry | None] = {}
    seqs: dict[int, int] = defaultdict(int)
    rows: list[dict[str, object]] = []
    data_rows: list[dict[str, object]] = []
    mem: P.TraceeMemory | None = None
    started = False
    exec_ns = 0
    exe_path = ""
    comm = ""
    exit_code: int | None = None
    patched = False
    new_tasks: set[int] = set()
    live = {pid}
    deadline = time.monotonic() + timeout_s
    while live:
        if time.monotonic() > deadline:
            for tid in live:
                P.kill_quietly(tid)
            raise TimeoutError(f"recording {argv} took over {timeout_s} s")
        try:
            tid, status = os.waitpid(-1, P.WALL)
        except ChildProcessError:
            break
        stop = P.Stop(tid, status)
        if stop.exited or stop.killed:
            live.discard(tid)
            if tid == pid:
                exit_code = stop.exit_code if stop.exited else -stop.term_sig
            continue
        live.add(tid)
        sig, event = stop.sig, stop.event
        deliver = 0
        if sig == P.SYSCALL_STOP_SIG:
            P.get_regs(tid, regs)
            entry = entries.get(tid)
            if entry is None and regs.orig_rax in _ENDS and started and mem is not None:
                # exit and exit_group never return: recorded at entry, as the agent does
                _row(rows, data_rows, pid, tid, seqs,
                     _Entry(time.time_ns(), regs.orig_rax, regs.syscall_args()), None, mem,
                     comm)
            elif entry is None:
                entries[tid] = _Entry(time.time_ns(), regs.orig_rax, regs.syscall_args())
            else:
                entries[tid] = None
                if started and mem is not None:
                    _row(rows, data_rows, pid, tid, seqs, entry, P.to_signed(regs.rax), mem,
                         comm)
        elif sig == signal.SIGTRAP and event == P.EVENT_EXEC:
            if mem is not None:
                mem.close()
            mem = P.TraceeMemory(tid)
            if not started:
                started = True
                exec_ns = time.time_ns()
                exe_path = os.readlink(f"/proc/{tid}/exe")
                with open(f"/proc/{tid}/comm", encoding="utf-8") as f:
                    comm = f.read().strip()
            if patch_vdso:
                patched = vdso.patch(tid, mem) is not None
            # the execve's exit stop comes next; the call belonged to the old image
            entries[tid] = _Entry(-1, 59, (0,) * 6)
        elif sig == signal.SIGTRAP and event in (P.EVENT_CLONE, P.EVENT_FORK, P.EVENT_VFORK):
            new_tasks.add(P.event_msg(tid))
        elif sig == signal.SIGSTOP and (tid in new_tasks or tid not in entries):
            new_tasks.discard(tid)
        elif sig == signal.SIGTRAP and event:
            pass
        else:
            deliver = sig
        try:
            P.resume(tid, deliver, P.PTRACE_SYSCALL)
        except P.TracerError:
            pass
    if mem is not None:
        mem.close()
    process = ProcessInfo(pid=pid, node=socket.gethostname(), exe=exe_path, argv=list(argv),
                          env=list(env), cwd=cwd, start_ns=exec_ns, comm=comm,
                          exit_code=exit_code)
    return RecordedRun(
        process=process,
        syscalls=pa.Table.from_pylist(rows, schema=TABLES["syscalls"].payload_schema),
        syscall_data=pa.Table.from_pylist(data_rows,
                                          schema=TABLES["syscall_data"].payload_schema),
        processes=_processes_table(process, exit_code),
        stdout=b"", exit_code=exit_code, vdso_patched=patched)


def _row(rows: list[dict[str, object]], data_rows: list[dict[str, object]], pid: int,
         tid: int, seqs: dict[int, int], entry: _Entry, ret: int | None, mem: P.TraceeMemory,
         comm: str) -> None:
    if entry.ts_ns <= 0:  # the execve that started the program
        return
    seqs[tid] += 1
    seq = seqs[tid]
    args = tuple(P.to_signed(a) for a in entry.args)
    rows.append({"ts_ns": entry.ts_ns, "dur_ns": time.time_ns() - entry.ts_ns, "pid": pid,
                 "tid": tid, "cpu": None, "comm": comm, "nr": entry.nr,
                 "name": name_of(entry.nr), "ret": ret, "fd": fd_of(entry.nr, args),
                 "args": list(args), "seq": seq})
    spec = SPECS.get(entry.nr)
    if spec is None or ret is None:
        return
    raw = tuple(a & 0xFFFF_FFFF_FFFF_FFFF for a in entry.args)
    captured = []
    try:
        if ret >= 0 or ret < -4095:
            captured += capture(spec.outs, entry.nr, raw, ret, mem, _CAP)
        captured += capture(spec.ins, entry.nr, raw, ret, mem, _CAP)
    except P.TracerError:
        return
    for arg_index, offset, data, total in captured:
        data_rows.append({"ts_ns": entry.ts_ns, "pid": pid, "tid": tid, "seq": seq,
                          "nr": entry.nr, "arg_index": arg_index, "offset": offset,
                          "data": data, "total_len": total, "truncated": len(data) < total})


def _processes_table(process: ProcessInfo, exit_code: int | None) -> pa.Table:
    base = {"pid": process.pid, "tid": process.pid, "ppid": os.getpid(), "comm": process.comm,
            "exe": process.exe, "argv": process.argv, "env": process.env, "cwd": process.cwd}
    rows = [{"ts_ns": process.start_ns, "kind": "exec", **base}]
    if exit_code is not None:
        rows.append({"ts_ns": time.time_ns(), "kind": "exit", **base, "exit_code": exit_code})
    return pa.Table.from_pylist(rows, schema=TABLES["processes"].payload_schema)


# -- tests of the recorder itself -----------------------------------------------------------------
def test_recorder_writes_the_lake_schema(tmp_path: Path) -> None:
    require_root()
    # GIVEN a file and a program that reads it
    target = tmp_path / "in.txt"
    target.write_bytes(b"hello lake\n")
    # WHEN cat is recorded
    run = record(["/bin/cat", str(target)], cwd=str(tmp_path))
    # THEN the tables have exactly the lake schemas, seq starts at 1 per thread,
    # and the read's bytes are in syscall_data under the buffer argument
    assert run.syscalls.schema == TABLES["syscalls"].payload_schema
    assert run.syscall_data.schema == TABLES["syscall_data"].payload_schema
    assert run.processes.schema == TABLES["processes"].payload_schema
    assert run.stdout == b"hello lake\n" and run.exit_code == 0
    seqs = run.syscalls.column("seq").to_pylist()
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1))
    reads = [r for r in run.syscall_data.to_pylist() if r["nr"] == 0 and r["arg_index"] == 1]
    assert any(r["data"] == b"hello lake\n" for r in reads)
    writes = [r for r in run.syscall_data.to_pylist() if r["nr"] == 1]
    assert [w["data"] for w in writes] == [b"hello lake\n"]


def test_recorder_sees_vdso_clock_reads_as_syscalls(tmp_path: Path) -> None:
    require_root()
    # GIVEN the vDSO patch, WHEN python reads the clock, THEN clock_gettime rows appear
    run = record(["/usr/bin/python3", "-S", "-c", "import time; time.time(); time.time()"],
                 cwd=str(tmp_path))
    assert run.vdso_patched
    names = run.syscalls.column("name").to_pylist()
    assert names.count("clock_gettime") >= 2
