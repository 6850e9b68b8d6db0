"""A process's (or thread's) nanosecond timeline, shaped for an ECharts timeline.

Sections: ``threads`` (running / runnable / blocked with its reason, rebuilt from ``sched``
and ``offcpu`` by the causal engine's own ``compute.timeline``), ``syscalls``, ``memory``,
``network``, ``disk`` and ``spans``. Each section is ``raw`` (one row per interval or
event) while it has at most ``max_points`` rows; past that it is ``buckets``: the range
is cut into equal buckets and each row sums a bucket (per thread for thread states, per
category - syscall name, mem kind... - for events, the top categories kept and the rest in
``other``). So a response stays bounded however wide the range.

Times in ``data`` are nanosecond offsets from ``from_ns`` (exact in a JavaScript double for
any range under 104 days); ``dimensions`` names the columns of each data row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from kprobe.compute import timeline as engine_timeline
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import sql_str
from kprobe.compute.window import KERNEL_COLUMNS
from kprobe.lake import LakeDatabase, scan

TOP_CATEGORIES = 15
MIN_BUCKETS = 10
MAX_BUCKETS = 500
_SPAN_LOOKBACK_NS = 3600 * 10**9  # spans still running at ``from`` started up to this early


@dataclass(frozen=True)
class Who:
    node: str | None
    pid: int | None
    tid: int | None

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.node,) if self.node is not None else ()

    def where(self, pid_col: str | None = "pid", tid_col: str | None = "tid") -> str:
        parts = []
        if self.node is not None:
            parts.append(f"node = {sql_str(self.node)}")
        if self.pid is not None:
            parts.append(f"{pid_col} = {int(self.pid)}" if pid_col else "false")
        if self.tid is not None:
            parts.append(f"{tid_col} = {int(self.tid)}" if tid_col else "false")
        return " AND ".join(parts) or "true"


@dataclass(frozen=True)
class EventSection:
    name: str
    table: str
    start: str  # time column
    end: str | None  # end expression (intervals) or None (instants)
    raw: tuple[tuple[str, str], ...]  # (dimension, SQL expression)
    category: str
    metrics: tuple[tuple[str, str], ...]
    pid_col: str = "pid"
    tid_col: str = "tid"


_SECTIONS: tuple[EventSection, ...] = (
    EventSection("syscalls", "syscalls", "ts_ns", "ts_ns + coalesce(dur_ns, 0)",
                 (("tid", "tid"), ("dur_ns", "dur_ns"), ("name", "name"), ("ret", "ret"),
                  ("fd", "fd")),
                 "coalesce(name, 'nr ' || nr::VARCHAR)",
                 (("count", "count(*)"), ("total_dur_ns", "sum(dur_ns)::BIGINT"),
                  ("max_dur_ns", "max(dur_ns)"), ("errors", "count_if(ret < 0)"))),
    EventSection("memory", "mem", "ts_ns", "ts_ns + coalesce(dur_ns, 0)",
                 (("tid", "tid"), ("dur_ns", "dur_ns"), ("kind", "kind"),
                  ("nr_reclaimed", "nr_reclaimed"), ("count", "count")),
                 "coalesce(kind, '?')",
                 (("count", "count(*)"), ("total_dur_ns", "sum(dur_ns)::BIGINT"),
                  ("max_dur_ns", "max(dur_ns)"), ("pages", "sum(count)::BIGINT"),
                  ("nr_reclaimed", "sum(nr_reclaimed)::BIGINT"))),
    EventSection("network", "net", "ts_ns", None,
                 (("tid", "tid"), ("kind", "kind"), ("bytes", "bytes"), ("saddr", "saddr"),
                  ("sport", "sport"), ("daddr", "daddr"), ("dport", "dport"),
                  ("srtt_us", "srtt_us")),
                 "coalesce(kind, '?')",
                 (("count", "count(*)"), ("bytes", "sum(bytes)::BIGINT"))),
    EventSection("disk", "block_io", "ts_ns", "ts_ns + coalesce(dur_ns, 0)",
                 (("tid", "tid"), ("dur_ns", "dur_ns"), ("rwbs", "rwbs"), ("bytes", "bytes"),
                  ("dev", "dev")),
                 "coalesce(rwbs, '?')",
                 (("count", "count(*)"), ("bytes", "sum(bytes)::BIGINT"),
                  ("total_dur_ns", "sum(dur_ns)::BIGINT"), ("max_dur_ns", "max(dur_ns)"))),
    EventSection("spans", "spans", "start_ns", "coalesce(end_ns, start_ns)",
                 (("tid", "tid"), ("trace_id", "trace_id"), ("span_id", "span_id"),
                  ("service", "service"), ("name", "name"), ("status", "status")),
                 "coalesce(name, '?')",
                 (("count", "count(*)"), ("errors", "count_if(status = 'ERROR')"),
                  ("max_dur_ns", "max(coalesce(end_ns, start_ns) - start_ns)"))),
)


def build_timeline(db: LakeDatabase, compute: ComputeSettings, who: Who, from_ns: int,
                   to_ns: int, max_points: int, max_threads: int) -> dict[str, Any]:
    tables = ["sched", "offcpu", *(s.table for s in _SECTIONS)]
    # the cursor's temporary tables (w_sched, tl, ...) go away when the session ends
    with db.session(tables) as con:
        sections = {"threads": _threads(con, compute, who, from_ns, to_ns, max_points,
                                        max_threads)}
        for section in _SECTIONS:
            sections[section.name] = _events(con, section, who, from_ns, to_ns, max_points)
    return {"from_ns": from_ns, "to_ns": to_ns, "node": who.node, "pid": who.pid,
            "tid": who.tid, "time": "ns offsets from from_ns", "max_points": max_points,
            "sections": sections}


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[list[Any]]:
    return [list(r) for r in con.execute(sql).fetchall()]


def _threads(con: duckdb.DuckDBPyConnection, compute: ComputeSettings, who: Who, lo: int,
             hi: int, max_points: int, max_threads: int) -> dict[str, Any]:
    look = lo - compute.lookback_ns
    if who.pid is not None:
        match = f"(prev_pid = {who.pid} OR next_pid = {who.pid} OR wakee_pid = {who.pid})"
    else:
        match = f"(prev_tid = {who.tid} OR next_tid = {who.tid} OR wakee_tid = {who.tid})"
    con.execute(f"""
        CREATE TEMP TABLE w_sched AS
        SELECT {", ".join(KERNEL_COLUMNS["sched"])} FROM {scan("sched", who.nodes, look, hi)}
        WHERE {match}""")
    since = look - compute.long_interval_ns
    con.execute(f"""
        CREATE TEMP TABLE w_offcpu AS
        SELECT {", ".join(KERNEL_COLUMNS["offcpu"])} FROM {scan("offcpu", who.nodes, since, hi)}
        WHERE {who.where()} AND ts_ns + coalesce(dur_ns, 0) >= {look}""")
    engine_timeline.build(con, hi, compute.model_copy(update={"timeline_all_threads": True}))
    keep = who.where()
    con.execute(f"""
        CREATE TEMP TABLE tl AS
        SELECT node, tid, pid, greatest(s, {lo}) AS s, least(e, {hi}) AS e, state, reason,
               cpu, waker_tid
        FROM thread_intervals WHERE e > {lo} AND s < {hi} AND {keep}""")
    con.execute(f"""
        CREATE TEMP TABLE tl_threads AS
        SELECT node, tid, any_value(pid) AS pid, sum(e - s) AS total FROM tl
        GROUP BY node, tid ORDER BY total DESC, tid LIMIT {max_threads}""")
    [(count, threads_all)] = con.execute(
        "SELECT count(*), count(DISTINCT (node, tid)) FROM tl").fetchall()
    lanes = _rows(con, "SELECT node, tid, pid FROM tl_threads ORDER BY node, tid")
    omitted = int(threads_all) - len(lanes)
    kept = "SELECT * FROM tl t SEMI JOIN tl_threads k ON t.node = k.node AND t.tid = k.tid"
    [(kept_count,)] = con.execute(f"SELECT count(*) FROM ({kept})").fetchall()
    base = {"lanes": [{"node": n, "tid": t, "pid": p} for n, t, p in lanes],
            "omitted_threads": omitted, "rows_total": int(count)}
    if kept_count <= max_points:
        return {**base, "mode": "raw",
                "dimensions": ["node", "tid", "start", "end", "state", "reason", "cpu",
                               "waker_tid"],
                "data": _rows(con, f"""
                    SELECT node, tid, s - {lo}, e - {lo}, state, reason, cpu, waker_tid
                    FROM ({kept}) ORDER BY node, tid, s""")}
    buckets = max(MIN_BUCKETS, min(MAX_BUCKETS, max_points // max(1, len(lanes))))
    width = -(-(hi - lo) // buckets)
    data = _rows(con, f"""
        WITH pieces AS (
            SELECT node, tid, state, reason,
                   unnest(generate_series((s - {lo}) // {width},
                                          (greatest(e - 1, s) - {lo}) // {width})) AS b, s, e
            FROM ({kept})),
        clipped AS (
            SELECT node, tid, state, reason, b,
                   least(e, {lo} + (b + 1) * {width}) - greatest(s, {lo} + b * {width}) AS ns
            FROM pieces)
        SELECT node, tid, b * {width} AS start,
               sum(ns) FILTER (WHERE state = 'running')::BIGINT AS running_ns,
               sum(ns) FILTER (WHERE state = 'runnable')::BIGINT AS runnable_ns,
               sum(ns) FILTER (WHERE state = 'blocked')::BIGINT AS blocked_ns,
               sum(ns) FILTER (WHERE state NOT IN ('running', 'runnable', 'blocked'))::BIGINT
                   AS unknown_ns,
               arg_max(reason, ns) FILTER (WHERE state = 'blocked') AS top_reason
        FROM clipped WHERE ns > 0 GROUP BY node, tid, b ORDER BY node, tid, b""")
    return {**base, "mode": "buckets", "bucket_ns": width,
            "dimensions": ["node", "tid", "start", "running_ns", "runnable_ns", "blocked_ns",
                           "unknown_ns", "top_reason"],
            "data": data}


def _events(con: duckdb.DuckDBPyConnection, section: EventSection, who: Who, lo: int,
            hi: int, max_points: int) -> dict[str, Any]:
    lookback = _SPAN_LOOKBACK_NS if section.table == "spans" else 0
    if section.end is not None:
        overlap = f"{section.start} < {hi} AND {section.end} >= {lo}"
        since = lo - lookback
    else:
        overlap = f"{section.start} >= {lo} AND {section.start} < {hi}"
        since = lo
    source = (f"(SELECT * FROM {scan(section.table, who.nodes, since, hi)} WHERE "
              f"{who.where(section.pid_col, section.tid_col)} AND {overlap})")
    [(count,)] = con.execute(f"SELECT count(*) FROM {source}").fetchall()
    start = f"greatest({section.start}, {lo}) - {lo}"
    end = f"least({section.end}, {hi}) - {lo}" if section.end else None
    if count <= max_points:
        dims = ["start", *(["end"] if end else []), *(d for d, _ in section.raw)]
        exprs = [start, *([end] if end else []), *(e for _, e in section.raw)]
        return {"mode": "raw", "rows_total": int(count), "dimensions": dims,
                "data": _rows(con, f"SELECT {', '.join(exprs)} FROM {source} "
                                   f"ORDER BY {section.start}")}
    top = [c for (c,) in con.execute(
        f"SELECT {section.category} AS c FROM {source} GROUP BY c "
        f"ORDER BY count(*) DESC, c LIMIT {TOP_CATEGORIES}").fetchall()]
    category = (f"CASE WHEN {section.category} IN ({', '.join(sql_str(str(c)) for c in top)})"
                f" THEN {section.category} ELSE 'other' END") if top else "'other'"
    buckets = max(MIN_BUCKETS, min(MAX_BUCKETS, max_points // (len(top) + 1)))
    width = -(-(hi - lo) // buckets)
    metrics = ", ".join(f"{expr} AS {name}" for name, expr in section.metrics)
    data = _rows(con, f"""
        SELECT (greatest({section.start}, {lo}) - {lo}) // {width} * {width} AS start,
               {category} AS category, {metrics}
        FROM {source} GROUP BY ALL ORDER BY start, category""")
    return {"mode": "buckets", "rows_total": int(count), "bucket_ns": width,
            "categories": [*map(str, top), "other"],
            "dimensions": ["start", "category", *(n for n, _ in section.metrics)],
            "data": data}
