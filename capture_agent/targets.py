"""Which processes get full capture (syscalls, payloads, off-CPU): by pid, comm or cgroup.

Children of a target are targets: the kernel adds forks of a target to the shared
``targets`` map. Processes already running at start are matched here, once, from /proc
(with their descendants); processes that exec later with a target comm, or start in a
target cgroup, are added by the process family in the kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kprobe.capture_agent import procinfo
from kprobe.capture_agent.errors import CaptureAgentError

TASK_COMM_LEN = 16


@dataclass
class Targets:
    pids: list[int] = field(default_factory=list)
    comms: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # cgroup v2 paths, e.g. /kprobe/payments
    everything: bool = False

    def __post_init__(self) -> None:
        for comm in self.comms:
            if not comm or len(comm.encode()) >= TASK_COMM_LEN:
                raise CaptureAgentError(
                    f"--comm {comm!r}: a task name is 1 to {TASK_COMM_LEN - 1} bytes "
                    "(the kernel truncates longer names)")
        for pid in self.pids:
            if not os.path.exists(f"/proc/{pid}"):
                raise CaptureAgentError(f"--pid {pid}: no such process")
        for path in self.cgroups:
            if _cgroup_dir(path) is None:
                raise CaptureAgentError(f"--cgroup {path}: no such cgroup directory "
                                        f"(a path under {procinfo.CGROUP_ROOT} or absolute)")

    @property
    def any(self) -> bool:
        return bool(self.pids or self.comms or self.cgroups or self.everything)

    def cgroup_dirs(self) -> list[str]:
        """The cgroup directories, absolute (v1 memory or v2 unified, as given)."""
        return [str(d) for d in (_cgroup_dir(p) for p in self.cgroups) if d is not None]

    def match_running(self) -> list[int]:
        """Running processes that are targets, with all their descendants."""
        if self.everything:
            return []  # the kernel's target_all flag covers every process
        parents: dict[int, int] = {}
        roots: set[int] = set(self.pids) | self._pids_in_cgroups()
        for pid in procinfo.all_pids():
            info = procinfo.read_process(pid, with_env=False)
            if info.ppid is not None:
                parents[pid] = info.ppid
            if info.comm in self.comms:
                roots.add(pid)
        found = set(roots)
        changed = True
        while changed:  # descendants: a few passes over the (small) process list
            changed = False
            for pid, ppid in parents.items():
                if ppid in found and pid not in found:
                    found.add(pid)
                    changed = True
        return sorted(found)

    def _pids_in_cgroups(self) -> set[int]:
        """Members of the target cgroups and their descendant cgroups (any hierarchy)."""
        found: set[int] = set()
        for top in self.cgroup_dirs():
            for procs in Path(top).rglob("cgroup.procs"):
                try:
                    found.update(int(x) for x in procs.read_text().split())
                except OSError:
                    continue  # a cgroup removed while we walk
        return found


def _cgroup_dir(path: str) -> Path | None:
    """An existing cgroup directory: absolute as given, or relative to the cgroup root."""
    for candidate in (Path(path), procinfo.CGROUP_ROOT / path.lstrip("/")):
        if candidate.is_absolute() and (candidate / "cgroup.procs").exists():
            return candidate
    return None
