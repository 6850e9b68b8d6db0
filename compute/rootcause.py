"""Root cause of each failed operation, and the ranking of the other causes.

Candidates of a failed span are the causes of every span it waited for, found by walking
links (child spans, remote server spans, lock holders) with a recursive query. A span on
the *same* thread as the one it hangs under adds no new thread-state causes (memory, CPU,
disk and lock waits are already in the parent's own timeline), so only thread-crossing hops
contribute those; causes found on a span's *connection* (retransmits, resets) and its links
to other threads are not in any timeline, so they count from every span below. The same
cause reached through several spans is one candidate, and so are pieces that one removal
would take away together, named by the largest piece: the threads of one process that held
the CPU, the busy periods of one disk. The operation's own on-CPU work is a candidate too
(``app_cpu``): an operation that was simply computing has no kernel cause.

A candidate is *sufficient* when its delay is at least how late the operation was
(``over_ns``): removing it would have brought the operation under its deadline. The root
cause is, in order of preference: a TCP reset for an error; a sufficient kernel or remote
cause, the deepest first (the cause of the cause: the lock holder's reclaim before the lock
wait); sufficient on-CPU work; and, when nothing alone suffices, the largest delay.

Output: ``root_causes(failed_key, rank, kind, dst_label, dst, delay_ns, depth, via_span,
sufficient, over_ns, failure_kind, pieces)``; ``CAUSED_BY`` edges from the failed span,
ranked (``pieces``: how many episodes or threads the candidate groups).
"""

from __future__ import annotations

import duckdb

from compute.causes import KERNEL_KINDS
from compute.settings import ComputeSettings
from compute.sql import execute, sql_list

MAX_DEPTH = 12
TOP = 5
# Causes found on a span's connection or links to other threads, not in its thread's
# timeline: a parent on the same thread does not already account for them.
UNTIMED_KINDS = ("network", "network_reset", "remote_call", "thread_handoff")


def build(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    candidate_kinds = (*KERNEL_KINDS, "remote_call", "thread_handoff")
    execute(con, "root cause", """
        CREATE TEMP TABLE rc_links AS
        SELECT DISTINCT parent_key AS parent, span_key AS child FROM spans_all
        WHERE parent_key IS NOT NULL
        UNION
        SELECT src, dst FROM rels WHERE rel = 'DELAYED_BY' AND dst_label = 'Span'
    """, f"""
        CREATE TEMP TABLE rc_sub AS
        WITH RECURSIVE sub(failed_key, span_key, depth, counted) AS (
            SELECT span_key, span_key, 0, true FROM span_domain WHERE failed
            UNION ALL
            SELECT sub.failed_key, l.child, sub.depth + 1,
                   (c.tid IS NULL OR p.tid IS NULL OR c.tid <> p.tid OR c.node <> p.node)
            FROM sub
            JOIN rc_links l ON l.parent = sub.span_key
            JOIN spans_all p ON p.span_key = sub.span_key
            JOIN spans_all c ON c.span_key = l.child
            WHERE sub.depth < {MAX_DEPTH})
        SELECT failed_key, span_key, max(depth) AS depth, bool_or(counted) AS counted
        FROM sub GROUP BY failed_key, span_key
    """, f"""
        CREATE TEMP TABLE rc_candidates AS
        WITH edges AS (
            SELECT s.failed_key, r.kind, r.dst_label, r.dst, r.delay_ns, s.depth, r.src,
                   CASE WHEN r.kind = 'cpu_contention'
                             AND json_extract_string(r.evidence, '$.holder_pid') IS NOT NULL
                        THEN regexp_extract(r.dst, '^(.*):-?[0-9]+$', 1) || ':pid:'
                             || json_extract_string(r.evidence, '$.holder_pid')
                        WHEN r.kind = 'disk' AND ep.dev IS NOT NULL AND ep.dev <> '?'
                        THEN ep.node || ':dev:' || ep.dev
                        ELSE r.dst END AS unit
            FROM rc_sub s JOIN rels r ON r.src = s.span_key AND r.rel = 'DELAYED_BY'
            LEFT JOIN (SELECT DISTINCT id, node, dev FROM episodes) ep
                   ON r.dst_label = 'KernelEpisode' AND ep.id = r.dst
            WHERE r.kind IN {sql_list(candidate_kinds)}
              AND (s.counted OR r.kind IN {sql_list(UNTIMED_KINDS)})),
        per_dst AS (
            SELECT failed_key, kind, dst_label, dst, unit, sum(delay_ns) AS delay_ns,
                   max(depth) AS depth, arg_max(src, delay_ns) AS via_span
            FROM edges GROUP BY failed_key, kind, dst_label, dst, unit)
        SELECT failed_key, kind, arg_max(dst_label, delay_ns) AS dst_label,
               arg_max(dst, delay_ns) AS dst, sum(delay_ns)::BIGINT AS delay_ns,
               max(depth) AS depth, arg_max(via_span, delay_ns) AS via_span,
               count(*) AS pieces
        FROM per_dst GROUP BY failed_key, kind, unit
        UNION ALL
        -- on-CPU work that was not reclaim (reclaim runs on the CPU of the allocating thread)
        SELECT d.span_key, 'app_cpu', 'Thread', sp.node || ':' || sp.tid,
               greatest(b.on_cpu_ns - greatest(coalesce(m.delay_ns, 0) - b.blocked_reclaim_ns
                                               - b.blocked_page_fault_io_ns, 0), 0)::BIGINT,
               0, d.span_key, 1
        FROM span_domain d JOIN spans_all sp USING (span_key)
        JOIN span_breakdown b USING (span_key)
        LEFT JOIN (SELECT src, sum(delay_ns) AS delay_ns FROM rels
                   WHERE rel = 'DELAYED_BY' AND kind = 'memory_pressure' GROUP BY src) m
               ON m.src = d.span_key
        WHERE d.failed AND sp.tid IS NOT NULL AND b.on_cpu_ns > 0
    """, f"""
        CREATE TEMP TABLE root_causes AS
        SELECT *, row_number() OVER (
                   PARTITION BY failed_key
                   ORDER BY (failure_kind = 'error' AND kind = 'network_reset') DESC,
                            coalesce(sufficient, false) DESC,
                            (kind <> 'app_cpu') DESC,
                            CASE WHEN coalesce(sufficient, false) THEN depth ELSE 0 END DESC,
                            delay_ns DESC, dst) AS rank
        FROM (
            SELECT c.failed_key, c.kind, c.dst_label, c.dst,
                   least(c.delay_ns, sp.e - sp.s)::BIGINT AS delay_ns, c.depth, c.via_span,
                   CASE WHEN d.over_ns IS NOT NULL
                        THEN least(c.delay_ns, sp.e - sp.s) >= d.over_ns END AS sufficient,
                   d.over_ns, d.failure_kind, c.pieces
            FROM rc_candidates c
            JOIN span_domain d ON d.span_key = c.failed_key
            JOIN spans_all sp ON sp.span_key = c.failed_key
            WHERE c.delay_ns >= {settings.min_delay_ns} OR c.kind = 'network_reset')
        QUALIFY rank <= {TOP}
    """, """
        INSERT INTO rels
        SELECT 'CAUSED_BY', 'Span', failed_key, dst_label, dst, kind, delay_ns, rank, NULL,
               NULL,
               json_object('via_span', via_span, 'depth', depth, 'sufficient', sufficient,
                           'over_ns', over_ns, 'pieces', pieces)
        FROM root_causes
        WHERE NOT (dst_label = 'Span' AND dst = failed_key)
    """, "DROP TABLE rc_links", "DROP TABLE rc_sub", "DROP TABLE rc_candidates")
