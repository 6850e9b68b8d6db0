"""Probe families: one module per ``bpf/<name>.bpf.c``, each defining ``FAMILY``.

Adding a family ``foo``:
  1. ``bpf/foo.h``: its records (``struct event_header hdr`` first, fixed-width types,
     explicit padding, size a multiple of 8) and ``FOO_LAYOUT_VERSION``; new kinds are
     appended to ``enum event_kind`` in ``bpf/common.h`` (and ``layouts.EventKind``).
  2. ``bpf/foo.bpf.c``: tp_btf programs, one ring per record type, ``EVENT_RESERVE`` /
     ``event_submit``, ``LAYOUT_EXPORT`` of every record and mirrored enum.
  3. ``families/foo.py``: the dtypes (``layouts.record_dtype``), ``FAMILY``, a config
     dataclass with ``sensor_spec()``, and batch -> Arrow conversion per lake table,
     exported as ``RING_TABLES = {ring: (lake_table, fn(batch, clock) -> pa.Table)}``;
     state aggregated in kernel maps (e.g. page faults per thread) is read once per flush
     by an optional ``collect_maps(sensor, clock) -> dict[lake_table, pa.Table]``.
  4. Register ``FAMILY`` below: the layout test and the doctor pick it up.
"""

from __future__ import annotations

from capture_agent.families import block, mem, net, process, sched, syscalls
from capture_agent.layouts import Family

FAMILIES: dict[str, Family] = {
    sched.FAMILY.name: sched.FAMILY,
    net.FAMILY.name: net.FAMILY,
    block.FAMILY.name: block.FAMILY,
    mem.FAMILY.name: mem.FAMILY,
    process.FAMILY.name: process.FAMILY,
    syscalls.FAMILY.name: syscalls.FAMILY,
}

__all__ = ["FAMILIES"]
