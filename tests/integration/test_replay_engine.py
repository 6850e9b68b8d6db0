"""The replay engine on real programs, recorded by the reference recorder (root needed)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.injection import parse_all
from kprobe.replay_sandbox.recording import Recording
from tests.integration.test_replay_recorder import RecordedRun, record
from tests.support import REPO, require, require_binary, require_root

PROGRAMS = REPO / "tests" / "programs"
PYTHON = "/usr/bin/python3"
ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C test programs, compiled once for the module."""
    require_root()
    require_binary("bwrap")
    gcc = require_binary("gcc")
    out = tmp_path_factory.mktemp("programs")
    for source, flags in (("replay_loop.c", []), ("replay_threads.c", ["-pthread"]),
                          ("replay_rdtsc.c", []), ("replay_thread_probe.c", ["-pthread"])):
        subprocess.run([gcc, "-O2", *flags, "-o", str(out / source[:-2]),
                        str(PROGRAMS / source)], check=True)
    return out


def _python_available() -> None:
    require_root()
    require_binary("bwrap")
    require(Path(PYTHON).exists(), f"{PYTHON} (the Python the recorded programs run)")


def _replay_matches(run: RecordedRun, **options: object) -> None:
    report = replay(run.recording(), ReplayOptions(**options))  # type: ignore[arg-type]
    assert report.status == "completed", report.render_text()
    assert report.outputs_match, report.render_text()
    assert report.replayed_outputs.get(1, b"") == run.stdout
    assert report.exit_code == run.exit_code


def test_python_time_random_and_urandom_replay_identically(tmp_path: Path) -> None:
    _python_available()
    # GIVEN a program whose output depends on the clock, its PRNG seed and getrandom
    code = ("import time, random, os, datetime; print(time.time(), random.random(), "
            "os.urandom(8).hex(), datetime.datetime.now())")
    run = record([PYTHON, "-c", code], cwd=str(tmp_path), env=ENV)
    assert run.exit_code == 0 and run.stdout
    # WHEN it is replayed (twice: later runs must not see different time or entropy)
    # THEN it prints exactly what it printed when recorded
    _replay_matches(run)
    _replay_matches(run)


def test_cat_replays_a_file_deleted_since(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    # GIVEN cat recorded reading a file
    target = tmp_path / "orders.csv"
    target.write_text("id,amount\n1,100\n2,250\n")
    run = record(["/bin/cat", str(target)], cwd=str(tmp_path), env=ENV)
    assert run.stdout == b"id,amount\n1,100\n2,250\n"
    # WHEN the file is gone and cat is replayed
    target.unlink()
    # THEN the bytes come from the recording and the output is identical
    _replay_matches(run)


def test_a_different_argv_diverges_with_a_precise_report(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    # GIVEN cat recorded reading one file
    (tmp_path / "a.txt").write_text("AAA\n")
    (tmp_path / "other.txt").write_text("BBBB\n")
    run = record(["/bin/cat", str(tmp_path / "a.txt")], cwd=str(tmp_path), env=ENV)
    rec = run.recording()
    # WHEN it is replayed in exact mode with another file on the command line
    report = replay(rec, ReplayOptions(mode="exact",
                                       argv=["/bin/cat", str(tmp_path / "other.txt")]))
    # THEN the replay stops at the openat, naming thread, sequence number and both paths
    assert report.status == "diverged"
    div = report.divergence
    assert div is not None
    assert div.tid == run.process.pid and div.seq is not None
    assert div.expected is not None and div.actual is not None
    assert div.expected.name == div.actual.name == "openat"
    assert "a.txt" in (div.expected.data["1"] or "")
    assert "other.txt" in (div.actual.data["1"] or "")
    assert "argument 1" in div.reason
    opened = [r for r in rec.threads[rec.main_tid] if r.seq == div.seq]
    assert opened and opened[0].name == "openat"
    # AND in what-if mode the new file is read for real and the output difference reported
    report = replay(rec, ReplayOptions(argv=["/bin/cat", str(tmp_path / "other.txt")]))
    assert report.status == "completed", report.render_text()
    assert report.replayed_outputs.get(1) == b"BBBB\n"
    assert not report.outputs_match


def test_whatif_cannot_see_host_tmp(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    # GIVEN a recording, and a host file under /tmp the replay was not given
    (tmp_path / "a.txt").write_text("AAA\n")
    hidden = tmp_path / "hidden.txt"
    hidden.write_text("secret\n")
    run = record(["/bin/cat", str(tmp_path / "a.txt")], cwd=str(tmp_path), env=ENV)
    # WHEN a what-if environment makes cat open it (the private /tmp hides it)
    report = replay(run.recording(), ReplayOptions(
        exe="/bin/sh", argv=["/bin/sh", "-c", f"cat {hidden}"]))
    # THEN cat fails inside the sandbox
    assert b"secret" not in report.replayed_outputs.get(1, b"")


def test_vdso_patch_makes_clock_reads_trap(built: Path, tmp_path: Path) -> None:
    # GIVEN a loop of clock_gettime calls, which normally never enter the kernel
    run = record([str(built / "replay_loop"), "500", "clock"], cwd=str(tmp_path), env=ENV)
    assert run.vdso_patched
    assert run.syscalls.column("name").to_pylist().count("clock_gettime") >= 500
    # WHEN replayed THEN each read stopped the tracee and was served from the recording
    report = replay(run.recording())
    assert report.status == "completed", report.render_text()
    assert report.stats["clock_reads"] >= 500
    assert report.stats["stops"] >= 500
    assert report.outputs_match


def test_clock_reads_missing_from_the_recording_are_synthesized(built: Path,
                                                                tmp_path: Path) -> None:
    # GIVEN a recording made without the vDSO patch (like an eBPF one: no clock rows)
    run = record([str(built / "replay_loop"), "50", "clock"], cwd=str(tmp_path), env=ENV,
                 patch_vdso=False)
    assert "clock_gettime" not in run.syscalls.column("name").to_pylist()
    # WHEN replayed (what-if: the program prints a sum of clock bits, which now differs)
    report = replay(run.recording(), ReplayOptions(mode="whatif"))
    # THEN the reads trap and come from the virtual clock
    assert report.status == "completed", report.render_text()
    assert report.stats["synthesized"] >= 50
    assert report.replayed_outputs[1].startswith(b"clock x 50: ")


def test_rdtsc_traps_and_is_deterministic(built: Path, tmp_path: Path) -> None:
    # GIVEN a program reading the TSC
    run = record([str(built / "replay_rdtsc")], cwd=str(tmp_path), env=ENV)
    # WHEN replayed twice (what-if: the virtual TSC differs from the recorded one)
    first = replay(run.recording(), ReplayOptions(mode="whatif"))
    second = replay(run.recording(), ReplayOptions(mode="whatif"))
    # THEN rdtsc trapped, advanced, and gave the same values both times
    assert first.stats["rdtsc"] >= 2
    assert first.replayed_outputs[1].startswith(b"rdtsc advances\n")
    assert first.replayed_outputs[1] == second.replayed_outputs[1]


def test_threads_replay_in_the_recorded_order(built: Path, tmp_path: Path) -> None:
    # GIVEN two threads interleaving clock reads, file reads and writes under a mutex,
    # recorded a few times (each recording has its own interleaving)
    for _ in range(3):
        run = record([str(built / "replay_threads")], cwd=str(tmp_path), env=ENV)
        assert len(run.recording().threads) == 3
        # WHEN replayed several times THEN every replay prints the recorded interleaving
        # (descriptor numbers, lock order and clock values included)
        for _ in range(3):
            _replay_matches(run)


def test_end_of_recording_stops_the_replay(built: Path, tmp_path: Path) -> None:
    # GIVEN a recording cut before the process ended (no exit recorded)
    run = record([str(built / "replay_loop"), "100", "getppid"], cwd=str(tmp_path), env=ENV)
    rec = run.recording()
    rows = rec.threads[rec.main_tid]
    rec.threads[rec.main_tid] = rows[: len(rows) // 2]
    object.__setattr__(rec.process, "exit_code", None)
    # WHEN replayed THEN it stops where the recording stops
    report = replay(rec)
    assert report.status == "end_of_recording", report.render_text()


def _without(run: RecordedRun, tid: int, seqs: set[int]) -> Recording:
    """The recording as if thread ``tid`` had not made the calls ``seqs``."""
    def keep(table: pa.Table) -> pa.Array:
        return pc.invert(pc.and_(pc.equal(table.column("tid"), tid),
                                 pc.is_in(table.column("seq"), pa.array(sorted(seqs)))))
    return Recording.from_tables(run.process, run.syscalls.filter(keep(run.syscalls)),
                                 run.syscall_data.filter(keep(run.syscall_data)))


def _worker_opens(run: RecordedRun) -> tuple[int, dict[bytes, list[int]]]:
    """The worker thread, and the seqs of its open, read and close of each file."""
    rec = run.recording()
    (worker,) = [tid for tid in rec.threads if tid != rec.main_tid]
    rows = rec.threads[worker]
    opens = {}
    for i, row in enumerate(rows):
        if row.name == "openat":
            opens[row.ins[1].rstrip(b"\0")] = [r.seq for r in rows[i:i + 3]]
            assert [r.name for r in rows[i:i + 3]] == ["openat", "read", "close"]
    return worker, opens


def test_a_threads_probe_of_a_kernel_setting_missing_from_its_recording_runs_for_real(
        built: Path, tmp_path: Path) -> None:
    # GIVEN a thread that reads /proc/sys/vm/overcommit_memory (as glibc's malloc does in
    # whichever thread first trims its heap: pigz -p 2 replays met it in 5 of 14 runs) and
    # then a file of its own, recorded; and the recording without that setting's reads
    run = record([str(built / "replay_thread_probe")], cwd=str(tmp_path), env=ENV)
    assert run.stdout.endswith(b"joined\n") and run.exit_code == 0
    worker, opens = _worker_opens(run)
    assert worker in run.recording().exited  # its recording holds its own exit
    setting = b"/proc/sys/vm/overcommit_memory"
    # WHEN replayed exactly
    report = replay(_without(run, worker, set(opens[setting])), ReplayOptions(timeout_s=60))
    # THEN the probe runs in the sandbox, the report says so, and the replay is exact
    # (before: the thread was parked as if ended by exit_group, and the replay timed out)
    assert report.status == "completed", report.render_text()
    assert report.outputs_match and report.replayed_outputs[1] == run.stdout
    assert report.stats["runtime_probes"] == 1
    assert any(setting.decode() in note for note in report.notes), report.notes
    # AND (control) an input of the program's own missing from the recording is a
    # divergence at once, not a probe
    report = replay(_without(run, worker, set(opens[b"/proc/self/comm"])),
                    ReplayOptions(timeout_s=60))
    assert report.status == "diverged", report.render_text()
    assert report.divergence is not None and report.divergence.tid == worker
    assert "/proc/self/comm" in str(report.divergence.actual), report.render_text()


def test_a_call_past_a_threads_own_exit_diverges_at_once(built: Path, tmp_path: Path) -> None:
    # GIVEN the thread recorded, and its recording without its last call (its write)
    run = record([str(built / "replay_thread_probe")], cwd=str(tmp_path), env=ENV)
    rec = run.recording()
    worker, _opens = _worker_opens(run)
    last = rec.threads[worker][-1]
    assert last.name == "write" and worker in rec.exited
    # WHEN replayed exactly THEN the write past the thread's recorded end is a divergence
    # that names it (before: the thread was parked as if killed by exit_group, and the
    # replay waited for the process to end until its timeout)
    report = replay(_without(run, worker, {last.seq}), ReplayOptions(timeout_s=60))
    assert report.status == "diverged", report.render_text()
    assert report.divergence is not None
    assert report.divergence.reason == f"write after the end of thread {worker}'s recording"


def _serve_once(delay_s: float) -> tuple[int, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                time.sleep(delay_s)
                conn.sendall(b"hello")
                time.sleep(0.2)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return port, thread


def _waited_ms(line: bytes, outcome: bytes) -> int:
    """``got hello after 101 ms`` -> 101."""
    assert line.startswith(outcome + b" after "), line
    return int(line.split()[-2])


def test_injected_delay_turns_a_reply_into_a_timeout(tmp_path: Path) -> None:
    _python_available()
    # GIVEN a client that waits 0.5 s for a reply which came after 0.1 s
    port, server = _serve_once(0.1)
    run = record([PYTHON, str(PROGRAMS / "replay_client.py"), str(port), "0.5"],
                 cwd=str(tmp_path), env=ENV)
    server.join(5)
    recorded_ms = _waited_ms(run.stdout, b"got hello")
    assert 50 <= recorded_ms < 500, run.stdout
    rec = run.recording()
    fd = next(r.ret for r in rec.threads[rec.main_tid] if r.name == "socket" and r.ret > 2)
    # WHEN the reply is delayed by 800 ms THEN the wait times out at 0.5 s virtual time
    late = replay(rec, ReplayOptions(injections=parse_all([f"recv fd={fd}:+800ms"])))
    assert late.status == "completed", late.render_text()
    assert late.replayed_outputs[1] == b"timeout after 500 ms\n"
    assert not late.outputs_match and late.injections[f"recv fd={fd}:+800ms"] >= 1
    # AND delayed by 300 ms it still arrives, 300 ms later in the program's own clock
    slow = replay(rec, ReplayOptions(injections=parse_all([f"recv fd={fd}:+300ms"])))
    slow_ms = _waited_ms(slow.replayed_outputs[1], b"got hello")
    assert abs(slow_ms - (recorded_ms + 300)) <= 1, slow.render_text()
    # AND without injection the replay is exact (the connect's unix-socket probe included)
    exact = replay(rec)
    assert exact.status == "completed" and exact.outputs_match, exact.render_text()


def test_fsync_injection_slows_the_program_down(tmp_path: Path) -> None:
    _python_available()
    # GIVEN a ledger append with fsync on tmpfs (fast)
    run = record([PYTHON, str(PROGRAMS / "replay_fsync.py")], cwd=str(tmp_path), env=ENV)
    assert run.stdout == b"fast\n"
    # WHEN fsync takes 50 ms more THEN the program measures it as slow
    report = replay(run.recording(), ReplayOptions(injections=parse_all(["fsync:+50ms"])))
    assert report.status == "completed", report.render_text()
    assert report.replayed_outputs[1] == b"slow\n"
    assert report.injections == {"fsync:+50ms": 1}
    assert report.stats["virtual_shift_ms"] >= 50


def test_no_sandbox_mode_replays_too(built: Path, tmp_path: Path) -> None:
    # GIVEN a recording WHEN replayed without namespaces THEN it is still exact
    run = record([str(built / "replay_loop"), "20", "read"], cwd=str(tmp_path), env=ENV)
    _replay_matches(run, sandbox=False)


def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    from kprobe.replay_sandbox.errors import SandboxError

    program = tmp_path / "true"
    shutil.copy("/bin/true", program)
    run = record([str(program)], cwd=str(tmp_path), env=ENV)
    program.unlink()
    with pytest.raises(SandboxError, match="never started"):
        replay(run.recording())


def test_the_sandbox_isolates_the_replay(tmp_path: Path) -> None:
    require_root()
    require_binary("bwrap")
    # GIVEN a recording of cat, WHEN a what-if makes it read /proc inside the sandbox
    (tmp_path / "a.txt").write_text("AAA\n")
    run = record(["/bin/cat", str(tmp_path / "a.txt")], cwd=str(tmp_path), env=ENV)
    report = replay(run.recording(), ReplayOptions(argv=[
        "/bin/cat", "/proc/self/status", "/proc/net/dev", "/proc/self/mountinfo"]))
    out = report.replayed_outputs[1].decode()
    # THEN it runs in its own pid namespace (under a reaper), with loopback only,
    # a read-only root and a private /tmp
    # (pid 1 is bwrap's reaper; its set-up helper, gone by then, may have taken pid 2)
    nspid = next(line for line in out.splitlines() if line.startswith("NSpid:"))
    assert nspid.split()[1:] in (["2"], ["3"]), nspid
    interfaces = [line.split(":")[0].strip() for line in out.splitlines()
                  if line.strip().endswith("0") and ":" in line and "|" not in line
                  and line.startswith(" ")]
    assert interfaces == ["lo"], interfaces
    mounts = [line.split() for line in out.splitlines() if " - " in line]
    root = next(m for m in mounts if m[4] == "/")
    assert root[5].startswith("ro")
    tmp = next(m for m in mounts if m[4] == "/tmp")
    assert "tmpfs" in tmp


def test_changed_environment_is_a_whatif(tmp_path: Path) -> None:
    _python_available()
    # GIVEN a program that prints a setting from its environment
    code = "import os; print(os.environ.get('LEDGER_MODE', 'none'))"
    run = record([PYTHON, "-S", "-c", code], cwd=str(tmp_path), env=[*ENV, "LEDGER_MODE=a"])
    assert run.stdout == b"a\n"
    # WHEN replayed with another value THEN the output shows it and the report says so
    report = replay(run.recording(), ReplayOptions(env_set={"LEDGER_MODE": "strict"}))
    assert report.mode == "whatif" and report.status == "completed", report.render_text()
    assert report.replayed_outputs[1] == b"strict\n" and not report.outputs_match


class _ManualWatchdog:
    """Stands in for the engine's ``threading.Timer`` watchdog: it fires when told to."""

    fire: list[Any] = []

    def __init__(self, _interval: float, function: Any) -> None:
        _ManualWatchdog.fire.append(function)
        self.daemon = True

    def start(self) -> None:
        pass

    def cancel(self) -> None:
        pass


def test_a_replay_killed_at_its_deadline_mid_stop_is_a_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watchdog kills the tracees at the deadline from its own thread, maybe while the
    engine handles a stop; the engine's next ptrace call then fails (ESRCH). That replay ran
    out of time: it must end as a timeout, not as an error (in a fuzz campaign an error
    is a run that could not be replayed; before the fix, 4 of 132 deadline hits were)."""
    require_root()
    require_binary("bwrap")
    # GIVEN cat recorded reading a file
    (tmp_path / "ledger.txt").write_text("debit 100\ncredit 100\n")
    run = record(["/bin/cat", str(tmp_path / "ledger.txt")], cwd=str(tmp_path), env=ENV)
    # AND the deadline made to fire while the engine handles the program's third stop,
    # between its reading the stop and its first ptrace call on the tracee
    import kprobe.replay_sandbox.engine as engine
    from kprobe.replay_sandbox import ptrace_ffi

    _ManualWatchdog.fire = []
    monkeypatch.setattr(engine.threading, "Timer", _ManualWatchdog)
    real_get_regs = ptrace_ffi.get_regs
    calls: list[int] = []

    def get_regs_at_the_deadline(pid: int, regs: Any) -> Any:
        calls.append(pid)
        if len(calls) == 3:
            _ManualWatchdog.fire[-1]()  # the watchdog: deadline_hit, SIGKILL to every tracee
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and "\nState:\tZ" not in Path(
                    f"/proc/{pid}/status").read_text():
                assert time.monotonic() < deadline, f"tracee {pid} survived SIGKILL"
                time.sleep(0.005)
        return real_get_regs(pid, regs)

    monkeypatch.setattr(engine.P, "get_regs", get_regs_at_the_deadline)
    # WHEN replayed THEN the replay timed out; no TracerError escapes
    report = replay(run.recording())
    assert len(calls) >= 3
    assert report.status == "timeout", report.render_text()
    assert any("wall time" in note for note in report.notes), report.notes
