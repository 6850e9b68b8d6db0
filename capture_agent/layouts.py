"""Record layouts shared with the BPF side: the common header and the family registry type.

Each C record type is mirrored exactly once as a numpy structured dtype: the common
``struct event_header`` here, each family's records in ``capture_agent/families/<name>.py``.
``tests/integration/test_bpf_layout.py`` compares every mirrored dtype and enum with the
compiled object's BTF, so a drift fails the tests, not production.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# struct event_header (bpf/common.h), first in every record
EVENT_HEADER = np.dtype(
    [
        ("ktime_ns", "<u8"),
        ("kind", "<u2"),
        ("size", "<u2"),
        ("cpu", "<u2"),
        ("version", "u1"),
        ("flags", "u1"),
    ]
)

# Mirrors of the C enums in bpf/common.h; checked against BTF with the C names.
COMMON_ENUMS: dict[str, dict[str, int]] = {}


class EventKind(enum.IntEnum):
    """``enum event_kind``: C name = ``EVENT_`` + member name. Index of the `drops` map."""

    SCHED_SWITCH = 1
    SCHED_WAKING = 2
    SCHED_WAKEUP = 3
    SCHED_WAKEUP_NEW = 4
    OFFCPU = 5
    CPU_SLICE = 6
    SCHED_STATE = 7
    # syscalls (10-19)
    SYSCALL = 10
    SYSCALL_DATA = 11
    SYSCALL_DATA_SMALL = 12
    # net (20-29)
    NET_SEND = 20
    NET_RECV = 21
    NET_RETRANSMIT = 22
    NET_STATE = 23
    NET_RESET = 24
    NET_SLICE = 25
    # block (30-34)
    BLOCK_RQ = 30
    # mem (35-44); 39-40 only count drops (aggregated in maps, never ringed)
    MEM_DIRECT_RECLAIM = 35
    MEM_MEMCG_RECLAIM = 36
    MEM_KSWAPD_WAKE = 37
    MEM_OOM_KILL = 38
    MEM_FAULT = 39
    MEM_PAGE_ALLOC = 40
    # process (45-54); 48 only counts targets the kernel could not add (map full)
    PROC_EXEC = 45
    PROC_FORK = 46
    PROC_EXIT = 47
    PROC_TARGET = 48


EVENT_KIND_MAX = 64
COMMON_ENUMS["event_kind"] = {f"EVENT_{k.name}": int(k) for k in EventKind} | {
    "EVENT_KIND_MAX": EVENT_KIND_MAX
}


class DropReason(enum.IntEnum):
    """Why the kernel lost a record (common.h: enum drop_reason): the ``lost`` table's
    ``reason`` of a kernel drop."""

    RING_FULL = 0  # its ring buffer had no room
    MAP_FULL = 1  # a bookkeeping map (or task storage) had no room
    UNDATED = 2  # an off-CPU interval whose end no traced event dates
    NO_OWNER = 3  # evidence capture: socket bytes of no known process


DROP_REASON_MAX = 4
COMMON_ENUMS["drop_reason"] = {f"DROP_{r.name}": int(r) for r in DropReason} | {
    "DROP_REASON_MAX": DROP_REASON_MAX
}


def record_dtype(fields: list[tuple[Any, ...]]) -> np.dtype:
    """A record: the common header ``hdr`` then ``fields``; size must be a multiple of 8
    (the ring rounds records up to 8 bytes, and a fixed-size ring relies on no rounding)."""
    dt = np.dtype([("hdr", EVENT_HEADER), *fields])
    if dt.itemsize % 8:
        raise ValueError(f"record size {dt.itemsize} is not a multiple of 8: add padding")
    return dt


@dataclass(frozen=True)
class Family:
    """A probe family as both sides see it.

    object_file: ``bpf/<object_file>`` compiled from ``<name>.bpf.c``
    structs:     C struct name -> dtype (checked against BTF)
    enums:       C enum name -> {C enumerator: value} (checked against BTF)
    rings:       ring map name -> the dtype of its (one) record type
    fallbacks:   program -> the program it stands in for, loaded only on kernels that lack
                 the other's attach point (an older kernel's tracepoint); see Sensor.open
    """

    name: str
    object_file: str
    structs: Mapping[str, np.dtype]
    enums: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    rings: Mapping[str, np.dtype] = field(default_factory=dict)
    layout_version: int = 1
    fallbacks: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LeafField:
    name: str  # dotted for nested structs: hdr.ktime_ns
    offset: int
    size: int
    kind: str  # "int" | "char_array" | "array"


def dtype_fields(dt: np.dtype, prefix: str = "", base: int = 0) -> list[LeafField]:
    """Leaf fields of a structured dtype, flattened like ``libbpf.Btf.struct_fields``."""
    out: list[LeafField] = []
    assert dt.names is not None
    for name in dt.names:
        sub, offset = dt.fields[name][:2]  # type: ignore[index]
        full, at = prefix + name, base + offset
        if sub.names:
            out.extend(dtype_fields(sub, full + ".", at))
        elif sub.kind == "S":
            out.append(LeafField(full, at, sub.itemsize, "char_array"))
        elif sub.subdtype is not None:
            out.append(LeafField(full, at, sub.itemsize, "array"))
        else:
            out.append(LeafField(full, at, sub.itemsize, "int"))
    return out


def layout_differences(
    c_fields: list[tuple[str, int, int, str]], c_size: int, dt: np.dtype
) -> list[str]:
    """Where ``dt`` differs from a C struct given as (name, offset, size, kind) leaves and
    its sizeof; empty when they agree. Names must match too: a renamed field is a drift."""
    diffs: list[str] = []
    if dt.itemsize != c_size:
        diffs.append(f"size: C {c_size}, numpy {dt.itemsize}")
    py = [(f.name, f.offset, f.size, f.kind) for f in dtype_fields(dt)]
    c_by_name = {f[0]: f for f in c_fields}
    py_by_name = {f[0]: f for f in py}
    for name in c_by_name.keys() - py_by_name.keys():
        diffs.append(f"{name}: in C, missing in numpy")
    for name in py_by_name.keys() - c_by_name.keys():
        diffs.append(f"{name}: in numpy, missing in C")
    for name in c_by_name.keys() & py_by_name.keys():
        c, p = c_by_name[name], py_by_name[name]
        if c != p:
            diffs.append(f"{name}: C offset {c[1]} size {c[2]} {c[3]},"
                         f" numpy offset {p[1]} size {p[2]} {p[3]}")
    return sorted(diffs)
