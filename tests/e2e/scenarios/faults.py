"""Fault injectors for the scenario tests; each undoes itself whatever happens.

    with zram_swap(1 << 30):                      # a swap device made for the test
    with iptables_drop(port, probability=0.25):   # INPUT -i lo, that TCP port only
    with cpu_cgroup() as cg:                      # service and hog isolated from neighbours
    with culprit("hog", "--threads", "3") as c:   # a culprit process; c.pid, c.tids
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO, require, require_binary

_ZRAM_CONTROL = Path("/sys/class/zram-control")


@contextmanager
def zram_swap(size_bytes: int) -> Iterator[str]:
    """A zram device of ``size_bytes`` used as swap; swapped off and removed afterwards.

    Without swap, reclaim in a memory cgroup only drops clean page cache (~µs); with swap
    the anonymous pages of the cgroup are compressed out and faulted back in.
    """
    require_binary("mkswap")
    require_binary("swapon")
    if not _ZRAM_CONTROL.exists():
        subprocess.run(["modprobe", "zram", "num_devices=0"], check=False,
                       capture_output=True)
    require((_ZRAM_CONTROL / "hot_add").exists(), "zram with hot_add (modprobe zram)")
    dev = int((_ZRAM_CONTROL / "hot_add").read_text())
    block = Path(f"/sys/block/zram{dev}")
    path = f"/dev/zram{dev}"
    swapped = False
    try:
        (block / "disksize").write_text(str(size_bytes))
        subprocess.run(["mkswap", path], check=True, capture_output=True)
        subprocess.run(["swapon", path], check=True, capture_output=True)
        swapped = True
        yield path
    finally:
        if swapped:
            subprocess.run(["swapoff", path], check=False, capture_output=True)
        for _ in range(50):  # reset refuses a device still held open for a moment
            try:
                (block / "reset").write_text("1")
                (_ZRAM_CONTROL / "hot_remove").write_text(str(dev))
                break
            except OSError:
                time.sleep(0.1)


@contextmanager
def iptables_drop(port: int, probability: float) -> Iterator[list[str]]:
    """Drop a random share of the TCP segments arriving on loopback for ``port``.

    On ``INPUT -i lo`` the segment is lost after it left the sender (DESIGN: on OUTPUT the
    send fails locally and TCP counts no retransmit), so TCP's timers resend it. The rule
    carries a unique comment and is deleted by its exact spec afterwards.
    """
    iptables = require_binary("iptables")
    rule = ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(port), "-m", "statistic",
            "--mode", "random", "--probability", f"{probability:.4f}", "-m", "comment",
            "--comment", f"kprobe-e2e-{uuid.uuid4().hex[:8]}", "-j", "DROP"]
    subprocess.run([iptables, "-w", "-I", *rule], check=True, capture_output=True)
    try:
        yield rule
    finally:
        subprocess.run([iptables, "-w", "-D", *rule], check=False, capture_output=True)


@contextmanager
def cpu_cgroup(weight: float = 8.0) -> Iterator[Path]:
    """A CPU cgroup weighted ``weight`` times a default group; its processes are killed and
    the directory removed afterwards.

    The machine is shared: with autogroup scheduling, every other session's process is a
    group of its own with the same weight as the test's whole session, so one busy
    neighbour on the service's CPU takes as much as the culprit's threads together. Inside
    this cgroup the service and its culprit share the CPU thread by thread as on a
    dedicated host, and the group as a whole outweighs the neighbours.
    """
    root, knob, value = _cpu_controller(weight)
    path = root / f"kprobe-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / knob).write_text(value)
        yield path
    finally:
        for _ in range(100):
            for pid in (path / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def _cpu_controller(weight: float) -> tuple[Path, str, str]:
    v1, unified = None, None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            v1 = v1 or Path(fields[1])
        elif len(fields) >= 4 and fields[2] == "cgroup2":
            unified = unified or Path(fields[1])
    if v1 is not None:
        return v1, "cpu.shares", str(int(1024 * weight))
    require(unified is not None and "cpu" in (unified / "cgroup.subtree_control").read_text()
            .split(), "a cgroup v1 cpu controller or cgroup v2 with cpu enabled")
    assert unified is not None
    return unified, "cpu.weight", str(int(100 * weight))


@dataclass
class Culprit:
    proc: subprocess.Popen[str]
    pid: int
    tids: list[int]


@contextmanager
def culprit(kind: str, *args: str, ready_timeout_s: float = 60.0) -> Iterator[Culprit]:
    """Start ``culprits <kind> <args>``; wait for its ``ready`` line; kill it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.scenarios.culprits", kind, *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _read_line(proc, ready_timeout_s)
        words = line.split()
        if not words or words[0] != "ready":
            _, err = _stop(proc)
            raise RuntimeError(f"culprit {kind} did not start: {line!r} {err[-2000:]}")
        yield Culprit(proc, int(words[1]), [int(w) for w in words[2:]])
    finally:
        _stop(proc)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            return proc.stdout.readline().strip()
        if proc.poll() is not None:
            return ""
    return ""


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    # Same session as the test (and so as the service): with autogroup scheduling a new
    # session would be a task group of its own, and CPU would be shared between sessions,
    # not between threads. A culprit is one process (no children): killing it is enough.
    if proc.poll() is None:
        proc.kill()
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        return "", ""
