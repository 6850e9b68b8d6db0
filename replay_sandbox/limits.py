"""What one replay may use: rlimits for every process of the sandbox, a cgroup where the
host has one, and how much of the program's output the tracer keeps.

    limits = Limits(memory=512 << 20)
    group = ReplayCgroup(limits)          # memory.max (+ no swap) and pids.max
    notes = group.create()                # what could not be made, for the report
    group.add(pid)                        # the tracee, before it execs bubblewrap
    group.usage()                         # {"oom_kills": …, "pids_limit_hits": …, …}
    group.remove()                        # kills what is left, removes the directories

The rlimits (``rlimits(limits)``) are set by the forked child before it execs bubblewrap,
so bwrap and every process of the sandbox inherit them. RLIMIT_NPROC counts the processes
of the sandbox's unprivileged uid in the sandbox's own user namespace (``sandbox``), so it
bounds this replay alone; the cgroup's ``pids.max`` bounds threads too. The cgroup is made
at the root of each hierarchy, as the demo's (``kprobe.demo.host``) are: on cgroup v1 in
the ``memory`` and ``pids`` controllers, on v2 in the unified hierarchy when those
controllers are enabled there. A host without them keeps the rlimits only (the report
says so): then the private /tmp (a tmpfs) is bounded by RLIMIT_FSIZE per file only.

(``replay_sandbox`` may import ``lake`` only, so the cgroup code of ``kprobe.demo.host``
cannot be used here; this module is self-contained and small on purpose.)
"""

from __future__ import annotations

import os
import resource
import signal
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from kprobe.replay_sandbox.errors import SpecError

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Per-replay bounds (defaults fit the programs replayed here; ``MAXIMA`` caps them)."""

    cpu_s: int = 300  # RLIMIT_CPU of each process (SIGXCPU, then SIGKILL 5 s later)
    address_space: int = 8 * GiB  # RLIMIT_AS of each process
    processes: int = 256  # RLIMIT_NPROC in the sandbox, and the cgroup's pids.max
    file_size: int = 256 * MiB  # RLIMIT_FSIZE: the largest file a process may write
    open_files: int = 1024  # RLIMIT_NOFILE
    memory: int = 1 * GiB  # the cgroup's memory limit (swap not allowed)
    output_per_fd: int = 16 * MiB  # output bytes kept per descriptor, then only counted
    output_total: int = 64 * MiB  # output bytes kept over all descriptors

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            top = MAXIMA[f.name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"limits.{f.name}: expected a positive integer, got {value!r}")
            if top is not None and value > top:
                raise SpecError(f"limits.{f.name}: at most {top}, got {value}")

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Limits:
        if not isinstance(data, dict):
            raise SpecError("limits: expected an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"limits: unknown field {unknown[0]!r}")
        return cls(**data)


MAXIMA: dict[str, int] = {
    "cpu_s": 3600, "address_space": 64 * GiB, "processes": 4096, "file_size": 4 * GiB,
    "open_files": 65536, "memory": 16 * GiB, "output_per_fd": 1 * GiB,
    "output_total": 1 * GiB,
}


def rlimits(limits: Limits, min_file_size: int = 0) -> list[tuple[int, tuple[int, int]]]:
    """``(resource, (soft, hard))`` pairs for ``resource.setrlimit`` in the child.

    ``min_file_size``: bubblewrap copies files into the sandbox (``--ro-bind-data``) under
    the same RLIMIT_FSIZE, so the limit is at least the largest of them."""
    fsize = max(limits.file_size, min_file_size + 1)
    # bwrap's own processes (monitor, pid 1, set-up helper) count against RLIMIT_NPROC
    return [
        (resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5)),
        (resource.RLIMIT_AS, (limits.address_space, limits.address_space)),
        (resource.RLIMIT_NPROC, (limits.processes + 4, limits.processes + 4)),
        (resource.RLIMIT_FSIZE, (fsize, fsize)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
        (resource.RLIMIT_CORE, (0, 0)),
    ]


def _cgroup_roots(mounts: Path = Path("/proc/self/mounts")) -> dict[str, Path]:
    """Where the ``memory`` and ``pids`` controllers can be used: a v1 hierarchy, or the
    unified one when the controller is enabled at its root."""
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup":
            for name in ("memory", "pids"):
                if name in parts[3].split(","):
                    v1.setdefault(name, Path(parts[1]))
        elif parts[2] == "cgroup2" and unified is None:
            unified = Path(parts[1])
    roots = dict(v1)
    if unified is not None:
        try:
            enabled = (unified / "cgroup.subtree_control").read_text().split()
        except OSError:
            enabled = []
        for name in ("memory", "pids"):
            if name not in roots and name in enabled:
                roots[name] = unified
    return roots


class ReplayCgroup:
    """The cgroup(s) of one replay: a memory limit without swap and a process limit."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.name = f"kprobe-replay-{uuid.uuid4().hex[:12]}"
        self.dirs: dict[str, Path] = {}  # controller -> its directory (one on v2)

    def create(self) -> list[str]:
        """Make the directories and set the limits; notes on what the host lacks."""
        notes: list[str] = []
        roots = _cgroup_roots()
        for controller in ("memory", "pids"):
            root = roots.get(controller)
            if root is None:
                notes.append(f"no cgroup {controller} controller here: the replay is bounded "
                             f"by rlimits only")
                continue
            path = root / self.name
            try:
                if path not in self.dirs.values():
                    path.mkdir()
                self.dirs[controller] = path
                self._limit(controller, path)
            except OSError as err:
                notes.append(f"cannot use cgroup {path}: {err.strerror}; the replay is "
                              f"bounded by rlimits only")
                self.dirs.pop(controller, None)
        return notes

    def _limit(self, controller: str, path: Path) -> None:
        v2 = (path / "cgroup.controllers").exists()
        if controller == "pids":
            (path / "pids.max").write_text(str(self.limits.processes + 4))
        elif v2:
            (path / "memory.max").write_text(str(self.limits.memory))
            if (path / "memory.swap.max").exists():
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(self.limits.memory))
            memsw = path / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # memory + swap: no swap beyond the memory limit
                memsw.write_text(str(self.limits.memory))

    def add(self, pid: int) -> None:
        for path in set(self.dirs.values()):
            (path / "cgroup.procs").write_text(str(pid))

    def usage(self) -> dict[str, float]:
        """Peak memory, OOM kills and refused forks, read before ``remove``."""
        out: dict[str, float] = {}
        memory = self.dirs.get("memory")
        if memory is not None:
            if (memory / "memory.peak").exists():
                out["memory_peak_bytes"] = float(_read_int(memory / "memory.peak"))
                out["oom_kills"] = float(_keyed(memory / "memory.events", "oom_kill"))
            else:
                out["memory_peak_bytes"] = float(_read_int(memory / "memory.max_usage_in_bytes"))
                out["oom_kills"] = float(_keyed(memory / "memory.oom_control", "oom_kill"))
        pids = self.dirs.get("pids")
        if pids is not None:
            out["pids_limit_hits"] = float(_keyed(pids / "pids.events", "max"))
        return out

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in set(self.dirs.values()):
            try:
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def remove(self) -> None:
        """Kill every process left in the group, then remove its directories (retried: a
        killed task leaves the cgroup a little after it is reaped). Never raises."""
        deadline = time.monotonic() + 10.0
        for path in set(self.dirs.values()):
            while path.exists():
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.01)
        self.dirs.clear()


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _keyed(path: Path, key: str) -> int:
    """``key value`` files (memory.events, memory.oom_control, pids.events)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
