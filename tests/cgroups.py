"""A throw-away cgroup for kernel tests, on cgroup v2 or a v1 host's memory controller.

    with TestCgroup(memory_limit=64 << 20) as cg:   # /sys/fs/cgroup/[memory/]kprobe-test-XXXX
        cg.add(pid)
        cg.id                                         # what the kernel reports for it

On exit every process still in it is killed and the directory removed, whatever happened.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from types import TracebackType

from capture_agent.families.process import CgroupHierarchy, cgroup_mounts
from tests.support import require


class TestCgroup:
    __test__ = False  # not a pytest test class

    def __init__(self, memory_limit: int | None = None) -> None:
        mounts = cgroup_mounts()
        self.hierarchy: CgroupHierarchy
        if "memory" in mounts:  # a v1 (or hybrid) host: memory is a v1 controller
            self.hierarchy, root = "memory", mounts["memory"]
        else:
            require("unified" in mounts, "a cgroup v1 memory controller or cgroup v2")
            self.hierarchy, root = "unified", mounts["unified"]
            if memory_limit is not None:
                controllers = (root / "cgroup.subtree_control").read_text().split()
                require("memory" in controllers, f"the memory controller enabled in {root}")
        self.path = root / f"kprobe-test-{uuid.uuid4().hex[:8]}"
        self.memory_limit = memory_limit
        self._id: int | None = None

    def __enter__(self) -> TestCgroup:
        self.path.mkdir()
        try:
            self._id = os.stat(self.path).st_ino
            if self.memory_limit is not None:
                self._limit(self.memory_limit)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    @property
    def id(self) -> int:
        """The kernel's id for it (kernfs id = inode of the directory), kept after removal."""
        if self._id is None:
            self._id = os.stat(self.path).st_ino
        return self._id

    def _limit(self, limit: int) -> None:
        if self.hierarchy == "memory":
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            return
        (self.path / "memory.max").write_text(str(limit))
        swap = self.path / "memory.swap.max"
        if swap.exists():
            swap.write_text("0")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kill what is left inside, then remove the directory (retried: a killed task
        leaves the cgroup a little after it is reaped)."""
        if not self.path.exists():
            return
        for _ in range(100):
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"could not remove test cgroup {self.path}")
