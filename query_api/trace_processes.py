"""The processes that ran a trace's spans, with what a replay needs to know about them: the
exec the agent recorded (argv, exe, cgroup) and whether payloads were recorded.

The console's replay panel offers these processes ("pick the recorded process of a span")
and shows their argv to change. One statement per table, parameterised; ``spans`` and
``syscall_data`` are read in the trace's hours only (``from``/``to`` narrow them further).
"""

from __future__ import annotations

from typing import Any

from kprobe.lake import LakeDatabase, partition_filter, scan

_HOUR_NS = 3600 * 10**9
_NO_END = 2**63 - 1

_SPANS = """
    SELECT node, pid, list(DISTINCT service ORDER BY service) AS services,
           list(trace_id || ':' || span_id ORDER BY start_ns) AS spans,
           list(DISTINCT name ORDER BY name) AS span_names,
           min(start_ns) AS first_start_ns, max(end_ns) AS last_end_ns
    FROM {spans}
    WHERE trace_id = ? AND pid IS NOT NULL AND node IS NOT NULL
    GROUP BY node, pid ORDER BY first_start_ns"""
# the last exec of each (node, pid) before the trace's first span of it (pids are reused)
_EXECS = """
    SELECT node, pid, arg_max(ts_ns, ts_ns) AS exec_ns, arg_max(comm, ts_ns) AS comm,
           arg_max(exe, ts_ns) AS exe, arg_max(argv, ts_ns) AS argv,
           arg_max(cgroup, ts_ns) AS cgroup
    FROM processes p JOIN wanted w USING (node, pid)
    WHERE p.kind = 'exec' AND p.ts_ns <= w.first_start_ns
    GROUP BY node, pid"""
_PAYLOADS = """
    SELECT node, pid, count(*) AS payload_rows
    FROM syscall_data JOIN wanted USING (node, pid)
    WHERE {hours} GROUP BY node, pid"""


def trace_processes(db: LakeDatabase, trace_id: str, start_ns: int | None,
                    end_ns: int | None) -> list[dict[str, Any]]:
    """One entry per (node, pid) with a span of ``trace_id`` (``schemas.TraceProcess``)."""
    spans = scan("spans", (), 0 if start_ns is None else start_ns,
                 _NO_END if end_ns is None else end_ns)
    with db.session(["spans", "processes", "syscall_data"]) as con:
        found = con.execute(_SPANS.replace("{spans}", spans), [trace_id]).fetchall()
        names = ["node", "pid", "services", "spans", "span_names", "first_start_ns",
                 "last_end_ns"]
        rows = [dict(zip(names, row)) for row in found]
        if not rows:
            return []
        con.execute("CREATE TEMP TABLE wanted (node VARCHAR, pid INTEGER, "
                    "first_start_ns BIGINT)")
        con.executemany("INSERT INTO wanted VALUES (?, ?, ?)",
                        [[r["node"], r["pid"], r["first_start_ns"]] for r in rows])
        execs = {(r[0], r[1]): r[2:] for r in con.execute(_EXECS).fetchall()}
        first = min(r["first_start_ns"] for r in rows)
        last = max((r["last_end_ns"] or r["first_start_ns"]) for r in rows)
        # payloads in the trace's own hours only: a long-lived process's payloads since its
        # exec may be days of partitions, too much to count for a page
        hours = partition_filter((), first, last + _HOUR_NS + 1)
        payloads = {(r[0], r[1]): int(r[2]) for r in con.execute(
            _PAYLOADS.replace("{hours}", hours)).fetchall()}
    out = []
    for row in rows:
        key = (row["node"], row["pid"])
        exec_ns, comm, exe, argv, cgroup = execs.get(key, (None, None, None, None, None))
        payload_rows = payloads.get(key, 0)
        out.append({**row, "exec_ns": exec_ns, "comm": comm, "exe": exe,
                    "argv": list(argv) if argv is not None else None, "cgroup": cgroup,
                    "payload_rows": payload_rows,
                    "replayable": exec_ns is not None and payload_rows > 0})
    return out
