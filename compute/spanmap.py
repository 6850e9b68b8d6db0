"""Spans mapped to the threads that ran them, and to their TCP connection.

A span names its thread when the SDK records ``thread.id``; most do not. Then the span's
socket 4-tuple does: a server span knows its local port (``server.port``) and usually the
client's (``client.port``); a client span knows the server's port. The ``net`` send/recv
rows on that connection during the span, by the span's process when its pid is known, name
the thread (the one with most rows) and the full 4-tuple, which the network and remote-call
causes use. A process that had a single thread alive while the span ran (first to last row
seen of each thread, its ``cpu_slices`` included: evidence capture keeps switch rows only
around long waits) maps the span to that thread.

``net`` rows carry the local end in saddr/sport and the remote end in daddr/dport.

Output: ``spans_all`` (one row per span; synthetic spans are appended by later stages):
    span_key = trace_id:span_id, parent_key, node, pid, tid, mapped_by, s, e, conn_*,
    owned, synthetic, origin ('otel' | 'remote' | 'holder'), level (hops from an operation),
    chain (``/tid/tid/``: the threads a holder span was reached through)
"""

from __future__ import annotations

import duckdb

from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import execute, has_table, overlap_join

# a node recorded with evidence capture: a thread whose waits were all short has no switch
# rows, only slices (each bounds when it ran: first and last instant of the slice)
_SLICE_LIFE = """
            UNION ALL
            SELECT node, pid::BIGINT, tid::BIGINT, ts_ns FROM w_cpu_slices
            WHERE tid > 0 AND oncpu_ns > 0
            UNION ALL
            SELECT node, pid::BIGINT, tid::BIGINT, ts_ns + dur_ns FROM w_cpu_slices
            WHERE tid > 0 AND oncpu_ns > 0"""

SPANS_ALL_COLUMNS = """
    span_key VARCHAR, trace_id VARCHAR, span_id VARCHAR, parent_key VARCHAR, node VARCHAR,
    service VARCHAR, name VARCHAR, kind VARCHAR, s BIGINT, e BIGINT, status VARCHAR,
    status_message VARCHAR, attributes VARCHAR, events VARCHAR, pid BIGINT, tid BIGINT,
    mapped_by VARCHAR, conn_laddr VARCHAR, conn_lport BIGINT, conn_raddr VARCHAR,
    conn_rport BIGINT, owned BOOLEAN, synthetic BOOLEAN, origin VARCHAR, level INTEGER,
    trigger_key VARCHAR, chain VARCHAR
"""


def build(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    bucket = settings.join_bucket_ns
    # Net rows are instants; as [ts, ts+1) they join like intervals. Each row is offered
    # under both of its ports so a span can match on whichever port it knows.
    match = overlap_join(
        "(SELECT *, coalesce(rport, lport) AS mport,"
        "        CASE WHEN rport IS NOT NULL THEN 'd' ELSE 's' END AS mside FROM span_src"
        " WHERE (lport IS NOT NULL AND rport IS NOT NULL)"
        "    OR ((lport IS NOT NULL OR rport IS NOT NULL) AND pid IS NOT NULL))",
        "(SELECT *, dport AS mport, 'd' AS mside FROM net_io"
        " UNION ALL SELECT *, sport, 's' FROM net_io)",
        ("node", "mport", "mside"), bucket,
        select="l.span_key, r.tid, r.pid, r.saddr, r.sport, r.daddr, r.dport",
        where="(l.lport IS NULL OR r.sport = l.lport) AND (l.rport IS NULL OR r.dport = l.rport)"
              " AND (l.pid IS NULL OR r.pid = l.pid)"
              " AND (l.tid IS NULL OR r.tid = l.tid)")
    execute(con, "span mapping", """
        CREATE TEMP TABLE span_src AS
        SELECT trace_id || ':' || span_id AS span_key, trace_id, span_id,
               CASE WHEN parent_span_id IS NULL OR parent_span_id = '' THEN NULL
                    ELSE trace_id || ':' || parent_span_id END AS parent_key,
               node, service, name, kind, start_ns AS s,
               greatest(coalesce(end_ns, start_ns + dur_ns, start_ns), start_ns) AS e,
               status, status_message, attributes, events, pid::BIGINT AS pid,
               CASE WHEN tid > 0 THEN tid END::BIGINT AS tid, owned,
               CASE WHEN kind IN ('SERVER', 'CONSUMER') THEN server_port
                    ELSE client_port END::BIGINT AS lport,
               CASE WHEN kind IN ('SERVER', 'CONSUMER') THEN coalesce(client_port, peer_port)
                    ELSE coalesce(server_port, peer_port) END::BIGINT AS rport
        FROM w_spans
        QUALIFY row_number() OVER (PARTITION BY trace_id, span_id
                                   ORDER BY owned DESC, end_ns DESC NULLS LAST) = 1
    """, """
        CREATE TEMP TABLE net_io AS
        SELECT node, ts_ns AS s, ts_ns + 1 AS e, pid::BIGINT AS pid, tid::BIGINT AS tid,
               saddr, sport::BIGINT AS sport, daddr, dport::BIGINT AS dport,
               coalesce(bytes, 0) AS bytes, kind
        FROM w_net WHERE kind IN ('send', 'recv') AND sport IS NOT NULL AND dport IS NOT NULL
    """, f"""
        CREATE TEMP TABLE span_conn AS
        SELECT span_key,
               arg_max({{'tid': tid, 'pid': pid, 'saddr': saddr, 'sport': sport,
                         'daddr': daddr, 'dport': dport}}, n) AS c
        FROM (SELECT span_key, tid, pid, saddr, sport, daddr, dport, count(*) AS n
              FROM ({match}) GROUP BY ALL)
        GROUP BY span_key
    """, f"""
        -- the threads alive (first to last row seen) of processes with spans on no thread
        CREATE TEMP TABLE thread_life AS
        WITH wanted AS (SELECT DISTINCT node, pid FROM span_src
                        WHERE tid IS NULL AND pid IS NOT NULL)
        SELECT node, pid, tid, min(ts) AS first_ts, max(ts) AS last_ts FROM (
            SELECT node, prev_pid::BIGINT AS pid, prev_tid::BIGINT AS tid, ts_ns AS ts
            FROM w_sched WHERE kind = 'switch' AND prev_tid > 0
            UNION ALL
            SELECT node, next_pid, next_tid, ts_ns FROM w_sched
            WHERE kind = 'switch' AND next_tid > 0
            UNION ALL
            SELECT node, pid, tid, ts_ns FROM w_offcpu WHERE tid > 0
            {_SLICE_LIFE if has_table(con, "w_cpu_slices") else ""}) x
        SEMI JOIN wanted USING (node, pid)
        GROUP BY node, pid, tid
    """, """
        -- a span's process had one thread alive while it ran: the span ran on it
        CREATE TEMP TABLE single_thread AS
        SELECT sp.span_key, min(l.tid) AS tid
        FROM span_src sp JOIN thread_life l
          ON l.node = sp.node AND l.pid = sp.pid AND l.first_ts <= sp.e AND l.last_ts >= sp.s
        WHERE sp.tid IS NULL
        GROUP BY sp.span_key HAVING count(DISTINCT l.tid) = 1
    """, f"""
        CREATE TEMP TABLE spans_all ({SPANS_ALL_COLUMNS})
    """, """
        INSERT INTO spans_all
        SELECT sp.span_key, sp.trace_id, sp.span_id, sp.parent_key, sp.node, sp.service,
               sp.name, sp.kind, sp.s, sp.e, sp.status, sp.status_message, sp.attributes,
               sp.events,
               coalesce(sp.pid, c.c.pid, tn.pid),
               coalesce(sp.tid, c.c.tid, st.tid),
               CASE WHEN sp.tid IS NOT NULL THEN 'span'
                    WHEN c.c.tid IS NOT NULL THEN 'net_tuple'
                    WHEN st.tid IS NOT NULL THEN 'single_thread' END,
               c.c.saddr, c.c.sport, c.c.daddr, c.c.dport,
               sp.owned, false, 'otel', 0, NULL, NULL
        FROM span_src sp
        LEFT JOIN span_conn c USING (span_key)
        LEFT JOIN single_thread st ON st.span_key = sp.span_key
        LEFT JOIN thread_names tn ON tn.node = sp.node AND tn.tid = sp.tid
    """, "DROP TABLE span_conn", "DROP TABLE single_thread", "DROP TABLE thread_life")
