"""Which processes get full capture (syscalls, payloads, off-CPU): by pid, comm or cgroup.

Children of a target are targets: the kernel adds forks of a target to the shared
``targets`` map. Processes already running at start are matched here, once, from /proc
(with their descendants); processes that exec later with a target comm, or start in a
target cgroup, are added by the process family in the kernel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from capture_agent import procinfo
from capture_agent.errors import BpfMapError, CaptureAgentError
from capture_agent.sensor import Sensor

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
            if procinfo.cgroup_id(path) is None:
                raise CaptureAgentError(f"--cgroup {path}: no such cgroup under "
                                        f"{procinfo.CGROUP_ROOT}")

    @property
    def any(self) -> bool:
        return bool(self.pids or self.comms or self.cgroups or self.everything)

    def cgroup_ids(self) -> list[int]:
        return [i for i in (procinfo.cgroup_id(p) for p in self.cgroups) if i is not None]

    def configure(self, sensor: Sensor) -> None:
        """Give the kernel the comm and cgroup rules, if this sensor holds those maps."""
        for map_name, keys in (
            ("target_comms", [c.encode().ljust(TASK_COMM_LEN, b"\0") for c in self.comms]),
            ("target_cgroups", [i.to_bytes(8, "little") for i in self.cgroup_ids()]),
        ):
            if not keys:
                continue
            try:
                fd = sensor.map_fd(map_name)
            except BpfMapError:
                continue  # this family does not do exec/cgroup targeting
            from capture_agent import libbpf

            for key in keys:
                libbpf.map_update(fd, key, b"\x01")

    def match_running(self) -> list[int]:
        """Running processes that are targets, with all their descendants."""
        if self.everything:
            return []  # the kernel's target_all flag covers every process
        wanted_cgroups = tuple(p.rstrip("/") for p in self.cgroups)
        parents: dict[int, int] = {}
        roots: set[int] = set(self.pids)
        for pid in procinfo.all_pids():
            info = procinfo.read_process(pid, with_env=False)
            if info.ppid is not None:
                parents[pid] = info.ppid
            if info.comm in self.comms:
                roots.add(pid)
            elif wanted_cgroups and info.cgroup and any(
                info.cgroup == c or info.cgroup.startswith(c + "/") for c in wanted_cgroups
            ):
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
