"""Lock wait: the operation slept on a futex (or pipe) until another thread woke it.

The waker (from ``sched_waking``) is the thread that released what the operation waited
for. The edge ``DELAYED_BY`` span -> waker thread carries the wait and what the waker was
doing meanwhile (its on-CPU, run-queue and blocked time over the waits, and the spans it
ran). To follow the cause further, each significant wait becomes a synthetic *holder* span
on the waker's thread covering the wait (``lock_holder`` link, chain level + 1): the next
level decomposes it and attributes its causes like any span's, so "the lock holder was in
memcg reclaim" is found by the same code as "the operation was in memcg reclaim".
"""

from __future__ import annotations

import duckdb

from compute.settings import ComputeSettings
from compute.sql import evidence_list, execute, overlap_join


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int) -> None:
    limit = settings.max_evidence_rows
    waits = (f"(SELECT p.span_key, p.node, p.tid, sp.pid, p.s, p.e, p.reason,"
             f"        p.waker_pid, p.waker_tid, sp.owned, sp.trace_id"
             f" FROM span_pieces p JOIN spans_all sp USING (span_key)"
             f" WHERE sp.level = {level} AND p.state = 'blocked'"
             f"   AND p.reason IN ('futex', 'pipe') AND p.waker_tid > 0"
             f"   AND p.waker_tid <> p.tid)")
    activity = overlap_join(
        "(SELECT span_key, node, waker_tid AS tid, s, e FROM l_waits)", "thread_intervals",
        ("node", "tid"), settings.join_bucket_ns,
        select="l.span_key, l.tid, r.state, r.reason, least(l.e, r.e) - greatest(l.s, r.s) AS ns")
    waker_spans = overlap_join(
        "(SELECT span_key, node, waker_tid AS tid, s, e FROM l_waits)",
        "(SELECT span_key AS w_key, node, tid, s, e, service, name FROM spans_all"
        " WHERE origin = 'otel')",
        ("node", "tid"), settings.join_bucket_ns,
        select="DISTINCT l.span_key, l.tid, r.w_key, r.service, r.name")
    execute(con, "lock attribution", f"""
        CREATE TEMP TABLE l_waits AS {waits}
    """, f"""
        CREATE TEMP TABLE l_activity AS
        SELECT span_key, tid AS waker_tid,
               coalesce(sum(ns) FILTER (WHERE state = 'running'), 0) AS on_cpu_ns,
               coalesce(sum(ns) FILTER (WHERE state = 'runnable'), 0) AS runqueue_ns,
               coalesce(sum(ns) FILTER (WHERE state = 'blocked'), 0) AS blocked_ns,
               coalesce(to_json(map_from_entries(list({{'k': reason, 'v': ns}}) FILTER (
                   WHERE state = 'blocked'))), '{{}}'::JSON) AS blocked_by_reason
        FROM (SELECT span_key, tid, state, coalesce(reason, 'other') AS reason,
                     sum(ns) AS ns
              FROM ({activity}) GROUP BY ALL)
        GROUP BY span_key, tid
    """, f"""
        CREATE TEMP TABLE l_waker_spans AS
        SELECT span_key, tid AS waker_tid,
               list({{'span': w_key, 'service': service, 'name': name}})[1:{limit}]
                 AS spans
        FROM ({waker_spans}) GROUP BY span_key, tid
    """, f"""
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', w.span_key, 'Thread', w.node || ':' || w.waker_tid,
               'lock_wait', w.delay_ns,
               row_number() OVER (PARTITION BY w.span_key ORDER BY w.delay_ns DESC), w.n, NULL,
               json_object('waker_pid', w.waker_pid, 'waker_tid', w.waker_tid,
                           'waits', w.rows,
                           'waker_activity', json_object(
                               'on_cpu_ns', coalesce(a.on_cpu_ns, 0),
                               'runqueue_ns', coalesce(a.runqueue_ns, 0),
                               'blocked_ns', coalesce(a.blocked_ns, 0),
                               'blocked_by_reason', a.blocked_by_reason),
                           'waker_spans', coalesce(to_json(ws.spans), '[]'::JSON))
        FROM (SELECT span_key, node, waker_tid, any_value(waker_pid) AS waker_pid,
                     sum(e - s) AS delay_ns, count(*) AS n,
                     {evidence_list("{'ts_ns': s, 'dur_ns': e - s, 'wait_reason': reason}",
                                    "s", limit)}::JSON AS rows
              FROM l_waits GROUP BY span_key, node, waker_tid) w
        LEFT JOIN l_activity a USING (span_key, waker_tid)
        LEFT JOIN l_waker_spans ws USING (span_key, waker_tid)
        WHERE w.delay_ns >= {settings.min_delay_ns}
    """)
    if level < settings.max_chain_depth:
        execute(con, "lock holders", f"""
            CREATE TEMP TABLE l_holders AS
            SELECT 'holder:' || w.node || ':' || w.waker_tid || ':' || w.s AS holder_key,
                   w.span_key, w.node, w.tid, w.s, w.e, w.reason, w.waker_tid, w.owned,
                   coalesce(w.waker_pid, tn.pid) AS waker_pid, tn.comm AS waker_comm
            FROM l_waits w
            LEFT JOIN thread_names tn ON tn.node = w.node AND tn.tid = w.waker_tid
            WHERE w.e - w.s >= {settings.min_delay_ns}
        """, f"""
            INSERT INTO spans_all
            SELECT holder_key, NULL, NULL, NULL, node,
                   coalesce(any_value(waker_comm), 'thread'),
                   'held what TID ' || any_value(tid) || ' waited for', 'INTERNAL', s, max(e),
                   NULL, NULL, NULL, NULL, any_value(waker_pid), any_value(waker_tid),
                   'waker', NULL, NULL, NULL, NULL, bool_or(owned), true, 'holder',
                   {level + 1}, min(span_key)
            FROM l_holders
            WHERE holder_key NOT IN (SELECT span_key FROM spans_all)
            GROUP BY holder_key, node, s
        """, """
            INSERT INTO rels
            SELECT 'DELAYED_BY', 'Span', span_key, 'Span', holder_key, 'lock_holder', e - s,
                   NULL, 1, NULL, json_object('waker_tid', waker_tid, 'ts_ns', s,
                                             'dur_ns', e - s, 'wait_reason', reason)
            FROM l_holders
        """, "DROP TABLE l_holders")
    execute(con, "lock attribution", "DROP TABLE l_waits", "DROP TABLE l_activity",
            "DROP TABLE l_waker_spans")
