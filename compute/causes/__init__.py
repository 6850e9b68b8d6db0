"""Cause attribution: one module per kind of cause, each pure SQL over the window's tables.

Every cause is an edge ``DELAYED_BY`` from the delayed span to what delayed it, with
``delay_ns`` (time of the span that this cause took) and ``evidence`` (the lake rows that
show it, as JSON row references: table, ts_ns, tid and the values that matter). Causes that
are themselves caused (a memory-pressure episode driven by a batch job) get ``CAUSED_BY``
edges from the episode to the processes that drove it.

    memory   reclaim inside the operation; the pressure episode; the allocating processes
    cpu      run-queue wait; the threads that held the CPU meanwhile
    disk     blocked on block I/O; the device's busy period; the processes issuing I/O
    network  retransmits and resets on the operation's own connection
    wait     every other wait: the thread it waited for (its waker, the child call running
             meanwhile, or the peer of an unanswered request), what that thread did, and,
             hop by hop, that thread's own causes during the wait (synthetic "holder" spans)
    remote   child spans in other threads/processes; without a child span, the server side
             found by matching the connection's send->recv across processes

Tables (temporary, shared by all modules):
    rels(rel, src_label, src, dst_label, dst, kind, delay_ns, rank, count, bytes, evidence)
    episodes(id, kind, subkind, node, start_ns, end_ns, memcg, dev, conn, weight_ns, detail)
    runqueue_reclaim(span_key, holder_tid, whose, episode_id, ns)
"""

from __future__ import annotations

import duckdb

from kprobe.compute.causes import cpu, disk, memory, network, remote, wait
from kprobe.compute.interval_index import TimelineIndex
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute

# Kinds that count as causes of a delay: kernel episodes and contention, and waits for
# another thread (named by what that thread was doing, followed through holder links).
KERNEL_KINDS = ("memory_pressure", "cpu_contention", "disk", "network", "network_reset",
                "lock_wait", "thread_wait")
# Waits for another thread or process (``wait``); what they waited for is followed.
WAIT_KINDS = wait.WAIT_KINDS
# Leaves that are not causes: the thread's own timer, a kernel thread's wakeup.
LEAF_KINDS = wait.LEAF_KINDS
# Links between spans (child spans on other threads, uninstrumented servers, holders).
LINK_KINDS = ("remote_call", "thread_handoff", "holder")


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    execute(con, "cause tables", """
        CREATE TEMP TABLE rels (rel VARCHAR, src_label VARCHAR, src VARCHAR,
            dst_label VARCHAR, dst VARCHAR, kind VARCHAR, delay_ns BIGINT, rank BIGINT,
            count BIGINT, bytes BIGINT, evidence VARCHAR)
    """, """
        CREATE TEMP TABLE episodes (id VARCHAR, kind VARCHAR, subkind VARCHAR, node VARCHAR,
            start_ns BIGINT, end_ns BIGINT, memcg BIGINT, dev VARCHAR, conn VARCHAR,
            weight_ns BIGINT, detail VARCHAR)
    """, """
        -- run-queue time of followed spans inside a reclaim (memory.runqueue_in_reclaim)
        CREATE TEMP TABLE runqueue_reclaim (span_key VARCHAR, holder_tid BIGINT,
            whose VARCHAR, episode_id VARCHAR, ns BIGINT)
    """)


def prepare(con: duckdb.DuckDBPyConnection, settings: ComputeSettings,
            range_end_ns: int) -> None:
    """Window-wide facts: pressure episodes, disk busy periods, calls and requests..."""
    memory.prepare(con, settings)
    disk.prepare(con, settings)
    network.prepare(con, settings)
    wait.prepare(con, range_end_ns)


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int,
              timelines: TimelineIndex) -> None:
    """Causes of the spans of chain ``level`` (already decomposed); ``timelines`` are the
    window's timelines sorted in memory (``timeline.build``)."""
    memory.attribute(con, settings, level)
    cpu.attribute(con, settings, level, timelines.cpus)
    disk.attribute(con, settings, level)
    network.attribute(con, settings, level)
    remote.attribute_children(con, settings, level)
    wait.attribute(con, settings, level, timelines.threads)


__all__ = ["KERNEL_KINDS", "LEAF_KINDS", "LINK_KINDS", "WAIT_KINDS", "attribute",
           "create_tables", "prepare", "remote"]
