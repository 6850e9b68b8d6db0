"""Thread timelines per thread in time order, vectorised with numpy and Arrow compute (no
Python loop per row): the rows of ``thread_intervals`` from ``t_sw``, ``t_wk`` and
``w_offcpu`` (the states and their rules: compute/timeline.py).

For every switch row of a thread (``t_sw``) the timeline needs

- the thread's next switch row: where the segment ends, and whether that switch brings the
  thread in or takes it out again;
- the thread's first wakeup at or after it (``t_wk`` rows with a waker), and its first
  ``waking`` row at or after it;

and for every blocked interval the thread's latest ``offcpu`` row at or before its start
(its reason). In SQL those were a window sort and three ASOF joins over every switch row and
then four passes to cut the segments, the engine's largest stage (4.2-5.8 CPU seconds of
timeline in a 1 M-event window of ``bench_compute``). Here each row gets one integer sort
key (thread, time), the look-ups are a shift of the sorted keys and ``searchsorted``, and
the segments are masks over the switch rows (2.3-3.4 CPU seconds for the whole timeline,
same rows; ``tests/unit/test_compute_thread_scan.py`` keeps the SQL as its oracle).

Ties (two rows of one thread at the same instant) are left in an unspecified order, as the
window and ASOF joins left them.
"""

from __future__ import annotations

from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.compute.interval_index import IntervalIndex

_SWITCH_COLUMNS = "node, tid, pid, ts, cpu, opens, prev_state, ord, cpu_prev_ts, run_ns"
_WAKE_COLUMNS = "node, tid, ts, waker_pid, waker_tid, is_waking"
# Keys are thread code x (ts - earliest ts) while that fits in an int64 with room for the
# switch order (x 4); beyond, the instants' ranks replace the nanoseconds.
KEY_LIMIT = 1 << 60


def _column(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _ints(table: pa.Table, name: str) -> np.ndarray:
    """A column that the SQL producing it guarantees non-null, as int64."""
    return np.asarray(_column(table, name).to_numpy(zero_copy_only=False), dtype=np.int64)


def _take(values: pa.Array, index: np.ndarray) -> pa.Array:
    """``values[index]``, null where ``index`` is negative."""
    return values.take(pa.array(np.maximum(index, 0), mask=index < 0))


def _node_codes(nodes: pa.Array, dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Node index in ``dictionary`` (a null node gets its own code) and whether non-null."""
    codes = pc.index_in(nodes, value_set=dictionary)
    known = np.asarray(codes.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    filled = pc.fill_null(codes, len(dictionary)).to_numpy(zero_copy_only=False)
    return np.asarray(filled, dtype=np.int64), known


def _thread_ids(a: pa.Table, b: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One int64 per row for (node, tid) of ``a`` and of ``b`` (columns ``node``, ``tid``,
    tid an int32 value), and whether ``a``'s node is known (a null node matches nothing)."""
    a_node, b_node = _column(a, "node"), _column(b, "node")
    dictionary = pc.unique(pa.chunked_array([a_node, b_node]).combine_chunks()).drop_null()
    a_code, a_known = _node_codes(a_node, dictionary)
    b_code, _ = _node_codes(b_node, dictionary)
    return ((a_code << 32) | (_ints(a, "tid") + (1 << 31)),
            (b_code << 32) | (_ints(b, "tid") + (1 << 31)), a_known)


def _sorted_keys(sw_thread: np.ndarray, wk_thread: np.ndarray, sw_ts: np.ndarray,
                 wk_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One int64 key per row that orders as (thread, ts), and a thread code per row, for the
    switch rows and the wakeup rows alike."""
    threads = pc.dictionary_encode(pa.array(np.concatenate([sw_thread, wk_thread])))
    code = np.asarray(threads.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    stamps = np.concatenate([sw_ts, wk_ts])
    if len(stamps):
        low, high = int(stamps.min()), int(stamps.max())
        if (len(threads.dictionary) + 1) * (high - low + 1) < KEY_LIMIT:
            offset = stamps - low
        else:  # a range too long for codes x nanoseconds: the instants' ranks instead
            offset = np.unique(stamps, return_inverse=True)[1].astype(np.int64)
        key = code * (int(offset.max()) + 1) + offset
    else:
        key = code
    n = len(sw_ts)
    return key[:n], key[n:], code[:n], code[n:]


def _first_at_or_after(keys: np.ndarray, groups: np.ndarray, order: np.ndarray,
                       sorted_queries: np.ndarray, query_groups: np.ndarray) -> np.ndarray:
    """For each query (ascending keys), the index into ``keys`` of the smallest key >= it
    with the same group, or -1. ``order`` sorts ``keys``."""
    if not len(order):
        return np.full(len(sorted_queries), -1, dtype=np.int64)
    at = np.searchsorted(keys[order], sorted_queries, side="left")
    clipped = np.minimum(at, len(order) - 1)
    found = (at < len(order)) & (groups[order][clipped] == query_groups)
    return np.where(found, order[clipped], -1)


def switch_successors(con: duckdb.DuckDBPyConnection, range_end_ns: int) -> pa.Table:
    """``t_sw``'s rows (``ts`` named ``s``) with ``e`` (the thread's next switch, else
    ``range_end_ns``), ``next_ord``, ``next_cpu``, ``next_cpu_prev_ts`` (when the CPU of
    that next switch last switched before it), ``next_run_ns`` (how long the thread had run
    at that next switch, when it is a switch out), and the first wakeup at or after ``ts``
    (``any_*``) and first ``waking`` row at or after it (``waking_*``), from ``t_wk``'s rows
    with a waker.

    Threads are (node, tid); a switch row ``s`` of a thread is followed by the row with the
    next (ts, ord); a wakeup counts from ``ts >= s`` on (as the ASOF joins did: a null node
    matches no wakeup)."""
    sw = con.sql(f"SELECT {_SWITCH_COLUMNS} FROM t_sw").to_arrow_table()
    wk = con.sql(f"SELECT {_WAKE_COLUMNS} FROM t_wk WHERE waker_tid IS NOT NULL"
                 ).to_arrow_table()
    sw_thread, wk_thread, sw_known = _thread_ids(sw, wk)
    sw_ts = _ints(sw, "ts")
    sw_key, wk_key, sw_group, wk_group = _sorted_keys(sw_thread, wk_thread, sw_ts,
                                                      _ints(wk, "ts"))
    n = len(sw_ts)

    # the switch rows by (thread, ts, ord): the next row of the same thread follows
    order = np.argsort(sw_key * 4 + _ints(sw, "ord"))
    group = sw_group[order]
    same = group[1:] == group[:-1]
    following = np.full(n, -1, dtype=np.int64)
    following[order[:-1][same]] = order[1:][same]

    # the first wakeup at or after each switch row (queries in sorted order: searchsorted
    # walks the keys once); a switch row of a null node finds none
    waking = np.asarray(_column(wk, "is_waking").to_numpy(zero_copy_only=False), dtype=bool)
    wk_order = np.argsort(wk_key)
    queries = sw_key[order]
    rows = {}
    for name, subset in (("any", wk_order), ("waking", wk_order[waking[wk_order]])):
        found = np.full(n, -1, dtype=np.int64)
        found[order] = _first_at_or_after(wk_key, wk_group, subset, queries, group)
        rows[name] = np.where(sw_known, found, -1)

    end = np.where(following >= 0, sw_ts[np.maximum(following, 0)], range_end_ns)
    columns = {"s" if name == "ts" else name: _column(sw, name) for name in sw.column_names
               if name not in ("cpu_prev_ts", "run_ns")}
    columns["e"] = pa.array(end, pa.int64())
    columns["next_ord"] = _take(_column(sw, "ord"), following)
    columns["next_cpu"] = _take(_column(sw, "cpu"), following)
    columns["next_cpu_prev_ts"] = _take(_column(sw, "cpu_prev_ts"), following)
    columns["next_run_ns"] = _take(_column(sw, "run_ns"), following)
    for prefix, index in rows.items():
        for field in ("ts", "pid", "tid"):
            columns[f"{prefix}_{field}"] = _take(_column(wk, "ts" if field == "ts"
                                                         else f"waker_{field}"), index)
    return pa.table(columns)


# The runnable segment a wakeup opens before the thread's first switch row (one per thread
# at most), in the shape of the other runnable segments.
_FIRST_WAKE = """
    SELECT k.node, k.tid, k.pid, k.ts AS s, f.first_ts AS e, f.first_ord AS next_ord,
           k.cpu, f.first_cpu AS next_cpu, f.next_cpu_prev_ts, f.next_run_ns, k.waker_pid,
           k.waker_tid
    FROM (SELECT node, tid, min(ts) AS first_ts, arg_min(ord, (ts, ord)) AS first_ord,
                 arg_min(cpu, (ts, ord)) AS first_cpu,
                 arg_min(cpu_prev_ts, (ts, ord)) AS next_cpu_prev_ts,
                 arg_min(run_ns, (ts, ord)) AS next_run_ns
          FROM t_sw GROUP BY node, tid) f
    JOIN (SELECT node, tid, arg_min(pid, ts) AS pid, min(ts) AS ts,
                 arg_min(cpu, ts) AS cpu, arg_min(waker_pid, ts) AS waker_pid,
                 arg_min(waker_tid, ts) AS waker_tid
          FROM t_wk GROUP BY node, tid) k USING (node, tid)
    WHERE k.ts < f.first_ts"""
_OFFCPU = """
    SELECT node, tid, ts_ns, dur_ns, wait_reason, waker_pid::BIGINT AS waker_pid,
           waker_tid::BIGINT AS waker_tid
    FROM w_offcpu WHERE node IS NOT NULL AND tid IS NOT NULL AND ts_ns IS NOT NULL"""
INTERVAL_SCHEMA = pa.schema([
    ("node", pa.string()), ("tid", pa.int64()), ("pid", pa.int64()), ("s", pa.int64()),
    ("e", pa.int64()), ("state", pa.string()), ("reason", pa.string()), ("cpu", pa.int32()),
    ("waker_pid", pa.int64()), ("waker_tid", pa.int64()), ("prev_state", pa.string())])


def _piece(t: pa.Table, mask: pa.Array, **columns: Any) -> pa.Table:
    """The rows of ``t`` under ``mask`` as thread_intervals rows: ``columns`` name the
    values that are not ``t``'s own (an array over ``t``'s rows, or a scalar)."""
    n = t.num_rows
    out = {}
    for field in INTERVAL_SCHEMA:
        value = columns[field.name] if field.name in columns else (
            t.column(field.name) if field.name in t.column_names else None)
        if value is None:
            value = pa.nulls(n, field.type)
        out[field.name] = pc.cast(value, field.type)
    return pa.table(out).filter(mask)


def segments(successors: pa.Table, first_wake: pa.Table,
             sliced_nodes: pa.Array | None = None) -> pa.Table:
    """Thread states from the switch rows and their successors (the rules of the module
    docstring of compute/timeline.py): running, runnable, blocked until the wakeup then
    runnable, and 'unknown' where a switch in or out was not traced. ``reason`` is left
    null; rows of any length (``e <= s`` included).

    On ``sliced_nodes`` (recorded with evidence capture) a switch without its pair is no
    lost row: rows are kept around waits of at least the capture's bound, so a switch in
    followed by another switch in had a short preemption or wait between them, and a
    preemption or a waking followed by another switch out had a short run-queue wait and
    then ran. Such a segment is ``running``, and ``bound_running`` cuts it to what the
    thread's slices show (on CPU first: the short wait's place in it is not recorded).
    A sleep followed by another switch out stays blocked until its waking, as under full
    capture (when the kernel traced no switch in, evidence capture writes the sleep's
    waking at that next switch out; a target's ``offcpu`` row also names it)."""
    t = successors
    s, e, opens, next_ord = t["s"], t["e"], t["opens"], t["next_ord"]
    wake_ts = t["any_ts"]
    woken = pc.and_kleene(pc.greater_equal(wake_ts, s), pc.less(wake_ts, e))
    woken_true = pc.fill_null(woken, False)
    lost_in = pc.fill_null(pc.equal(next_ord, 0), False)
    use_waking = pc.fill_null(pc.less(t["waking_ts"], e), False)
    use_any = pc.fill_null(pc.less(wake_ts, e), False)
    nulls = pa.nulls(t.num_rows, pa.int64())
    waker = {f"waker_{f}": pc.if_else(use_waking, t[f"waking_{f}"],
                                      pc.if_else(use_any, t[f"any_{f}"], nulls))
             for f in ("pid", "tid")}
    then_cpu = pc.coalesce(t["next_cpu"], t["cpu"])
    # what a segment with an untraced end is: unknown, or on sliced nodes running
    sliced = _on(t, sliced_nodes)
    untraced = pc.if_else(sliced, "running", "unknown")
    then_state = pc.if_else(lost_in, untraced, "runnable")
    waits = pc.is_in(opens, pa.array(["blocked", "unknown"]))
    running, runnable = pc.equal(opens, "running"), pc.equal(opens, "runnable")
    parts = [
        _piece(t, running, waker_pid=None, waker_tid=None,
               state=pc.if_else(pc.fill_null(pc.equal(next_ord, 2), False), untraced,
                                "running")),
        *_queued(t, runnable, s, lost_in, sliced, then_state, then_cpu,
                 waker_pid=None, waker_tid=None),
        _piece(t, waits, e=pc.if_else(woken_true, wake_ts, e), **waker,
               state=pc.if_else(pc.fill_null(pc.and_kleene(lost_in, pc.invert(woken)), False),
                                "unknown", opens)),
        *_queued(t, pc.and_(waits, woken_true), wake_ts, lost_in, sliced, then_state,
                 then_cpu, **waker),
    ]
    f = first_wake
    f_lost = pc.fill_null(pc.equal(f["next_ord"], 0), False)
    parts += _queued(f, pa.array(np.ones(f.num_rows, bool)), f["s"], f_lost,
                     _on(f, sliced_nodes),
                     pc.if_else(f_lost, "unknown", "runnable"),
                     pc.coalesce(f["next_cpu"], f["cpu"]), prev_state=None)
    return pa.concat_tables(parts)


def _queued(t: pa.Table, mask: pa.Array, start: pa.Array, lost_in: pa.Array,
            sliced: pa.Array, state: pa.Array, cpu: pa.Array, **columns: Any
            ) -> list[pa.Table]:
    """The run-queue wait of ``t``'s rows under ``mask`` from ``start`` to the segment's
    end, as ``state``. A segment whose switch in was lost (``lost_in``, a fully traced
    node) waited until at least its next switch's CPU last switched
    (``next_cpu_prev_ts``), and ran for ``next_run_ns`` before that switch out: runnable
    until it came in, running after. A run reaching back past that bound (the scheduler's
    clock can lag a little) starts at the bound, as its CPU holder does in
    ``cpu_intervals``; with no run (a task outside the fair class) the time after the bound
    is unknown."""
    e = t["e"]
    precise = pc.and_(lost_in, pc.invert(sliced))
    bound = pc.max_element_wise(start, pc.min_element_wise(
        pc.fill_null(t["next_cpu_prev_ts"], np.iinfo(np.int64).min), e))
    came_in = pc.max_element_wise(pc.subtract(e, t["next_run_ns"]), bound)
    dated = pc.fill_null(pc.and_kleene(precise, pc.is_valid(t["next_run_ns"])), False)
    until = pc.if_else(dated, came_in, pc.if_else(precise, bound, e))
    after = pc.if_else(dated, "running", "unknown")
    return [
        _piece(t, mask, s=start, e=until, state=pc.if_else(precise, "runnable", state),
               cpu=cpu, **columns),
        # a waker belongs to the wait: the run after it has none
        _piece(t, pc.and_(mask, precise), s=until, state=after, cpu=cpu,
               **{**columns, **{name: _unless(dated, columns[name] if name in columns
                                              else t[name])
                                for name in ("waker_pid", "waker_tid")}}),
    ]


def _unless(mask: pa.Array, values: Any) -> Any:
    """``values`` (an array, or None for all-null) with nulls where ``mask`` holds."""
    if values is None:
        return None
    return pc.if_else(mask, pa.nulls(len(mask), values.type), values)


def _on(t: pa.Table, nodes: pa.Array | None) -> pa.Array:
    """Whether each row's node is in ``nodes`` (never null)."""
    if nodes is None or not len(nodes):
        return pa.array(np.zeros(t.num_rows, bool))
    return pc.fill_null(pc.is_in(t["node"], nodes), False)


def with_reasons(con: duckdb.DuckDBPyConnection, rows: pa.Table, tol_ns: int) -> pa.Table:
    """``rows`` with ``e > s``; each blocked one gets the reason (and, when it has none, the
    waker) of its thread's latest ``offcpu`` row at or before ``s + tol_ns``, when that row
    is the same switch-out (starts within ``tol_ns`` of ``s``, ends after it); else
    ``other``."""
    rows = rows.filter(pc.greater(rows["e"], rows["s"]))
    blocked_mask = pc.equal(rows["state"], "blocked")
    others = rows.filter(pc.invert(blocked_mask))
    blocked = rows.filter(blocked_mask)
    off = con.sql(_OFFCPU).to_arrow_table()
    b_thread, o_thread, known = _thread_ids(blocked, off)
    s = _ints(blocked, "s")
    b_key, o_key, b_group, o_group = _sorted_keys(
        b_thread, o_thread, np.minimum(s, np.iinfo(np.int64).max - tol_ns) + tol_ns,
        _ints(off, "ts_ns"))
    row = np.full(len(s), -1, dtype=np.int64)
    if len(o_key):
        order = np.argsort(o_key)
        at = np.searchsorted(o_key[order], b_key, side="right") - 1
        clipped = np.maximum(at, 0)
        found = (at >= 0) & known & (o_group[order][clipped] == b_group)
        row = np.where(found, order[clipped], -1)
    o_ts, o_dur = _take(_column(off, "ts_ns"), row), _take(_column(off, "dur_ns"), row)
    start = blocked["s"]
    matched = pc.fill_null(pc.and_kleene(
        pc.greater_equal(o_ts, pc.subtract(start, tol_ns)),
        pc.greater(pc.add(o_ts, o_dur), start)), False)
    columns = {name: blocked[name] for name in blocked.column_names}
    columns["reason"] = pc.if_else(
        matched, pc.coalesce(_take(_column(off, "wait_reason"), row), "other"), "other")
    nulls = pa.nulls(blocked.num_rows, pa.int64())
    for f in ("pid", "tid"):
        columns[f"waker_{f}"] = pc.coalesce(
            blocked[f"waker_{f}"],
            pc.if_else(matched, _take(_column(off, f"waker_{f}"), row), nulls))
    return pa.concat_tables([others, pa.table(columns, schema=INTERVAL_SCHEMA)])


_SLICES = """
    SELECT node, tid::BIGINT AS tid, ts_ns AS s, ts_ns + dur_ns AS e, oncpu_ns,
           coalesce(runq_ns, 0) AS runq_ns
    FROM w_cpu_slices WHERE node IS NOT NULL AND tid > 0 AND dur_ns > 0"""


def bound_running(con: duckdb.DuckDBPyConnection, rows: pa.Table) -> pa.Table:
    """``rows`` (thread_intervals) with the running segments of nodes recorded with
    evidence capture checked against their slices (``w_cpu_slices``).

    Evidence capture keeps a thread's switch rows only around its long waits, so the
    segment from a switch in to the thread's next row may hold short waits that left no
    row. The slices the segment overlaps say how long the thread was on a CPU and waited
    for one in them, at most: a segment longer than its on-CPU time is running for that
    long, then runnable (on the CPU it ran on) for at most its run-queue waits, and
    'unknown' for the rest (short blocked waits: never more on-CPU or run-queue time than
    the slices hold). Vectorised: the overlaps come from the interval index
    (compute/interval_index.py)."""
    slices = con.sql(_SLICES).to_arrow_table()
    if not slices.num_rows:
        return rows
    running = pc.and_(pc.equal(rows["state"], "running"),
                      pc.is_in(rows["node"], pc.unique(slices["node"])))
    running = pc.fill_null(running, False)
    segs, rest = rows.filter(running), rows.filter(pc.invert(running))
    left, right = IntervalIndex(slices, "tid").pairs(segs, "tid")
    s, e = _ints(segs, "s"), _ints(segs, "e")

    def summed(column: str) -> np.ndarray:
        values = np.asarray(slices[column].to_numpy(zero_copy_only=False), np.int64)
        return np.bincount(left, weights=values[right], minlength=len(s)).astype(np.int64)

    cut = s + np.minimum(summed("oncpu_ns"), e - s)
    waited = cut + np.minimum(summed("runq_ns"), e - cut)

    def state(name: str) -> pa.Array:
        return pa.array(np.full(len(s), name, object), pa.string())

    ran = _piece(segs, pa.array(cut > s), e=pa.array(cut, pa.int64()))
    queued = _piece(segs, pa.array(waited > cut), s=pa.array(cut, pa.int64()),
                    e=pa.array(waited, pa.int64()), state=state("runnable"))
    unknown = _piece(segs, pa.array(waited < e), s=pa.array(waited, pa.int64()),
                     state=state("unknown"))
    return pa.concat_tables([rest, ran, queued, unknown])


def thread_intervals(con: duckdb.DuckDBPyConnection, range_end_ns: int, tol_ns: int,
                     sliced_nodes: pa.Array | None = None) -> pa.Table:
    """The rows of ``thread_intervals`` from ``t_sw`` and ``t_wk`` (and ``w_offcpu``);
    ``sliced_nodes``: the nodes recorded with evidence capture (``segments``)."""
    first_wake = con.sql(_FIRST_WAKE).to_arrow_table()
    return with_reasons(con, segments(switch_successors(con, range_end_ns), first_wake,
                                      sliced_nodes), tol_ns)
