"""The checks of one kernel, run as root inside a matrix guest or natively on the host:
``kprobe doctor``, the BPF and agent integration tests that exercise every probe family
with payloads on, and ``kprobe run --payloads`` of a real program replayed exactly.

Human output goes to stdout (the guest's console, kept in its log); each step's result is
one protocol line (``tests.vmtest.results``) on ``--results`` (the guest's second serial
port, or a file on the host).

    python -m tests.vmtest.guest --results /dev/ttyS1 --work /tmp/vmtest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from tests.vmtest.results import StepResult, encode, one_line

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# -P: a directory named like one of our packages in the cwd (a lake called lake) must not
# shadow it
KPROBE = (PYTHON, "-P", "-m", "kprobe")

# Each probe family, payloads on, in what fits the matrix's time under software emulation
# (~20x slower than this host): the verifier budget of every family, sched with off-CPU
# stacks and the ring's drain, syscalls with payloads, net (incl. retransmits), block, mem
# (memcg reclaim, faults, OOM), process, the clock uprobes, and the agent recording payloads
# into a lake. Left out: tests of user-space logic no kernel changes (layouts vs the
# object's BTF, the CLI's error paths, the OTLP receiver), and the full-ring test (a minute
# under emulation).
_I = "tests/integration/"
TESTS: tuple[str, ...] = (
    f"{_I}test_bpf_sched.py::test_offcpu_interval_of_the_blocked_thread_names_its_waker",
    f"{_I}test_bpf_sched.py::test_children_of_a_target_are_targets_until_they_exit",
    f"{_I}test_bpf_sched.py::test_drain_across_wrap_around_yields_whole_records",
    f"{_I}test_bpf_sched.py::test_the_reader_sleeps_while_quiet_and_wakes_when_the_ring_fills",
    f"{_I}test_bpf_sched.py::test_sensors_can_share_one_targets_map",
    f"{_I}test_bpf_sched.py::test_each_switch_out_says_how_long_the_thread_ran_since_its_"
    "switch_in",
    f"{_I}test_bpf_sched.py::test_an_interval_whose_switch_in_was_not_traced_ends_where_its_"
    "run_dates_it",
    f"{_I}test_bpf_kstacks.py",
    f"{_I}test_bpf_syscalls.py",
    f"{_I}test_bpf_net.py",
    f"{_I}test_bpf_block.py",
    f"{_I}test_bpf_mem.py",
    f"{_I}test_bpf_process.py",
    f"{_I}test_capture_evidence.py",
    f"{_I}test_agent_process_probes.py",
    # this kernel's verifier figures within the budget, payloads off and on, and the
    # one-line refusal of a program it cannot load
    f"{_I}test_bpf_verifier_budget.py",
    f"{_I}test_agent_cli.py::test_payloads_hold_each_execs_argv_env_and_the_paths_and_bytes_"
    "a_call_read",
)

# the program recorded and replayed: sqlite3 reads its database file and prints rows
LEDGER_SQL = ("CREATE TABLE ledger(id TEXT, inr INT); "
              "INSERT INTO ledger VALUES ('PAY-1', 50000), ('PAY-2', 1200);")
QUERY = "SELECT id, inr FROM ledger ORDER BY inr DESC;"
EXPECTED_ROWS = "PAY-1|50000\nPAY-2|1200\n"

STEP_TIMEOUT_S = 900.0


def _env() -> dict[str, str]:
    # KPROBE_CI=1: a test whose real component is missing fails here, never skips
    return {**os.environ, "KPROBE_CI": "1", "PYTHONUNBUFFERED": "1"}


def _say(text: str) -> None:
    print(text, flush=True)


def _stream(command: Sequence[str], timeout: float = STEP_TIMEOUT_S, cwd: Path = REPO,
            env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run ``command``, echoing its output to stdout; (exit code or None on timeout, output)."""
    # errors="replace": a test that prints bytes that are not UTF-8 must not end the checks
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", env={**_env(), **(env or {})}, cwd=cwd)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
        if time.monotonic() > deadline:
            proc.kill()
            break
    try:
        code: int | None = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    sys.stdout.flush()
    return (None if time.monotonic() > deadline else code), "".join(lines)


# ---- doctor --------------------------------------------------------------------------


def doctor_failures(checks: list[dict[str, Any]]) -> list[str]:
    """``name: detail`` of each required check that failed."""
    return [f"{c['name']}: {c['detail']}" for c in checks if c.get("required") and not c["ok"]]


def step_doctor() -> StepResult:
    proc = subprocess.run([*KPROBE, "doctor", "--format", "json"],
                          capture_output=True, text=True, errors="replace", env=_env(), cwd=REPO,
                          timeout=STEP_TIMEOUT_S, check=False)
    try:
        checks: list[dict[str, Any]] = json.loads(proc.stdout)
    except ValueError:
        tail = one_line((proc.stderr or proc.stdout)[-400:])
        return StepResult("doctor", ok=False, reason=f"exit {proc.returncode}, no report: {tail}")
    for c in checks:
        mark = "ok  " if c["ok"] else ("FAIL" if c.get("required") else "note")
        _say(f"{mark}  {c['name']:<45}  {c['detail']}")
    failures = doctor_failures(checks)
    if proc.returncode != 0 and not failures:
        failures = [f"exit {proc.returncode}: {one_line(proc.stderr[-400:])}"]
    return StepResult("doctor", ok=not failures, reason=failures[0] if failures else "",
                      failures=tuple(one_line(f, 1000) for f in failures))


# ---- the integration tests -----------------------------------------------------------


def pytest_failures(output: str) -> list[str]:
    """The short test summary's FAILED and ERROR lines (``-ra``)."""
    return [line.strip() for line in output.splitlines()
            if line.startswith(("FAILED ", "ERROR "))]


def pytest_counts(output: str) -> str:
    """pytest's closing line, e.g. ``52 passed, 3 failed in 401.2s``."""
    for line in reversed(output.splitlines()):
        text = line.strip("= \n")
        if " in " in text and any(w in text for w in ("passed", "failed", "error")):
            return text
    return ""


def step_tests(work: Path, tests: Sequence[str]) -> StepResult:
    # -v: each test's name as it ends, so a guest that hangs names the test it hung in
    command = [PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-ra",
               "--durations=10", f"--basetemp={work / 'pytest'}", *tests]
    # wide enough that the short summary keeps each failure's message
    code, output = _stream(command, env={"COLUMNS": "400"})
    failures = pytest_failures(output)
    counts = pytest_counts(output)
    if code is None:
        reason = f"pytest did not finish in {STEP_TIMEOUT_S:.0f} s"
    elif code != 0:
        reason = failures[0] if failures else f"pytest exit {code}: {counts}"
    else:
        reason = ""
    _say(f"tests: {counts or 'no summary'}")
    return StepResult("tests", ok=not reason, reason=one_line(reason),
                      failures=tuple(one_line(f, 1000) for f in failures))


# ---- record a real program with payloads, replay it exactly -------------------------


def _pid_of(lake: Path, argv_item: str) -> str:
    """PID@NODE of the last exec whose argv (an execve payload) holds ``argv_item``."""
    from kprobe.lake import LakeSettings, connect, resolve

    con = connect(resolve(LakeSettings(lake=str(lake))))
    rows = con.execute("""SELECT pid, node, data FROM syscall_data
                          WHERE nr = 59 AND arg_index = 1 ORDER BY ts_ns DESC""").fetchall()
    for pid, node, argv in rows:
        if argv_item.encode() in bytes(argv).split(b"\0"):
            return f"{pid}@{node}"
    return ""


def step_record_replay(work: Path) -> StepResult:
    sqlite3 = shutil.which("sqlite3")
    if sqlite3 is None:
        return StepResult("record-replay", ok=False, reason="no sqlite3 program (make setup)")
    base = work / "record-replay"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    db, lake = base / "ledger.db", base / "lake"
    subprocess.run([sqlite3, str(db), LEDGER_SQL], check=True)
    _say(f"record-replay: kprobe run --payloads -- sqlite3 {db} '{QUERY}'")
    run = subprocess.run([*KPROBE, "run", "--payloads", "--lake", str(lake),
                          "--spool-dir", str(base / "spool"), "--no-otlp", "--no-metrics",
                          "--", sqlite3, str(db), QUERY],
                         capture_output=True, text=True, errors="replace", env=_env(), cwd=base,
                         timeout=STEP_TIMEOUT_S, check=False)
    _say(run.stdout + run.stderr)
    if run.returncode != 0 or run.stdout != EXPECTED_ROWS:
        return StepResult("record-replay", ok=False, reason=one_line(
            f"kprobe run exit {run.returncode}: {_last_line(run.stderr) or run.stdout}"))
    process = _pid_of(lake, QUERY)
    if not process:
        return StepResult("record-replay", ok=False,
                          reason="the lake holds no exec of sqlite3 with its argv")
    db.unlink()  # the replay must answer from the lake alone
    _say(f"record-replay: kprobe replay --process {process} (exact, database deleted)")
    replay = subprocess.run([*KPROBE, "replay", "--lake", str(lake),
                             "--process", process, "--format", "json"],
                            capture_output=True, text=True, errors="replace", env=_env(), cwd=base,
                            timeout=STEP_TIMEOUT_S, check=False)
    _say(replay.stdout + replay.stderr)
    problem = replay_problem(replay.returncode, replay.stdout, replay.stderr)
    return StepResult("record-replay", ok=not problem, reason=problem)


def _last_line(text: str) -> str:
    """The last non-empty line: a kprobe command's one-line error, a traceback's error."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def replay_problem(code: int, stdout: str, stderr: str) -> str:
    """Why an exact replay's report is not a clean, identical replay ('' when it is)."""
    try:
        report: dict[str, Any] = json.loads(stdout)
    except ValueError:
        return one_line(f"kprobe replay exit {code}, no report: {_last_line(stderr)}")
    if report.get("status") != "completed":
        divergence = report.get("divergence") or {}
        return one_line(f"replay {report.get('status')}: "
                        f"{divergence.get('reason') or json.dumps(divergence)[:300]}")
    if not report.get("outputs_match"):
        return "replay completed but its outputs differ from the recording"
    if str(report.get("replayed_text", {}).get("1", "")) != EXPECTED_ROWS:
        return one_line(f"replayed stdout {report.get('replayed_text')!r}")
    if code != 0:
        return f"kprobe replay exit {code}"
    return ""


# ---- main ----------------------------------------------------------------------------


def _timed(results: IO[str], run: Callable[[], StepResult]) -> StepResult:
    start = time.monotonic()
    try:
        result = run()
    except Exception as err:  # noqa: BLE001 - any step's crash is that step's result line
        traceback.print_exc(file=sys.stdout)
        result = StepResult("error", ok=False, reason=one_line(f"{type(err).__name__}: {err}"))
    timed = StepResult(result.step, result.ok, round(time.monotonic() - start, 1),
                       result.reason, result.failures, result.release)
    results.write(encode(timed) + "\n")
    results.flush()
    _say(f"vmtest guest: step {timed.step} {'ok' if timed.ok else 'FAILED'} "
         f"in {timed.seconds:.1f} s{': ' + timed.reason if timed.reason else ''}")
    return timed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vmtest.guest")
    parser.add_argument("--results", required=True, help="where the result lines go")
    parser.add_argument("--work", default="/tmp/kprobe-vmtest", help="scratch directory")
    parser.add_argument("--programs", help="tests/programs built here already (make OUT=)")
    parser.add_argument("--tests", nargs="*", default=list(TESTS), help="pytest node ids")
    args = parser.parse_args(argv)
    if args.programs:
        os.environ["KPROBE_TEST_PROGRAMS"] = args.programs
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    release = platform.release()
    _say(f"vmtest guest: kernel {release}, {os.cpu_count()} CPUs, repo {REPO}")
    with open(args.results, "w", encoding="ascii") as results:
        results.write(encode(StepResult("begin", ok=True, release=release)) + "\n")
        outcomes = [_timed(results, step_doctor),
                    _timed(results, lambda: step_tests(work, args.tests)),
                    _timed(results, lambda: step_record_replay(work))]
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
