"""Each span's duration split into on-CPU, run-queue wait and blocked time by reason.

The span is overlapped with its thread's state intervals (sorted in memory, see
``compute.interval_index``). Time the timeline does not cover (before the first switch
seen, a thread known only by offcpu rows, a span mapped to no thread) is ``unknown``; the
parts always sum to the span's duration.

Outputs (appended per chain level):
    span_pieces(span_key, node, tid, s, e, state, reason, cpu, waker_pid, waker_tid)
        the span's time on its thread, cut by state; running pieces are not kept
    span_breakdown(span_key, on_cpu_ns, runqueue_ns, blocked_ns, unknown_ns,
                   blocked_<reason>_ns for every reason)
"""

from __future__ import annotations

import duckdb

from kprobe.compute.causes.wait import KERNEL_THREAD_RE
from kprobe.compute.interval_index import IntervalIndex, overlap
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute, sql_list, sql_str, translated

# offcpu wait_reason values (the capture agent's classification by kernel stack)
# A block request completing this close to a wakeup from kernel context woke the thread.
DISK_WAKE_NS = 2_000_000
REASONS: tuple[str, ...] = ("reclaim", "page_fault_io", "disk", "futex", "socket", "pipe",
                            "poll", "sleep", "lock", "other")


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    reason_cols = ", ".join(f"blocked_{r}_ns BIGINT" for r in REASONS)
    execute(con, "decomposition", """
        CREATE TEMP TABLE span_pieces (span_key VARCHAR, node VARCHAR, tid BIGINT, s BIGINT,
            e BIGINT, state VARCHAR, reason VARCHAR, cpu INTEGER, waker_pid BIGINT,
            waker_tid BIGINT)
    """, f"""
        CREATE TEMP TABLE span_breakdown (span_key VARCHAR, on_cpu_ns BIGINT,
            runqueue_ns BIGINT, blocked_ns BIGINT, unknown_ns BIGINT, {reason_cols})
    """)


def _reason_is(reason: str) -> str:
    """A reason this engine does not know counts as ``other``."""
    if reason == "other":
        return f"coalesce(reason, 'other') NOT IN {sql_list(REASONS[:-1])}"
    return f"reason = {sql_str(reason)}"


def build(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int,
          intervals: IntervalIndex) -> None:
    """Decompose the spans of chain ``level`` (0: the services' own spans); ``intervals``
    is ``thread_intervals`` sorted in memory (``timeline.build``)."""
    sums = ",\n".join(
        f"coalesce(sum(e - s) FILTER (WHERE state = 'blocked' AND {_reason_is(r)}), 0)"
        f" AS blocked_{r}_ns" for r in REASONS)
    with translated("decomposition"), overlap(
            con, f"SELECT span_key, node, tid, s, e FROM spans_all"
                 f" WHERE level = {level} AND tid IS NOT NULL AND e > s",
            intervals, "tid",
            select="l.span_key, l.node, l.tid, greatest(l.s, r.s) AS s, least(l.e, r.e) AS e,"
                   " r.state, r.reason, r.cpu, r.waker_pid, r.waker_tid, r.e AS ie") as pairs:
        execute(con, "decomposition", f"CREATE TEMP TABLE d_overlap AS {pairs}")
    execute(con, "decomposition", f"""
        -- A wait without a named stack (no offcpu row: a thread nobody targeted), ended
        -- from kernel context (an interrupt: tid 0, or a kernel thread) just as a block
        -- request of the thread's own completed: the device woke it.
        INSERT INTO span_pieces
        SELECT d.span_key, d.node, d.tid, d.s, d.e, d.state,
               CASE WHEN d.state <> 'blocked' THEN NULL
                    WHEN coalesce(d.reason, 'other') = 'other'
                         AND (d.waker_tid = 0 OR regexp_matches(coalesce(tn.comm, ''),
                                                                '{KERNEL_THREAD_RE}'))
                         AND EXISTS (SELECT 1 FROM disk_rows r
                                     WHERE r.node = d.node AND r.tid = d.tid
                                       AND r.e BETWEEN d.ie - {DISK_WAKE_NS}
                                                   AND d.ie + {DISK_WAKE_NS})
                    THEN 'disk'
                    ELSE coalesce(d.reason, 'other') END,
               d.cpu, d.waker_pid, d.waker_tid
        FROM d_overlap d
        LEFT JOIN thread_names tn ON tn.node = d.node AND tn.tid = d.waker_tid
        WHERE d.state <> 'running'
    """, f"""
        -- a span on no known thread: all of it unknown (its child calls may still explain it)
        INSERT INTO span_pieces
        SELECT span_key, node, NULL, s, e, 'unknown', NULL, NULL, NULL, NULL
        FROM spans_all WHERE level = {level} AND tid IS NULL AND e > s
    """, f"""
        INSERT INTO span_breakdown
        SELECT sp.span_key, coalesce(b.on_cpu_ns, 0), coalesce(b.runqueue_ns, 0),
               coalesce(b.blocked_ns, 0),
               (sp.e - sp.s) - coalesce(b.on_cpu_ns, 0) - coalesce(b.runqueue_ns, 0)
                 - coalesce(b.blocked_ns, 0),
               {", ".join(f"coalesce(b.blocked_{r}_ns, 0)" for r in REASONS)}
        FROM spans_all sp LEFT JOIN (
            SELECT span_key,
                   coalesce(sum(e - s) FILTER (WHERE state = 'running'), 0) AS on_cpu_ns,
                   coalesce(sum(e - s) FILTER (WHERE state = 'runnable'), 0) AS runqueue_ns,
                   coalesce(sum(e - s) FILTER (WHERE state = 'blocked'), 0) AS blocked_ns,
                   {sums}
            FROM d_overlap GROUP BY span_key) b USING (span_key)
        WHERE sp.level = {level}
    """, "DROP TABLE d_overlap")
