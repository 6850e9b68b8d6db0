"""Helpers shared by all tests, and the rule for missing real components.

Tests use real components (kernel, BPF, SeaweedFS, Ray, graph DB). When one is missing, a
test skips on a developer's laptop, but under ``KPROBE_CI=1`` it fails: CI never passes by
skipping silently.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("KPROBE_CI") == "1"


def require(condition: bool, what: str) -> None:
    """Skip (or, under KPROBE_CI=1, fail) unless ``condition`` holds."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"KPROBE_CI=1 and a required component is missing: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root (BPF, cgroups, namespaces)")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the {name} program")
    assert path is not None
    return path


def deadline_s(seconds: float) -> float:
    """A deadline for something that should finish well within ``seconds`` here, scaled by
    ``KPROBE_TEST_DEADLINE_SCALE`` where everything runs slower (the kernel matrix's
    emulated guests set 4). Deadlines catch hangs; no test asserts a duration."""
    return seconds * float(os.environ.get("KPROBE_TEST_DEADLINE_SCALE") or 1)


def stacks_of(pid: int) -> str:
    """What a process that outlived its deadline is doing, for the failure message: each
    thread's kernel state and wait channel, then its Python and native stacks (py-spy)."""
    lines = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            stat = (task / "stat").read_text()
            wchan = (task / "wchan").read_text() or "-"
        except OSError:
            continue
        name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        lines.append(f"thread {task.name} ({name}): state {state}, waiting in {wchan}")
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        lines.append("(py-spy is not installed: no Python stacks)")
    else:
        try:
            dump = subprocess.run([spy, "dump", "--native", "--pid", str(pid)],
                                  capture_output=True, text=True, timeout=60, check=False)
            lines.append((dump.stdout + dump.stderr)[-12000:])
        except subprocess.TimeoutExpired:
            lines.append("(py-spy dump did not finish in 60 s)")
    return "\n".join(lines)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path,
                 seconds: float = 30) -> None:
    """Poll ``{base}/healthz`` until it answers 200; fail with the server's log if the
    process exits or ``deadline_s(seconds)`` passes first."""
    import httpx

    deadline = time.monotonic() + deadline_s(seconds)
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, (
            f"{base} did not answer within {seconds:g} s: "
            f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


# A shell starts a background job (`cmd &`, no job control) with SIGINT ignored, and an
# ignored signal stays ignored across exec: a test that sends Ctrl-C to a child must give the
# child the default disposition, or a suite started that way waits for a child that never
# hears it (Python installs its KeyboardInterrupt handler only over SIG_DFL).
_SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def hears_ctrl_c(argv: list[str]) -> list[str]:
    """``argv`` (its first item a path) run with SIGINT at its default, whatever this
    process inherited."""
    return [sys.executable, "-c", _SIGINT_DEFAULT, *argv]


def run_ready_go(argv: list[str], on_ready: Callable[[list[str]], None],
                 timeout_s: float = 30) -> tuple[list[str], list[str]]:
    """Run a test program that prints ``ready ...`` and waits for a line on stdin: call
    ``on_ready`` with the ready line's words (to target its pid, say), send ``go``, and
    return (ready words, the words of the line it prints next) once it exited 0."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            ready = proc.stdout.readline().split()
            assert ready and ready[0] == "ready", ready
            on_ready(ready)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            after = proc.stdout.readline().split()
            assert proc.wait(timeout=deadline_s(timeout_s)) == 0, after
        finally:
            if proc.poll() is None:
                proc.kill()
    return ready, after
