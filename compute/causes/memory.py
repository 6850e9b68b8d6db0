"""Memory pressure: reclaim inside the operation, the episode, and who drove it.

A memcg limit makes the *allocating* thread reclaim (``memcg_reclaim`` rows on that tid);
global pressure gives ``direct_reclaim``. Reclaim rows of all threads in one memcg (or, for
direct reclaim, on one node), no further apart than ``episode_gap_ns``, form one pressure
episode. An operation is delayed by the union of (a) reclaim rows on its own thread and
(b) its blocked time classified as reclaim or page-fault I/O, clipped to the span.

The episode's drivers are the processes that allocated in the same memcg while it lasted:
``mem`` rows ``page_alloc`` (pages per flush interval, stamped at the interval end) and
``fault`` (growth), ranked by pages. Each gets ``CAUSED_BY`` episode -> process with its
share of the episode's reclaim time as ``delay_ns``.
"""

from __future__ import annotations

import duckdb

from kprobe.compute.interval_index import IntervalIndex, overlap
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import (
    evidence_list,
    execute,
    merged,
    overlap_join,
    scalar_row,
    translated,
)


def prepare(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    gap = settings.episode_gap_ns
    execute(con, "memory episodes", f"""
        CREATE TEMP TABLE mem_reclaim AS
        WITH r AS (
            SELECT node, pid::BIGINT AS pid, tid::BIGINT AS tid, comm, kind, ts_ns AS s,
                   ts_ns + dur_ns AS e, coalesce(nr_reclaimed, 0) AS nr_reclaimed, memcg,
                   CASE WHEN kind = 'memcg_reclaim' THEN coalesce(memcg, -1) ELSE -1 END AS cg
            FROM w_mem WHERE kind IN ('memcg_reclaim', 'direct_reclaim') AND dur_ns > 0),
        f AS (
            SELECT *, CASE WHEN s <= max(e) OVER (PARTITION BY node, cg ORDER BY s, e
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + {gap}
                           THEN 0 ELSE 1 END AS _new
            FROM r),
        g AS (
            SELECT *, sum(_new) OVER (PARTITION BY node, cg ORDER BY s, e
                                      ROWS UNBOUNDED PRECEDING) AS ep
            FROM f)
        SELECT *, 'mem:' || node || ':' || cg || ':'
                  || min(s) OVER (PARTITION BY node, cg, ep) AS episode_id
        FROM g
    """, """
        INSERT INTO episodes
        SELECT episode_id, 'memory_pressure', mode(kind), node, min(s), max(e),
               CASE WHEN any_value(cg) >= 0 THEN any_value(cg) END, NULL, NULL,
               sum(e - s),
               to_json({'reclaim_ns': sum(e - s), 'nr_reclaimed': sum(nr_reclaimed),
                        'threads': count(DISTINCT tid), 'rows': count(*),
                        'pids': list_sort(list(DISTINCT pid))[1:20]})
        FROM mem_reclaim GROUP BY episode_id, node
    """)


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int) -> None:
    limit = settings.max_evidence_rows
    own_reclaim = overlap_join(
        f"(SELECT span_key, node, tid, pid, s, e FROM spans_all"
        f" WHERE level = {level} AND tid IS NOT NULL AND e > s)",
        "mem_reclaim", ("node", "tid"), settings.join_bucket_ns,
        select="l.span_key, l.node, greatest(l.s, r.s) AS s, least(l.e, r.e) AS e,"
               " r.episode_id, r.memcg, 'mem' AS src,"
               " to_json({'ts_ns': r.s, 'dur_ns': r.e - r.s, 'tid': r.tid, 'kind': r.kind,"
               "          'nr_reclaimed': r.nr_reclaimed, 'memcg': r.memcg}) AS ev")
    gap = settings.episode_gap_ns
    execute(con, "memory attribution", f"""
        CREATE TEMP TABLE m_pieces AS
        {own_reclaim}
        UNION ALL
        SELECT p.span_key, p.node, p.s, p.e, NULL, NULL, 'offcpu',
               to_json({{'ts_ns': p.s, 'dur_ns': p.e - p.s, 'tid': p.tid,
                         'wait_reason': p.reason}})
        FROM span_pieces p JOIN spans_all sp USING (span_key)
        WHERE sp.level = {level} AND p.state = 'blocked'
          AND p.reason IN ('reclaim', 'page_fault_io')
    """, """
        -- the memcg of each delayed span: from its own reclaim rows, else its process
        CREATE TEMP TABLE m_span_cg AS
        SELECT sp.span_key, sp.node,
               coalesce(any_value(m.memcg) FILTER (WHERE m.memcg IS NOT NULL),
                        any_value(pr.cgroup_id)) AS memcg
        FROM (SELECT DISTINCT span_key FROM m_pieces) k
        JOIN spans_all sp USING (span_key)
        LEFT JOIN m_pieces m ON m.span_key = k.span_key
        LEFT JOIN w_processes pr ON pr.node = sp.node AND pr.pid = sp.pid
        GROUP BY sp.span_key, sp.node
    """, f"""
        -- blocked pieces join the episode they fall in (same memcg first, then overlap)
        CREATE TEMP TABLE m_assigned AS
        SELECT p.span_key, p.s, p.e,
               arg_max(ep.id, (ep.memcg IS NOT DISTINCT FROM c.memcg)::INT * 1e18
                              + least(p.e, ep.end_ns + {gap}) - greatest(p.s, ep.start_ns))
                 AS episode_id
        FROM m_pieces p JOIN m_span_cg c USING (span_key)
        JOIN episodes ep ON ep.kind = 'memory_pressure' AND ep.node = p.node
             AND ep.start_ns - {gap} < p.e AND ep.end_ns + {gap} > p.s
        WHERE p.episode_id IS NULL
        GROUP BY p.span_key, p.s, p.e
    """, """
        CREATE TEMP TABLE m_final AS
        SELECT p.span_key, p.node, p.s, p.e, p.src, p.ev,
               coalesce(p.episode_id, a.episode_id,
                        'mem:' || p.node || ':' || coalesce(c.memcg, -1) || ':wait:'
                        || min(p.s) OVER (PARTITION BY p.span_key)) AS episode_id,
               c.memcg
        FROM m_pieces p JOIN m_span_cg c USING (span_key)
        LEFT JOIN m_assigned a ON a.span_key = p.span_key AND a.s = p.s AND a.e = p.e
                              AND p.episode_id IS NULL
    """, """
        -- pressure seen only as blocked time (no reclaim rows): an episode of its own
        INSERT INTO episodes
        SELECT episode_id, 'memory_pressure', mode(json_extract_string(ev, '$.wait_reason')),
               any_value(node), min(s), max(e), any_value(memcg), NULL, NULL, sum(e - s),
               to_json({'reclaim_ns': 0, 'blocked_ns': sum(e - s), 'rows': count(*)})
        FROM m_final
        WHERE episode_id LIKE 'mem:%:wait:%'
          AND episode_id NOT IN (SELECT id FROM episodes)
        GROUP BY episode_id
    """, f"""
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', d.span_key, 'KernelEpisode', d.episode_id,
               'memory_pressure', d.delay_ns, NULL, ev.n, NULL,
               json_object('mem', ev.mem, 'offcpu', ev.offcpu, 'rows', ev.n)
        FROM (SELECT span_key, episode_id, sum(e - s) AS delay_ns
              FROM {merged("m_final", ("span_key", "episode_id"))}
              GROUP BY span_key, episode_id) d
        JOIN (SELECT span_key, episode_id, count(*) AS n,
                     {evidence_list("ev::JSON", "s", limit, "src = 'mem'")}::JSON
                       AS mem,
                     {evidence_list("ev::JSON", "s", limit, "src = 'offcpu'")}::JSON
                       AS offcpu
              FROM m_final GROUP BY span_key, episode_id) ev USING (span_key, episode_id)
        WHERE d.delay_ns >= {settings.min_delay_ns}
    """, "DROP TABLE m_pieces", "DROP TABLE m_span_cg", "DROP TABLE m_assigned",
       "DROP TABLE m_final")
    _drivers(con, settings)


def _drivers(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    """CAUSED_BY episode -> process for episodes that delayed a span (or whose reclaim held
    a CPU that a followed span waited for) and have no drivers yet."""
    slack = settings.alloc_flush_slack_ns
    limit = settings.max_evidence_rows
    execute(con, "memory drivers", f"""
        INSERT INTO rels
        SELECT 'CAUSED_BY', 'KernelEpisode', id, 'Process', node || ':' || pid,
               'memory_driver', CAST(round(weight_ns * share) AS BIGINT), rank, rows,
               pages * {settings.page_size},
               json_object('pages', pages, 'bytes', pages * {settings.page_size},
                           'faults', faults, 'share', round(share, 4), 'same_memcg',
                           memcg IS NOT NULL, 'mem', evidence)
        FROM (
            SELECT *, CASE WHEN sum(pages) OVER (PARTITION BY id) > 0
                           THEN pages / sum(pages) OVER (PARTITION BY id)
                           ELSE faults / nullif(sum(faults) OVER (PARTITION BY id), 0) END
                        AS share,
                   row_number() OVER (PARTITION BY id ORDER BY pages DESC, faults DESC,
                                      pid) AS rank
            FROM (
                SELECT ep.id, ep.node, ep.memcg, ep.weight_ns, a.pid::BIGINT AS pid,
                       coalesce(sum(a.count) FILTER (WHERE a.kind = 'page_alloc'), 0)
                         AS pages,
                       coalesce(sum(a.count) FILTER (WHERE a.kind = 'fault'), 0) AS faults,
                       count(*) AS rows,
                       {evidence_list("{'ts_ns': a.ts_ns, 'kind': a.kind, 'count': a.count,"
                                      " 'memcg': a.memcg}", "a.ts_ns", limit)}::JSON
                         AS evidence
                FROM episodes ep
                JOIN w_mem a ON a.node = ep.node
                     AND (ep.memcg IS NULL OR a.memcg = ep.memcg)
                     AND a.kind IN ('page_alloc', 'fault') AND a.pid > 0
                     AND a.ts_ns >= ep.start_ns AND a.ts_ns <= ep.end_ns + {slack}
                WHERE ep.kind = 'memory_pressure'
                  AND ep.id IN (SELECT dst FROM rels WHERE kind = 'memory_pressure'
                                UNION SELECT episode_id FROM runqueue_reclaim
                                WHERE whose = 'holder' GROUP BY span_key, episode_id
                                HAVING sum(ns) >= {settings.min_delay_ns})
                  AND ep.id NOT IN (SELECT src FROM rels WHERE kind = 'memory_driver')
                GROUP BY ep.id, ep.node, ep.memcg, ep.weight_ns, a.pid))
        WHERE rank <= {settings.max_drivers} AND (pages > 0 OR faults > 0)
    """)


def runqueue_in_reclaim(con: duckdb.DuckDBPyConnection, settings: ComputeSettings,
                        holders: str) -> None:
    """Run-queue time of followed spans (``sql.followed_span``) that a reclaim stretched,
    into ``runqueue_reclaim`` for the root cause (one instant of a critical path is one
    cost, counted once):

    - ``own``: the span's thread was runnable inside its own reclaim (preempted while
      reclaiming). That time is already in the span's memory-pressure delay (the reclaim's
      wall time); the CPU contention edge counts it again.
    - ``holder``: the thread that held the CPU meanwhile was itself reclaiming: the CPU
      went to reclaim work that the holder's memory-pressure episode forced on it.

    ``holders``: CPU contention's overlap rows (span_key, node, tid, holder_tid, s, e,
    share, followed), one per piece of run-queue wait and thread on its CPU."""
    # reclaim rows are few (one interval per reclaim call), the overlap rows many: the
    # reclaim intervals are looked up in memory (interval_index), for the rows of threads
    # that reclaimed or of CPUs such a thread held
    with translated("run-queue in reclaim"):
        reclaim = IntervalIndex(con.sql(
            f"SELECT * FROM {merged('mem_reclaim', ('node', 'tid', 'episode_id'))}"
        ).to_arrow_table(), "tid")
    left = (f"SELECT span_key, node, tid, holder_tid, s, e, share FROM {holders}"
            f" WHERE followed AND e > s AND (tid IN (SELECT tid FROM mem_reclaim)"
            f" OR holder_tid IN (SELECT tid FROM mem_reclaim))")
    for whose, key in (("own", "tid"), ("holder", "holder_tid")):
        with translated("run-queue in reclaim"), overlap(
                con, left, reclaim, key,
                select=f"l.span_key, l.holder_tid, '{whose}' AS whose, r.episode_id,"
                       f" (least(l.e, r.e) - greatest(l.s, r.s)) * l.share AS ns") as pairs:
            execute(con, "run-queue in reclaim", f"""
                INSERT INTO runqueue_reclaim
                SELECT span_key, holder_tid, whose, episode_id, round(sum(ns))::BIGINT
                FROM ({pairs}) GROUP BY ALL""")
    # drivers of the episodes whose reclaim held a CPU (few windows have any)
    if scalar_row(con, "SELECT count(*) FROM runqueue_reclaim WHERE whose = 'holder'")[0]:
        _drivers(con, settings)
