"""Host resources the demo (and the kernel tests) make and always undo: a memory cgroup and
a weighted CPU cgroup on cgroup v1 or v2, and a zram device used as swap.

    with MemoryCgroup("kprobe-demo", memory_limit=192 << 20) as cg:   # /sys/fs/cgroup/[memory/]…
        cg.add(pid)
    with CpuCgroup("kprobe-demo", weight=8) as cpu:                   # /sys/fs/cgroup/cpu…/…
    with zram_swap(1 << 30) as swap:                                  # /dev/zramN, swapped on
        swap.stored_bytes()

Each one removes itself on exit whatever happened (processes left in the cgroup are killed
first), and ``leftovers()`` says what a run left behind, so a caller can check it did not.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from kprobe.capture_agent.families.process import CgroupHierarchy, cgroup_mounts
from kprobe.errors import CommandError

ZRAM_CONTROL = Path("/sys/class/zram-control")


class HostError(CommandError):
    """A host resource is missing or could not be made (the message says which and why)."""


# -- memory cgroup ----------------------------------------------------------------------------
def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def memory_cgroup_support() -> str | None:
    """None when a memory cgroup with a limit can be made here, else what is missing."""
    mounts = cgroup_mounts()
    if "memory" in mounts:
        return None
    if "unified" not in mounts:
        return "a cgroup v1 memory controller or cgroup v2"
    controllers = (mounts["unified"] / "cgroup.subtree_control").read_text().split()
    if "memory" not in controllers:
        return f"the memory controller enabled in {mounts['unified']}"
    return None


class _Group:
    """What every cgroup directory does alike: take a process, list its processes."""

    path: Path

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []


class MemoryCgroup(_Group):
    """A throw-away cgroup, on a v1 host's memory controller or on cgroup v2.

    ``swap_limit``: the swap the group may use (v2: ``memory.swap.max``; v1: through
    ``memory.memsw.limit_in_bytes`` = limit + swap, where the host accounts swap); None
    leaves the default, no limit. (A test's 32 MiB group on v1 was not OOM-killed while a
    zram swap device was active: it swapped.)
    """

    def __init__(self, prefix: str = "kprobe", memory_limit: int | None = None,
                 swap_limit: int | None = None) -> None:
        mounts = cgroup_mounts()
        self.hierarchy: CgroupHierarchy
        if "memory" in mounts:  # a v1 (or hybrid) host: memory is a v1 controller
            self.hierarchy, root = "memory", mounts["memory"]
        elif "unified" in mounts:
            self.hierarchy, root = "unified", mounts["unified"]
        else:
            raise HostError("no cgroup v1 memory controller and no cgroup v2 mounted")
        self.path = root / f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.memory_limit = memory_limit
        self.swap_limit = swap_limit
        self._id: int | None = None

    def __enter__(self) -> MemoryCgroup:
        return self.create()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def create(self) -> MemoryCgroup:
        """Make the directory and set the limits (removed again if a limit is refused)."""
        if self.memory_limit is not None and self.hierarchy == "unified":
            problem = memory_cgroup_support()
            if problem:
                raise HostError(f"a memory limit needs {problem}")
        try:
            self.path.mkdir()
        except OSError as err:
            raise HostError(f"cannot create cgroup {self.path}: {err.strerror}") from None
        try:
            self._id = os.stat(self.path).st_ino
            if self.memory_limit is not None:
                self._limit(self.memory_limit)
        except BaseException:
            self.remove()
            raise
        return self

    @property
    def id(self) -> int:
        """The kernel's id for it (kernfs id = inode of the directory), kept after removal."""
        if self._id is None:
            self._id = os.stat(self.path).st_ino
        return self._id

    def _limit(self, limit: int) -> None:
        if self.hierarchy == "memory":
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists() and self.swap_limit is not None:
                memsw.write_text(str(limit + self.swap_limit))
            return
        (self.path / "memory.max").write_text(str(limit))
        swap = self.path / "memory.swap.max"
        if swap.exists() and self.swap_limit is not None:
            swap.write_text(str(self.swap_limit))

    def usage_bytes(self) -> int:
        """Memory charged to the group now."""
        name = "memory.usage_in_bytes" if self.hierarchy == "memory" else "memory.current"
        return int((self.path / name).read_text())

    def limit_hits(self) -> int:
        """How many times a charge hit the limit (v1 ``failcnt``, v2 ``events: max``)."""
        if self.hierarchy == "memory":
            return int((self.path / "memory.failcnt").read_text())
        for line in (self.path / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def remove(self) -> None:
        """Kill what is left inside, then remove the directory."""
        _kill_and_rmdir(self.path, self.pids)


def _kill_and_rmdir(path: Path, pids: Callable[[], list[int]]) -> None:
    """Kill every process in the cgroup at ``path``, then remove it (retried: a killed task
    leaves the cgroup a little after it is reaped)."""
    if not path.exists():
        return
    for _ in range(200):
        for pid in pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)
    raise HostError(f"could not remove cgroup {path}")


# -- CPU weight ------------------------------------------------------------------------------
def cpu_controller(weight: float) -> tuple[Path, str, str] | None:
    """(root, knob, value) giving a cgroup ``weight`` times a default group's CPU share: the
    v1 cpu controller (``cpu.shares``) or cgroup v2 with cpu enabled (``cpu.weight``)."""
    v1, unified = None, None
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            v1 = v1 or Path(fields[1])
        elif len(fields) >= 4 and fields[2] == "cgroup2":
            unified = unified or Path(fields[1])
    if v1 is not None:
        return v1, "cpu.shares", str(int(1024 * weight))
    if unified is not None and "cpu" in (unified / "cgroup.subtree_control").read_text().split():
        return unified, "cpu.weight", str(int(100 * weight))
    return None


class CpuCgroup(_Group):
    """A CPU cgroup weighted ``weight`` times a default group; its processes are killed and
    the directory removed afterwards.

    A shared machine schedules with autogroups: every other session's busy process is a
    group of its own with as much weight as a whole session, so one busy neighbour on a
    service's CPU takes as much as everything the service runs. Inside this cgroup the
    processes share the CPU thread by thread as on a dedicated host, and the group as a
    whole outweighs the neighbours.
    """

    def __init__(self, prefix: str = "kprobe", weight: float = 8.0) -> None:
        controller = cpu_controller(weight)
        if controller is None:
            raise HostError("no cgroup v1 cpu controller and no cgroup v2 with cpu enabled")
        root, self.knob, self.value = controller
        self.path = root / f"{prefix}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> CpuCgroup:
        return self.create()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def create(self) -> CpuCgroup:
        try:
            self.path.mkdir()
        except OSError as err:
            raise HostError(f"cannot create cgroup {self.path}: {err.strerror}") from None
        try:
            (self.path / self.knob).write_text(self.value)
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        _kill_and_rmdir(self.path, self.pids)


# -- zram swap --------------------------------------------------------------------------------
def zram_support() -> str | None:
    """None when a zram swap device can be made here, else what is missing. Loads the zram
    module (without devices) when it is not loaded yet."""
    for binary in ("mkswap", "swapon", "swapoff"):
        if shutil.which(binary) is None:
            return f"the {binary} program"
    if not ZRAM_CONTROL.exists():
        subprocess.run(["modprobe", "zram", "num_devices=0"], check=False,
                       capture_output=True)
    if not (ZRAM_CONTROL / "hot_add").exists():
        return "zram with hot_add (modprobe zram)"
    return None


class ZramSwap:
    """A zram device of ``size_bytes`` used as swap (``with zram_swap(size) as swap``);
    swapped off and removed on exit.

    Without swap, reclaim in a memory cgroup only drops clean page cache (~µs a page); with
    swap the anonymous pages of the cgroup are compressed out and faulted back in, which is
    real, slow reclaim work done by whichever thread charges the next page. (A class, not a
    generator: a generator-based context manager left open on purpose, as ``kprobe demo
    --keep`` leaves it, would still be closed, and the swap removed, when it is collected.)
    """

    def __init__(self, size_bytes: int, priority: int = 100) -> None:
        self.size_bytes, self.priority = size_bytes, priority
        self.device: int | None = None
        self._swapped = False

    @property
    def path(self) -> str:
        return f"/dev/zram{self.device}"

    @property
    def block(self) -> Path:
        return Path(f"/sys/block/zram{self.device}")

    def stored_bytes(self) -> int:
        """Bytes of pages swapped out to it now (``mm_stat`` orig_data_size)."""
        try:
            return int((self.block / "mm_stat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return 0

    def create(self) -> ZramSwap:
        problem = zram_support()
        if problem:
            raise HostError(f"a zram swap device needs {problem}")
        self.device = int((ZRAM_CONTROL / "hot_add").read_text())
        try:
            (self.block / "disksize").write_text(str(self.size_bytes))
            _run(["mkswap", self.path])
            _run(["swapon", "-p", str(self.priority), self.path])
            self._swapped = True
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Swap off (its pages come back to RAM or die with their processes), then reset
        and remove the device (retried: reset refuses a device held open for a moment)."""
        if self.device is None:
            return
        if self._swapped:
            subprocess.run(["swapoff", self.path], check=False, capture_output=True)
            self._swapped = False
        for _ in range(50):
            try:
                (self.block / "reset").write_text("1")
                (ZRAM_CONTROL / "hot_remove").write_text(str(self.device))
                break
            except OSError:
                time.sleep(0.1)
        self.device = None

    def __enter__(self) -> ZramSwap:
        return self.create()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()


def zram_swap(size_bytes: int, priority: int = 100) -> ZramSwap:
    """``with zram_swap(1 << 30) as swap:`` a zram swap device for the block's duration."""
    return ZramSwap(size_bytes, priority)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed: {proc.stderr.strip()[-200:]}")


def zram_device_exists(device: int) -> bool:
    return Path(f"/sys/block/zram{device}").exists()


def active_swaps() -> list[str]:
    """Devices and files in use as swap now (``/proc/swaps``)."""
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]
