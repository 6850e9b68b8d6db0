"""Waits: every blocked interval is attributed to what ended it, and followed (waker chains).

A blocked piece of an operation's thread (any wait reason but memory and disk, which
``memory`` and ``disk`` attribute) ends because something woke it. What it waited for is
decided from the evidence, in this order:

1. ``waker``: another user thread woke it (``sched_waking``; the futex releaser, the pipe
   or eventfd writer, the peer that sent on loopback, a semaphore's ``semop``...). The
   kernel stack only *names* the kind of wait; an unknown stack is still a wait for that
   thread. A sleep is never a wait for its waker (a timer interrupt lands in whatever ran).
2. ``call``: woken by the kernel (a timer: the caller gave up) while a child span on another
   thread (or the server side of an uninstrumented call, ``remote``) was running: the wait
   was for that thread.
3. ``peer``: woken by the kernel while a request it sent on a TCP connection was not yet
   answered: the wait was for the thread at the other end (4-tuple) that received it (the
   one that sent the reply, when it did).
4. Otherwise a leaf: ``timer`` (a sleep, or a poll/futex timeout woken from interrupt
   context), ``kernel_wakeup`` (woken by a kernel thread: a kworker, ksoftirqd...), or no
   waker recorded at all (the only case with no cause).

A timer is the thread's own choice and gets no edge. Each other wait is an edge
``DELAYED_BY`` span -> target thread: ``lock_wait`` (futex and kernel
locks), ``thread_wait`` (any other wait for a thread: pipe, SysV semaphore, eventfd,
unknown stacks), ``remote_call`` (a call to another process over a connection or a child
span). What the target did meanwhile is followed: each wait of at least ``min_delay_ns``
becomes a synthetic *holder* span on the target's thread over exactly the waited interval
(chain level + 1, ``holder`` link), decomposed and attributed like any span at the next
level, across threads and processes (in traces where an operation failed: elsewhere the
wait names its target, and what the target did is not followed, which keeps a busy
window's graph the size of its failures), at most ``max_chain_depth`` hops and never back to a
thread already on the chain (cycles: a client and its server wake each other).
"""

from __future__ import annotations

import duckdb

from kprobe.compute.interval_index import IntervalIndex, overlap
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import evidence_list, execute, overlap_join, translated

# Kernel threads (and the idle task, tid 0): a wakeup from them is interrupt or kernel
# work on the sleeper's behalf (block completion, timers, network softirq), not a user
# thread it waited for.
KERNEL_THREAD_RE = (r"^(swapper|kworker|ksoftirqd|irq/|rcu|migration/|jbd2/|kswapd|kcompactd"
                    r"|khugepaged|kthreadd|watchdog|cpuhp|idle_inject|kblockd|writeback"
                    r"|flush-|loop[0-9]|kdmflush|scsi_|nvme|xfsaild|ext4-|zswap|napi/"
                    r"|kauditd|oom_reaper|ksmd|kintegrityd)")
# Reasons the memory and disk modules attribute themselves.
OWN_REASONS = ("reclaim", "page_fault_io", "disk")
WAIT_KINDS = ("lock_wait", "thread_wait", "remote_call")
LEAF_KINDS = ("kernel_wakeup",)


def prepare(con: duckdb.DuckDBPyConnection, range_end_ns: int) -> None:
    """Window-wide facts: which threads wait for which during child calls and requests.

    ``x_calls(node, tid, s, e, c_node, c_tid, c_pid, c_key)``: thread ``tid`` ran a span
    whose child (otel or an uninstrumented server's ``remote`` span) ran on another thread
    ``c_tid`` over [s, e).
    ``x_peers(node, tid, s, e, p_node, p_tid, p_pid, conn)``: thread ``tid`` sent on a TCP
    connection at ``s`` and had its answer at ``e`` (or never, within the window); the
    other end's thread that received the request (or sent the answer) is ``p_tid``.
    """
    execute(con, "wait prepare", """
        CREATE TEMP TABLE x_calls AS
        SELECT p.node, p.tid, c.s, c.e, c.node AS c_node, c.tid AS c_tid, c.pid AS c_pid,
               c.span_key AS c_key
        FROM spans_all c JOIN spans_all p ON p.span_key = c.parent_key
        WHERE p.tid IS NOT NULL AND c.tid IS NOT NULL AND c.e > c.s
          AND (c.tid <> p.tid OR c.node <> p.node)
    """, """
        -- the server end of connections: listening ports (listen(), a child socket made
        -- by a listener), and local ends that talk to several remote ends
        CREATE TEMP TABLE x_server_ports AS
        SELECT DISTINCT node, sport::BIGINT AS port FROM w_net
        WHERE kind = 'state' AND sport IS NOT NULL
          AND (state = 'LISTEN' OR old_state IN ('LISTEN', 'SYN_RECV'))
        UNION
        SELECT node, sport FROM net_io GROUP BY node, saddr, sport
        HAVING count(DISTINCT daddr || ':' || dport) > 1
    """, f"""
        -- a request: a send from the client end of a connection (a server's answer is not
        -- a request: waiting for a client's next request is no wait for that client)
        CREATE TEMP TABLE x_peers AS
        WITH sends AS (
            SELECT node, tid, pid, s AS ts, saddr, sport, daddr, dport FROM net_io n
            WHERE kind = 'send' AND tid > 0
              AND NOT EXISTS (SELECT 1 FROM x_server_ports p
                              WHERE p.node = n.node AND p.port = n.sport)),
        recvs AS (
            SELECT node, tid, pid, s AS ts, saddr, sport, daddr, dport FROM net_io
            WHERE kind = 'recv' AND tid > 0),
        -- the other end received the request ...
        got AS (
            SELECT q.*, r.tid AS r_tid, r.pid AS r_pid, r.ts AS r_ts
            FROM sends q ASOF JOIN recvs r
              ON r.node = q.node AND r.saddr = q.daddr AND r.sport = q.dport
             AND r.daddr = q.saddr AND r.dport = q.sport AND r.ts >= q.ts
            WHERE r.pid IS DISTINCT FROM q.pid),
        -- ... the sender had its answer (its next receive on the connection) ...
        answered AS (
            SELECT g.*, a.ts AS a_ts
            FROM got g ASOF LEFT JOIN recvs a
              ON a.node = g.node AND a.tid = g.tid AND a.saddr = g.saddr
             AND a.sport = g.sport AND a.daddr = g.daddr AND a.dport = g.dport
             AND a.ts > g.ts),
        -- ... and the thread that sent the answer (it may not be the one that received)
        replied AS (
            SELECT x.*, y.tid AS y_tid, y.pid AS y_pid
            FROM answered x ASOF LEFT JOIN sends y
              ON y.node = x.node AND y.saddr = x.daddr AND y.sport = x.dport
             AND y.daddr = x.saddr AND y.dport = x.sport AND y.ts >= x.r_ts)
        SELECT node, tid, ts AS s, coalesce(a_ts, {range_end_ns}) AS e, node AS p_node,
               coalesce(y_tid, r_tid) AS p_tid, coalesce(y_pid, r_pid) AS p_pid,
               saddr || ':' || sport || '-' || daddr || ':' || dport AS conn
        FROM replied
    """)


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int,
              intervals: IntervalIndex) -> None:
    """Wait edges of the spans of chain ``level``, and holder spans for the next level."""
    bucket = settings.join_bucket_ns
    limit = settings.max_evidence_rows
    calls = overlap_join(
        "w_pieces", "x_calls", ("node", "tid"), bucket,
        select="l.piece, r.c_node, r.c_tid, r.c_pid, r.c_key,"
               " least(l.e, r.e) - greatest(l.s, r.s) AS ov")
    peers = overlap_join(
        "w_pieces", "x_peers", ("node", "tid"), bucket,
        select="l.piece, r.p_node, r.p_tid, r.p_pid, r.conn,"
               " least(l.e, r.e) - greatest(l.s, r.s) AS ov")
    execute(con, "wait attribution", """
        CREATE TEMP TABLE w_failed_traces AS
        SELECT DISTINCT sp.trace_id FROM span_domain d JOIN spans_all sp USING (span_key)
        WHERE d.failed AND sp.trace_id IS NOT NULL
    """, f"""
        CREATE TEMP TABLE w_pieces AS
        SELECT row_number() OVER () AS piece, p.span_key, p.node, p.tid, sp.pid, p.s, p.e,
               coalesce(p.reason, 'other') AS reason, p.waker_pid, p.waker_tid, sp.owned,
               coalesce(sp.chain, '/' || coalesce(p.tid, 0) || '/') AS chain, p.state,
               -- followed further only where a failure happened (holders exist only there)
               (sp.origin = 'holder' OR sp.trace_id IN (SELECT trace_id FROM w_failed_traces))
                 AS material
        FROM span_pieces p JOIN spans_all sp USING (span_key)
        WHERE sp.level = {level} AND p.e > p.s
          AND ((p.state = 'blocked' AND coalesce(p.reason, 'other') NOT IN
                  ('reclaim', 'page_fault_io', 'disk'))
               OR (p.state = 'unknown' AND sp.tid IS NULL))
    """, f"""
        CREATE TEMP TABLE w_calls AS
        SELECT piece, arg_max({{'node': c_node, 'tid': c_tid, 'pid': c_pid, 'key': c_key}},
                              ov) AS c
        FROM ({calls}
              UNION ALL
              -- a span on no known thread waited for its children
              SELECT w.piece, c.node, c.tid, c.pid, c.span_key,
                     least(w.e, c.e) - greatest(w.s, c.s)
              FROM w_pieces w JOIN spans_all c ON c.parent_key = w.span_key
              WHERE w.tid IS NULL AND c.tid IS NOT NULL AND c.s < w.e AND c.e > w.s)
        GROUP BY piece
    """, f"""
        CREATE TEMP TABLE w_peers AS
        SELECT piece, arg_max({{'node': p_node, 'tid': p_tid, 'pid': p_pid, 'conn': conn}},
                              ov) AS p
        FROM ({peers}) WHERE p_tid IS NOT NULL GROUP BY piece
    """, f"""
        CREATE TEMP TABLE w_waits AS
        WITH k AS (
            SELECT w.*, tn.comm AS waker_comm,
                   CASE WHEN w.waker_tid IS NULL THEN 'none'
                        WHEN w.waker_tid = w.tid THEN 'self'
                        WHEN w.waker_tid <= 0
                             OR regexp_matches(coalesce(tn.comm, ''), '{KERNEL_THREAD_RE}')
                        THEN 'kernel'
                        ELSE 'user' END AS waker_kind,
                   c.c, pe.p
            FROM w_pieces w
            LEFT JOIN thread_names tn ON tn.node = w.node AND tn.tid = w.waker_tid
            LEFT JOIN w_calls c USING (piece)
            LEFT JOIN w_peers pe USING (piece)),
        h AS (
            SELECT *,
                   -- a socket wait while a call (or a request) on another process is in
                   -- flight is a wait for that call, unless that process (or the thread's
                   -- own) woke it: another waker is only the task a timer's interrupt (the
                   -- wait's timeout) or a softirq happened to land on
                   CASE WHEN waker_kind = 'user' AND reason <> 'sleep'
                             AND NOT (reason IN ('socket', 'poll')
                                      AND coalesce(c.pid, p.pid) IS NOT NULL
                                      AND coalesce(c.pid, p.pid) <> pid
                                      AND waker_pid IS DISTINCT FROM coalesce(c.pid, p.pid)
                                      AND waker_pid IS DISTINCT FROM pid) THEN 'waker'
                        WHEN c.tid IS NOT NULL THEN 'call'
                        WHEN p.tid IS NOT NULL AND reason <> 'sleep' THEN 'peer'
                        WHEN waker_kind IN ('kernel', 'self', 'user') THEN 'kernel'
                        ELSE 'none' END AS how
            FROM k)
        SELECT piece, span_key, node, tid, pid, s, e, reason, owned, chain, how, waker_kind,
               waker_comm, waker_tid, material,
               CASE how WHEN 'waker' THEN node WHEN 'call' THEN c.node WHEN 'peer' THEN p.node
                        ELSE node END AS t_node,
               CASE how WHEN 'waker' THEN waker_tid WHEN 'call' THEN c.tid
                        WHEN 'peer' THEN p.tid WHEN 'kernel' THEN
                          CASE WHEN waker_kind = 'kernel' AND waker_tid > 0 THEN waker_tid
                               ELSE tid END END AS t_tid,
               CASE how WHEN 'waker' THEN waker_pid WHEN 'call' THEN c.pid
                        WHEN 'peer' THEN p.pid END AS t_pid,
               CASE how WHEN 'call' THEN c.key END AS call_span,
               CASE how WHEN 'peer' THEN p.conn END AS conn,
               CASE WHEN how = 'waker' AND reason IN ('futex', 'lock') THEN 'lock_wait'
                    WHEN how = 'waker' AND reason IN ('socket', 'poll')
                         AND waker_pid IS DISTINCT FROM pid THEN 'remote_call'
                    WHEN how = 'waker' THEN 'thread_wait'
                    WHEN how IN ('call', 'peer')
                         AND coalesce(c.pid, p.pid) IS NOT DISTINCT FROM pid
                         AND coalesce(c.node, p.node) = node THEN 'thread_wait'
                    WHEN how IN ('call', 'peer') THEN 'remote_call'
                    WHEN how = 'kernel' AND (reason IN ('sleep', 'poll', 'futex', 'socket')
                                            OR waker_kind <> 'kernel' OR waker_tid <= 0)
                         THEN 'timer'
                    WHEN how = 'kernel' THEN 'kernel_wakeup' END AS kind
        FROM h
    """)
    # what each target thread did while the operation waited for it (for explain)
    with translated("wait attribution"), overlap(
            con, "SELECT span_key, t_node AS node, t_tid AS tid, s, e FROM w_waits"
                 " WHERE kind IN ('lock_wait', 'thread_wait', 'remote_call') AND material",
            intervals, "tid", select="l.span_key, l.tid AS t_tid, r.state, r.reason,"
                                     " least(l.e, r.e) - greatest(l.s, r.s) AS ns") as pairs:
        execute(con, "wait attribution", f"""
            CREATE TEMP TABLE w_activity AS
            SELECT span_key, t_tid,
                   coalesce(sum(ns) FILTER (WHERE state = 'running'), 0) AS on_cpu_ns,
                   coalesce(sum(ns) FILTER (WHERE state = 'runnable'), 0) AS runqueue_ns,
                   coalesce(sum(ns) FILTER (WHERE state = 'blocked'), 0) AS blocked_ns,
                   coalesce(to_json(map_from_entries(list({{'k': reason, 'v': ns}}) FILTER (
                       WHERE state = 'blocked'))), '{{}}'::JSON) AS blocked_by_reason
            FROM (SELECT span_key, t_tid, state, coalesce(reason, 'other') AS reason,
                         sum(ns) AS ns
                  FROM ({pairs})
                  GROUP BY ALL)
            GROUP BY span_key, t_tid
        """)
    execute(con, "wait attribution", f"""
        CREATE TEMP TABLE w_target_spans AS
        SELECT span_key, t_tid,
               -- the innermost first (the latest to start), ties by key: never by the
               -- order rows arrive in
               list({{'span': w_key, 'service': service, 'name': name}}
                    ORDER BY s DESC, w_key)[1:{limit}] AS spans
        FROM ({overlap_join(
            "(SELECT span_key, t_node AS node, t_tid AS tid, s, e FROM w_waits"
            " WHERE kind IN ('lock_wait', 'thread_wait', 'remote_call') AND material)",
            "(SELECT span_key AS w_key, node, tid, s, e, service, name FROM spans_all"
            " WHERE origin IN ('otel', 'remote'))",
            ("node", "tid"), bucket,
            select="DISTINCT l.span_key, l.tid AS t_tid, r.w_key, r.service, r.name, r.s")})
        GROUP BY span_key, t_tid
    """)
    follow = level < settings.max_chain_depth
    min_delay = settings.min_delay_ns
    # a wait back to a thread already on the chain adds nothing: that thread's time is
    # accounted where it was first met (a client and its server waking each other)
    cycle = ("how IN ('waker', 'call', 'peer')"
             " AND instr(coalesce(chain, '/'), '/' || t_tid || '/') > 0")
    followed = (f"material AND how IN ('waker', 'call', 'peer') AND e - s >= {min_delay}"
                f" AND NOT ({cycle})" if follow else "false")
    execute(con, "wait attribution", f"""
        -- ranked by delay, ties by thread: a rank never depends on the order rows arrive in
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', w.span_key, 'Thread', w.t_node || ':' || w.t_tid,
               w.kind, w.delay_ns,
               row_number() OVER (PARTITION BY w.span_key, w.kind
                                  ORDER BY w.delay_ns DESC, w.t_node, w.t_tid),
               w.n, NULL,
               json_object('waker_pid', w.t_pid, 'waker_tid', w.t_tid,
                           'waker_comm', w.waker_comm, 'how', w.how,
                           'reasons', w.reasons, 'followed_ns', w.followed_ns,
                           'cycle_ns', w.cycle_ns,
                           'conn', w.conn, 'call_span', w.call_span,
                           'waits', w.rows,
                           'waker_activity', json_object(
                               'on_cpu_ns', coalesce(a.on_cpu_ns, 0),
                               'runqueue_ns', coalesce(a.runqueue_ns, 0),
                               'blocked_ns', coalesce(a.blocked_ns, 0),
                               'blocked_by_reason', a.blocked_by_reason),
                           'waker_spans', coalesce(to_json(ts.spans), '[]'::JSON))
        FROM (SELECT span_key, kind, t_node, t_tid, any_value(t_pid) AS t_pid,
                     any_value(waker_comm) AS waker_comm, mode(how) AS how,
                     list_sort(list(DISTINCT reason)) AS reasons, any_value(conn) AS conn,
                     any_value(call_span) AS call_span,
                     sum(e - s) AS delay_ns, count(*) AS n,
                     coalesce(sum(e - s) FILTER (WHERE {followed}), 0) AS followed_ns,
                     coalesce(sum(e - s) FILTER (WHERE {cycle}), 0) AS cycle_ns,
                     {evidence_list("{'ts_ns': s, 'dur_ns': e - s, 'wait_reason': reason,"
                                    " 'how': how}", "s", limit)}::JSON AS rows
              FROM w_waits WHERE kind IS NOT NULL AND kind <> 'timer'
              GROUP BY span_key, kind, t_node, t_tid) w
        LEFT JOIN w_activity a ON a.span_key = w.span_key AND a.t_tid = w.t_tid
        LEFT JOIN w_target_spans ts ON ts.span_key = w.span_key AND ts.t_tid = w.t_tid
        WHERE w.delay_ns >= {min_delay}
    """)
    if follow:
        execute(con, "wait holders", f"""
            CREATE TEMP TABLE w_holders AS
            SELECT 'holder:' || w.t_node || ':' || w.t_tid || ':' || w.s || ':' || w.e
                     AS holder_key, w.*, coalesce(w.t_pid, tn.pid) AS h_pid,
                   coalesce(p.comm, tn.comm) AS h_comm
            FROM w_waits w
            LEFT JOIN thread_names tn ON tn.node = w.t_node AND tn.tid = w.t_tid
            LEFT JOIN w_processes p ON p.node = w.t_node AND p.pid = coalesce(w.t_pid, tn.pid)
            WHERE {followed}
        """, f"""
            INSERT INTO spans_all
            SELECT holder_key, NULL, NULL, NULL, t_node,
                   coalesce(any_value(h_comm), 'thread'),
                   'held what TID ' || any_value(tid) || ' waited for', 'INTERNAL', s, e,
                   NULL, NULL, NULL, NULL, any_value(h_pid), any_value(t_tid),
                   'waker', NULL, NULL, NULL, NULL, bool_or(owned), true, 'holder',
                   {level + 1}, min(span_key),
                   min(coalesce(chain, '/' || tid || '/')) || t_tid || '/'
            FROM w_holders
            WHERE holder_key NOT IN (SELECT span_key FROM spans_all)
            GROUP BY holder_key, t_node, t_tid, s, e
        """, """
            INSERT INTO rels
            SELECT 'DELAYED_BY', 'Span', span_key, 'Span', holder_key, 'holder', e - s,
                   NULL, 1, NULL,
                   json_object('kind', kind, 'how', how, 'waker_tid', t_tid, 'ts_ns', s,
                               'dur_ns', e - s, 'wait_reason', reason)
            FROM w_holders
        """, "DROP TABLE w_holders")
    execute(con, "wait attribution", "DROP TABLE w_failed_traces", "DROP TABLE w_pieces",
            "DROP TABLE w_calls",
            "DROP TABLE w_peers", "DROP TABLE w_waits", "DROP TABLE w_activity",
            "DROP TABLE w_target_spans")
