"""CPU contention: the threads that held the CPU while the operation's thread was runnable.

A runnable piece waits for one CPU: the one it was preempted on or queued to, which is where
it is switched in next (``cpu`` of the runnable interval). Whoever ``cpu_intervals`` says ran
there meanwhile held it. One ``DELAYED_BY`` span -> thread edge per holder, with the time
it held the CPU while the span waited (its ``share`` of the overlap: 1 from switch rows; from
evidence capture's slices, its fraction of the slice among the threads that ran in it other
than the waiting one).
"""

from __future__ import annotations

import duckdb
import pyarrow.compute as pc

from kprobe.compute.causes.memory import runqueue_in_reclaim
from kprobe.compute.interval_index import IntervalIndex, overlap
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import evidence_list, execute, followed_span, translated

# While the span's thread waited for the CPU, the CPU ran the other threads, not it: a slice
# holder's share of the wait is its share among the slice's other holders (a slice's shares
# include the waiting thread's own on-CPU time and sum to at most 1), never more than it ran
# in the slice. ciY: an upstream that ran 11 ms of a slice's time and waited 16 ms for it
# had only 11 of those 16 ms attributed, and its own work outranked the hog. Switch-row
# holders (share 1, one per stretch of a piece) are unchanged.
_SHARE_WHILE_WAITING = """
    least(share / sum(share) OVER (PARTITION BY span_key, node, cpu, piece_s, held_s, held_e),
          share * (held_e - held_s) / greatest(e - s, 1))"""


def attribute(con: duckdb.DuckDBPyConnection, settings: ComputeSettings, level: int,
              cpus: IntervalIndex) -> None:
    """``cpus``: ``cpu_intervals`` sorted in memory (``timeline.build``)."""
    limit = settings.max_evidence_rows
    # only slices hold a CPU for a share under 1; with switch rows alone (full capture) the
    # share is 1, one holder per stretch, and the window over the pieces would keep it so
    shares = cpus.table.column("share")
    sliced = shares.null_count < len(shares) and pc.min(shares).as_py() < 1.0
    with translated("cpu contention"), overlap(
            con, f"SELECT p.span_key, p.node, p.tid, p.cpu, p.s, p.e,"
                 f" {followed_span('sp')} AS followed FROM span_pieces p"
                 f" JOIN spans_all sp USING (span_key)"
                 f" WHERE sp.level = {level} AND p.state = 'runnable' AND p.cpu IS NOT NULL",
            cpus, "cpu",
            select="l.span_key, l.node, l.cpu, r.tid AS holder_tid, r.pid AS holder_pid,"
                   " greatest(l.s, r.s) AS s, least(l.e, r.e) AS e, r.share, l.tid,"
                   " l.followed, l.s AS piece_s, r.s AS held_s, r.e AS held_e",
            where="r.tid <> l.tid") as holders:
        execute(con, "cpu contention", f"""
            CREATE TEMP TABLE c_holders AS
            SELECT span_key, node, cpu, holder_tid, holder_pid, s, e, tid, followed,
                   {_SHARE_WHILE_WAITING if sliced else "share"} AS share
            FROM ({holders})
        """)
    # evidence only for the holders that count (most hold a CPU for less than min_delay)
    execute(con, "cpu contention", f"""
        -- ranked by delay, ties by tid: a rank never depends on the order rows arrive in
        INSERT INTO rels
        SELECT 'DELAYED_BY', 'Span', span_key, 'Thread', node || ':' || holder_tid,
               'cpu_contention', delay_ns,
               row_number() OVER (PARTITION BY span_key ORDER BY delay_ns DESC, holder_tid), n,
               NULL,
               json_object('holder_pid', holder_pid, 'holder_tid', holder_tid,
                           'sched', evidence)
        FROM (SELECT span_key, node, holder_tid, any_value(holder_pid) AS holder_pid,
                     sum(held)::BIGINT AS delay_ns, count(*) AS n,
                     {evidence_list("{'cpu': cpu, 'ts_ns': s, 'dur_ns': held}", "s",
                                    limit)}::JSON AS evidence
              FROM (SELECT *, round((e - s) * share)::BIGINT AS held FROM c_holders) h
              SEMI JOIN (SELECT span_key, node, holder_tid FROM c_holders GROUP BY ALL
                         HAVING sum((e - s) * share) >= {settings.min_delay_ns}) k
                USING (span_key, node, holder_tid)
              GROUP BY span_key, node, holder_tid)
    """)
    runqueue_in_reclaim(con, settings, "c_holders")
    execute(con, "cpu contention", "DROP TABLE c_holders")
