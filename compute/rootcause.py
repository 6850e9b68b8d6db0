"""Root cause of each failed operation: its critical path cut into leaves, one verdict per
failure chain.

The time of a failed span is the time of its thread (decomposition), and every wait on it
was followed to the thread it waited for (``wait``: waker, child call, peer) over exactly
the waited interval, hop by hop (holder spans). So the span's time splits into *leaves*:

- a kernel cause found on any span of that tree: memory pressure (episode), CPU contention
  (the holder process), disk (the device), TCP retransmits or a reset (the connection);
- what a waited-for thread did itself: on CPU while the operation waited for it (its
  unknown time, an untraced switch or no timeline, blames nobody), named by the wait that
  reached it: ``lock_wait``, ``thread_wait``, ``remote_call``
  (so a remote call is a cause only for the part of it the remote side spent working,
  never for what the kernel did to the remote side);
- a wait not followed (shorter than ``min_delay_ns``, or at the depth limit), a kernel
  thread's wakeup (a wait back to a thread already on the chain adds nothing: that
  thread's time is counted where it was first met);
- the operation's own on-CPU work (``app_cpu``).

Each instant of the tree counts once, for the activity in progress. A run-queue wait
inside a reclaim is that reclaim's cost (``causes.memory.runqueue_in_reclaim``): when the
thread waited for a CPU while reclaiming, the wait is already in its memory-pressure delay
(the reclaim's wall time) and leaves the CPU holder's candidate; when the thread that held
the CPU was itself reclaiming, the wait is the holder's pressure episode's (its drivers
forced that work). The holder's waits outside any reclaim stay its own candidate, so a CPU
hog still wins on what it took by itself (a busy machine stretching a reclaim no longer
counts the stretch twice and names the machine's load instead of the episode's driver).

The same cause reached through several paths is one candidate (per process for CPU
contention, per device for disk, per episode for memory, per thread for waits).
Candidates belong to *faults*: the process behind them (a memory episode's top driver, the
process of a CPU holder or of a waited-for thread), else the candidate itself. A batch job
that makes a worker reclaim and also takes that worker's CPU is one fault with both
delays, reported as its largest kind. A fault is *sufficient* when its delay is at least
how late the operation was (``over_ns``). The ranking: a TCP reset for an error; the
failure chain's verdict (below); sufficient before not; a cause (kernel, or another
thread's work) before the operation's own CPU or timers; the larger fault; the larger
delay. Several concurrent faults are all reported, ranked so: the first ``TOP`` and
every other one of at least ``material_delay_ns``.

A retransmit is a symptom when its receiver was held up: the operation waited on the
receiving process (a span of the tree on it, overlapping the episode) while that process's
own kernel causes (its reclaim, a CPU taken from it, its disk) took at least half the
episode's delay. A receiver that does not drain its socket gets the sender's segments
dropped and sent again; the episode then joins that cause (the same instants: the larger of
the two delays, not their sum), and the verdict names the retransmits it made
(``retransmits``). A receiver that sat idle until the segment came (a real loss) leaves
the retransmits their own cause.

One verdict per failure chain: an operation that failed while (or because) an operation it
contains failed reports the verdict of the innermost failed one, when that cause is among
its own candidates and the outer failure has no deadline of its own to weigh it against
(it failed by error or timeout message) or the cause is sufficient for it too. So the
gateway's request that gave up with the settlement call it made names what delayed the
settlement, whichever of the two timeouts fired first.

Output: ``root_causes(failed_key, rank, kind, dst_label, dst, delay_ns, depth, via_span,
sufficient, over_ns, failure_kind, pieces, fault_ns, retransmits)``; ``CAUSED_BY`` edges from
the failed span, ranked (``pieces``: how many episodes or threads the candidate groups;
``fault_ns``: the delay of its whole fault).
"""

from __future__ import annotations

import duckdb

from kprobe.compute.causes import WAIT_KINDS
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute, sql_list

MAX_DEPTH = 12
TOP = 5
# Leaves that are edges of a span of the tree (waits: the part not followed further).
EDGE_LEAVES = ("memory_pressure", "cpu_contention", "disk", "network", "network_reset",
               "timer", "kernel_wakeup", *WAIT_KINDS)
# Causes on a connection, not in any thread's timeline (counted from every span inside).
UNTIMED_KINDS = ("network", "network_reset")
# Leaves that are not causes: the operation's own work and timers, unknown time.
NOT_CAUSES = ("app_cpu", "timer")


def build(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    waits = sql_list(WAIT_KINDS)
    execute(con, "root cause", f"""
        CREATE TEMP TABLE rc_tree AS
        WITH RECURSIVE t(failed_key, ti, depth, via_kind) AS (
            SELECT span_key, span_key, 0, NULL::VARCHAR FROM span_domain WHERE failed
            UNION ALL
            SELECT t.failed_key, r.dst, t.depth + 1,
                   json_extract_string(r.evidence, '$.kind')
            FROM t JOIN rels r ON r.src = t.ti AND r.rel = 'DELAYED_BY' AND r.kind = 'holder'
            WHERE t.depth < {MAX_DEPTH})
        SELECT failed_key, ti, min(depth) AS depth, any_value(via_kind) AS via_kind
        FROM t GROUP BY failed_key, ti
    """, f"""
        -- the operations inside a failed one (any thread): their connections' retransmits
        -- and resets are in no thread's timeline
        CREATE TEMP TABLE rc_desc AS
        WITH RECURSIVE d(failed_key, span_key, depth) AS (
            SELECT span_key, span_key, 0 FROM span_domain WHERE failed
            UNION ALL
            SELECT d.failed_key, c.span_key, d.depth + 1
            FROM d JOIN spans_all c ON c.parent_key = d.span_key
            WHERE d.depth < {MAX_DEPTH})
        SELECT failed_key, span_key, min(depth) AS depth FROM d GROUP BY ALL
    """, """
        -- a span's reclaim time (less its waits for a CPU inside, to subtract from on-CPU)
        CREATE TEMP TABLE rc_mem AS
        SELECT m.src, m.delay_ns - coalesce(o.ns, 0) AS delay_ns
        FROM (SELECT src, sum(delay_ns) AS delay_ns FROM rels
              WHERE rel = 'DELAYED_BY' AND kind = 'memory_pressure' GROUP BY src) m
        LEFT JOIN (SELECT span_key, sum(ns) AS ns FROM runqueue_reclaim WHERE whose = 'own'
                   GROUP BY span_key) o ON o.span_key = m.src
    """, """
        -- run-queue waits a reclaim stretched (causes.memory.runqueue_in_reclaim), per
        -- span and CPU holder
        CREATE TEMP TABLE rc_rq AS
        SELECT span_key, holder_tid, sum(ns) AS ns FROM runqueue_reclaim GROUP BY ALL
    """, f"""
        CREATE TEMP TABLE rc_leaves AS
        SELECT t.failed_key, t.depth, r.src AS via_span, r.kind, r.dst_label, r.dst,
               CASE WHEN r.kind IN {waits}
                    THEN r.delay_ns
                         - coalesce(TRY_CAST(json_extract(r.evidence, '$.followed_ns')
                                             AS BIGINT), 0)
                         - coalesce(TRY_CAST(json_extract(r.evidence, '$.cycle_ns')
                                             AS BIGINT), 0)
                    -- a run-queue wait inside a reclaim is that reclaim's cost
                    WHEN r.kind = 'cpu_contention'
                    THEN greatest(r.delay_ns - coalesce(rq.ns, 0), 0)
                    ELSE r.delay_ns END AS delay_ns,
               CASE WHEN r.kind = 'cpu_contention'
                         AND json_extract_string(r.evidence, '$.holder_pid') IS NOT NULL
                    THEN regexp_extract(r.dst, '^(.*):-?[0-9]+$', 1) || ':pid:'
                         || json_extract_string(r.evidence, '$.holder_pid')
                    WHEN r.kind = 'disk' AND ep.dev IS NOT NULL AND ep.dev <> '?'
                    THEN ep.node || ':dev:' || ep.dev
                    ELSE r.dst END AS unit
        FROM rc_tree t JOIN rels r ON r.src = t.ti AND r.rel = 'DELAYED_BY'
        LEFT JOIN (SELECT DISTINCT id, node, dev FROM episodes) ep
               ON r.dst_label = 'KernelEpisode' AND ep.id = r.dst
        LEFT JOIN rc_rq rq
               ON r.kind = 'cpu_contention' AND rq.span_key = r.src
              AND rq.holder_tid = TRY_CAST(json_extract(r.evidence, '$.holder_tid') AS BIGINT)
        WHERE r.kind IN {sql_list(EDGE_LEAVES)} AND r.dst_label <> 'Span'
        UNION ALL
        -- the CPU went to a holder's reclaim: that episode's cost (an own reclaim's is
        -- already in the span's memory-pressure delay, its wall time)
        SELECT t.failed_key, t.depth, q.span_key, 'memory_pressure', 'KernelEpisode',
               q.episode_id, least(sum(q.ns), any_value(c.delay_ns)), q.episode_id
        FROM rc_tree t JOIN runqueue_reclaim q ON q.span_key = t.ti AND q.whose = 'holder'
        JOIN (SELECT src, TRY_CAST(json_extract(evidence, '$.holder_tid') AS BIGINT) AS tid,
                     delay_ns
              FROM rels WHERE rel = 'DELAYED_BY' AND kind = 'cpu_contention') c
          ON c.src = q.span_key AND c.tid = q.holder_tid
        GROUP BY t.failed_key, t.depth, q.span_key, q.holder_tid, q.episode_id
        UNION ALL
        SELECT d.failed_key, d.depth, r.src, r.kind, r.dst_label, r.dst, r.delay_ns, r.dst
        FROM rc_desc d JOIN rels r ON r.src = d.span_key AND r.rel = 'DELAYED_BY'
        WHERE d.depth > 0 AND r.kind IN {sql_list(UNTIMED_KINDS)}
        UNION ALL
        -- what a waited-for thread did itself meanwhile: on CPU (not reclaiming); its
        -- unknown time (no timeline, an untraced switch) blames nobody
        SELECT t.failed_key, t.depth, t.ti, coalesce(t.via_kind, 'thread_wait'), 'Thread',
               sp.node || ':' || sp.tid,
               greatest(b.on_cpu_ns - greatest(coalesce(m.delay_ns, 0) - b.blocked_reclaim_ns
                                               - b.blocked_page_fault_io_ns, 0), 0),
               sp.node || ':' || sp.tid
        FROM rc_tree t JOIN spans_all sp ON sp.span_key = t.ti
        JOIN span_breakdown b ON b.span_key = t.ti
        LEFT JOIN rc_mem m ON m.src = t.ti
        WHERE t.depth > 0 AND sp.tid IS NOT NULL
        UNION ALL
        -- the failed operation's own on-CPU work (reclaim runs on the allocating thread's CPU)
        SELECT t.failed_key, 0, t.ti, 'app_cpu', 'Thread', sp.node || ':' || sp.tid,
               greatest(b.on_cpu_ns - greatest(coalesce(m.delay_ns, 0) - b.blocked_reclaim_ns
                                               - b.blocked_page_fault_io_ns, 0), 0),
               'app:' || sp.node || ':' || sp.tid
        FROM rc_tree t JOIN spans_all sp ON sp.span_key = t.ti
        JOIN span_breakdown b ON b.span_key = t.ti
        LEFT JOIN rc_mem m ON m.src = t.ti
        WHERE t.depth = 0 AND sp.tid IS NOT NULL
    """, """
        -- retransmits to a receiver that was held up: the operation waited on the
        -- receiving process (a span of the tree on it, overlapping the episode) while that
        -- process's own kernel causes (its reclaim, a CPU taken from it, its disk) took at
        -- least half the episode's delay. A receiver that does not drain its socket makes
        -- the sender's segments be dropped and sent again (its buffer overruns, or its
        -- cgroup's memory refuses them): the retransmits are that cause's, the same
        -- instants (so its unit's delay is the larger of the two, not their sum)
        CREATE TEMP TABLE rc_stalled AS
        WITH net AS (
            SELECT l.failed_key, l.dst AS episode_id, e.start_ns, e.end_ns,
                   max(l.delay_ns) AS delay_ns
            FROM rc_leaves l JOIN episodes e ON e.id = l.dst
            WHERE l.kind = 'network' AND l.dst_label = 'KernelEpisode'
            GROUP BY ALL),
        receivers AS (
            SELECT DISTINCT t.episode_id, n.node, n.pid
            FROM net_trouble t JOIN net_io n
              ON n.node = t.node AND n.saddr = t.daddr AND n.sport = t.dport
            WHERE t.kind = 'retransmit' AND n.pid > 0),
        held AS (
            SELECT t.failed_key, sp.node, sp.pid, sp.s, sp.e, l.kind, l.unit, l.dst_label,
                   l.dst, l.delay_ns
            FROM rc_tree t JOIN spans_all sp ON sp.span_key = t.ti
            JOIN rc_leaves l ON l.failed_key = t.failed_key AND l.via_span = t.ti
            WHERE t.depth > 0 AND l.delay_ns > 0
              AND l.kind IN ('memory_pressure', 'cpu_contention', 'disk'))
        SELECT n.failed_key, n.episode_id,
               arg_max({'kind': h.kind, 'unit': h.unit, 'dst_label': h.dst_label,
                         'dst': h.dst}, (h.delay_ns, h.dst)) AS cause
        FROM net n JOIN receivers r ON r.episode_id = n.episode_id
        JOIN held h ON h.failed_key = n.failed_key AND h.node = r.node AND h.pid = r.pid
                   AND h.s <= n.end_ns AND h.e >= n.start_ns
        GROUP BY n.failed_key, n.episode_id
        HAVING sum(h.delay_ns) * 2 >= any_value(n.delay_ns)
    """, """
        ALTER TABLE rc_leaves ADD COLUMN stalled BOOLEAN DEFAULT false
    """, """
        ALTER TABLE rc_leaves ADD COLUMN net_episode VARCHAR
    """, """
        UPDATE rc_leaves SET kind = s.cause.kind, unit = s.cause.unit,
               dst_label = s.cause.dst_label, dst = s.cause.dst, stalled = true,
               net_episode = rc_leaves.dst
        FROM rc_stalled s
        WHERE rc_leaves.failed_key = s.failed_key AND rc_leaves.kind = 'network'
          AND rc_leaves.dst = s.episode_id
    """, f"""
        CREATE TEMP TABLE rc_units AS
        -- ties (one retransmit episode seen from several spans) go by name, never by the
        -- order rows arrive in
        SELECT failed_key, kind, unit, arg_max(dst_label, (delay_ns, dst)) AS dst_label,
               arg_max(dst, (delay_ns, dst)) AS dst,
               -- one retransmit episode seen from both ends is one delay, and so is one
               -- that a held-up receiver's cause made (the same instants as that cause)
               CASE WHEN kind IN {sql_list(UNTIMED_KINDS)} THEN max(delay_ns)
                    ELSE greatest(coalesce(sum(delay_ns) FILTER (WHERE NOT stalled), 0),
                                  coalesce(max(delay_ns) FILTER (WHERE stalled), 0))
                    END AS delay,
               max(depth) AS depth, arg_max(via_span, (delay_ns, via_span)) AS via_span,
               count(DISTINCT dst) AS pieces,
               list(DISTINCT net_episode ORDER BY net_episode) FILTER (WHERE stalled)
                 AS retransmits
        FROM rc_leaves WHERE delay_ns > 0
        GROUP BY failed_key, kind, unit
    """, f"""
        -- the fault each candidate belongs to: the process behind it (the episode's top
        -- driver, the CPU holder's process, the waited-for thread's process), else itself
        CREATE TEMP TABLE rc_candidates AS
        WITH f AS (
            SELECT c.*, c.kind NOT IN {sql_list(NOT_CAUSES)} AS is_cause,
                   CASE WHEN c.kind = 'memory_pressure' AND drv.dst IS NOT NULL
                        THEN 'proc:' || drv.dst
                        WHEN c.kind = 'cpu_contention' AND c.unit LIKE '%:pid:%'
                        THEN 'proc:' || replace(c.unit, ':pid:', ':')
                        WHEN c.kind IN {waits} AND c.dst_label = 'Thread' AND tn.pid > 0
                        THEN 'proc:' || tn.node || ':' || tn.pid
                        ELSE c.kind || ':' || c.unit END AS fault
            FROM rc_units c
            LEFT JOIN (SELECT src, arg_min(dst, rank) AS dst FROM rels
                       WHERE rel = 'CAUSED_BY' AND kind = 'memory_driver' GROUP BY src) drv
                   ON c.kind = 'memory_pressure' AND drv.src = c.dst
            LEFT JOIN thread_names tn
                   ON c.dst_label = 'Thread' AND tn.node || ':' || tn.tid = c.dst)
        SELECT f.*, least(f.delay, sp.e - sp.s)::BIGINT AS delay_ns, fs.fault_ns,
               CASE WHEN d.over_ns IS NOT NULL THEN fs.fault_ns >= d.over_ns END
                 AS sufficient,
               d.over_ns, d.failure_kind
        FROM f
        JOIN span_domain d ON d.span_key = f.failed_key
        JOIN spans_all sp ON sp.span_key = f.failed_key
        -- a fault's delay: all of its candidates (a batch job that reclaims in a worker's
        -- cgroup and takes that worker's CPU is one fault)
        JOIN (SELECT f2.failed_key, f2.fault,
                     least(sum(f2.delay), any_value(sp2.e - sp2.s))::BIGINT AS fault_ns
              FROM f f2 JOIN spans_all sp2 ON sp2.span_key = f2.failed_key
              WHERE f2.delay >= {settings.min_delay_ns} OR f2.kind = 'network_reset'
              GROUP BY f2.failed_key, f2.fault) fs
          ON fs.failed_key = f.failed_key AND fs.fault = f.fault
        WHERE f.delay >= {settings.min_delay_ns} OR f.kind = 'network_reset'
    """, """
        -- each failure's own verdict, then the innermost failed operation below it
        CREATE TEMP TABLE rc_own AS
        SELECT failed_key, kind, unit, is_cause FROM (
            SELECT *, row_number() OVER (
                       PARTITION BY failed_key
                       ORDER BY (failure_kind = 'error' AND kind = 'network_reset') DESC,
                                coalesce(sufficient, false) DESC, is_cause DESC,
                                fault_ns DESC, delay_ns DESC, dst) AS r
            FROM rc_candidates)
        WHERE r = 1
    """, """
        CREATE TEMP TABLE rc_inherit AS
        SELECT d.failed_key, arg_max(o.kind || '|' || o.unit, d.depth) AS inherited
        FROM rc_desc d JOIN span_domain f ON f.span_key = d.span_key AND f.failed
        JOIN rc_own o ON o.failed_key = d.span_key AND o.is_cause
        WHERE d.depth > 0
        GROUP BY d.failed_key
    """, f"""
        CREATE TEMP TABLE root_causes AS
        SELECT failed_key, kind, dst_label, dst, delay_ns, depth, via_span, sufficient,
               over_ns, failure_kind, pieces, fault_ns, retransmits, rank
        FROM (
            SELECT c.*, row_number() OVER (
                       PARTITION BY c.failed_key
                       ORDER BY (c.failure_kind = 'error' AND c.kind = 'network_reset') DESC,
                                coalesce(i.inherited = c.kind || '|' || c.unit
                                         AND (c.over_ns IS NULL OR c.sufficient), false) DESC,
                                coalesce(c.sufficient, false) DESC, c.is_cause DESC,
                                c.fault_ns DESC, c.delay_ns DESC, c.dst) AS rank
            FROM rc_candidates c LEFT JOIN rc_inherit i USING (failed_key))
        WHERE rank <= {TOP} OR delay_ns >= {settings.material_delay_ns}
    """, """
        INSERT INTO rels
        SELECT 'CAUSED_BY', 'Span', failed_key, dst_label, dst, kind, delay_ns, rank, NULL,
               NULL,
               json_object('via_span', via_span, 'depth', depth, 'sufficient', sufficient,
                           'over_ns', over_ns, 'pieces', pieces, 'fault_ns', fault_ns,
                           'retransmits', coalesce(retransmits, []))
        FROM root_causes
        WHERE NOT (dst_label = 'Span' AND dst = failed_key)
    """, "DROP TABLE rc_tree", "DROP TABLE rc_stalled", "DROP TABLE rc_mem",
       "DROP TABLE rc_rq", "DROP TABLE rc_leaves",
       "DROP TABLE rc_units", "DROP TABLE rc_candidates", "DROP TABLE rc_own",
       "DROP TABLE rc_inherit",
       "DROP TABLE rc_desc")
