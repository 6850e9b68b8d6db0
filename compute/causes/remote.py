"""Remote calls: time an operation spent waiting on another thread, process or service.

- A child span on another thread is a link: ``remote_call`` when it runs in another
  process (or service or node), ``thread_handoff`` within the process. Its own causes count
  for the parent (the root-cause search walks these links).
- A span with a connection and no child span (the server is not instrumented): the server
  side is found by the 4-tuple. The span's local end (laddr:lport) sent to raddr:rport; the
  process that *received* on raddr:rport from laddr:lport during the span is the server.
  Its work from the first receive to its last send back becomes a synthetic ``remote`` span
  on the server's thread, analysed like any other.
- ``SENT_TO`` thread -> thread summarises matched send/recv pairs of the window.

Loopback addresses are matched within one node only; other addresses across nodes.
"""

from __future__ import annotations

import duckdb

from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute, overlap_join

_LOOPBACK = "(({a}) LIKE '127.%' OR ({a}) = '::1' OR ({a}) LIKE '::ffff:127.%')"


def implicit_servers(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    """Synthetic server spans for instrumented clients calling uninstrumented servers."""
    recv = overlap_join(
        "(SELECT * FROM spans_all sp WHERE level = 0 AND origin = 'otel'"
        "   AND conn_lport IS NOT NULL AND conn_rport IS NOT NULL"
        # a server span's peer is its caller, not a server it waited on
        "   AND coalesce(sp.kind, '') NOT IN ('SERVER', 'CONSUMER')"
        "   AND NOT EXISTS (SELECT 1 FROM spans_all c WHERE c.parent_key = sp.span_key))",
        "(SELECT * FROM net_io WHERE kind = 'recv')",
        (("conn_rport", "sport"), ("conn_lport", "dport")), settings.join_bucket_ns,
        select="l.span_key, l.trace_id, l.owned, l.e AS client_e, r.node, r.pid, r.tid,"
               " r.s AS ts, r.saddr, r.sport, r.daddr, r.dport",
        where="r.saddr = l.conn_raddr AND r.daddr = l.conn_laddr"
              " AND (r.node <> l.node OR r.pid IS DISTINCT FROM l.pid)"
              f" AND (r.node = l.node OR NOT {_LOOPBACK.format(a='l.conn_raddr')})")
    execute(con, "remote servers", f"""
        CREATE TEMP TABLE r_first AS
        SELECT span_key, any_value(trace_id) AS trace_id, any_value(owned) AS owned,
               any_value(client_e) AS client_e,
               arg_min({{'node': node, 'pid': pid, 'tid': tid, 'saddr': saddr,
                         'sport': sport, 'daddr': daddr, 'dport': dport}}, ts) AS srv,
               min(ts) AS s
        FROM ({recv}) GROUP BY span_key
    """, """
        CREATE TEMP TABLE r_servers AS
        SELECT f.*, coalesce(m.last_send, f.client_e) AS e
        FROM r_first f LEFT JOIN (
            SELECT f.span_key, max(n.s) AS last_send
            FROM r_first f JOIN net_io n
              ON n.kind = 'send' AND n.node = f.srv.node AND n.tid = f.srv.tid
             AND n.sport = f.srv.sport AND n.dport = f.srv.dport
             AND n.s >= f.s AND n.s <= f.client_e
            GROUP BY f.span_key) m USING (span_key)
    """, """
        INSERT INTO spans_all
        SELECT 'remote:' || r.srv.node || ':' || r.srv.tid || ':' || r.s, r.trace_id, NULL,
               r.span_key, r.srv.node, coalesce(p.comm, tn.comm, 'pid ' || r.srv.pid),
               'serve ' || r.srv.saddr || ':' || r.srv.sport, 'SERVER', r.s,
               greatest(r.e, r.s), NULL, NULL, NULL, NULL, r.srv.pid, r.srv.tid, 'net_tuple',
               r.srv.saddr, r.srv.sport, r.srv.daddr, r.srv.dport, r.owned, true, 'remote',
               0, r.span_key, NULL
        FROM r_servers r
        LEFT JOIN w_processes p ON p.node = r.srv.node AND p.pid = r.srv.pid
        LEFT JOIN thread_names tn ON tn.node = r.srv.node AND tn.tid = r.srv.tid
    """, "DROP TABLE r_first", "DROP TABLE r_servers")


def attribute_children(con: duckdb.DuckDBPyConnection, settings: ComputeSettings,
                       level: int) -> None:
    """Links from the spans of ``level`` to their children on other threads."""
    execute(con, "remote calls", f"""
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', p.span_key, 'Span', c.span_key,
               CASE WHEN c.node IS DISTINCT FROM p.node OR c.pid IS DISTINCT FROM p.pid
                         OR c.service IS DISTINCT FROM p.service OR c.origin = 'remote'
                    THEN 'remote_call' ELSE 'thread_handoff' END,
               least(c.e, p.e) - greatest(c.s, p.s), NULL, 1, NULL,
               json_object('child_span', c.span_key, 'service', c.service, 'name', c.name,
                           'node', c.node, 'pid', c.pid, 'tid', c.tid, 'origin', c.origin,
                           'conn', CASE WHEN c.conn_lport IS NOT NULL THEN
                               c.conn_laddr || ':' || c.conn_lport || '-' || c.conn_raddr
                               || ':' || c.conn_rport END)
        FROM spans_all p JOIN spans_all c ON c.parent_key = p.span_key
        WHERE p.level = {level}
          AND (c.tid IS NULL OR p.tid IS NULL OR c.tid <> p.tid OR c.node <> p.node)
          AND least(c.e, p.e) - greatest(c.s, p.s) >= {settings.min_delay_ns}
    """)


def sent_to(con: duckdb.DuckDBPyConnection) -> None:
    """SENT_TO thread -> thread for connections with a span-running thread on one side."""
    execute(con, "sent_to", f"""
        INSERT INTO rels
        WITH agg AS (
            SELECT node, pid, tid, kind, saddr, sport, daddr, dport, sum(bytes) AS bytes,
                   count(*) AS n, min(s) AS first_ts
            FROM net_io GROUP BY ALL),
        watched AS (SELECT DISTINCT node, tid FROM spans_all WHERE tid IS NOT NULL)
        SELECT 'SENT_TO', 'Thread', a.node || ':' || a.tid, 'Thread', b.node || ':' || b.tid,
               'tcp', NULL, NULL, a.n, a.bytes,
               json_object('conn', a.saddr || ':' || a.sport || '->' || a.daddr || ':'
                           || a.dport, 'first_ts_ns', a.first_ts, 'recv_rows', b.n)
        FROM agg a JOIN agg b
          ON a.kind = 'send' AND b.kind = 'recv' AND b.saddr = a.daddr
         AND b.sport = a.dport AND b.daddr = a.saddr AND b.dport = a.sport
         AND (a.node = b.node OR NOT {_LOOPBACK.format(a='a.daddr')})
         AND (a.node <> b.node OR a.pid IS DISTINCT FROM b.pid)
        WHERE a.tid > 0 AND b.tid > 0
          AND (EXISTS (SELECT 1 FROM watched w WHERE w.node = a.node AND w.tid = a.tid)
               OR EXISTS (SELECT 1 FROM watched w WHERE w.node = b.node AND w.tid = b.tid))
    """)
