"""The window's graph as Arrow tables: node tables and one table of relationships.

Node tables: Process, Thread, Span, DomainEvent, KernelEpisode (columns in
``compute.graph.schema``). ``rels`` holds every relationship with the same columns
(rel, src_label, src, dst_label, dst, kind, delay_ns, rank, count, bytes, evidence); the
store splits it per relationship table and endpoint pair. Only nodes that something refers
to are kept: the graph is about watched work, not every kernel thread of the node.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from kprobe.compute.decompose import REASONS
from kprobe.compute.domain import Rules, process_role_sql
from kprobe.compute.sql import execute, translated
from kprobe.compute.window import Window


def structural_rels(con: duckdb.DuckDBPyConnection) -> None:
    """CHILD_OF, RAN_ON, WOKE, DESCRIBES, MISSED (PART_OF comes with the thread nodes)."""
    execute(con, "graph relationships", """
        INSERT INTO rels
        SELECT 'CHILD_OF', 'Span', c.span_key, 'Span', c.parent_key, 'child', NULL, NULL,
               NULL, NULL, NULL
        FROM spans_all c WHERE c.parent_key IN (SELECT span_key FROM spans_all)
    """, """
        INSERT INTO rels
        SELECT 'RAN_ON', 'Span', span_key, 'Thread', node || ':' || tid, mapped_by,
               e - s, NULL, NULL, NULL, NULL
        FROM spans_all WHERE tid IS NOT NULL
    """, """
        -- the wait-for graph of watched threads: who woke them, how often, for how long;
        -- its kind is the most frequent reason, ties to the longer, then the name (mode()
        -- broke ties by the order rows happened to arrive in)
        INSERT INTO rels
        SELECT 'WOKE', 'Thread', node || ':' || waker_tid, 'Thread', node || ':' || tid,
               arg_max(reason, (n, ns, reason)), sum(ns), NULL, sum(n), NULL,
               json_object('first_ts_ns', min(first_s), 'reasons', list(reason))
        FROM (SELECT i.node, i.waker_tid, i.tid, i.reason, count(*) AS n,
                     sum(i.e - i.s) AS ns, min(i.s) AS first_s
              FROM thread_intervals i
              WHERE i.state = 'blocked' AND i.waker_tid > 0 AND i.waker_tid <> i.tid
                AND EXISTS (SELECT 1 FROM spans_all sp WHERE sp.node = i.node
                            AND sp.tid = i.tid)
              GROUP BY ALL)
        GROUP BY node, waker_tid, tid
    """, """
        INSERT INTO rels
        SELECT 'DESCRIBES', 'DomainEvent', concept || ':' || span_key, 'Span', span_key,
               concept, NULL, NULL, NULL, NULL, NULL
        FROM span_domain WHERE concept IS NOT NULL
    """, """
        INSERT INTO rels
        SELECT 'MISSED', 'DomainEvent', concept || ':' || span_key, 'DomainEvent',
               'ClearingWindow:' || cutoff_ns, 'clearing_window', missed_by_ns, NULL, NULL,
               NULL, json_object('cutoff_ns', cutoff_ns, 'cutoff', cutoff_label)
        FROM span_domain WHERE concept IS NOT NULL AND missed_by_ns IS NOT NULL
    """)


def graph_tables(con: duckdb.DuckDBPyConnection, rules: Rules) -> dict[str, pa.Table]:
    blocked = ", ".join(f"'{r}': b.blocked_{r}_ns" for r in REASONS)
    role = process_role_sql(
        rules, "coalesce(p.comm, tn.comm, '') || ' ' || coalesce(p.exe, '') || ' ' "
               "|| coalesce(p.argv, '')")
    execute(con, "graph nodes", """
        -- ids first, then their parts (a regexp per rels row cost more than the rest)
        CREATE TEMP TABLE g_thread_ids AS
        SELECT id,
               regexp_extract(id, '^(.*):(-?[0-9]+)$', 1) AS node,
               CAST(regexp_extract(id, '^(.*):(-?[0-9]+)$', 2) AS BIGINT) AS tid
        FROM (SELECT dst AS id FROM rels WHERE dst_label = 'Thread'
              UNION SELECT src FROM rels WHERE src_label = 'Thread')
    """, """
        CREATE TEMP TABLE g_threads AS
        SELECT t.id, t.node, coalesce(tn.pid, sp.pid) AS pid, t.tid, tn.comm
        FROM g_thread_ids t
        LEFT JOIN thread_names tn ON tn.node = t.node AND tn.tid = t.tid
        LEFT JOIN (SELECT node, tid, any_value(pid) AS pid FROM spans_all
                   WHERE tid IS NOT NULL GROUP BY node, tid) sp
               ON sp.node = t.node AND sp.tid = t.tid
    """, """
        INSERT INTO rels
        SELECT 'PART_OF', 'Thread', id, 'Process', node || ':' || pid, 'thread', NULL, NULL,
               NULL, NULL, NULL
        FROM g_threads WHERE pid IS NOT NULL
    """, f"""
        CREATE TEMP TABLE g_processes AS
        WITH ids AS (
            SELECT id, regexp_extract(id, '^(.*):(-?[0-9]+)$', 1) AS node,
                   CAST(regexp_extract(id, '^(.*):(-?[0-9]+)$', 2) AS BIGINT) AS pid
            FROM (SELECT DISTINCT dst AS id FROM rels WHERE dst_label = 'Process'))
        SELECT i.id, i.node, i.pid, p.ppid::BIGINT AS ppid, coalesce(p.comm, tn.comm) AS comm,
               p.exe, p.argv, p.cgroup, p.cgroup_id, nullif({role}, '') AS role
        FROM ids i
        LEFT JOIN w_processes p ON p.node = i.node AND p.pid = i.pid
        LEFT JOIN thread_names tn ON tn.node = i.node AND tn.tid = i.pid
    """)
    queries = {
        "Process": "SELECT * FROM g_processes ORDER BY id",
        "Thread": "SELECT * FROM g_threads ORDER BY id",
        "Span": f"""
            SELECT sp.span_key AS id, sp.trace_id, sp.span_id, sp.parent_key AS parent_id,
                   sp.service, sp.name, sp.kind, sp.node, sp.pid, sp.tid,
                   sp.s AS start_ns, sp.e AS end_ns, sp.e - sp.s AS dur_ns, sp.status,
                   sp.status_message, sp.mapped_by, sp.origin, sp.synthetic, sp.owned,
                   CAST(sp.level AS BIGINT) AS level, sp.trigger_key,
                   CASE WHEN sp.conn_lport IS NOT NULL THEN sp.conn_laddr || ':'
                        || sp.conn_lport || '-' || sp.conn_raddr || ':' || sp.conn_rport
                        END AS conn,
                   b.on_cpu_ns, b.runqueue_ns, b.blocked_ns, b.unknown_ns,
                   to_json({{{blocked}}})::VARCHAR AS blocked_by_reason,
                   d.concept, d.business_id, coalesce(d.txn_id, t.txn_id) AS txn_id,
                   d.deadline_ns, coalesce(d.failed, false) AS failed, d.failure_kind,
                   d.over_ns, rc.kind AS root_cause_kind, rc.dst AS root_cause_target,
                   rc.dst_label AS root_cause_label, rc.delay_ns AS root_cause_delay_ns,
                   rc.sufficient AS root_cause_sufficient, sp.attributes
            FROM spans_all sp
            LEFT JOIN span_breakdown b USING (span_key)
            LEFT JOIN span_domain d USING (span_key)
            LEFT JOIN (SELECT sp2.trace_id, any_value(d2.txn_id) AS txn_id
                       FROM span_domain d2 JOIN spans_all sp2 USING (span_key)
                       WHERE d2.txn_id IS NOT NULL GROUP BY sp2.trace_id) t
                   ON t.trace_id = sp.trace_id
            LEFT JOIN root_causes rc ON rc.failed_key = sp.span_key AND rc.rank = 1
            ORDER BY sp.s, sp.span_key""",
        "DomainEvent": """
            SELECT d.concept || ':' || d.span_key AS id, d.concept AS type, d.business_id,
                   d.txn_id, d.span_key AS span_id, sp.trace_id, sp.s AS start_ns,
                   sp.e AS end_ns, sp.status, coalesce(d.failed, false) AS failed,
                   d.label_started, d.label_completed, d.label_failed, d.cutoff_ns,
                   d.cutoff_label, d.missed_by_ns
            FROM span_domain d JOIN spans_all sp USING (span_key)
            WHERE d.concept IS NOT NULL
            UNION ALL
            SELECT DISTINCT 'ClearingWindow:' || cutoff_ns, 'ClearingWindow', NULL, NULL, NULL,
                   NULL, cutoff_ns, cutoff_ns, NULL, false, NULL, NULL, NULL, cutoff_ns,
                   cutoff_label || ' clearing window', NULL
            FROM span_domain WHERE missed_by_ns IS NOT NULL
            ORDER BY id""",
        "KernelEpisode": """
            SELECT id, any_value(kind) AS kind, any_value(subkind) AS subkind,
                   any_value(node) AS node, min(start_ns) AS start_ns, max(end_ns) AS end_ns,
                   max(end_ns) - min(start_ns) AS dur_ns, any_value(memcg) AS memcg,
                   any_value(dev) AS dev, any_value(conn) AS conn,
                   max(weight_ns) AS weight_ns, any_value(detail) AS detail
            FROM episodes
            WHERE id IN (SELECT dst FROM rels WHERE dst_label = 'KernelEpisode'
                         UNION SELECT src FROM rels WHERE src_label = 'KernelEpisode')
            GROUP BY id ORDER BY id""",
    }
    with translated("graph assembly"):
        tables = {label: con.sql(sql).to_arrow_table() for label, sql in queries.items()}
        tables["rels"] = con.sql("SELECT * FROM rels ORDER BY rel, src, dst").to_arrow_table()
    return tables


def causal_edge_rows(con: duckdb.DuckDBPyConnection, window: Window) -> pa.Table:
    """Rows for the lake's ``causal_edges``: the causal edges of the spans this window owns."""
    with translated("causal edges"):
        return _edge_rows(con, window)


def _edge_rows(con: duckdb.DuckDBPyConnection, window: Window) -> pa.Table:
    return con.sql(f"""
        SELECT '{window.id}' AS window, {window.start_ns}::BIGINT AS window_start_ns,
               {window.end_ns}::BIGINT AS window_end_ns, r.src, r.dst, r.kind, r.delay_ns,
               json_object('rel', r.rel, 'src_label', r.src_label, 'dst_label', r.dst_label,
                           'rank', r.rank, 'count', r.count, 'bytes', r.bytes,
                           'evidence', r.evidence::JSON)::VARCHAR AS evidence
        FROM rels r
        WHERE r.rel IN ('DELAYED_BY', 'CAUSED_BY')
          AND (r.src_label = 'KernelEpisode'
               OR r.src IN (SELECT span_key FROM spans_all WHERE owned))
        ORDER BY r.src, r.kind, r.dst""").to_arrow_table()
