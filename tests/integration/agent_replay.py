"""Recording a command with the real agent and replaying it, as a user does both
(``kprobe run --payloads -- CMD`` with the defaults, then ``kprobe replay``): shared by the
replay suites of programs nobody here wrote."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kprobe.lake import LakeSettings, connect, resolve
from tests.support import REPO

KPROBE = [sys.executable, "-P", "-m", "kprobe"]


@dataclass
class Recorded:
    lake: Path
    run: subprocess.CompletedProcess[str]  # kprobe run: its exit, stderr; stdout decoded
    stdout: bytes  # what the program printed, as bytes


def kprobe(*args: str, timeout: float = 300, cwd: Path | None = None,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=cwd or REPO, **kwargs)


def record(tmp: Path, *command: str, options: tuple[str, ...] = (), cwd: Path | None = None,
           **kwargs: Any) -> Recorded:
    """``command`` recorded with the defaults (payloads on, the default payload cap)."""
    lake = tmp / "lake"
    raw = subprocess.run([*KPROBE, "run", "--payloads", "--lake", str(lake), "--spool-dir",
                          str(tmp / "spool"), "--no-otlp", "--no-metrics", *options, "--",
                          *command], capture_output=True, timeout=300, check=False,
                         cwd=cwd or REPO, **kwargs)
    run = subprocess.CompletedProcess(raw.args, raw.returncode,
                                      raw.stdout.decode(errors="replace"),
                                      raw.stderr.decode(errors="replace"))
    return Recorded(lake, run, raw.stdout)


def pid_of(lake: Path, argv_item: str, first: bool = False) -> str:
    """PID@NODE of the last (or first) exec whose command line holds ``argv_item``, from
    the argv the kernel read at exec."""
    con = connect(resolve(LakeSettings(lake=str(lake))))
    execs = con.execute(f"""SELECT pid, node, data FROM syscall_data
                            WHERE nr = 59 AND arg_index = 1
                            ORDER BY ts_ns {'ASC' if first else 'DESC'}""").fetchall()
    rows = [(pid, node) for pid, node, argv in execs
            if argv_item.encode() in bytes(argv).split(b"\0")]
    assert rows, f"no exec of {argv_item} recorded"
    return f"{rows[0][0]}@{rows[0][1]}"


def replay(lake: Path, process: str, *extra: str, timeout: float = 300,
           **kwargs: Any) -> tuple[int, dict[str, Any]]:
    proc = kprobe("replay", "--lake", str(lake), "--process", process, "--format", "json",
                  *extra, timeout=timeout, **kwargs)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


TEXT_LIMIT = 64 << 10  # bytes of each output a report quotes (replay_sandbox.report)


def summary(report: dict[str, Any]) -> str:
    """What a failed replay assertion should show first (pytest cuts a whole report short):
    the status, where and why it diverged, the notes, and each child's exit and outputs."""
    lines = [f"status {report.get('status')}, exit {report.get('exit_code')} "
             f"(recorded {report.get('recorded_exit_code')}), "
             f"outputs_match {report.get('outputs_match')}",
             f"divergence: {json.dumps(report.get('divergence'))}",
             *(f"note: {n}" for n in report.get("notes", [])[:8])]
    for out in report.get("outputs", []):
        if not out.get("match"):
            lines.append(f"root fd {out['fd']}: {json.dumps(out)[:600]}")
    for child in report.get("children", []):
        differ = [o for o in child.get("outputs", []) if not o.get("match")]
        lines.append(f"child {child.get('pid')} {child.get('argv', [])[:3]}: exit "
                     f"{child.get('exit_code')} (recorded {child.get('recorded_exit_code')}),"
                     f" ended {child.get('ended')}"
                     + "".join(f"; fd {o['fd']} differs: {json.dumps(o)[:400]}"
                               for o in differ))
    return "\n".join(lines)


def stdout_of(report: dict[str, Any]) -> str:
    """What the replayed program (the root) wrote to its stdout (its first 64 KiB)."""
    return str(report["replayed_text"].get("1", ""))


def quoted(data: bytes) -> str:
    """``data`` as a report quotes an output."""
    return data[:TEXT_LIMIT].decode(errors="replace")


def tree_stdout(report: dict[str, Any]) -> str:
    """What every process of a replayed tree wrote to fd 1, root first, then by pid."""
    parts = [stdout_of(report)]
    parts += [str(c["replayed_text"].get("1", "")) for c in report.get("children", [])]
    return "".join(parts)


def wait_listening(port: int, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def wait_for(path: Path, text: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")
