"""Disk: time blocked on block I/O, the device's busy period, and who kept it busy.

Block requests (issue -> complete) on one device that overlap form a busy period: a disk
episode. An operation blocked with reason ``disk`` during a busy period was delayed by it
(restricted to the devices its own process used, when it issued requests itself during the
wait or within ``OWN_REQUEST_AFTER_WAIT_NS`` after it; else to the device it last sent a
request to before the wait: a flusher thread may write its pages back for it). The rest of
a wait on that one device, while the device was idle but the process's request still
waited to be sent (writeback throttled after a busy period's latency, the scheduler's
queue), is the cost of the busy period that ended last before it, within
``disk_aftermath_ns``. Drivers are the processes with the most bytes in the episode
(``CAUSED_BY`` episode -> process): a writer doing buffered rewrites plus fdatasync makes
another process's fsync wait.
"""

from __future__ import annotations

import duckdb

from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import evidence_list, execute, merged, overlap_join

# how soon after a disk wait the process's own request names the device it waited for
OWN_REQUEST_AFTER_WAIT_NS = 1_000_000


def prepare(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> None:
    execute(con, "disk episodes", """
        CREATE TEMP TABLE disk_rows AS
        SELECT node, coalesce(dev, '?') AS dev, pid::BIGINT AS pid, tid::BIGINT AS tid, comm,
               ts_ns AS s, ts_ns + greatest(coalesce(dur_ns, 0), 1) AS e,
               coalesce(bytes, 0) AS bytes, rwbs, sector
        FROM w_block_io
    """, f"""
        CREATE TEMP TABLE disk_busy AS
        SELECT node, dev, s, e, 'disk:' || node || ':' || dev || ':' || s AS episode_id
        FROM {merged("disk_rows", ("node", "dev"))}
    """, """
        CREATE TEMP TABLE disk_rows_ep AS
        SELECT r.*, b.episode_id
        FROM disk_rows r ASOF JOIN disk_busy b
          ON r.node = b.node AND r.dev = b.dev AND r.s >= b.s
    """)


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int) -> None:
    bucket = settings.join_bucket_ns
    limit = settings.max_evidence_rows
    pieces = (f"(SELECT p.span_key, p.node, p.tid, sp.pid, p.s, p.e FROM span_pieces p"
              f" JOIN spans_all sp USING (span_key)"
              f" WHERE sp.level = {level} AND p.state = 'blocked' AND p.reason = 'disk')")
    # the devices the wait was for: the process's own requests within the wait or right
    # after it (the write its fsync waited to send, once the device let it)
    own = overlap_join(f"(SELECT span_key, node, pid, s, e + {OWN_REQUEST_AFTER_WAIT_NS} AS e "
                        f"FROM k_pieces)", "disk_rows", ("node",), bucket,
                        select="DISTINCT l.span_key, r.dev", where="r.pid = l.pid")
    hit = overlap_join(pieces, "disk_busy", ("node",), bucket,
                       select="l.span_key, l.node, r.dev, r.episode_id,"
                              " greatest(l.s, r.s) AS s, least(l.e, r.e) AS e")
    execute(con, "disk attribution", f"""
        CREATE TEMP TABLE k_pieces AS {pieces}
    """, f"""
        CREATE TEMP TABLE k_own AS {own}
    """, """
        -- no request of its own in or right after the wait (a flusher thread wrote its
        -- pages back): the device its process last sent a request to before the wait, in
        -- the window (where its files are); only a process that sent none is left with
        -- every busy device (ciP3: an fsync whose writeback the flusher sent was blamed
        -- on a busy loop device the service never used)
        INSERT INTO k_own
        SELECT p.span_key, r.dev
        FROM (SELECT span_key, node, pid, min(s) AS s FROM k_pieces
              WHERE span_key NOT IN (SELECT span_key FROM k_own) GROUP BY ALL) p
        ASOF JOIN (SELECT node, pid, s, dev FROM disk_rows WHERE pid IS NOT NULL) r
          ON r.node = p.node AND r.pid = p.pid AND r.s <= p.s
    """, f"""
        CREATE TEMP TABLE k_hits AS
        SELECT h.* FROM ({hit}) h
        WHERE NOT EXISTS (SELECT 1 FROM k_own o WHERE o.span_key = h.span_key)
           OR EXISTS (SELECT 1 FROM k_own o WHERE o.span_key = h.span_key AND o.dev = h.dev)
    """, """
        -- the rest of a wait on the one device it was for (its own request there within
        -- the wait or just after): before its first busy period, between two, after the
        -- last. The device was idle while the request still waited to be sent (writeback
        -- throttled after the latency a busy period caused, the scheduler's queue): that
        -- time is the cost of the busy period that ended last before it, within
        -- disk_aftermath_ns; else it stays unexplained, never guessed.
        CREATE TEMP TABLE k_gaps AS
        WITH named AS (SELECT span_key, any_value(dev) AS dev FROM k_own GROUP BY span_key
                       HAVING count(DISTINCT dev) = 1),
        pc AS (SELECT p.span_key, p.node, p.s, p.e, n.dev
               FROM k_pieces p JOIN named n USING (span_key)),
        h AS (SELECT pc.span_key, pc.node, pc.dev, pc.s AS ps, pc.e AS pe, k.s, k.e
              FROM pc JOIN k_hits k ON k.span_key = pc.span_key AND k.dev = pc.dev
               AND k.s >= pc.s AND k.e <= pc.e)
        SELECT * FROM (
            SELECT span_key, node, dev, hit_e AS s, coalesce(next_s, pe) AS e
            FROM (SELECT span_key, node, dev, pe, e AS hit_e,
                         lead(s) OVER (PARTITION BY span_key, ps ORDER BY s) AS next_s
                  FROM h)
            UNION ALL
            SELECT pc.span_key, pc.node, pc.dev, pc.s, coalesce(min(h.s), pc.e)
            FROM pc LEFT JOIN h ON h.span_key = pc.span_key AND h.ps = pc.s
            GROUP BY pc.span_key, pc.node, pc.dev, pc.s, pc.e)
        WHERE e > s
    """, f"""
        INSERT INTO k_hits
        SELECT g.span_key, g.node, g.dev, b.episode_id, g.s, g.e
        FROM k_gaps g ASOF JOIN disk_busy b
          ON b.node = g.node AND b.dev = g.dev AND g.s >= b.e
        WHERE g.s - b.e <= {settings.disk_aftermath_ns}
    """, """
        -- blocked on disk with no block request seen: an episode of its own
        INSERT INTO k_hits
        SELECT span_key, node, '?', 'disk:' || node || ':?:' || min(s) OVER (
                   PARTITION BY span_key), s, e
        FROM k_pieces WHERE span_key NOT IN (SELECT span_key FROM k_hits)
    """, """
        INSERT INTO episodes
        SELECT b.episode_id, 'disk', 'block_io', b.node, b.s, b.e, NULL, b.dev, NULL,
               b.e - b.s,
               to_json({'requests': count(r.s), 'bytes': coalesce(sum(r.bytes), 0),
                         'pids': list_sort(list(DISTINCT r.pid))[1:20]})
        FROM disk_busy b LEFT JOIN disk_rows_ep r USING (episode_id)
        WHERE b.episode_id IN (SELECT episode_id FROM k_hits)
          AND b.episode_id NOT IN (SELECT id FROM episodes)
        GROUP BY b.episode_id, b.node, b.s, b.e, b.dev
    """, """
        INSERT INTO episodes
        SELECT episode_id, 'disk', 'unseen_io', any_value(node), min(s), max(e), NULL, '?',
               NULL, sum(e - s), to_json({'requests': 0})
        FROM k_hits WHERE dev = '?' AND episode_id NOT IN (SELECT id FROM episodes)
        GROUP BY episode_id
    """, f"""
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', h.span_key, 'KernelEpisode', h.episode_id, 'disk',
               h.delay_ns, NULL, h.n, own.bytes,
               json_object('offcpu', h.waits, 'block_io', coalesce(own.rows, '[]'::JSON),
                           'own_bytes', coalesce(own.bytes, 0))
        FROM (SELECT span_key, episode_id, sum(e - s) AS delay_ns, count(*) AS n,
                     {evidence_list("{'ts_ns': s, 'dur_ns': e - s, 'wait_reason': 'disk'}",
                                    "s", limit)}::JSON AS waits
              FROM k_hits GROUP BY span_key, episode_id) h
        LEFT JOIN (
            SELECT k.span_key, r.episode_id, sum(r.bytes) AS bytes,
                   {evidence_list("{'ts_ns': r.s, 'dur_ns': r.e - r.s, 'tid': r.tid,"
                                  " 'bytes': r.bytes, 'rwbs': r.rwbs, 'dev': r.dev}",
                                  "r.s", limit)}::JSON AS rows
            FROM (SELECT DISTINCT span_key, node, pid FROM k_pieces) k
            JOIN disk_rows_ep r ON r.node = k.node AND r.pid = k.pid
            WHERE r.episode_id IN (SELECT episode_id FROM k_hits h2
                                   WHERE h2.span_key = k.span_key)
            GROUP BY k.span_key, r.episode_id) own USING (span_key, episode_id)
        WHERE h.delay_ns >= {settings.min_delay_ns}
    """, f"""
        INSERT INTO rels
        SELECT 'CAUSED_BY', 'KernelEpisode', episode_id, 'Process', node || ':' || pid,
               'disk_driver', CAST(round(weight_ns * bytes / nullif(total, 0)) AS BIGINT),
               rank, n, bytes,
               json_object('bytes', bytes, 'requests', n,
                           'share', round(bytes / nullif(total, 0), 4), 'block_io', rows)
        FROM (
            SELECT *, sum(bytes) OVER (PARTITION BY episode_id) AS total,
                   row_number() OVER (PARTITION BY episode_id ORDER BY bytes DESC, pid)
                     AS rank
            FROM (SELECT r.episode_id, r.node, r.pid, any_value(ep.weight_ns) AS weight_ns,
                         sum(r.bytes) AS bytes, count(*) AS n,
                         {evidence_list("{'ts_ns': r.s, 'dur_ns': r.e - r.s, 'tid': r.tid,"
                                        " 'bytes': r.bytes, 'rwbs': r.rwbs}", "r.s",
                                        limit)}::JSON AS rows
                  FROM disk_rows_ep r JOIN episodes ep ON ep.id = r.episode_id
                  WHERE r.pid > 0
                    AND r.episode_id IN (SELECT dst FROM rels WHERE kind = 'disk')
                    AND r.episode_id NOT IN (SELECT src FROM rels WHERE kind = 'disk_driver')
                  GROUP BY r.episode_id, r.node, r.pid))
        WHERE rank <= {settings.max_drivers}
    """, "DROP TABLE k_pieces", "DROP TABLE k_own", "DROP TABLE k_gaps",
       "DROP TABLE k_hits")
