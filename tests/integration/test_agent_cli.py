"""`kprobe record` and `kprobe run` as users run them: real agent, real kernel, real lake."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from kprobe.lake import LakeSettings, connect, resolve
from tests.support import REPO, deadline_s, require_root

KPROBE = [sys.executable, "-P", "-m", "kprobe"]


def _kprobe(*args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True,
                          timeout=deadline_s(timeout),
                          check=False, env={**os.environ, **(env or {})})


def _con(lake: Path):  # type: ignore[no-untyped-def]
    return connect(resolve(LakeSettings(lake=str(lake))))


def _wait_recording(rec: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Until the recorder says capture is on (its "recording ..." line on stderr)."""
    assert rec.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = b""
    while b"\nrecording " not in b"\n" + seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no 'recording' line within {timeout_s:g} s: {seen!r}"
        ready, _, _ = select.select([rec.stderr], [], [], left)
        if ready:
            chunk = rec.stderr.read(4096)
            assert chunk, f"the recorder exited ({rec.wait()}): {seen!r}"
            seen += chunk


def _version(lake: Path, table: str) -> int:
    """The table's Delta version; -1 while it does not exist yet."""
    try:
        return DeltaTable(str(lake / "v1" / table)).version()
    except TableNotFoundError:
        return -1


def _rows(lake: Path, table: str) -> int:
    if _version(lake, table) < 0:
        return 0
    return DeltaTable(str(lake / "v1" / table)).to_pyarrow_table().num_rows


def test_run_records_the_command_and_exits_with_its_status(tmp_path: Path) -> None:
    """GIVEN `kprobe run -- sh -c 'sleep 0.2; exit 7'` THEN the exit code is 7 and the lake
    holds the sleep as an off-CPU interval of the child, plus agent start/stop rows."""
    require_root()
    lake = tmp_path / "lake"
    proc = _kprobe("run", "--lake", str(lake), "--spool-dir", str(tmp_path / "spool"),
                   "--format", "json", "--", "sh", "-c", "sleep 0.2; exit 7")
    assert proc.returncode == 7, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["lost"] == {} and summary["spooled_batches"] == 0
    con = _con(lake)
    (slept,) = con.execute("SELECT max(dur_ns) FROM offcpu WHERE comm = 'sleep'").fetchone()
    assert slept is not None and 190e6 <= slept <= 2e9
    # the sched family's own convert step symbolised the stack and named the wait
    (reason, stack) = con.execute(
        "SELECT o.wait_reason, k.frames FROM offcpu o LEFT JOIN kstacks k "
        "ON k.node = o.node AND k.stack_id = o.kstack_id WHERE o.comm = 'sleep' "
        "ORDER BY o.dur_ns DESC LIMIT 1").fetchone()
    assert reason == "sleep" and stack, (reason, stack)
    kinds = {k for (k,) in con.execute("SELECT kind FROM agent_meta").fetchall()}
    assert kinds >= {"start", "stop"}


def test_payloads_hold_each_execs_argv_env_and_the_paths_and_bytes_a_call_read(
        tmp_path: Path) -> None:
    """GIVEN `kprobe run --payloads -- sh -c 'exec env K=V dd if=IN of=OUT'` (three execs
    in one pid: the shell, then env, then dd)
    THEN each exec's argv and environment are execve payloads read by the kernel at exec
    (not from /proc later, where the pid shows only its last image), the path dd opened is
    its openat's payload, and the bytes it wrote are its write's payload."""
    require_root()
    lake, src = tmp_path / "lake", tmp_path / "in.txt"
    src.write_text("₹50,000 settled\n")
    proc = _kprobe("run", "--payloads", "--lake", str(lake), "--spool-dir",
                   str(tmp_path / "spool"), "--", "sh", "-c",
                   f"exec env KPROBE_TEST_MARK=42 dd if={src} of={tmp_path / 'out.txt'} "
                   f"status=none")
    assert proc.returncode == 0, proc.stderr
    con = _con(lake)
    execs = con.execute("""
        SELECT s.ts_ns, s.seq,
               max(CASE WHEN d.arg_index = 0 THEN d.data END) AS file,
               max(CASE WHEN d.arg_index = 1 THEN d.data END) AS argv,
               max(CASE WHEN d.arg_index = 2 THEN d.data END) AS env
        FROM syscalls s JOIN syscall_data d USING (pid, tid, seq)
        WHERE s.name = 'execve' AND s.ret = 0 GROUP BY ALL ORDER BY s.ts_ns""").fetchall()
    argvs = [bytes(a).split(b"\0")[:-1] for (_, _, _, a, _) in execs]
    dd = [b"dd", f"if={src}".encode(), f"of={tmp_path / 'out.txt'}".encode(), b"status=none"]
    assert argvs[-2:] == [[b"env", b"KPROBE_TEST_MARK=42", *dd], dd]
    assert bytes(execs[-1][2]).endswith(b"/dd")
    assert b"KPROBE_TEST_MARK=42" in bytes(execs[-1][4]).split(b"\0")
    assert b"KPROBE_TEST_MARK=42" not in bytes(execs[-2][4]).split(b"\0")
    (opened,) = con.execute("""
        SELECT d.data FROM syscalls s JOIN syscall_data d USING (pid, tid, seq)
        WHERE s.comm = 'dd' AND s.name = 'openat' AND d.arg_index = 1
          AND s.ret >= 0 AND d.data = ?""", [str(src).encode()]).fetchall()
    assert bytes(opened[0]) == str(src).encode()
    (sent,) = con.execute("""
        SELECT d.data FROM syscalls s JOIN syscall_data d USING (pid, tid, seq)
        WHERE s.comm = 'dd' AND s.name = 'write' AND s.fd = 1""").fetchall()
    assert bytes(sent[0]) == src.read_bytes()


def test_run_hosts_the_otlp_receiver_for_an_instrumented_child(tmp_path: Path) -> None:
    """The child's OpenTelemetry SDK finds the agent through OTEL_EXPORTER_OTLP_ENDPOINT and
    its spans land with the child's real pid, next to its kernel events."""
    require_root()
    lake = tmp_path / "lake"
    proc = _kprobe("run", "--lake", str(lake), "--spool-dir", str(tmp_path / "spool"), "--",
                   sys.executable, "-P", str(REPO / "tests" / "programs" / "ledger_workload.py"),
                   "--ledger", str(tmp_path / "ledger.db"), "--payments", "5")
    assert proc.returncode == 0, proc.stderr
    con = _con(lake)
    rows = con.execute("SELECT DISTINCT pid FROM spans").fetchall()
    assert len(rows) == 1
    (pid,) = rows[0]
    (events,) = con.execute("SELECT count(*) FROM offcpu WHERE pid = ?", [pid]).fetchone()
    assert events > 0  # the same process seen by the kernel and by its own spans
    (payments,) = con.execute(
        "SELECT count(*) FROM spans WHERE name = 'POST /payments'").fetchone()
    assert payments == 5


def test_record_stops_on_sigterm_and_flushes_everything(tmp_path: Path) -> None:
    require_root()
    lake = tmp_path / "lake"
    rec = subprocess.Popen([*KPROBE, "record", "--lake", str(lake), "--spool-dir",
                            str(tmp_path / "spool"), "--pid", str(os.getpid()), "--no-otlp",
                            "--no-metrics", "--flush-interval", "30"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    try:
        _wait_recording(rec)
        # recording, and nothing flushed yet with a 30 s interval
        assert _rows(lake, "sched") == 0
        # this process switches out while it waits for its children
        for _ in range(5):
            subprocess.run(["true"], check=True)
        rec.send_signal(signal.SIGTERM)
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.communicate(timeout=30)
    assert rec.returncode == 0, err
    assert _rows(lake, "sched") > 0  # only the stop-time flush can have written these


def test_a_killed_recorder_leaves_every_flushed_batch_intact(tmp_path: Path) -> None:
    """SIGKILL between flushes: all committed batches read back whole, nothing half-written."""
    require_root()
    lake = tmp_path / "lake"
    rec = subprocess.Popen([*KPROBE, "record", "--lake", str(lake), "--spool-dir",
                            str(tmp_path / "spool"), "--no-otlp", "--no-metrics",
                            "--families", "sched", "--flush-interval", "0.3"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # killed once several flushes have committed (each flush is one Delta version)
        deadline = time.monotonic() + 60
        while _version(lake, "sched") < 3:
            assert rec.poll() is None, rec.communicate()[1]
            assert time.monotonic() < deadline, f"sched at version {_version(lake, 'sched')}"
            time.sleep(0.05)
    finally:
        rec.kill()
        rec.communicate(timeout=30)
    table = DeltaTable(str(lake / "v1" / "sched"))
    assert table.version() >= 3
    con = _con(lake)
    per_batch = con.execute(
        "SELECT batch_id, count(*) FROM sched GROUP BY 1").fetchall()
    assert per_batch and all(n > 0 for _, n in per_batch)
    # every file the log references exists and is readable: no torn commit
    assert table.to_pyarrow_table().num_rows == sum(n for _, n in per_batch)


def test_unreachable_lake_is_one_line_exit_2(tmp_path: Path) -> None:
    require_root()
    # nothing listens on this loopback port: connection refused
    proc = _kprobe("record", "--duration", "1", "--no-otlp", "--no-metrics", "--spool-dir",
                   str(tmp_path / "spool"), "--lake", "s3://nobucket/x", timeout=120,
                   env={"KPROBE_S3_ENDPOINT": "http://127.0.0.1:9", "KPROBE_S3_ACCESS_KEY": "k",
                        "KPROBE_S3_SECRET_KEY": "s"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("kprobe record: lake unavailable")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_doctor_reports_this_host(tmp_path: Path) -> None:
    require_root()
    proc = _kprobe("doctor", "--format", "json")
    checks = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in checks}
    assert by_name["kernel BTF"]["ok"]
    assert by_name["attach kind tp_btf"]["ok"]  # what every family relies on
    for kind in ("kprobe", "fentry"):  # said either way, with the kernel's reason if refused
        check = by_name[f"attach kind {kind}"]
        assert check["ok"] or check["detail"].startswith("refused: ")
    assert proc.returncode == (1 if any(c["required"] and not c["ok"] for c in checks) else 0)
