"""Network: TCP retransmits and resets on the operation's own connection (a span's, from
its attributes and the 4-tuple; a thread's without spans, the ones it used around then).

Retransmits fire in softirq context, so they are matched by 4-tuple (never by the pid they
happen to carry). A retransmitted segment waited from the last send on that connection
before it (the original transmission) to the retransmit: that wait, clipped to the span,
is the delay. Without a preceding send in view, Linux's minimum RTO (200 ms) bounds it.
Retransmits on one connection no further apart than ``net_episode_gap_ns`` form one network
episode. A reset on the connection is recorded as a cause with no delay: it explains an
error, not a slowness.
"""

from __future__ import annotations

import duckdb

from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import evidence_list, execute, merged, overlap_join

MIN_RTO_NS = 200_000_000
# A span without a connection of its own (a server's thread, a thread it waited for) owns
# the connections its thread used this close to it.
CONN_SLACK_NS = 1_000_000_000


def prepare(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    gap = settings.net_episode_gap_ns
    execute(con, "network episodes", f"""
        CREATE TEMP TABLE net_trouble AS
        WITH r AS (
            SELECT node, ts_ns AS ts, kind, pid::BIGINT AS pid, tid::BIGINT AS tid, saddr,
                   sport::BIGINT AS sport, daddr, dport::BIGINT AS dport, srtt_us,
                   least(sport, dport)::BIGINT AS lo_port,
                   greatest(sport, dport)::BIGINT AS hi_port,
                   CASE WHEN sport <= dport THEN saddr || ':' || sport || '-' || daddr || ':'
                             || dport
                        ELSE daddr || ':' || dport || '-' || saddr || ':' || sport END AS conn
            FROM w_net WHERE kind IN ('retransmit', 'reset') AND sport IS NOT NULL
              AND dport IS NOT NULL),
        f AS (
            SELECT *, CASE WHEN ts <= lag(ts) OVER (PARTITION BY node, conn, kind ORDER BY ts)
                                     + {gap} THEN 0 ELSE 1 END AS _new
            FROM r),
        g AS (
            SELECT *, sum(_new) OVER (PARTITION BY node, conn, kind ORDER BY ts
                                      ROWS UNBOUNDED PRECEDING) AS ep
            FROM f)
        SELECT g.*, 'net:' || g.node || ':' || g.conn || ':' || g.kind || ':'
                    || min(g.ts) OVER (PARTITION BY g.node, g.conn, g.kind, g.ep)
                      AS episode_id,
               s.ts_ns AS sent_ts
        FROM g ASOF LEFT JOIN (SELECT node, ts_ns, saddr, sport::BIGINT AS sport, daddr,
                                      dport::BIGINT AS dport
                               FROM w_net WHERE kind = 'send') s
          ON g.node = s.node AND g.saddr = s.saddr AND g.sport = s.sport
             AND g.daddr = s.daddr AND g.dport = s.dport AND g.ts > s.ts_ns
    """)


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int) -> None:
    limit = settings.max_evidence_rows
    conns = overlap_join(
        f"(SELECT span_key, node, tid, s - {CONN_SLACK_NS} AS s, e + {CONN_SLACK_NS} AS e"
        f" FROM spans_all WHERE level = {level} AND tid IS NOT NULL"
        f" AND conn_lport IS NULL AND origin = 'holder')",
        "net_io", ("node", "tid"), settings.join_bucket_ns,
        select="DISTINCT l.span_key, r.saddr, r.sport, r.daddr, r.dport")
    execute(con, "network attribution", f"""
        -- the connections of each span: its own (from its attributes and 4-tuple); a
        -- waited-for thread's (holder span): those it sent or received on around then
        CREATE TEMP TABLE n_conns AS
        SELECT span_key, conn_laddr AS laddr, conn_lport AS lport, conn_raddr AS raddr,
               conn_rport AS rport
        FROM spans_all
        WHERE level = {level} AND conn_lport IS NOT NULL AND conn_rport IS NOT NULL
        UNION ALL
        SELECT span_key, saddr, sport, daddr, dport FROM ({conns})
    """, f"""
        CREATE TEMP TABLE n_hits AS
        SELECT sp.span_key, t.episode_id, t.kind, t.node, t.conn, t.ts,
               CASE WHEN t.kind = 'reset' THEN t.ts
                    ELSE greatest(sp.s, coalesce(t.sent_ts, t.ts - {MIN_RTO_NS})) END AS s,
               least(t.ts, sp.e) AS e, t.saddr, t.sport, t.daddr, t.dport, t.srtt_us
        FROM n_conns c JOIN spans_all sp USING (span_key)
        JOIN net_trouble t
          ON t.node = sp.node
         AND t.lo_port = least(c.lport, c.rport)
         AND t.hi_port = greatest(c.lport, c.rport)
         AND t.ts >= sp.s AND t.ts <= sp.e
        WHERE (t.saddr = c.laddr AND t.daddr = c.raddr)
           OR (t.saddr = c.raddr AND t.daddr = c.laddr)
        QUALIFY row_number() OVER (PARTITION BY sp.span_key, t.episode_id, t.ts,
                                   t.saddr, t.sport) = 1
    """, """
        INSERT INTO episodes
        SELECT episode_id, 'network', any_value(kind), any_value(node), min(ts), max(ts),
               NULL, NULL, any_value(conn), sum(ts - coalesce(sent_ts, ts)),
               to_json({'count': count(*), 'srtt_us': max(srtt_us)})
        FROM net_trouble
        WHERE episode_id IN (SELECT episode_id FROM n_hits)
          AND episode_id NOT IN (SELECT id FROM episodes)
        GROUP BY episode_id
    """, f"""
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', h.span_key, 'KernelEpisode', h.episode_id,
               CASE WHEN h.kind = 'reset' THEN 'network_reset' ELSE 'network' END,
               coalesce(d.delay_ns, 0), NULL, h.n, NULL,
               json_object('conn', h.conn, 'net', h.rows)
        FROM (SELECT span_key, episode_id, any_value(kind) AS kind, any_value(conn) AS conn,
                     count(*) AS n,
                     {evidence_list("{'ts_ns': ts, 'kind': kind, 'saddr': saddr,"
                                    " 'sport': sport, 'daddr': daddr, 'dport': dport}",
                                    "ts", limit)}::JSON AS rows
              FROM n_hits GROUP BY span_key, episode_id) h
        LEFT JOIN (SELECT span_key, episode_id, sum(e - s) AS delay_ns
                   FROM {merged("(SELECT * FROM n_hits WHERE kind = 'retransmit')",
                                ("span_key", "episode_id"))}
                   GROUP BY span_key, episode_id) d USING (span_key, episode_id)
        WHERE h.kind = 'reset' OR coalesce(d.delay_ns, 0) >= {settings.min_delay_ns}
    """, "DROP TABLE n_hits", "DROP TABLE n_conns")
