"""Sched family: mirror of bpf/sched.h, sensor configuration, and batches -> lake tables.

Rings (one record size each):
  sched_events   struct sched_event   switch / waking / wakeup / wakeup_new, system-wide
  offcpu_events  struct offcpu_event  blocked intervals of targeted threads (lake `offcpu`)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.families._arrow import (
    check_header,
    comm_array,
    int_array,
    lookup_strings,
)
from kprobe.capture_agent.families.base import AgentOptions, ProbeFamily
from kprobe.capture_agent.kallsyms import Kallsyms, KernelStacks
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

SCHED_LAYOUT_VERSION = 1
TASK_COMM_LEN = 16

# enum task_state_code: index into the letters sched_switch prints
TASK_STATE_LETTERS = "RSDTtXZPI"
_STATE_C_NAMES = ("R", "S", "D", "T", "t", "X", "Z", "P", "I")

SCHED_FLAG_PREEMPT = 0x1
OFFCPU_FLAG_WAKER = 0x1
OFFCPU_FLAG_ENDS_AT_WAKING = 0x2  # the switch back in was not traced: ends at the waking

SCHED_EVENT = record_dtype(
    [
        ("prev_pid", "<u4"),
        ("prev_tid", "<u4"),
        ("next_pid", "<u4"),
        ("next_tid", "<u4"),
        ("prev_comm", f"S{TASK_COMM_LEN}"),
        ("next_comm", f"S{TASK_COMM_LEN}"),
        ("target_cpu", "<i4"),
        ("prev_state", "u1"),
        ("__pad", "u1", (3,)),
    ]
)

OFFCPU_EVENT = record_dtype(
    [
        ("start_ns", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("waker_pid", "<u4"),
        ("waker_tid", "<u4"),
        ("kstack_id", "<i4"),
        ("cpu_out", "<u2"),
        ("state", "u1"),
        ("__pad", "u1"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("waker_comm", f"S{TASK_COMM_LEN}"),
    ]
)

SCHED_KINDS = (
    EventKind.SCHED_SWITCH,
    EventKind.SCHED_WAKING,
    EventKind.SCHED_WAKEUP,
    EventKind.SCHED_WAKEUP_NEW,
)
# lake `sched.kind` per EventKind value (index = kind)
_KIND_NAMES = ["", "switch", "waking", "wakeup", "wakeup_new"]

FAMILY = Family(
    name="sched",
    object_file="sched.bpf.o",
    structs=MappingProxyType({"sched_event": SCHED_EVENT, "offcpu_event": OFFCPU_EVENT}),
    enums=MappingProxyType(
        {
            "task_state_code": {f"TASK_STATE_{c}": i for i, c in enumerate(_STATE_C_NAMES)},
            "sched_constants": {
                "SCHED_LAYOUT_VERSION": SCHED_LAYOUT_VERSION,
                "SCHED_FLAG_PREEMPT": SCHED_FLAG_PREEMPT,
                "OFFCPU_FLAG_WAKER": OFFCPU_FLAG_WAKER,
                "OFFCPU_FLAG_ENDS_AT_WAKING": OFFCPU_FLAG_ENDS_AT_WAKING,
            },
        }
    ),
    rings=MappingProxyType({"sched_events": SCHED_EVENT, "offcpu_events": OFFCPU_EVENT}),
    layout_version=SCHED_LAYOUT_VERSION,
)


@dataclass(frozen=True)
class SchedConfig:
    """What the sched sensor records. Sizes are bytes (rings: power of two pages)."""

    min_offcpu_ns: int = 1_000_000
    record_switch: bool = True
    record_waking: bool = True
    # sched_wakeup: off by default. The sched_waking row already names the waker, the
    # wakee and the time (the wakeup completes microseconds later, often in the idle task:
    # compute/ reads the waking rows); recording both made wakeups two rows each.
    record_wakeup: bool = False
    record_wakeup_new: bool = True  # a new task's first wakeup: its parent is the waker
    targets_only: bool = False  # sched_events only when a target is involved
    target_all: bool = False  # every process is a target (off-CPU for all threads)
    wakeup_fill_pct: int = 50
    # Ring sizes: one drain interval (0.1 s) of the rate to absorb, plus headroom; every
    # mapped page of a ring is resident in the agent. sched_events (every switch and wakeup
    # on the node, 80-byte slots): 4 MiB = 52k slots = 0.1 s of 520k events/s, far above
    # what two CPUs switch (the 50 % wakeup drains early from 260k/s). offcpu_events
    # (88-byte slots, watched threads blocked over min_offcpu_ns): 1 MiB = 11.9k intervals
    # per 0.1 s.
    sched_ring_bytes: int = 4 << 20
    offcpu_ring_bytes: int = 1 << 20
    offcpu_threads: int = 16384  # threads off CPU at once that can be tracked
    stack_entries: int = 8192


def sensor_spec(config: SchedConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or SchedConfig()
    return SensorSpec(
        family=FAMILY,
        config={
            "min_offcpu_ns": c.min_offcpu_ns,
            "record_switch": int(c.record_switch),
            "record_waking": int(c.record_waking),
            "record_wakeup": int(c.record_wakeup),
            "record_wakeup_new": int(c.record_wakeup_new),
            "sched_targets_only": int(c.targets_only),
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
        },
        ring_bytes={"sched_events": c.sched_ring_bytes, "offcpu_events": c.offcpu_ring_bytes},
        map_entries={"offcpu_start": c.offcpu_threads, "offcpu_stacks": c.stack_entries},
        shared_maps=shared_maps or {},
        # not recording wakeups: do not even run those programs
        disabled=frozenset(name for name, on in (("on_sched_wakeup", c.record_wakeup),
                                                 ("on_sched_wakeup_new", c.record_wakeup_new))
                           if not on),
    )


_SCHED_KINDS = tuple(int(k) for k in SCHED_KINDS)
_STATE_LETTERS = list(TASK_STATE_LETTERS)


def sched_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``SCHED_EVENT`` -> rows of lake table ``sched`` (vectorised)."""
    hdr = check_header(batch, FAMILY, _SCHED_KINDS)
    kind = hdr.kind
    not_switch = kind != EventKind.SCHED_SWITCH
    is_switch = ~not_switch
    columns = {
        "ts_ns": pa.array(clock.to_epoch(batch["hdr"]["ktime_ns"])),
        "cpu": int_array(hdr.cpu),
        "kind": lookup_strings(_KIND_NAMES, kind),
        "prev_pid": int_array(batch["prev_pid"], null=not_switch),
        "prev_tid": int_array(batch["prev_tid"], null=not_switch),
        "prev_comm": comm_array(batch["prev_comm"], null=not_switch),
        "prev_state": lookup_strings(_STATE_LETTERS, batch["prev_state"],
                                     null=not_switch),
        "next_pid": int_array(batch["next_pid"], null=not_switch),
        "next_tid": int_array(batch["next_tid"], null=not_switch),
        "next_comm": comm_array(batch["next_comm"], null=not_switch),
        # waking/wakeup records carry the waker in prev_* and the wakee in next_*
        "waker_pid": int_array(batch["prev_pid"], null=is_switch),
        "waker_tid": int_array(batch["prev_tid"], null=is_switch),
        "wakee_pid": int_array(batch["next_pid"], null=is_switch),
        "wakee_tid": int_array(batch["next_tid"], null=is_switch),
        "target_cpu": int_array(batch["target_cpu"], null=is_switch),
    }
    return pa.table(columns, schema=table_spec("sched").payload_schema)


def offcpu_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``OFFCPU_EVENT`` -> rows of lake table ``offcpu`` (vectorised).

    ``wait_reason`` stays null here: it comes from the symbolised kernel stack.
    """
    hdr = check_header(batch, FAMILY, (int(EventKind.OFFCPU),))
    start = batch["start_ns"].astype(np.int64)
    no_waker = (hdr.flags & OFFCPU_FLAG_WAKER) == 0
    columns = {
        "ts_ns": pa.array(clock.to_epoch(start)),
        "dur_ns": pa.array(batch["hdr"]["ktime_ns"].astype(np.int64) - start),
        "pid": int_array(batch["pid"]),
        "tid": int_array(batch["tid"]),
        "cpu": int_array(batch["cpu_out"]),
        "comm": comm_array(batch["comm"]),
        "state": lookup_strings(_STATE_LETTERS, batch["state"]),
        "wait_reason": pa.nulls(len(batch), pa.string()),
        "kstack_id": int_array(batch["kstack_id"], null=batch["kstack_id"] < 0,
                               arrow_type=pa.int64()),
        "waker_pid": int_array(batch["waker_pid"], null=no_waker),
        "waker_tid": int_array(batch["waker_tid"], null=no_waker),
        "waker_comm": comm_array(batch["waker_comm"], null=no_waker),
        "ends_at_waking": pa.array((hdr.flags & OFFCPU_FLAG_ENDS_AT_WAKING) != 0),
    }
    return pa.table(columns, schema=table_spec("offcpu").payload_schema)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "sched_events": ("sched", sched_table),
    "offcpu_events": ("offcpu", offcpu_table),
}


class SchedFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py): off-CPU rows
    leave with their kernel stacks symbolised and their wait reason filled."""

    family = FAMILY
    rings = RING_TABLES

    def __init__(self, options: AgentOptions) -> None:
        super().__init__(options)
        self._stacks: KernelStacks | None = None

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        config = SchedConfig(min_offcpu_ns=self.options.min_offcpu_ns,
                             target_all=self.options.target_all)
        return sensor_spec(config, shared_maps=shared_maps)

    def loaded(self, sensor: Sensor) -> None:
        self._stacks = KernelStacks(Kallsyms.load(), sensor.map_fd("offcpu_stacks"))

    def convert(self, ring: str, batch: np.ndarray, clock: ClockSample
                ) -> dict[str, pa.Table]:
        out = super().convert(ring, batch, clock)
        offcpu = out.get("offcpu")
        if offcpu is None or self._stacks is None:
            return out
        # Symbolise the new stacks once, then say why each interval waited.
        stacks = self._stacks.resolve(offcpu.column("kstack_id"), time.time_ns())
        filled = self._stacks.fill_wait_reason(offcpu)
        self._stacks.clear()
        return {"kstacks": stacks, "offcpu": filled}

__all__ = [
    "SchedFamily",
    "FAMILY",
    "RING_TABLES",
    "OFFCPU_EVENT",
    "SCHED_EVENT",
    "SchedConfig",
    "offcpu_table",
    "sched_table",
    "sensor_spec",
]
