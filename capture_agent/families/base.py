"""What a probe family is to the agent: a ``ProbeFamily`` subclass, registered by name in
``capture_agent/families/__init__.py``.

The agent knows nothing of any family in particular: it asks each registered family for
its sensor spec (given the agent's ``AgentOptions``), lets it set up the kernel side once
loaded, hands it each ring's drained batch to convert into lake rows (one or more tables),
asks it once per flush for state aggregated in kernel maps, and starts per-process uprobes
for families that name their places. Every hook but ``sensor_spec`` has a default that
does nothing, so a family says only what it does.

A family instance belongs to one agent and may keep state between those calls (the sched
family keeps its kernel-stack resolver between the load and the flushes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import numpy as np
import pyarrow as pa

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.layouts import Family
from kprobe.capture_agent.sensor import Sensor, SensorSpec

# A drained batch of one ring's records -> rows of one lake table (vectorised).
Converter = Callable[[np.ndarray, ClockSample], pa.Table]
# Per-process uprobe places: program -> (binary, file offset, retprobe) places.
UprobePlaces = dict[str, tuple[tuple[str, int, bool], ...]]

# How scheduling, TCP and targets' syscalls are recorded (`kprobe record --capture`):
# "full" (the default) keeps a row per switch, waking, TCP send/receive and target syscall;
# "evidence" keeps as rows only what bounds an off-CPU interval of at least min_offcpu_ns
# (and targets' TCP, and their peers'; and without payloads a target's syscalls that took
# that long or failed), with in-kernel per-slice sums (and counts) for the rest. Evidence
# is not the default yet (README, evidence capture: a run-queue segment its rows can
# invent).
CaptureMode = Literal["full", "evidence"]
CAPTURE_MODES: tuple[CaptureMode, ...] = get_args(CaptureMode)
DEFAULT_CAPTURE: CaptureMode = "full"


@dataclass(frozen=True)
class AgentOptions:
    """What the agent's configuration says to every family; each takes what it uses."""

    target_comms: tuple[str, ...] = ()  # process names whose exec makes a target
    target_cgroups: tuple[str, ...] = ()  # cgroup directories whose processes are targets
    target_all: bool = False  # every process is a target
    min_offcpu_ns: int = 1_000_000  # shorter off-CPU intervals are not recorded
    payloads: bool = False  # capture what programs exchange (syscall payloads, environments)
    payload_cap: int = 64 << 10  # bytes per payload region of a syscall
    vdso_clocks: bool = True  # with payloads: clock reads through the vDSO, by uprobes
    # with payloads: reads of regular files by identity, contents stored once (issue 16)
    files_by_identity: bool = True
    capture: CaptureMode = DEFAULT_CAPTURE  # tables cpu_slices, net_slices under evidence
    slice_ns: int = 10_000_000  # evidence capture: the aggregates' time slice


class ProbeFamily(ABC):
    """One probe family as the agent runs it (module doc)."""

    # the record layouts both sides agree on (checked against the object's BTF)
    family: ClassVar[Family]
    # ring map name -> (lake table, converter) for the rings the agent drains
    rings: ClassVar[Mapping[str, tuple[str, Converter]]]

    def __init__(self, options: AgentOptions) -> None:
        self.options = options

    @property
    def name(self) -> str:
        return self.family.name

    @abstractmethod
    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        """The sensor to load, sized and switched by ``self.options``; ``shared_maps``:
        maps of an already loaded sensor to reuse (the one targets map)."""

    def loaded(self, sensor: Sensor) -> None:  # noqa: B027 - a hook most families skip
        """Set up the kernel side after the sensor loaded, before it attaches."""

    def convert(self, ring: str, batch: np.ndarray, clock: ClockSample
                ) -> dict[str, pa.Table]:
        """Rows per lake table from one ring's drained batch; CaptureAgentError when the
        batch cannot be read (records of another layout version)."""
        table, convert = self.rings[ring]
        return {table: convert(batch, clock)}

    def take_losses(self) -> dict[tuple[str, str], int]:
        """What the converted rows lost since the last call, ``(table, reason) -> rows``
        (the agent reports it in ``lost`` with the kernel's drops)."""
        return {}

    def below_bound(self, sensor: Sensor) -> dict[str, int]:
        """Records the kernel counted instead of writing, by source (cumulative): evidence
        capture leaves them out by design (a target's quick syscall), so they are not
        lost, but the summary and the metrics say how many."""
        return {}

    def collect(self, sensor: Sensor, clock: ClockSample) -> dict[str, pa.Table]:
        """Rows per lake table of state aggregated in kernel maps, read once per flush."""
        return {}

    def tails(self, sensor: Sensor, clock: ClockSample) -> dict[str, pa.Table]:
        """Rows per lake table of what the kernel was still summing when the agent stops
        (called once, after the programs are detached and the rings drained)."""
        return {}

    def uprobe_places(self) -> Callable[[int], UprobePlaces] | None:
        """Where a target process's uprobes go, for sensors that attach them per process
        (``SensorSpec.uprobes_per_process``); None: no per-process uprobes."""
        return None
