"""Mem family: mirror of bpf/mem.h, sensor configuration, and kernel data -> lake ``mem``.

Ring (one record size):
  mem_events  struct mem_event  reclaim episodes (begin+end merged), kswapd wakeups, OOM kills
Maps read and cleared once per flush (``collect_maps``):
  faults      tid  -> struct fault_stat   user page faults per thread
  allocs      tgid -> struct alloc_stat   pages allocated per process (kmem:mm_page_alloc)

Row meanings in ``mem`` (column ``kind``):
  direct_reclaim, memcg_reclaim  ts_ns = begin, dur_ns, nr_reclaimed, memcg of the task
  kswapd_wake                    the allocator that woke kswapd (ts_ns only)
  oom_kill                       pid/tid/comm/memcg of the victim
  fault                          count since the previous flush; ts_ns = first of them,
                                 dur_ns = first..last, address = the latest address
  page_alloc                     count = pages allocated since the previous flush, per
                                 process; ts_ns = flush time
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from kprobe.capture_agent import libbpf
from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import BpfMapError
from kprobe.capture_agent.families._arrow import check_header, comm_array, int_array, lookup_strings
from kprobe.capture_agent.families.base import ProbeFamily
from kprobe.capture_agent.layouts import EventKind, Family, record_dtype
from kprobe.capture_agent.sensor import Sensor, SensorSpec
from kprobe.lake.schema import spec as table_spec

MEM_LAYOUT_VERSION = 1
TASK_COMM_LEN = 16

MEM_EVENT = record_dtype(
    [
        ("start_ns", "<u8"),
        ("nr_reclaimed", "<u8"),
        ("memcg", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("gfp_flags", "<u4"),
        ("order", "<i4"),
        ("nid", "<i4"),
        ("trigger_pid", "<u4"),
        ("trigger_tid", "<u4"),
        ("__pad", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
        ("trigger_comm", f"S{TASK_COMM_LEN}"),
    ]
)

FAULT_STAT = np.dtype(
    [
        ("count", "<u8"),
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("last_address", "<u8"),
        ("memcg", "<u8"),
        ("pid", "<u4"),
        ("__pad", "<u4"),
        ("comm", f"S{TASK_COMM_LEN}"),
    ]
)

ALLOC_STAT = np.dtype(
    [
        ("pages", "<u8"),
        ("memcg", "<u8"),
        ("comm", f"S{TASK_COMM_LEN}"),
    ]
)

RING_KINDS = (
    EventKind.MEM_DIRECT_RECLAIM,
    EventKind.MEM_MEMCG_RECLAIM,
    EventKind.MEM_KSWAPD_WAKE,
    EventKind.MEM_OOM_KILL,
)
# lake `mem.kind` per ring record kind, indexed by kind - MEM_DIRECT_RECLAIM
_RING_KIND_NAMES = ["direct_reclaim", "memcg_reclaim", "kswapd_wake", "oom_kill"]

FAMILY = Family(
    name="mem",
    object_file="mem.bpf.o",
    structs=MappingProxyType(
        {"mem_event": MEM_EVENT, "fault_stat": FAULT_STAT, "alloc_stat": ALLOC_STAT}
    ),
    enums=MappingProxyType({"mem_constants": {"MEM_LAYOUT_VERSION": MEM_LAYOUT_VERSION}}),
    rings=MappingProxyType({"mem_events": MEM_EVENT}),
    layout_version=MEM_LAYOUT_VERSION,
)

# program names in bpf/mem.bpf.c, per switch of MemConfig
_RECLAIM_PROGRAMS = frozenset({"on_direct_reclaim_begin", "on_direct_reclaim_end",
                               "on_memcg_reclaim_begin", "on_memcg_reclaim_end"})
# common.h's target-following programs: the mem family does not use targets
_TARGET_PROGRAMS = frozenset({"follow_fork", "follow_exit"})


@dataclass(frozen=True)
class MemConfig:
    """What the mem sensor records. Sizes: rings in bytes, maps in entries."""

    record_reclaim: bool = True
    record_kswapd: bool = True
    record_oom: bool = True
    record_faults: bool = True
    # kmem:mm_page_alloc is the hottest attach point of the family (a hash lookup and an
    # atomic add per allocation); switch it off where that matters
    record_page_alloc: bool = True
    min_reclaim_ns: int = 0
    wakeup_fill_pct: int = 50
    ring_bytes: int = 256 << 10
    fault_threads: int = 16384  # threads that can fault between two flushes
    alloc_processes: int = 8192  # processes that can allocate between two flushes
    reclaim_threads: int = 4096  # threads reclaiming at once


def sensor_spec(config: MemConfig | None = None, *,
                shared_maps: dict[str, int] | None = None) -> SensorSpec:
    c = config or MemConfig()
    disabled = set(_TARGET_PROGRAMS)
    if not c.record_reclaim:
        disabled |= _RECLAIM_PROGRAMS
    if not c.record_kswapd:
        disabled.add("on_wakeup_kswapd")
    if not c.record_oom:
        disabled.add("on_mark_victim")
    if not c.record_faults:
        disabled.add("on_page_fault_user")
    if not c.record_page_alloc:
        disabled.add("on_mm_page_alloc")
    return SensorSpec(
        family=FAMILY,
        config={"min_reclaim_ns": c.min_reclaim_ns, "wakeup_fill_pct": c.wakeup_fill_pct},
        ring_bytes={"mem_events": c.ring_bytes},
        map_entries={"faults": c.fault_threads, "allocs": c.alloc_processes,
                     "reclaim_start": c.reclaim_threads},
        shared_maps=shared_maps or {},
        disabled=frozenset(disabled),
    )


def _memcg(values: np.ndarray) -> pa.Array:
    """Memory cgroup ids; 0 (no memcg support) is null."""
    return int_array(values, null=values == 0, arrow_type=pa.int64())


def mem_table(batch: np.ndarray, clock: ClockSample) -> pa.Table:
    """A batch of ``MEM_EVENT`` -> rows of lake table ``mem`` (vectorised)."""
    check_header(batch, FAMILY, _KINDS)
    hdr = batch["hdr"]
    kind = hdr["kind"]
    not_reclaim = (kind != EventKind.MEM_DIRECT_RECLAIM) & (kind != EventKind.MEM_MEMCG_RECLAIM)
    start = batch["start_ns"]
    n = len(batch)
    columns = {
        "ts_ns": pa.array(clock.to_epoch(start)),
        "dur_ns": int_array(hdr["ktime_ns"].astype(np.int64) - start.astype(np.int64),
                            null=not_reclaim, arrow_type=pa.int64()),
        "pid": int_array(batch["pid"]),
        "tid": int_array(batch["tid"]),
        "comm": comm_array(batch["comm"]),
        "kind": lookup_strings(_RING_KIND_NAMES,
                               kind.astype(np.int32) - int(EventKind.MEM_DIRECT_RECLAIM)),
        "nr_reclaimed": int_array(batch["nr_reclaimed"], null=not_reclaim,
                                  arrow_type=pa.int64()),
        "count": pa.nulls(n, pa.int64()),
        "memcg": _memcg(batch["memcg"]),
        "address": pa.nulls(n, pa.int64()),
    }
    return pa.table(columns, schema=table_spec("mem").payload_schema)


def fault_table(tids: np.ndarray, stats: np.ndarray, clock: ClockSample) -> pa.Table:
    """Entries of the ``faults`` map (keys, ``FAULT_STAT`` values) -> ``mem`` rows."""
    n = len(stats)
    first = stats["first_ns"].astype(np.int64)
    columns = {
        "ts_ns": pa.array(clock.to_epoch(first)),
        "dur_ns": pa.array(stats["last_ns"].astype(np.int64) - first),
        "pid": int_array(stats["pid"]),
        "tid": int_array(tids),
        "comm": comm_array(stats["comm"]),
        "kind": pa.array(np.full(n, "fault", dtype=object), pa.string()),
        "nr_reclaimed": pa.nulls(n, pa.int64()),
        "count": int_array(stats["count"], arrow_type=pa.int64()),
        "memcg": _memcg(stats["memcg"]),
        "address": int_array(stats["last_address"], arrow_type=pa.int64()),
    }
    return pa.table(columns, schema=table_spec("mem").payload_schema)


def alloc_table(tgids: np.ndarray, stats: np.ndarray, ts_ns: int) -> pa.Table:
    """Entries of the ``allocs`` map (keys, ``ALLOC_STAT`` values) -> ``mem`` rows."""
    n = len(stats)
    columns = {
        "ts_ns": pa.array(np.full(n, ts_ns, dtype=np.int64)),
        "dur_ns": pa.nulls(n, pa.int64()),
        "pid": int_array(tgids),
        "tid": pa.nulls(n, pa.int32()),
        "comm": comm_array(stats["comm"]),
        "kind": pa.array(np.full(n, "page_alloc", dtype=object), pa.string()),
        "nr_reclaimed": pa.nulls(n, pa.int64()),
        "count": int_array(stats["pages"], arrow_type=pa.int64()),
        "memcg": _memcg(stats["memcg"]),
        "address": pa.nulls(n, pa.int64()),
    }
    return pa.table(columns, schema=table_spec("mem").payload_schema)


def drain_hash(fd: int, value_dtype: np.dtype, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and clear a ``u32 -> value_dtype`` hash map: (keys, values) arrays."""
    try:
        info = libbpf.map_info(fd)
        if info.key_size != 4 or info.value_size != value_dtype.itemsize:
            raise BpfMapError(f"map {name}: key/value sizes {info.key_size}/{info.value_size},"
                              f" reader expects 4/{value_dtype.itemsize}")
        keys, values, count = libbpf.map_lookup_and_delete_batch(
            fd, 4, value_dtype.itemsize, info.max_entries)
    except OSError as e:
        raise BpfMapError(f"map {name}: read and clear: {e.strerror}", e.errno or 0) from None
    return (np.frombuffer(keys, "<u4", count=count),
            np.frombuffer(values, value_dtype, count=count))


def collect_maps(sensor: Sensor, clock: ClockSample,
                 now_mono_ns: int | None = None) -> dict[str, pa.Table]:
    """The flush hook: fault and page-allocation counts since the previous call, as
    ``mem`` rows; the kernel maps are emptied. ``now_mono_ns`` (CLOCK_MONOTONIC) stamps
    the page_alloc rows; default: now."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if now_mono_ns is None else now_mono_ns
    tids, faults = drain_hash(sensor.map_fd("faults"), FAULT_STAT, "faults")
    tgids, allocs = drain_hash(sensor.map_fd("allocs"), ALLOC_STAT, "allocs")
    ts_ns = int(clock.to_epoch(np.array([now], np.int64))[0])
    return {"mem": pa.concat_tables([fault_table(tids, faults, clock),
                                     alloc_table(tgids, allocs, ts_ns)])}


_KINDS = tuple(int(k) for k in RING_KINDS)


# ring -> (lake table, converter): what the agent's flush loop calls for this family.
RING_TABLES = {
    "mem_events": ("mem", mem_table),
}


class MemFamily(ProbeFamily):
    """This family as the agent runs it (capture_agent/families/base.py)."""

    family = FAMILY
    rings = RING_TABLES

    def sensor_spec(self, shared_maps: dict[str, int]) -> SensorSpec:
        return sensor_spec(MemConfig(), shared_maps=shared_maps)

    def collect(self, sensor: Sensor, clock: ClockSample) -> dict[str, pa.Table]:
        return collect_maps(sensor, clock)

__all__ = [
    "MemFamily",
    "ALLOC_STAT",
    "FAMILY",
    "FAULT_STAT",
    "MEM_EVENT",
    "RING_TABLES",
    "MemConfig",
    "alloc_table",
    "collect_maps",
    "drain_hash",
    "fault_table",
    "mem_table",
    "sensor_spec",
]
