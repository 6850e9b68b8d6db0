"""Sched family: mirror of bpf/sched.h, sensor configuration, and batches -> lake tables.

Rings (one record size each):
  sched_events      struct sched_event      switch / waking / wakeup / wakeup_new, system-wide
                                            (evidence capture: only those that bound an
                                            off-CPU interval of at least min_offcpu_ns)
  offcpu_events     struct offcpu_event     blocked intervals of targeted threads (`offcpu`)
  cpu_slice_events  struct cpu_slice_event  evidence capture: per CPU and slice, each thread's
                                            on-CPU time, run-queue waits and switches
                                            (lake `cpu_slices`, one row per thread)
"""

from __future__ import annotations

import errno
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
from kprobe.capture_agent.families._maps import read_percpu
from kprobe.capture_agent.families.base import CAPTURE_MODES, AgentOptions, ProbeFamily
from kprobe.capture_agent.kallsyms import Kallsyms, KernelStacks
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

SCHED_LAYOUT_VERSION = 3
TASK_COMM_LEN = 16

# enum task_state_code: index into the letters sched_switch prints
TASK_STATE_LETTERS = "RSDTtXZPI"
_STATE_C_NAMES = ("R", "S", "D", "T", "t", "X", "Z", "P", "I")

SCHED_FLAG_PREEMPT = 0x1
OFFCPU_FLAG_WAKER = 0x1
OFFCPU_FLAG_ENDS_AT_WAKING = 0x2  # the switch back in was not traced: ends at the waking
OFFCPU_FLAG_END_DATED = 0x4  # the switch back in was not traced: dated by the run since
SCHED_FLAG_EVIDENCE = 0x2  # a row of evidence capture (written when its interval ended)
CPU_SLICE_SLOTS = 8

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
        ("prev_run_ns", "<u8"),
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

CPU_SLICE_SLOT = np.dtype(
    [
        ("oncpu_ns", "<u8"),
        ("runq_ns", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("switches", "<u4"),
        ("waits", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
    ]
)

CPU_SLICE_EVENT = record_dtype(
    [
        ("start_ns", "<u8"),
        ("nslots", "<u4"),
        ("__pad", "<u4"),
        ("slots", CPU_SLICE_SLOT, (CPU_SLICE_SLOTS,)),
    ]
)

# struct cpu_acc (the per-CPU map the kernel sums a slice in; read once at stop)
CPU_ACC = np.dtype(
    [
        ("ev", CPU_SLICE_EVENT),
        ("slice", "<u8"),
        ("last_switch_ns", "<u8"),
        ("curr_tid", "<u4"),
        ("__pad", "<u4"),
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
    structs=MappingProxyType({"sched_event": SCHED_EVENT, "offcpu_event": OFFCPU_EVENT,
                              "cpu_slice_event": CPU_SLICE_EVENT}),
    enums=MappingProxyType(
        {
            "task_state_code": {f"TASK_STATE_{c}": i for i, c in enumerate(_STATE_C_NAMES)},
            "sched_constants": {
                "SCHED_LAYOUT_VERSION": SCHED_LAYOUT_VERSION,
                "SCHED_FLAG_PREEMPT": SCHED_FLAG_PREEMPT,
                "OFFCPU_FLAG_WAKER": OFFCPU_FLAG_WAKER,
                "OFFCPU_FLAG_ENDS_AT_WAKING": OFFCPU_FLAG_ENDS_AT_WAKING,
                "OFFCPU_FLAG_END_DATED": OFFCPU_FLAG_END_DATED,
                "SCHED_FLAG_EVIDENCE": SCHED_FLAG_EVIDENCE,
                "CPU_SLICE_SLOTS": CPU_SLICE_SLOTS,
            },
        }
    ),
    rings=MappingProxyType({"sched_events": SCHED_EVENT, "offcpu_events": OFFCPU_EVENT,
                            "cpu_slice_events": CPU_SLICE_EVENT}),
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
    # Ring sizes: what the drain thread may fall behind by; every mapped page of a ring is
    # resident in the agent. sched_events (every switch and wakeup on the node, 88-byte
    # slots): 16 MiB = 190k slots. The drain runs every 0.1 s, but on a node whose CPUs a
    # service keeps busy the agent's threads wait for a CPU and for each other: a payment
    # service at 20k requests/s (~120k sched events/s) overflowed the 4 MiB ring this was
    # (0.43 s of them), losing 286k events in one bench_capture run. offcpu_events (88-byte
    # slots, watched threads blocked over min_offcpu_ns): 1 MiB = 11.9k intervals per 0.1 s.
    sched_ring_bytes: int = 16 << 20
    offcpu_ring_bytes: int = 1 << 20
    offcpu_threads: int = 16384  # threads off CPU at once that can be tracked
    stack_entries: int = 8192
    # Evidence capture (CAPTURE_MODES): rows only for off-CPU intervals of at least
    # min_offcpu_ns, of any thread; per-CPU slices of slice_ns for the rest. Slice records
    # (424-byte slots): at most one per CPU per slice, plus one per 8 more threads that ran
    # on the CPU in it. The payment service of bench_capture at 20k requests/s makes 16k
    # slots/s (0.8 per request), 2k+ records/s: the 256 KiB ring this was held 0.3 s of them
    # and lost 2,868 records in one run; 2 MiB = 4.9k records, 2.4 s.
    evidence: bool = False
    slice_ns: int = 10_000_000
    evidence_threads: int = 32768  # threads whose last switch-out is kept (all threads)
    slice_ring_bytes: int = 2 << 20


def check_config(c: SchedConfig) -> None:
    """ValueError for a configuration the kernel side cannot run."""
    if c.slice_ns < 1_000_000 or c.slice_ns > 60_000_000_000:
        raise ValueError(f"slice of {c.slice_ns} ns: expected 1 ms to 60 s")
    if c.min_offcpu_ns < 0:
        raise ValueError(f"min_offcpu_ns {c.min_offcpu_ns}: expected >= 0")


def sensor_spec(config: SchedConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or SchedConfig()
    check_config(c)
    return SensorSpec(
        family=FAMILY,
        config={
            "min_offcpu_ns": c.min_offcpu_ns,
            "record_switch": int(c.record_switch),
            "record_waking": int(c.record_waking),
            "record_wakeup": int(c.record_wakeup),
            "record_wakeup_new": int(c.record_wakeup_new),
            "sched_targets_only": int(c.targets_only),
            "evidence": int(c.evidence),
            "slice_ns": c.slice_ns,
            "target_all": int(c.target_all),
            "wakeup_fill_pct": c.wakeup_fill_pct,
        },
        ring_bytes={"sched_events": c.sched_ring_bytes, "offcpu_events": c.offcpu_ring_bytes,
                    # unused without evidence capture: the smallest ring there is
                    "cpu_slice_events": c.slice_ring_bytes if c.evidence else _PAGE},
        map_entries={"offcpu_start": c.offcpu_threads, "offcpu_stacks": c.stack_entries,
                     "thread_states": c.evidence_threads if c.evidence else 1},
        shared_maps=shared_maps or {},
        # not recording wakeups: do not even run those programs (evidence capture keeps
        # no wakeup rows: the waking that ends a long wait is its row)
        disabled=frozenset(name for name, on in (
            ("on_sched_wakeup", c.record_wakeup and not c.evidence),
            ("on_sched_wakeup_new", c.record_wakeup_new and not c.evidence)) if not on),
    )


_PAGE = 4096


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
        # 0: not known (not a fair-class task, or a row of evidence capture)
        "prev_run_ns": int_array(batch["prev_run_ns"],
                                 null=not_switch | (batch["prev_run_ns"] == 0),
                                 arrow_type=pa.int64()),
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


_CPU_SLICE_KINDS = (int(EventKind.CPU_SLICE),)


def slice_rows(starts: np.ndarray, ends: np.ndarray, cpus: np.ndarray, nslots: np.ndarray,
               slots: np.ndarray, clock: ClockSample) -> pa.Table:
    """Slice records (span, CPU, used slot count, the slots) -> ``cpu_slices`` rows, one
    per used slot (vectorised)."""
    n = len(starts)
    used = np.arange(CPU_SLICE_SLOTS)[None, :] < np.minimum(nslots, CPU_SLICE_SLOTS)[:, None]
    which = np.repeat(np.arange(n), used.sum(axis=1))
    flat = slots.reshape(n, CPU_SLICE_SLOTS)[used]
    start = starts.astype(np.int64)[which]
    columns = {
        "ts_ns": pa.array(clock.to_epoch(start)),
        "dur_ns": pa.array(ends.astype(np.int64)[which] - start),
        "cpu": int_array(cpus[which]),
        "pid": int_array(flat["pid"]),
        "tid": int_array(flat["tid"]),
        "comm": comm_array(flat["comm"]),
        "oncpu_ns": int_array(flat["oncpu_ns"], arrow_type=pa.int64()),
        "runq_ns": int_array(flat["runq_ns"], arrow_type=pa.int64()),
        "switches": int_array(flat["switches"], arrow_type=pa.int64()),
        "waits": int_array(flat["waits"], arrow_type=pa.int64()),
    }
    return pa.table(columns, schema=table_spec("cpu_slices").payload_schema)


def cpu_slice_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``CPU_SLICE_EVENT`` -> rows of lake table ``cpu_slices``."""
    hdr = check_header(batch, FAMILY, _CPU_SLICE_KINDS)
    return slice_rows(batch["start_ns"], batch["hdr"]["ktime_ns"], hdr.cpu,
                      batch["nslots"], batch["slots"], clock)


def open_slices(accs: np.ndarray, now_mono_ns: int, clock: ClockSample) -> pa.Table:
    """The slices the CPUs were still summing (``CPU_ACC`` per CPU, index = CPU), ended at
    ``now_mono_ns``: read once when the agent stops, after the programs are detached."""
    ev = accs["ev"]
    ends = np.full(len(accs), now_mono_ns, np.uint64)
    return slice_rows(ev["start_ns"], ends, np.arange(len(accs)), ev["nslots"], ev["slots"],
                      clock)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "sched_events": ("sched", sched_table),
    "offcpu_events": ("offcpu", offcpu_table),
    "cpu_slice_events": ("cpu_slices", cpu_slice_table),
}


class SchedFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py): off-CPU rows
    leave with their kernel stacks symbolised and their wait reason filled."""

    family = FAMILY
    rings = RING_TABLES

    def __init__(self, options: AgentOptions) -> None:
        super().__init__(options)
        self._stacks: KernelStacks | None = None
        self._losses: dict[tuple[str, str], int] = {}

    def take_losses(self) -> dict[tuple[str, str], int]:
        """Off-CPU rows whose kernel stack the kernel could not give (so no wait reason),
        by the helper's error: ``("offcpu", "kernel_stack_EEXIST")`` etc."""
        taken, self._losses = self._losses, {}
        return taken

    def _count_failed_stacks(self, batch: np.ndarray) -> None:
        # a preempted thread's stack is not walked (-ENOENT, state R): not a loss
        ids = batch["kstack_id"]
        failed = ids[(ids < 0) & (batch["state"] != TASK_STATE_LETTERS.index("R"))]
        for err, n in zip(*np.unique(-failed.astype(np.int64), return_counts=True)):
            key = ("offcpu", f"kernel_stack_{errno.errorcode.get(int(err), str(int(err)))}")
            self._losses[key] = self._losses.get(key, 0) + int(n)

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        config = SchedConfig(min_offcpu_ns=self.options.min_offcpu_ns,
                             target_all=self.options.target_all,
                             evidence=self.options.capture == "evidence",
                             slice_ns=self.options.slice_ns)
        return sensor_spec(config, shared_maps=shared_maps)

    def tails(self, sensor: Sensor, clock: ClockSample) -> dict[str, pa.Table]:
        """Evidence capture: the slices the CPUs were still summing."""
        if self.options.capture != "evidence":
            return {}
        accs = read_percpu(sensor.map_fd("cpu_acc"), CPU_ACC, "cpu_acc")
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        return {"cpu_slices": open_slices(accs, now, clock)}

    def loaded(self, sensor: Sensor) -> None:
        self._stacks = KernelStacks(Kallsyms.load(), sensor.map_fd("offcpu_stacks"))

    def convert(self, ring: str, batch: np.ndarray, clock: ClockSample
                ) -> dict[str, pa.Table]:
        out = super().convert(ring, batch, clock)
        if ring == "offcpu_events" and len(batch):
            self._count_failed_stacks(batch)
        offcpu = out.get("offcpu")
        if offcpu is None or self._stacks is None:
            return out
        # Symbolise the new stacks once, then say why each interval waited.
        stacks = self._stacks.resolve(offcpu.column("kstack_id"), time.time_ns())
        filled = self._stacks.fill_wait_reason(offcpu)
        self._stacks.clear()
        return {"kstacks": stacks, "offcpu": filled}


__all__ = [
    "CAPTURE_MODES",
    "CPU_ACC",
    "CPU_SLICE_EVENT",
    "SchedFamily",
    "FAMILY",
    "RING_TABLES",
    "OFFCPU_EVENT",
    "SCHED_EVENT",
    "SchedConfig",
    "offcpu_table",
    "cpu_slice_table",
    "open_slices",
    "sched_table",
    "sensor_spec",
    "slice_rows",
]
