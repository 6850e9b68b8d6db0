"""Targets' vDSO clock reads made syscalls (``--vdso-patch``, capture_agent/vdso_patch.py).

Root only. The rewrite happens in live processes, so the first test is the attack on it:
processes whose threads do nothing but read clocks through the vDSO are rewritten while
they run, and none may crash or see time go backwards. The second proves what the rewrite
is for, as the uprobe test next door does for uprobes: a target's clock reads reach the
syscall path with the very values the program got, a forked child inherits the rewritten
vDSO, and a process that is no target is left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from kprobe.capture_agent import vdso_patch
from kprobe.capture_agent.families import syscalls
from kprobe.capture_agent.process_probes import VdsoPatcher
from kprobe.capture_agent.sensor import Sensor, object_path
from tests.integration.agent_replay import pid_of, quoted, record, replay, stdout_of, summary
from tests.integration.test_agent_process_probes import (
    FORKER,
    clock_read_recorded,
    drain_syscalls,
    wait_for,
)
from tests.support import require, require_root


def _entry_bytes(pid: int) -> set[bytes]:
    """The first bytes of each clock entry point of ``pid``'s vDSO."""
    mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return {os.pread(mem, vdso_patch.STUB_LEN, a)
                for a in vdso_patch._entries(pid, mem)}  # noqa: SLF001 (the test reads them)
    finally:
        os.close(mem)


def test_rewriting_the_vdso_of_running_clock_readers_crashes_none(programs: Path) -> None:
    """GIVEN processes whose 4 threads spend their time inside vDSO clock reads
    WHEN each one's vDSO is rewritten while they run (20 processes)
    THEN every process runs on and exits cleanly, no thread saw its monotonic clock go
    back, and each one's entry points are syscall stubs afterwards."""
    require_root()
    stubs = {vdso_patch.stub(nr) for nr in vdso_patch.VDSO_SYSCALLS.values()}
    for _ in range(20):
        proc = subprocess.Popen([str(programs / "clock_hammer"), "4"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdin and proc.stdout
        try:
            pid = int(proc.stdout.readline().split()[1])
            assert not _entry_bytes(pid) & stubs  # the control: untouched before
            deadline = time.monotonic() + 10
            while not (result := vdso_patch.patch(pid)).patched:
                assert time.monotonic() < deadline, "a thread stood in an entry point for 10 s"
            assert result.entries >= 3 and result.threads == 5
            assert _entry_bytes(pid) <= stubs
            time.sleep(0.05)  # the threads now make syscalls for a while
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            out = proc.stdout.read()
            assert proc.wait(10) == 0, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "backwards 0" in out, out


def test_a_target_s_clock_reads_become_recorded_syscalls_with_their_values() -> None:
    """GIVEN a payload sensor whose targets get their vDSO rewritten, a target and a
    bystander
    WHEN the target forks and the child reads the realtime clock through libc
    THEN the child inherited the rewrite (nothing left to rewrite), its read is a
    clock_gettime syscall made from its vDSO (a ``vdso:clock_gettime`` row, as a replay
    wants it) holding the exact value it printed, and the bystander's vDSO is untouched
    and it has no rows."""
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True, vdso_clocks=False)
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE)
    forker = subprocess.Popen([sys.executable, "-c", FORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert forker.stdin and forker.stdout
    stubs = {vdso_patch.stub(nr) for nr in vdso_patch.VDSO_SYSCALLS.values()}

    def say(line: str) -> None:
        assert forker.stdin
        forker.stdin.write(line + "\n")
        forker.stdin.flush()

    try:
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            assert not [n for n in sensor.attached if n.startswith("on_clock")]  # no uprobes
            parent = int(forker.stdout.readline())
            sensor.add_targets([parent])
            patcher = VdsoPatcher(sensor, interval_s=0.05).start()
            try:
                assert set(patcher.patched) == {parent}
                say("fork")
                child = int(forker.stdout.readline())
                assert _entry_bytes(child) <= stubs  # inherited at fork
                assert wait_for(lambda: child in patcher.patched), patcher.patched
                say("go")
                value = int(forker.stdout.readline())
                say("exit")
                assert wait_for(lambda: child not in patcher.patched)
                assert not _entry_bytes(bystander.pid) & stubs
                assert patcher.failed == 0
            finally:
                patcher.stop()
            rows, regions = drain_syscalls(sensor)
    finally:
        say("done")
        forker.wait(10)
        bystander.kill()
        bystander.wait()
    assert clock_read_recorded(rows, regions, child, value)
    assert rows.filter(pc.equal(rows["pid"], bystander.pid)).num_rows == 0


def test_only_clock_syscalls_made_by_the_vdso_are_marked_as_vdso_reads(programs: Path) -> None:
    """GIVEN two targets with their vDSO rewritten: one reads the clock through libc (the
    vDSO, now a syscall from it), the other calls the clock_gettime syscall directly
    THEN the first one's reads are ``vdso:clock_gettime`` rows, the second one's plain
    ``clock_gettime`` rows (the mark comes from where the syscall was made). Both time
    their loop through libc with CLOCK_MONOTONIC; the reads compared are the loop's
    CLOCK_REALTIME ones."""
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True, vdso_clocks=False)
    procs = {mode: subprocess.Popen([str(programs / "null_syscalls"), mode, "5", "1"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for mode in ("clock", "clocksys")}
    try:
        pids = {mode: int(p.stdout.readline().split()[1])  # type: ignore[union-attr]
                for mode, p in procs.items()}
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            sensor.add_targets(list(pids.values()))
            for pid in pids.values():
                assert vdso_patch.patch(pid).patched
            for p in procs.values():
                p.communicate("go\n", timeout=10)
            rows, _ = drain_syscalls(sensor)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def names(pid: int) -> list[str]:  # of its CLOCK_REALTIME reads
        mine = rows.filter(pc.equal(rows["pid"], pid)).to_pylist()
        return [r["name"] for r in mine
                if r["name"].endswith("clock_gettime") and r["args"][0] == 0]

    assert names(pids["clock"]).count("vdso:clock_gettime") >= 5
    assert "clock_gettime" not in names(pids["clock"])
    assert names(pids["clocksys"]).count("clock_gettime") >= 5
    assert "vdso:clock_gettime" not in names(pids["clocksys"])


# reads every clock libc answers through the vDSO and prints them: clock_gettime (which the
# libc uprobes record too) and gettimeofday and time (which glibc binds to the vDSO
# directly: no libc code runs, so only a rewritten vDSO makes them recorded calls)
CLOCKS = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
tv = (ctypes.c_long * 2)()
for _ in range(3):
    libc.gettimeofday(tv, None)
    print(time.time_ns(), tv[0], tv[1], libc.time(None), flush=True)
"""


@pytest.mark.parametrize("rewrite", [False, True], ids=["uprobes", "vdso-patch"])
def test_with_the_vdso_rewritten_every_clock_a_program_printed_replays_exactly(
        tmp_path: Path, rewrite: bool) -> None:
    """GIVEN a program that prints what clock_gettime, gettimeofday and time returned,
    recorded by `kprobe run --payloads` with its vDSO rewritten (``--vdso-patch``), and,
    the control, with the default libc uprobes
    WHEN each recording is replayed
    THEN with the rewrite every clock read is served from the recording (none
    synthesized) and the replay prints exactly what the program printed; with uprobes the
    gettimeofday and time reads were never recorded, the replay synthesizes them and its
    output differs."""
    require_root()
    recorded = record(tmp_path, sys.executable, "-c", CLOCKS,
                      options=("--vdso-patch",) if rewrite else ())
    assert recorded.run.returncode == 0, recorded.run.stderr[-2000:]
    assert len(recorded.stdout.splitlines()) == 3
    code, report = replay(recorded.lake, pid_of(recorded.lake, "-c"))
    assert report["status"] == "completed" and report["divergence"] is None, summary(report)
    synthesized = report["stats"].get("synthesized", 0)
    if rewrite:
        assert code == 0 and report["outputs_match"], summary(report)
        assert synthesized == 0, summary(report)
        assert stdout_of(report) == quoted(recorded.stdout), summary(report)
        assert report["stats"]["clock_reads"] >= 9
    else:  # exit 1: the outputs differ
        assert code == 1 and not report["outputs_match"], summary(report)
        assert synthesized >= 6, summary(report)  # 3 gettimeofday + 3 time


def test_a_target_another_tool_traces_gets_the_libc_uprobes_instead(tmp_path: Path) -> None:
    """GIVEN a target already traced by strace (ptrace refuses a second tracer), and one
    that is not
    WHEN the patcher follows them
    THEN the untraced one is rewritten; the traced one is left as it is and gets the libc
    clock uprobes, which record its clock read with the value it printed."""
    require_root()
    require(shutil.which("strace") is not None, "strace (apt install strace)")
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True)  # uprobes loaded, not attached
    reader = ("import sys, time\nprint(flush=True)\nsys.stdin.readline()\n"
              "print(time.clock_gettime_ns(time.CLOCK_REALTIME), flush=True)\n"
              "sys.stdin.readline()\n")
    procs = [subprocess.Popen([sys.executable, "-c", reader], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    traced, free = procs
    for p in procs:
        p.stdout.readline()  # type: ignore[union-attr]
    strace = subprocess.Popen(["strace", "-qq", "-o", str(tmp_path / "strace.out"), "-p",
                               str(traced.pid)])
    try:
        assert wait_for(lambda: _tracer(traced.pid) == strace.pid), "strace did not attach"
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            sensor.add_targets([traced.pid, free.pid])
            patcher = VdsoPatcher(sensor, syscalls.uprobe_places_for, interval_s=0.05).start()
            try:
                assert set(patcher.patched) == {free.pid}
                assert sensor.uprobe_pids == [traced.pid]
                assert not _entry_bytes(traced.pid) & {vdso_patch.stub(nr) for nr in
                                                       vdso_patch.VDSO_SYSCALLS.values()}
                assert patcher.failed == 0
                traced.stdin.write("go\n")  # type: ignore[union-attr]
                traced.stdin.flush()  # type: ignore[union-attr]
                value = int(traced.stdout.readline())  # type: ignore[union-attr]
            finally:
                patcher.stop()
            rows, regions = drain_syscalls(sensor)
    finally:
        strace.terminate()
        strace.wait(10)
        for p in procs:
            p.kill()
            p.wait()
    assert clock_read_recorded(rows, regions, traced.pid, value)


def _tracer(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


# re-executes itself once (same pid, a fresh vDSO), then reads the realtime clock
EXECS_ITSELF = """
import os, sys, time
if sys.argv[1:] != ["again"]:
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    os.execv(sys.executable, [sys.executable, __file__, "again"])
print(flush=True)
sys.stdin.readline()
print(time.clock_gettime_ns(time.CLOCK_REALTIME), flush=True)
sys.stdin.readline()
"""


def test_a_rewritten_target_that_execs_is_rewritten_again(tmp_path: Path) -> None:
    """GIVEN a rewritten target
    WHEN it execs (same pid: its new image maps a fresh vDSO)
    THEN the patcher's next poll rewrites the new vDSO, and the new image's clock read is
    recorded with the value it printed."""
    require_root()
    path = object_path(syscalls.FAMILY.object_file)
    require(path.exists(), f"{path} (run `make bpf`)")
    config = syscalls.SyscallsConfig(capture_payloads=True)
    script = tmp_path / "execs_itself.py"
    script.write_text(EXECS_ITSELF)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdin and proc.stdout

    def say(line: str) -> None:
        assert proc.stdin
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    try:
        pid = int(proc.stdout.readline())
        with Sensor(syscalls.sensor_spec(config)) as sensor:
            sensor.add_targets([pid])
            patcher = VdsoPatcher(sensor, syscalls.uprobe_places_for, interval_s=0.05).start()
            try:
                first = patcher.patched[pid]
                say("exec")
                proc.stdout.readline()  # the new image runs
                assert wait_for(lambda: patcher.patched.get(pid, first) != first), \
                    "the new vDSO was not rewritten"
                assert patcher.rewritten == 2 and not sensor.uprobe_pids
                say("go")
                value = int(proc.stdout.readline())
            finally:
                patcher.stop()
            rows, regions = drain_syscalls(sensor)
    finally:
        say("done")
        proc.wait(10)
    assert clock_read_recorded(rows, regions, pid, value)


# handles a signal it sends itself; stops itself and is continued by a child; dies by SIGTERM
SIGNALS = """
import os, signal, subprocess
signal.signal(signal.SIGUSR1, lambda *_: print("usr1", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -CONT {os.getpid()}"])
os.kill(os.getpid(), signal.SIGSTOP)
print("continued", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
"""


@pytest.mark.parametrize("rewrite", [False, True], ids=["uprobes", "vdso-patch"])
def test_kprobe_run_passes_signals_stops_and_the_exit_status_through(
        tmp_path: Path, rewrite: bool) -> None:
    """GIVEN `kprobe run --payloads` (with ``--vdso-patch`` its command is traced for its
    execs: every signal to it passes through the agent's tracer)
    WHEN the command handles a signal, is stopped and continued, and dies by SIGTERM
    THEN it behaves as without the tracer: it handled the signal, ran on after SIGCONT,
    and `kprobe run` exits 143 (128 + SIGTERM)."""
    require_root()
    recorded = record(tmp_path, sys.executable, "-c", SIGNALS,
                      options=("--vdso-patch",) if rewrite else ())
    assert recorded.stdout.decode() == "usr1\ncontinued\n", recorded.run.stderr[-2000:]
    assert recorded.run.returncode == 143, recorded.run.stderr[-2000:]
