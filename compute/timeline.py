"""Thread-state timelines from ``sched`` (and ``offcpu``): the spine of the causal model.

Per thread (node, tid), the switch rows cut time into segments:

- switched in                        -> ``running`` until its next switch
- switched out with prev_state R     -> ``runnable`` (preempted) until switched in again
- switched out in any other state    -> ``blocked`` until the first wakeup, then
                                        ``runnable`` until switched in (run-queue wait)

The waker of a blocked interval is the current task of the first ``sched_waking`` row
(``sched_wakeup`` often names the idle task: the wakeup completes on another CPU). The
reason of a blocked interval comes from the ``offcpu`` row recorded at the same switch-out
(classified by kernel stack: reclaim, disk, futex, socket...). Threads that have offcpu rows
but no switch rows get their blocked intervals from offcpu alone; the rest of their time is
left out (``unknown`` in a decomposition), never guessed.

Timelines are built for the threads the analysis needs (``relevant``): those that ran
spans and, hop by hop, the threads that woke them.

Outputs (temporary tables; ``thread_intervals`` a view of an Arrow table):
    thread_intervals(node, tid, pid, s, e, state, reason, cpu, waker_pid, waker_tid, prev_state)
        disjoint per thread; ``cpu`` is the CPU run on, or waited for when runnable
    cpu_intervals(node, cpu, s, e, tid, pid, share)  who held each CPU (idle excluded) for
                                                   ``share`` of [s, e): 1 from switch rows,
                                                   less from evidence capture's slices
    thread_names(node, tid, pid, comm)
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from kprobe.compute import thread_scan
from kprobe.compute.interval_index import IntervalIndex, TimelineIndex
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute, has_table, translated

# A node recorded with evidence capture (capture_agent/bpf/sched.bpf.c) keeps switch rows
# only around long waits: who held a CPU comes from its slices instead, each thread's
# on-CPU time spread evenly over the slice (share = the fraction of the slice it held).
_SLICE_HOLDERS = """
        AND node NOT IN (SELECT DISTINCT node FROM w_cpu_slices)
        UNION ALL
        SELECT node, cpu, ts_ns AS s, ts_ns + dur_ns AS e, tid::BIGINT AS tid,
               pid::BIGINT AS pid, least(oncpu_ns / dur_ns, 1.0)::DOUBLE AS share
        FROM w_cpu_slices WHERE tid > 0 AND dur_ns > 0 AND oncpu_ns > 0
"""


# (a CPU holder of a node recorded with evidence capture may be named by its slices only)
_SLICE_NAMES = """
            UNION ALL
            SELECT node, tid, pid, comm, ts_ns FROM w_cpu_slices WHERE tid > 0"""


def names(con: duckdb.DuckDBPyConnection) -> None:
    """``thread_names``: pid and comm of every thread any row of the window mentions."""
    execute(con, "thread names", f"""
        CREATE TEMP TABLE thread_names AS
        SELECT node, tid, arg_max(pid, ts) AS pid, arg_max(comm, ts) AS comm FROM (
            SELECT node, prev_tid::BIGINT AS tid, prev_pid::BIGINT AS pid, prev_comm AS comm,
                   ts_ns AS ts FROM w_sched WHERE kind = 'switch' AND prev_tid > 0
            UNION ALL
            SELECT node, next_tid, next_pid, next_comm, ts_ns FROM w_sched
            WHERE kind = 'switch' AND next_tid > 0
            UNION ALL
            SELECT node, tid, pid, comm, ts_ns FROM w_offcpu WHERE tid > 0
            UNION ALL
            SELECT node, waker_tid, waker_pid, waker_comm, ts_ns FROM w_offcpu
            WHERE waker_tid > 0
            UNION ALL
            SELECT node, tid, pid, comm, ts_ns FROM w_mem WHERE tid > 0
            UNION ALL
            SELECT node, tid, pid, comm, ts_ns FROM w_net WHERE tid > 0
            UNION ALL
            SELECT node, tid, pid, comm, ts_ns FROM w_block_io WHERE tid > 0
            {_SLICE_NAMES if has_table(con, "w_cpu_slices") else ""})
        WHERE comm IS NOT NULL OR pid IS NOT NULL
        GROUP BY node, tid
    """)


def relevant(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    """``t_relevant``: threads whose timeline the analysis needs.

    The threads that ran spans, then the threads that woke those (a lock holder, a pipe
    writer) or answer them on a TCP connection, and so on ``max_chain_depth`` hops: the
    chain levels analyse exactly these.
    Every other thread still counts as a CPU holder (``cpu_intervals`` is per CPU); it just
    gets no timeline of its own, which on a busy node is most of the sorting saved.
    """
    execute(con, "relevant threads", """
        CREATE TEMP TABLE t_wake_pairs AS
        SELECT DISTINCT node, waker_tid::BIGINT AS waker, wakee_tid::BIGINT AS wakee
        FROM w_sched WHERE kind IN ('waking', 'wakeup', 'wakeup_new') AND waker_tid > 0
        UNION
        SELECT DISTINCT node, waker_tid, tid FROM w_offcpu WHERE waker_tid > 0
        UNION
        -- the two ends of a TCP connection wait for each other (a request, its answer)
        SELECT DISTINCT a.node, b.tid, a.tid
        FROM (SELECT DISTINCT node, tid, pid, saddr, sport, daddr, dport FROM net_io
              WHERE tid > 0) a
        JOIN (SELECT DISTINCT node, tid, pid, saddr, sport, daddr, dport FROM net_io
              WHERE tid > 0) b
          ON b.node = a.node AND b.saddr = a.daddr AND b.sport = a.dport
         AND b.daddr = a.saddr AND b.dport = a.sport AND b.pid IS DISTINCT FROM a.pid
    """, """
        CREATE TEMP TABLE t_relevant AS
        SELECT DISTINCT node, tid FROM spans_all WHERE tid IS NOT NULL
    """, *["""
        INSERT INTO t_relevant
        SELECT DISTINCT p.node, p.waker FROM t_wake_pairs p
        JOIN t_relevant r ON r.node = p.node AND r.tid = p.wakee
        WHERE NOT EXISTS (SELECT 1 FROM t_relevant x WHERE x.node = p.node
                          AND x.tid = p.waker)
    """ for _ in range(settings.max_chain_depth)], "DROP TABLE t_wake_pairs")


def build(con: duckdb.DuckDBPyConnection, range_end_ns: int, settings: ComputeSettings
          ) -> TimelineIndex:
    """``thread_intervals`` for the relevant threads (all threads if so configured), and
    ``cpu_intervals`` for every CPU. Returns both sorted in memory, for the overlap joins
    of every chain level (compute/interval_index.py)."""
    tol = settings.offcpu_match_tolerance_ns
    only = ("" if settings.timeline_all_threads else
            "WHERE EXISTS (SELECT 1 FROM t_relevant r WHERE r.node = x.node AND r.tid = x.tid)")
    execute(con, "thread timeline", """
        -- every switch row with its CPU's previous and next switch rows (one sort for the
        -- threads' lost switches in and for the CPUs' holders)
        CREATE TEMP TABLE t_cpu_sw AS
        SELECT node, cpu, ts_ns, prev_tid, prev_pid, prev_state, next_tid, next_pid,
               prev_run_ns, lag(ts_ns) OVER w AS cpu_prev_ts,
               lag(next_tid) OVER w AS cpu_prev_next, lead(ts_ns) OVER w AS cpu_next_ts,
               lead(prev_tid) OVER w AS cpu_next_prev,
               lead(prev_run_ns) OVER w AS cpu_next_run
        FROM w_sched WHERE kind = 'switch'
        WINDOW w AS (PARTITION BY node, cpu ORDER BY ts_ns)
    """, f"""
        -- switch rows of each thread: out (prev) and in (next); a switch out also keeps
        -- when its CPU last switched before it (cpu_prev_ts) and how long the thread had
        -- run (run_ns): a thread whose switch in was not traced came onto the CPU after
        -- the one, at the other's distance from its switch out
        CREATE TEMP TABLE t_sw AS SELECT * FROM (
        SELECT node, prev_tid::BIGINT AS tid, prev_pid::BIGINT AS pid, ts_ns AS ts, cpu,
               CASE WHEN prev_state IS NULL OR prev_state = '' THEN 'unknown'
                    WHEN prev_state LIKE 'R%' THEN 'runnable' ELSE 'blocked' END AS opens,
               0 AS ord, prev_state, cpu_prev_ts, prev_run_ns AS run_ns
        FROM t_cpu_sw WHERE prev_tid > 0
        UNION ALL
        SELECT node, next_tid, next_pid, ts_ns, cpu, 'running', 2, NULL, NULL, NULL
        FROM t_cpu_sw WHERE next_tid > 0) x
        {only}
    """, f"""
        -- wakeups of each thread (waking rows name the real waker)
        CREATE TEMP TABLE t_wk AS SELECT * FROM (
        SELECT node, wakee_tid::BIGINT AS tid, wakee_pid::BIGINT AS pid, ts_ns AS ts,
               target_cpu AS cpu, waker_pid::BIGINT AS waker_pid,
               waker_tid::BIGINT AS waker_tid, kind = 'waking' AS is_waking
        FROM w_sched WHERE kind IN ('waking', 'wakeup', 'wakeup_new') AND wakee_tid > 0) x
        {only}
    """)
    # Each switch row learns where its segment ends (the thread's next switch), whether that
    # next switch brings the thread in (ord 2) or takes it out (ord 0: the switch in between
    # was not traced), and the first wakeup at or after it, preferring a 'waking' row (other
    # wakeup rows only when no 'waking' row exists). A segment whose next switch takes the
    # thread out again lost its switch in: the thread ran from an unknown instant, so that
    # part is 'unknown' (neither run-queue wait nor on-CPU); likewise a running segment
    # followed by another switch in left the CPU untraced, at an unknown instant. The lost
    # switch in came after the CPU's last traced switch before that switch out (any traced
    # switch on the CPU meanwhile would have taken the thread out), and the switch out says
    # how long the thread had run (prev_run_ns): runnable until then, running after; with
    # no run known, runnable until the CPU's last switch and unknown after. On a node
    # recorded with evidence capture that, and a preemption followed by another switch
    # out, are a short wait, which keeps no row: the segment is running, cut to its slices
    # by bound_running (thread_scan._segments; a sleep so followed stays blocked). The
    # reason of a blocked interval is the offcpu row of the same switch-out. All of it per
    # thread in time order, vectorised in numpy: compute/thread_scan.py.
    sliced = has_table(con, "w_cpu_slices")
    with translated("thread timeline"):
        sliced_nodes = (con.sql("SELECT DISTINCT node FROM w_cpu_slices WHERE node IS NOT NULL")
                        .to_arrow_table().column("node").combine_chunks() if sliced else None)
        rows = thread_scan.thread_intervals(con, range_end_ns, tol, sliced_nodes)
        only_offcpu = con.sql(f"""
            -- threads seen only by the offcpu probe: their blocked intervals, nothing invented
            SELECT o.node, o.tid::BIGINT AS tid, o.pid::BIGINT AS pid, o.ts_ns AS s,
                   o.ts_ns + o.dur_ns AS e, 'blocked' AS state,
                   coalesce(o.wait_reason, 'other') AS reason, o.cpu,
                   o.waker_pid::BIGINT AS waker_pid, o.waker_tid::BIGINT AS waker_tid,
                   o.state AS prev_state
            FROM w_offcpu o
            WHERE o.dur_ns > 0 AND o.tid > 0
              AND NOT EXISTS (SELECT 1 FROM t_sw t WHERE t.node = o.node AND t.tid = o.tid)
              {"" if settings.timeline_all_threads else
               "AND EXISTS (SELECT 1 FROM t_relevant r WHERE r.node = o.node AND r.tid = o.tid)"}
        """).to_arrow_table().cast(thread_scan.INTERVAL_SCHEMA)
    every = pa.concat_tables([rows, only_offcpu])
    if sliced:
        with translated("thread timeline"):
            every = thread_scan.bound_running(con, every)
    # a view of the Arrow table, not a copy of it (copying cost 0.2 CPU s a 1 M-event window)
    con.register("thread_intervals", every)
    threads = IntervalIndex(every, "tid")
    execute(con, "thread timeline", f"""
        -- who held each CPU: the thread the switch put there, until the CPU's next switch.
        -- When that switch takes another thread out, the holder left untraced and the
        -- other came in untraced: the other held the CPU for its run (prev_run_ns) before
        -- it left, the holder (or threads after it that left no row either) before that.
        -- Without the run the holder left at an unknown instant and is not blamed for the
        -- time. Share 1: all of [s, e).
        CREATE TEMP TABLE cpu_intervals AS
        SELECT node, cpu, s, e, tid, pid, 1.0::DOUBLE AS share FROM (
            SELECT node, cpu, ts_ns AS s,
                   CASE WHEN cpu_next_prev IS NULL OR cpu_next_prev = next_tid
                        THEN coalesce(cpu_next_ts, {range_end_ns})
                        ELSE cpu_next_ts - cpu_next_run END AS e,
                   next_tid::BIGINT AS tid, next_pid::BIGINT AS pid
            FROM t_cpu_sw
            UNION ALL
            SELECT node, cpu, greatest(cpu_prev_ts, ts_ns - prev_run_ns), ts_ns,
                   prev_tid::BIGINT, prev_pid::BIGINT
            FROM t_cpu_sw
            WHERE prev_run_ns IS NOT NULL AND cpu_prev_next IS DISTINCT FROM prev_tid)
        WHERE tid > 0 AND e > s
        {_SLICE_HOLDERS if sliced else ""}
    """, "DROP TABLE t_sw", "DROP TABLE t_wk", "DROP TABLE t_cpu_sw")
    with translated("thread timeline"):
        cpus = IntervalIndex(con.sql("SELECT * FROM cpu_intervals").to_arrow_table(), "cpu")
    return TimelineIndex(threads, cpus)
