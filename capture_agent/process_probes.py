"""Uprobes on target processes only, following the targets map as it changes.

A uprobe attached for every process plants its breakpoint in every process that maps the
probed file: with the libc clock probes that made *every* clock read on the node trap
(measured here: 17 ns -> 16 us per clock_gettime of an untargeted process). Attached per
process, the kernel plants it in that process's memory alone.

The kernel adds targets by itself (children of targets, comm and cgroup rules), so this
thread polls the shared ``targets`` map (one key walk, a few syscalls) every
``interval_s`` and attaches or detaches. What that costs a new child: the uprobe-recorded
calls it makes before the next poll are not recorded (a replay synthesizes those clock
values, as for any vDSO read it has no row for); ``attach_now`` covers a process the agent
starts itself (``kprobe run``) before it runs anything.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from kprobe.capture_agent import vdso_patch
from kprobe.capture_agent.errors import BpfError, VdsoPatchError
from kprobe.capture_agent.sensor import Sensor

log = logging.getLogger(__name__)

Places = Mapping[str, tuple[tuple[str, int, bool], ...]]


class ProcessProbes:
    def __init__(self, sensor: Sensor, places_for: Callable[[int], Places],
                 interval_s: float = 0.05) -> None:
        self.sensor = sensor
        self.places_for = places_for
        self.interval_s = interval_s
        self.failed = 0  # attach attempts refused (a process gone meanwhile, mostly)
        self._tried: set[int] = set()  # attached, or failed: not tried again while a target
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-probes", daemon=True)

    def start(self) -> ProcessProbes:
        self.sync()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def attached(self) -> int:
        return len(self.sensor.uprobe_pids)

    def attach_now(self, pid: int) -> None:
        """Attach for ``pid`` at once (the agent's own child, before it execs)."""
        with self._lock:
            self._attach(pid)

    def sync(self) -> None:
        """Attach for new targets, detach from processes that stopped being targets."""
        try:
            targets = set(self.sensor.targets())
        except BpfError as err:  # the sensor is closing
            log.debug("targets unreadable: %s", err)
            return
        with self._lock:
            for pid in self._tried - targets:
                self._detach(pid)
            self._tried &= targets
            for pid in sorted(targets - self._tried):
                self._attach(pid)

    def _attach(self, pid: int) -> None:
        self._tried.add(pid)
        places = self.places_for(pid)
        if not places:
            return
        try:
            self.sensor.attach_uprobes(pid, places)
        except OSError as err:
            self.failed += 1
            log.debug("uprobes for pid %d not attached: %s", pid, err)

    def _detach(self, pid: int) -> None:
        self.sensor.detach_uprobes(pid)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sync()


class VdsoPatcher(ProcessProbes):
    """The same following of the targets, rewriting each target's vDSO clock entry points
    into syscalls (capture_agent/vdso_patch.py) instead of attaching uprobes: the syscall
    path then records every clock read. Each poll also checks that a rewritten target
    still has its stubs (an exec maps a fresh vDSO) and rewrites it again. A target whose
    vDSO cannot be rewritten (traced by another tool, ptrace refused) gets the libc uprobes
    instead, when ``places_for`` has them. A process that stops being a target keeps its
    rewritten vDSO (a clock read then costs it a syscall, ~0.1 us, and is not recorded)."""

    def __init__(self, sensor: Sensor, places_for: Callable[[int], Places] = lambda pid: {},
                 interval_s: float = 0.05) -> None:
        super().__init__(sensor, places_for, interval_s)
        self.patched: dict[int, tuple[int, bytes]] = {}  # pid -> an entry point, its stub
        self.busy = 0  # tries put off: a thread stood inside an entry point's first bytes
        self.rewritten = 0  # processes rewritten (again after an exec counts again)
        self.owned: set[int] = set()  # rewritten by their ExecWatch, not here

    @property
    def attached(self) -> int:
        return len(self.patched) + len(self.sensor.uprobe_pids)

    def attach_now(self, pid: int) -> None:
        """The agent's own child is rewritten at each exec by ``vdso_patch.ExecWatch``, its
        tracer: never stopped from here (the tracer's waits would take this stop)."""
        with self._lock:
            self._tried.add(pid)
            self.owned.add(pid)

    def rewritten_at_exec(self, pid: int, result: vdso_patch.PatchResult) -> None:
        with self._lock:
            self._tried.add(pid)
            if result.sample is not None:
                self.patched[pid] = result.sample
                self.rewritten += 1

    def sync(self) -> None:
        super().sync()
        with self._lock:
            for pid, (address, code) in list(self.patched.items()):
                if pid in self.owned:
                    continue
                if not vdso_patch.still_rewritten(pid, address, code):
                    del self.patched[pid]  # an exec: rewrite its new vDSO
                    self._attach(pid)

    def _attach(self, pid: int) -> None:
        try:
            result = vdso_patch.patch(pid)
        except VdsoPatchError as err:
            log.debug("vDSO of pid %d not rewritten: %s", pid, err)
            if self.places_for(pid):
                super()._attach(pid)  # the libc uprobes instead (counts its own failure)
            else:
                self._tried.add(pid)
                self.failed += 1
            return
        if result.patched:
            self._tried.add(pid)
            if result.sample is not None:
                self.patched[pid] = result.sample
            self.rewritten += result.entries > 0
        else:
            self.busy += 1  # not marked tried: the next poll tries again

    def _detach(self, pid: int) -> None:
        self.patched.pop(pid, None)
        self.owned.discard(pid)
        if pid in self.sensor.uprobe_pids:
            self.sensor.detach_uprobes(pid)
