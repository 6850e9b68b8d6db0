"""Fault injectors for the scenario tests; each undoes itself whatever happens.

    with zram_swap(1 << 30):                      # a swap device made for the test
    with iptables_drop(port, probability=0.25):   # INPUT -i lo, that TCP port only
    with cpu_cgroup() as cg:                      # service and hog isolated from neighbours
    with culprit("hog", "--threads", "3") as c:   # a culprit process; c.pid, c.tids
    with loop_filesystem(tmp, 512 << 20) as mnt:  # an ext4 on a loop device (another disk)
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kprobe.demo import host
from tests.support import REPO, require, require_binary


@contextmanager
def zram_swap(size_bytes: int) -> Iterator[str]:
    """A zram device of ``size_bytes`` used as swap; swapped off and removed afterwards
    (``kprobe.demo.host.zram_swap``; a missing zram or swap tool skips the test)."""
    problem = host.zram_support()
    require(problem is None, problem or "")
    with host.zram_swap(size_bytes) as swap:
        yield swap.path


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
    the directory removed afterwards (``kprobe.demo.host.CpuCgroup``, which says why the
    scenarios need one on a shared machine)."""
    require(host.cpu_controller(weight) is not None,
            "a cgroup v1 cpu controller or cgroup v2 with cpu enabled")
    with host.CpuCgroup("kprobe-test", weight) as cgroup:
        yield cgroup.path


@contextmanager
def loop_filesystem(tmp: Path, size_bytes: int) -> Iterator[Path]:
    """An ext4 file system on a loop device backed by a file in /dev/shm (memory): a block
    device other than the one the services write to. Unmounted, detached and deleted
    afterwards."""
    losetup, mkfs, mount = (require_binary(b) for b in ("losetup", "mkfs.ext4", "mount"))
    umount = require_binary("umount")
    backing = Path("/dev/shm") / f"kprobe-e2e-{uuid.uuid4().hex[:8]}.img"
    mnt = tmp / "loopfs"
    mnt.mkdir(parents=True, exist_ok=True)
    device = ""
    with open(backing, "wb") as f:
        f.truncate(size_bytes)
    try:
        device = subprocess.run([losetup, "-f", "--show", str(backing)], check=True,
                                capture_output=True, text=True).stdout.strip()
        subprocess.run([mkfs, "-q", "-F", device], check=True, capture_output=True)
        subprocess.run([mount, device, str(mnt)], check=True, capture_output=True)
        yield mnt
    finally:
        subprocess.run([umount, str(mnt)], check=False, capture_output=True)
        if device:
            subprocess.run([losetup, "-d", device], check=False, capture_output=True)
        backing.unlink(missing_ok=True)


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
