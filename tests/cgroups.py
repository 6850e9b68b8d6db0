"""A throw-away cgroup for kernel tests, on cgroup v2 or a v1 host's memory controller.

    with TestCgroup(memory_limit=64 << 20) as cg:   # /sys/fs/cgroup/[memory/]kprobe-test-XXXX
        cg.add(pid)
        cg.id                                         # what the kernel reports for it

On exit every process still in it is killed and the directory removed, whatever happened.
The cgroup itself is ``kprobe.demo.host.MemoryCgroup`` (the demo makes the same kind); here
a missing controller skips the test (fails it under KPROBE_CI=1), and on cgroup v2 a limit
comes without swap (v2 ``memory.swap.max`` 0, v1 ``memory.memsw.limit_in_bytes`` = the
limit), as the kernel tests expect (an OOM kill, not swapping); ``swap=True`` lets the group
swap, as the fault scenarios need (reclaim into a zram swap is the slow path they measure:
without it a v1 host's groups only dropped page cache and the scenarios saw no pressure).
"""

from __future__ import annotations

from kprobe.capture_agent.families.process import cgroup_mounts
from kprobe.demo.host import MemoryCgroup, memory_cgroup_support
from tests.support import require


class TestCgroup(MemoryCgroup):
    __test__ = False  # not a pytest test class

    def __init__(self, memory_limit: int | None = None, swap: bool = False) -> None:
        mounts = cgroup_mounts()
        require("memory" in mounts or "unified" in mounts,
                "a cgroup v1 memory controller or cgroup v2")
        problem = memory_cgroup_support() if memory_limit is not None else None
        require(problem is None, problem or "")
        super().__init__("kprobe-test", memory_limit=memory_limit,
                         swap_limit=None if swap else 0)

    def __enter__(self) -> TestCgroup:
        self.create()
        return self
