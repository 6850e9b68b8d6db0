"""Replays of programs nobody here wrote, recorded by the real agent (`kprobe run
--payloads`), then replayed by `kprobe replay` as a user runs both. Root only.

Each test records a real program against real files and sockets, takes the world away (the
server stops, the database file is deleted) and replays: what the program printed must come
back from the lake alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kprobe.lake import LakeSettings, connect, resolve
from tests.support import REPO, free_port, require_binary, require_root

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
PROGRAMS = REPO / "tests" / "programs"


def _kprobe(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO)


def _record(tmp_path: Path, *command: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    lake = tmp_path / "lake"
    run = _kprobe("run", "--payloads", "--payload-cap", "1M", "--lake", str(lake),
                  "--spool-dir", str(tmp_path / "spool"), "--no-otlp", "--no-metrics", "--",
                  *command)
    return lake, run


def _pid_of(lake: Path, argv_item: str) -> str:
    """PID@NODE of the last exec whose command line holds ``argv_item``."""
    con = connect(resolve(LakeSettings(lake=str(lake))))
    # the argv the kernel read at exec (an execve payload): /proc may be gone by then
    execs = con.execute("""SELECT pid, node, data FROM syscall_data
                           WHERE nr = 59 AND arg_index = 1 ORDER BY ts_ns DESC""").fetchall()
    rows = [(pid, node) for pid, node, argv in execs
            if argv_item.encode() in bytes(argv).split(b"\0")]
    assert rows, f"no exec of {argv_item} recorded"
    return f"{rows[0][0]}@{rows[0][1]}"


def _replay(lake: Path, process: str, *extra: str) -> tuple[int, dict[str, Any]]:
    proc = _kprobe("replay", "--lake", str(lake), "--process", process, "--format", "json",
                   *extra)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _stdout(report: dict[str, Any]) -> str:
    """What the replayed program wrote to its stdout."""
    return str(report["replayed_text"].get("1", ""))


def test_curl_fetching_from_a_local_http_server_replays_after_the_server_is_gone(
        tmp_path: Path) -> None:
    require_root()
    require_binary("curl")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "statement.txt").write_text("PAY-0042 INR 50000 settled\n" * 40)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path / "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        url = f"http://127.0.0.1:{port}/statement.txt"
        lake, run = _record(tmp_path, "curl", "-sS", url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert run.returncode == 0, run.stderr
    code, report = _replay(lake, _pid_of(lake, url))
    # THEN the exact replay completes, curl exits 0 and prints the same bytes, with no server
    assert code == 0, report
    assert report["status"] == "completed" and report["outputs_match"], report
    assert report["exit_code"] == 0
    stdout = next(o for o in report["outputs"] if o["fd"] == 1)
    assert stdout["replayed_bytes"] == len((tmp_path / "www" / "statement.txt").read_bytes())


def test_sqlite3_cli_replays_its_query_after_the_database_file_is_deleted(
        tmp_path: Path) -> None:
    require_root()
    require_binary("sqlite3")
    db = tmp_path / "ledger.db"
    subprocess.run(["sqlite3", str(db), "CREATE TABLE ledger(id TEXT, inr INT); "
                    "INSERT INTO ledger VALUES ('PAY-1', 50000), ('PAY-2', 1200);"], check=True)
    query = "SELECT id, inr FROM ledger ORDER BY inr DESC;"
    lake, run = _record(tmp_path, "sqlite3", str(db), query)
    assert run.returncode == 0, run.stderr
    db.unlink()
    code, report = _replay(lake, _pid_of(lake, query))
    assert code == 0, report
    assert report["status"] == "completed" and report["outputs_match"], report
    assert _stdout(report) == "PAY-1|50000\nPAY-2|1200\n"


def test_python_time_random_urandom_and_datetime_come_back_identical(tmp_path: Path) -> None:
    require_root()
    code_text = ("import time, random, os, datetime; "
                 "print(time.time(), time.monotonic_ns(), random.random(), "
                 "os.urandom(8).hex(), datetime.datetime.now().isoformat())")
    lake, run = _record(tmp_path, sys.executable, "-c", code_text)
    assert run.returncode == 0, run.stderr
    code, report = _replay(lake, _pid_of(lake, code_text))
    assert code == 0, report
    assert report["status"] == "completed" and report["outputs_match"], report
    assert _stdout(report) == run.stdout and len(run.stdout.split()) == 5, report


def test_a_multithreaded_program_replays_in_the_recorded_order(
        tmp_path: Path, programs: Path) -> None:
    require_root()
    binary = str(programs / "replay_threads")
    lake, run = _record(tmp_path, binary)
    assert run.returncode == 0, run.stderr
    code, report = _replay(lake, _pid_of(lake, binary), "--timeout", "60")
    assert code == 0, report
    assert report["status"] == "completed" and report["exit_code"] == 0, report
    assert report["outputs_match"], report


def test_a_different_command_line_in_exact_mode_stops_at_the_first_divergence(
        tmp_path: Path) -> None:
    require_root()
    (tmp_path / "a.txt").write_text("debit 100\n")
    (tmp_path / "bb.txt").write_text("credit 100\n")
    lake, run = _record(tmp_path, "cat", str(tmp_path / "a.txt"))
    assert run.returncode == 0, run.stderr
    code, report = _replay(lake, _pid_of(lake, str(tmp_path / "a.txt")), "--mode", "exact",
                           "--set-arg", f"1={tmp_path / 'bb.txt'}")
    assert code == 1 and report["status"] == "diverged", report
    divergence = report["divergence"]
    # the precise report: which thread, which call of its sequence, expected vs actual
    assert divergence["expected"]["name"] == "openat" == divergence["actual"]["name"]
    assert divergence["tid"] and divergence["seq"], divergence
    assert str(tmp_path / "a.txt") in divergence["reason"] + json.dumps(divergence)


def test_the_timeout_story_exact_fails_as_in_production_and_the_what_ifs_succeed(
        tmp_path: Path) -> None:
    """GIVEN a client with a 750 ms timeout against a server that answers PAY-1 after
    800 ms (both recorded with payloads)
    THEN replayed exactly, PAY-1 times out again; with the timeout at 1500 ms it is settled
    with the bytes the server really sent (after the client had gone); with the reply
    100 ms earlier (`--inject 'recv:-100ms'`) it is settled with the old timeout; and a
    timeout of 780 ms is still too short."""
    require_root()
    port = str(free_port())
    script = (f"{sys.executable} {PROGRAMS / 'replay_settlement_server.py'} {port} "
              f"--slow-ms 800 & S=$!; "
              f"until {sys.executable} -c 'import socket; socket.create_connection("
              f"(\"127.0.0.1\", {port}))' 2>/dev/null; do :; done; "
              f"{sys.executable} {PROGRAMS / 'replay_payment_client.py'} {port} 750; "
              f"kill $S")
    lake, run = _record(tmp_path, "sh", "-c", script)
    assert "PAY-1: HTTP 504 settlement timed out after 750 ms" in run.stdout, run
    client = _pid_of(lake, str(PROGRAMS / "replay_payment_client.py"))
    settled = 'PAY-1: HTTP 200 {"status": "settled", "request": "PAY-1 slow"}'

    code, exact = _replay(lake, client)
    assert code == 0 and exact["status"] == "completed" and exact["outputs_match"], exact
    assert "PAY-1: HTTP 504" in _stdout(exact)

    code, longer = _replay(lake, client, "--set-arg", "3=1500", "--expect-exit", "0")
    assert code == 0 and longer["exit_code"] == 0, longer
    assert settled in _stdout(longer), longer
    assert "PAY-2: HTTP 200" in _stdout(longer), longer

    code, earlier = _replay(lake, client, "--inject", "recv:-100ms")
    assert settled in _stdout(earlier), earlier

    code, short = _replay(lake, client, "--set-arg", "3=780")
    assert "PAY-1: HTTP 504 settlement timed out after 780 ms" in _stdout(short)


def _wait_listening(port: int) -> None:
    import socket
    import time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


PRINT_MARK = "import os; print(os.environ['KPROBE_REPLAY_MARK'])"


def test_kprobe_run_keeps_the_programs_environment(tmp_path: Path) -> None:
    """The replay starts the program with the environment of its exec, which the kernel
    read at exec time (not /proc later)."""
    require_root()
    env_before = dict(os.environ)
    try:
        os.environ["KPROBE_REPLAY_MARK"] = "settle-50000"
        lake, run = _record(tmp_path, sys.executable, "-c", PRINT_MARK)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert run.stdout.startswith("settle-50000"), run
    code, report = _replay(lake, _pid_of(lake, PRINT_MARK))
    assert code == 0 and _stdout(report) == "settle-50000\n", report
