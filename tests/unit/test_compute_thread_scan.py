"""The timeline's per-thread look-ups in numpy give exactly what the window sort and the two
ASOF joins they replaced gave (the SQL is kept here as the oracle)."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from kprobe.compute import thread_scan

END = 10_000_000

# The statement compute/timeline.py ran before compute/thread_scan.py replaced it.
ORACLE = f"""
    WITH sw AS (
        SELECT node, tid, pid, ts AS s, cpu, opens, prev_state, ord,
               coalesce(lead(ts) OVER w, {END}) AS e,
               lead(ord) OVER w AS next_ord, lead(cpu) OVER w AS next_cpu
        FROM t_sw WINDOW w AS (PARTITION BY node, tid ORDER BY ts, ord)),
    a AS (
        SELECT sw.*, k.ts AS any_ts, k.waker_pid AS any_pid, k.waker_tid AS any_tid
        FROM sw ASOF LEFT JOIN (SELECT * FROM t_wk WHERE waker_tid IS NOT NULL) k
          ON k.node = sw.node AND k.tid = sw.tid AND k.ts >= sw.s),
    b AS (
        SELECT a.*, k.ts AS waking_ts, k.waker_pid AS waking_pid, k.waker_tid AS waking_tid
        FROM a ASOF LEFT JOIN (SELECT * FROM t_wk WHERE is_waking
                               AND waker_tid IS NOT NULL) k
          ON k.node = a.node AND k.tid = a.tid AND k.ts >= a.s)
    SELECT node, tid, pid, s, cpu, opens, prev_state, ord, e, next_ord, next_cpu, any_ts,
           any_pid, any_tid, waking_ts, waking_pid, waking_tid FROM b"""


def _tables(rng: np.random.Generator, rows: int, wakes: int, span: int
            ) -> duckdb.DuckDBPyConnection:
    """Random switch and wakeup rows: a few threads on two nodes (and a null node), wakeups
    on the very instant of a switch, without a waker, of every kind, nulls in pid and cpu.
    No two switch rows of a thread share (ts, ord) and no two wakeups share ts: with such
    ties neither the old SQL nor the new code promises an order."""
    con = duckdb.connect()
    nodes = np.array(["a", "b", None], dtype=object)
    node = nodes[rng.integers(0, 3, rows)]
    tid = rng.integers(1, 6, rows)
    ts = rng.choice(span, rows, replace=False).astype(np.int64)
    ordv = np.where(rng.random(rows) < 0.5, 0, 2)
    sw = pa.table({
        "node": pa.array(node, pa.string()), "tid": pa.array(tid, pa.int64()),
        "pid": pa.array(tid // 2, pa.int64(), mask=rng.random(rows) < 0.1),
        "ts": pa.array(ts, pa.int64()),
        "cpu": pa.array(rng.integers(0, 2, rows), pa.int32(), mask=rng.random(rows) < 0.1),
        "opens": pa.array(np.where(ordv == 2, "running", "blocked")),
        "prev_state": pa.array(np.where(ordv == 2, "", "S"), pa.string(), mask=ordv == 2),
        "cpu_prev_ts": pa.nulls(rows, pa.int64()), "run_ns": pa.nulls(rows, pa.int64()),
        "ord": pa.array(ordv, pa.int32())})
    # half the wakeups on the instant of a switch row (of any thread), the rest anywhere
    on_switch = rng.random(wakes) < 0.5
    wts = np.where(on_switch, ts[rng.integers(0, rows, wakes)], rng.integers(0, span, wakes))
    wk = pa.table({
        "node": pa.array(nodes[rng.integers(0, 3, wakes)], pa.string()),
        "tid": pa.array(rng.integers(1, 6, wakes), pa.int64()),
        "pid": pa.array(rng.integers(1, 4, wakes), pa.int64(), mask=rng.random(wakes) < 0.1),
        "ts": pa.array(wts, pa.int64()),
        "cpu": pa.array(rng.integers(0, 2, wakes), pa.int32(), mask=rng.random(wakes) < 0.1),
        "waker_pid": pa.array(rng.integers(1, 9, wakes), pa.int64(),
                              mask=rng.random(wakes) < 0.1),
        "waker_tid": pa.array(rng.integers(1, 9, wakes), pa.int64(),
                              mask=rng.random(wakes) < 0.2),
        "is_waking": pa.array(rng.random(wakes) < 0.7)})
    con.register("sw_src", sw)
    con.register("wk_src", wk)
    con.execute("CREATE TABLE t_sw AS SELECT * FROM sw_src QUALIFY row_number() OVER "
                "(PARTITION BY node, tid, ts, ord) = 1")
    con.execute("CREATE TABLE t_wk AS SELECT * FROM wk_src QUALIFY row_number() OVER "
                "(PARTITION BY node, tid, ts) = 1")
    return con


def _compare(con: duckdb.DuckDBPyConnection) -> int:
    con.register("got", thread_scan.switch_successors(con, END))
    columns = ("node, tid, pid, s, cpu, opens, prev_state, ord, e, next_ord, next_cpu, "
               "any_ts, any_pid, any_tid, waking_ts, waking_pid, waking_tid")
    for a, b in (("got", f"({ORACLE})"), (f"({ORACLE})", "got")):
        extra = con.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {a} "
                            f"EXCEPT ALL SELECT {columns} FROM {b})").fetchall()[0][0]
        assert extra == 0
    rows: int = con.execute("SELECT count(*) FROM got").fetchall()[0][0]
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_same_answers_as_the_window_and_asof_joins(seed: int) -> None:
    con = _tables(np.random.default_rng(seed), 3_000, 1_500, 40_000)
    assert _compare(con) == con.execute("SELECT count(*) FROM t_sw").fetchall()[0][0]


def test_same_answers_with_the_instants_ranked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A time range too long for thread codes x nanoseconds uses the instants' ranks."""
    monkeypatch.setattr(thread_scan, "KEY_LIMIT", 10)
    con = _tables(np.random.default_rng(9), 2_000, 1_000, 1 << 40)
    assert _compare(con) > 0


def test_no_wakeups_and_no_switches() -> None:
    con = _tables(np.random.default_rng(3), 50, 10, 1_000)
    con.execute("DELETE FROM t_wk")
    assert _compare(con) > 0
    con.execute("DELETE FROM t_sw")
    assert _compare(con) == 0


def test_a_wakeup_on_the_switch_instant_counts_and_a_null_node_matches_none() -> None:
    """The control: the exact boundary (a wakeup at the switch's own ts) and a null node."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE t_sw AS SELECT * FROM (VALUES
        ('a', 1, 1, 100, 0, 'blocked', 'S', 0, NULL::BIGINT, NULL::BIGINT),
        ('a', 1, 1, 200, 0, 'running', NULL, 2, NULL, NULL),
        (NULL, 1, 1, 100, 0, 'blocked', 'S', 0, NULL, NULL))
        t(node, tid, pid, ts, cpu, opens, prev_state, ord, cpu_prev_ts, run_ns)""")
    con.execute("""CREATE TABLE t_wk AS SELECT * FROM (VALUES
        ('a', 1, 1, 100, 0, 7, 70, true), (NULL, 1, 1, 100, 0, 8, 80, true))
        t(node, tid, pid, ts, cpu, waker_pid, waker_tid, is_waking)""")
    got = thread_scan.switch_successors(con, END).to_pylist()
    by_node = {(r["node"], r["s"]): r for r in got}
    assert by_node[("a", 100)]["any_tid"] == 70 and by_node[("a", 100)]["e"] == 200
    assert by_node[("a", 200)]["any_tid"] is None and by_node[("a", 200)]["e"] == END
    assert by_node[(None, 100)]["any_tid"] is None and by_node[(None, 100)]["e"] == END
    assert _compare(con) == 3


TOL = 50

# The statements that turned t_sw/t_wk (and w_offcpu) into thread_intervals before
# compute/thread_scan.py, from the switch successors on (ORACLE above).
ORACLE_INTERVALS = f"""
    WITH t_open AS (
        SELECT node, tid, pid, s, cpu, opens, prev_state, e, next_ord, next_cpu,
               any_ts AS wake_ts,
               CASE WHEN waking_ts < e THEN {{'ts': waking_ts, 'pid': waking_pid,
                                               'tid': waking_tid}} END AS waking,
               CASE WHEN any_ts < e THEN {{'ts': any_ts, 'pid': any_pid,
                                           'tid': any_tid}} END AS any_wake,
               ord, NULL::BIGINT AS own_waker_pid, NULL::BIGINT AS own_waker_tid
        FROM ({ORACLE})
        UNION ALL
        SELECT k.node, k.tid, k.pid, k.ts, k.cpu, 'runnable', NULL, f.first_ts, f.first_ord,
               f.first_cpu, NULL, NULL, NULL, 1, k.waker_pid, k.waker_tid
        FROM (SELECT node, tid, min(ts) AS first_ts, arg_min(ord, (ts, ord)) AS first_ord,
                     arg_min(cpu, (ts, ord)) AS first_cpu
              FROM t_sw GROUP BY node, tid) f
        JOIN (SELECT node, tid, arg_min(pid, ts) AS pid, min(ts) AS ts,
                     arg_min(cpu, ts) AS cpu, arg_min(waker_pid, ts) AS waker_pid,
                     arg_min(waker_tid, ts) AS waker_tid
              FROM t_wk GROUP BY node, tid) k USING (node, tid)
        WHERE k.ts < f.first_ts),
    o AS (
        SELECT *, (wake_ts >= s AND wake_ts < e) AS woken,
               coalesce(next_ord = 0, false) AS lost_in,
               CASE WHEN waking.ts < e THEN waking
                    WHEN any_wake.ts < e THEN any_wake END AS waker
        FROM t_open),
    t_intervals AS (
        SELECT node, tid, pid, s, e,
               CASE WHEN next_ord = 2 THEN 'unknown' ELSE 'running' END AS state, cpu,
               NULL::BIGINT AS waker_pid, NULL::BIGINT AS waker_tid, prev_state
        FROM o WHERE opens = 'running'
        UNION ALL
        SELECT node, tid, pid, s, e, CASE WHEN lost_in THEN 'unknown' ELSE 'runnable' END,
               coalesce(next_cpu, cpu), CASE WHEN ord = 1 THEN own_waker_pid END,
               CASE WHEN ord = 1 THEN own_waker_tid END, prev_state
        FROM o WHERE opens = 'runnable'
        UNION ALL
        SELECT node, tid, pid, s, CASE WHEN woken THEN wake_ts ELSE e END,
               CASE WHEN lost_in AND NOT woken THEN 'unknown' ELSE opens END, cpu,
               waker.pid, waker.tid, prev_state
        FROM o WHERE opens IN ('blocked', 'unknown')
        UNION ALL
        SELECT node, tid, pid, wake_ts, e, CASE WHEN lost_in THEN 'unknown' ELSE 'runnable' END,
               coalesce(next_cpu, cpu), waker.pid, waker.tid, prev_state
        FROM o WHERE opens IN ('blocked', 'unknown') AND woken)
    SELECT node, tid, pid, s, e, state, NULL::VARCHAR AS reason, cpu, waker_pid,
           waker_tid, prev_state
    FROM t_intervals WHERE state <> 'blocked' AND e > s
    UNION ALL
    SELECT i.node, i.tid, i.pid, i.s, i.e, i.state,
           CASE WHEN matched THEN coalesce(o.wait_reason, 'other') ELSE 'other' END, i.cpu,
           coalesce(i.waker_pid, CASE WHEN matched THEN o.waker_pid END)::BIGINT,
           coalesce(i.waker_tid, CASE WHEN matched THEN o.waker_tid END)::BIGINT,
           i.prev_state
    FROM (SELECT * FROM t_intervals WHERE state = 'blocked' AND e > s) i
    ASOF LEFT JOIN w_offcpu o
      ON i.node = o.node AND i.tid = o.tid AND o.ts_ns <= i.s + {TOL},
    LATERAL (SELECT coalesce(o.ts_ns >= i.s - {TOL} AND o.ts_ns + o.dur_ns > i.s,
                             false) AS matched)"""


def _with_offcpu(con: duckdb.DuckDBPyConnection, rng: np.random.Generator, rows: int
                 ) -> None:
    """offcpu rows: most within the tolerance of a switch-out of the same thread (some just
    outside it, some ended before it), with nulls in reason, waker and duration."""
    outs = con.sql("SELECT node, tid, ts FROM t_sw WHERE ord = 0").to_arrow_table()
    pick = rng.integers(0, outs.num_rows, rows)
    ts = np.asarray(outs["ts"].to_numpy(), np.int64)[pick] + rng.integers(-80, 80, rows)
    off = pa.table({
        "node": outs["node"].take(pa.array(pick)),
        "tid": pa.array(np.asarray(outs["tid"].to_numpy())[pick], pa.int32()),
        "ts_ns": pa.array(ts, pa.int64()),
        "dur_ns": pa.array(rng.integers(1, 400, rows), pa.int64(),
                           mask=rng.random(rows) < 0.1),
        "wait_reason": pa.array(rng.choice(["futex", "disk", "reclaim"], rows),
                                mask=rng.random(rows) < 0.1),
        "waker_pid": pa.array(rng.integers(1, 9, rows), pa.int32(),
                              mask=rng.random(rows) < 0.3),
        "waker_tid": pa.array(rng.integers(1, 9, rows), pa.int32(),
                              mask=rng.random(rows) < 0.3)})
    con.register("off_src", off)
    con.execute("CREATE TABLE w_offcpu AS SELECT * FROM off_src QUALIFY row_number() OVER "
                "(PARTITION BY node, tid, ts_ns) = 1")


@pytest.mark.parametrize("seed", range(4))
def test_intervals_same_as_the_sql_they_replaced(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    con = _tables(rng, 3_000, 1_500, 40_000)
    _with_offcpu(con, rng, 1_000)
    con.register("got", thread_scan.thread_intervals(con, END, TOL))
    for a, b in (("got", f"({ORACLE_INTERVALS})"), (f"({ORACLE_INTERVALS})", "got")):
        extra = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL "
                            f"SELECT * FROM {b})").fetchall()[0][0]
        assert extra == 0
    # the control: every kind of row is there (a test of nothing would pass too)
    kinds = dict(con.execute("SELECT state || ':' || coalesce(reason, '-'), count(*) "
                             "FROM got GROUP BY 1").fetchall())
    for kind in ("running:-", "runnable:-", "unknown:-", "blocked:other", "blocked:futex"):
        assert kinds.get(kind, 0) > 0, kinds
