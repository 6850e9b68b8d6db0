"""Probe families: one module per ``bpf/<name>.bpf.c``, each defining ``FAMILY``.

Adding a family ``foo``:
  1. ``bpf/foo.h``: its records (``struct event_header hdr`` first, fixed-width types,
     explicit padding, size a multiple of 8) and ``FOO_LAYOUT_VERSION``; new kinds are
     appended to ``enum event_kind`` in ``bpf/common.h`` (and ``layouts.EventKind``).
  2. ``bpf/foo.bpf.c``: tp_btf programs, one ring per record type, ``EVENT_RESERVE`` /
     ``event_submit``, ``LAYOUT_EXPORT`` of every record and mirrored enum.
  3. ``families/foo.py``: the dtypes (``layouts.record_dtype``), ``FAMILY``, a config
     dataclass with ``sensor_spec()``, and batch -> Arrow conversion per lake table
     (``RING_TABLES = {ring: (lake_table, fn(batch, clock) -> pa.Table)}``), each
     converter starting with the shared header check (``_arrow.check_header``); then
     ``FooFamily(ProbeFamily)`` (``families/base.py``): the family as the agent runs it,
     with the hooks it needs (kernel set-up after load, state aggregated in kernel maps
     read once per flush, per-process uprobes).
  4. Register ``FooFamily`` below: the agent, the layout test and the doctor pick it up.
"""

from __future__ import annotations

from kprobe.capture_agent.families.base import AgentOptions, ProbeFamily
from kprobe.capture_agent.families.block import BlockFamily
from kprobe.capture_agent.families.mem import MemFamily
from kprobe.capture_agent.families.net import NetFamily
from kprobe.capture_agent.families.process import ProcessFamily
from kprobe.capture_agent.families.sched import SchedFamily
from kprobe.capture_agent.families.syscalls import SyscallsFamily
from kprobe.capture_agent.layouts import Family

# Every family, by name, in the order the agent loads them (the first loaded owns the
# targets map the others share).
PROBE_FAMILIES: dict[str, type[ProbeFamily]] = {
    cls.family.name: cls
    for cls in (SchedFamily, NetFamily, BlockFamily, MemFamily, ProcessFamily, SyscallsFamily)
}
FAMILIES: dict[str, Family] = {name: cls.family for name, cls in PROBE_FAMILIES.items()}

__all__ = ["FAMILIES", "PROBE_FAMILIES", "AgentOptions", "ProbeFamily"]
