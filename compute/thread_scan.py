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
key (thread, time) and the switch rows are put in that order once, so a thread's next row is
the next position (a shift, not a gather) and the first wakeup is a ``searchsorted``; the
segments are cut on integer state codes, and the strings (node, state, reason) are taken
once at the end (``tests/unit/test_compute_thread_scan.py`` keeps the SQL as its oracle).
Per 1 M-event window of ``bench_compute``: 1.6-1.8 CPU seconds with Arrow compute on
strings per piece, 1.1-1.2 s so.

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


def _thread_ids(*tables: pa.Table) -> tuple[list[np.ndarray], np.ndarray]:
    """One int64 per row for (node, tid) of each table (columns ``node``, ``tid``, tid an
    int32 value), codes shared across the tables, and whether the first table's node is
    known (a null node matches nothing)."""
    nodes = [_column(t, "node") for t in tables]
    dictionary = pc.unique(pa.chunked_array(nodes, pa.string()).combine_chunks()).drop_null()
    ids, known = [], np.zeros(0, bool)
    for i, (t, node) in enumerate(zip(tables, nodes)):
        code, ok = _node_codes(node, dictionary)
        ids.append((code << 32) | (_ints(t, "tid") + (1 << 31)))
        if i == 0:
            known = ok
    return ids, known


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


class _Col:
    """A nullable int64 column in numpy: ``v`` (0 where null) and ``ok`` (not null)."""

    __slots__ = ("v", "ok")

    def __init__(self, v: np.ndarray, ok: np.ndarray) -> None:
        self.v, self.ok = v, ok

    @classmethod
    def of(cls, array: pa.Array | pa.ChunkedArray) -> _Col:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        ok = (np.ones(len(array), bool) if not array.null_count else
              np.asarray(array.is_valid().to_numpy(zero_copy_only=False), bool))
        v = np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False), np.int64)
        return cls(v, ok)

    @classmethod
    def nulls(cls, n: int) -> _Col:
        return cls(np.zeros(n, np.int64), np.zeros(n, bool))

    def take(self, index: np.ndarray) -> _Col:
        """Rows ``index``; null where ``index`` is negative."""
        if not len(self.v):
            return _Col.nulls(len(index))
        at = np.maximum(index, 0)
        return _Col(self.v[at], self.ok[at] & (index >= 0))

    def where(self, mask: np.ndarray, other: _Col) -> _Col:
        return _Col(np.where(mask, self.v, other.v), np.where(mask, self.ok, other.ok))

    def arrow(self, type_: pa.DataType | None = None) -> pa.Array:
        return pa.array(self.v, type_ or pa.int64(), mask=None if self.ok.all() else ~self.ok)


class _Switches:
    """``t_sw``'s rows in (thread, ts, ord) order (``order[i]``: the row at position i),
    each with its thread's next switch row (the following position, when ``has_next``) and
    the positions in ``wk`` (``t_wk``'s rows with a waker, in (thread, ts) order) of the
    first wakeup and of the first ``waking`` at or after it (-1 if none). In this order a
    thread's next row is the next position: the look-ups are shifts, not gathers."""

    def __init__(self, sw: pa.Table, wk: pa.Table, sw_thread: np.ndarray,
                 wk_thread: np.ndarray, sw_known: np.ndarray, range_end_ns: int) -> None:
        sw_ts = _ints(sw, "ts")
        sw_key, wk_key, sw_group, wk_group = _sorted_keys(sw_thread, wk_thread, sw_ts,
                                                          _ints(wk, "ts"))
        n = len(sw_ts)
        order = np.argsort(sw_key * 4 + _ints(sw, "ord"))
        group = sw_group[order]
        self.order, self.n = order, n
        self.thread, self.known = sw_thread[order], sw_known[order]
        self.has_next = np.r_[group[1:] == group[:-1], False] if n else np.zeros(0, bool)
        self.s = sw_ts[order]
        self.e = np.where(self.has_next, np.r_[self.s[1:], 0][:n], range_end_ns)
        self.cols = {name: _Col.of(_column(sw, name)).take(order)
                     for name in ("ord", "cpu", "cpu_prev_ts", "run_ns")}
        # the first wakeup at or after each switch row (queries in sorted order:
        # searchsorted walks the keys once); a switch row of a null node finds none
        wk_order = np.argsort(wk_key)
        self.wk = {name: _Col.of(_column(wk, name)).take(wk_order)
                   for name in ("ts", "waker_pid", "waker_tid")}
        waking = np.asarray(_column(wk, "is_waking").to_numpy(zero_copy_only=False),
                            bool)[wk_order]
        keys, groups = wk_key[wk_order], wk_group[wk_order]
        queries = sw_key[order]
        self.found = {}
        for name, subset in (("any", np.arange(len(wk_order))),
                             ("waking", np.flatnonzero(waking))):
            found = _first_at_or_after(keys, groups, subset, queries, group)
            self.found[name] = np.where(self.known, found, -1)

    def following(self, col: _Col) -> _Col:
        """``col`` (in this order) at each row's next switch row; null where none."""
        if not self.n:
            return col
        return _Col(np.r_[col.v[1:], 0], np.r_[col.ok[1:], False] & self.has_next)


def switch_successors(con: duckdb.DuckDBPyConnection, range_end_ns: int) -> pa.Table:
    """``t_sw``'s rows (``ts`` named ``s``) with ``e`` (the thread's next switch, else
    ``range_end_ns``), ``next_ord``, ``next_cpu``, ``next_cpu_prev_ts`` (when the CPU of
    that next switch last switched before it), ``next_run_ns`` (how long the thread had run
    at that next switch, when it is a switch out), and the first wakeup at or after ``ts``
    (``any_*``) and first ``waking`` row at or after it (``waking_*``), from ``t_wk``'s rows
    with a waker; in (thread, ts, ord) order.

    Threads are (node, tid); a switch row ``s`` of a thread is followed by the row with the
    next (ts, ord); a wakeup counts from ``ts >= s`` on (as the ASOF joins did: a null node
    matches no wakeup)."""
    sw, wk = _switches_and_wakeups(con)
    (sw_thread, wk_thread), sw_known = _thread_ids(sw, wk)
    x = _Switches(sw, wk, sw_thread, wk_thread, sw_known, range_end_ns)
    index = pa.array(x.order)
    columns = {"s" if name == "ts" else name: _column(sw, name).take(index)
               for name in sw.column_names if name not in ("cpu_prev_ts", "run_ns")}
    columns["e"] = pa.array(x.e, pa.int64())
    for name, type_ in (("ord", pa.int32()), ("cpu", pa.int32()),
                        ("cpu_prev_ts", pa.int64()), ("run_ns", pa.int64())):
        columns[f"next_{name}"] = x.following(x.cols[name]).arrow(type_)
    for prefix in ("any", "waking"):
        for field in ("ts", "pid", "tid"):
            columns[f"{prefix}_{field}"] = x.wk["ts" if field == "ts" else f"waker_{field}"
                                               ].take(x.found[prefix]).arrow()
    return pa.table(columns)


def _switches_and_wakeups(con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, pa.Table]:
    sw = con.sql(f"SELECT {_SWITCH_COLUMNS} FROM t_sw").to_arrow_table()
    wk = con.sql(f"SELECT {_WAKE_COLUMNS} FROM t_wk WHERE waker_tid IS NOT NULL"
                 ).to_arrow_table()
    return sw, wk


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
# state codes of the numpy scan (``STATES[code]``)
STATES = ("running", "runnable", "blocked", "unknown")
_RUNNING, _RUNNABLE, _BLOCKED, _UNKNOWN = range(4)


class _Pieces:
    """Rows of thread_intervals being cut, as numpy arrays: the source row (its node, tid,
    pid and prev_state, when ``own_prev``), the interval, the state code, the CPU and the
    waker."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, mask: np.ndarray, src: np.ndarray, s: np.ndarray, e: np.ndarray,
            state: np.ndarray | int, cpu: _Col, waker_pid: _Col, waker_tid: _Col,
            own_prev: bool) -> None:
        n = len(mask)
        state_arr = np.broadcast_to(np.asarray(state, np.int8), n)
        self.parts.append(tuple(a[mask] for a in (
            src, s, e, state_arr, cpu.v, cpu.ok, waker_pid.v, waker_pid.ok, waker_tid.v,
            waker_tid.ok, np.broadcast_to(np.bool_(own_prev), n))))

    def columns(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[i] for p in self.parts]) for i in range(11))


def _queued(out: _Pieces, src: np.ndarray, mask: np.ndarray, start: np.ndarray,
            e: np.ndarray, lost_in: np.ndarray, sliced: np.ndarray, state: np.ndarray,
            cpu: _Col, next_cpu_prev_ts: _Col, next_run_ns: _Col, waker_pid: _Col,
            waker_tid: _Col, own_prev: bool) -> None:
    """The run-queue wait of the rows under ``mask`` from ``start`` to the segment's end
    ``e``, as ``state``. A segment whose switch in was lost (``lost_in``, a fully traced
    node) waited until at least its next switch's CPU last switched
    (``next_cpu_prev_ts``), and ran for ``next_run_ns`` before that switch out: runnable
    until it came in, running after. A run reaching back past that bound (the scheduler's
    clock can lag a little) starts at the bound, as its CPU holder does in
    ``cpu_intervals``; with no run (a task outside the fair class) the time after the bound
    is unknown."""
    precise = lost_in & ~sliced
    prev_ts = np.where(next_cpu_prev_ts.ok, next_cpu_prev_ts.v, np.iinfo(np.int64).min)
    bound = np.maximum(start, np.minimum(prev_ts, e))
    dated = precise & next_run_ns.ok
    came_in = np.where(next_run_ns.ok, np.maximum(e - next_run_ns.v, bound), bound)
    until = np.where(dated, came_in, np.where(precise, bound, e))
    out.add(mask, src, start, until, np.where(precise, _RUNNABLE, state), cpu, waker_pid,
            waker_tid, own_prev)
    # a waker belongs to the wait: the run after it has none
    none = _Col.nulls(len(mask))
    out.add(mask & precise, src, until, e, np.where(dated, _RUNNING, _UNKNOWN), cpu,
            none.where(dated, waker_pid), none.where(dated, waker_tid), own_prev)


def _segments(sw: pa.Table, x: _Switches, first_wake: pa.Table,
              sliced_nodes: pa.Array | None) -> _Pieces:
    """Thread states from the switch rows and their successors (the rules of the module
    docstring of compute/timeline.py): running, runnable, blocked until the wakeup then
    runnable, and 'unknown' where a switch in or out was not traced. Rows of any length
    (``e <= s`` included); sources: ``x``'s positions, then ``first_wake``'s rows after them.

    On ``sliced_nodes`` (recorded with evidence capture) a switch without its pair is no
    lost row: rows are kept around waits of at least the capture's bound, so a switch in
    followed by another switch in had a short preemption or wait between them, and a
    preemption or a waking followed by another switch out had a short run-queue wait and
    then ran. Such a segment is ``running``, and ``bound_running`` cuts it to what the
    thread's slices show (on CPU first: the short wait's place in it is not recorded).
    A sleep followed by another switch out stays blocked until its waking, as under full
    capture (when the kernel traced no switch in, evidence capture writes the sleep's
    waking at that next switch out; a target's ``offcpu`` row also names it)."""
    out = _Pieces()
    n = x.n
    src = np.arange(n, dtype=np.int64)  # positions in x's order
    s, e = x.s, x.e
    cpu = x.cols["cpu"]
    next_ord, next_cpu = x.following(x.cols["ord"]), x.following(cpu)
    next_cpu_prev_ts = x.following(x.cols["cpu_prev_ts"])
    next_run_ns = x.following(x.cols["run_ns"])
    opens = np.asarray(pc.index_in(_column(sw, "opens"), pa.array(STATES))
                       .fill_null(_UNKNOWN).to_numpy(zero_copy_only=False), np.int8)[x.order]
    any_ts, waking_ts = x.wk["ts"].take(x.found["any"]), x.wk["ts"].take(x.found["waking"])
    woken = any_ts.ok & (any_ts.v >= s) & (any_ts.v < e)
    lost_in = next_ord.ok & (next_ord.v == 0)
    use_waking = waking_ts.ok & (waking_ts.v < e)
    use_any = any_ts.ok & (any_ts.v < e)
    none = _Col.nulls(n)
    waker = {}
    for f in ("pid", "tid"):
        of = x.wk[f"waker_{f}"]
        waker[f] = of.take(x.found["waking"]).where(
            use_waking, of.take(x.found["any"]).where(use_any, none))
    then_cpu = next_cpu.where(next_cpu.ok, cpu)
    # what a segment with an untraced end is: unknown, or on sliced nodes running
    sliced = _on(sw, sliced_nodes)[x.order]
    untraced = np.where(sliced, _RUNNING, _UNKNOWN).astype(np.int8)
    then_state = np.where(lost_in, untraced, _RUNNABLE).astype(np.int8)
    waits = (opens == _BLOCKED) | (opens == _UNKNOWN)
    out.add(opens == _RUNNING, src, s, e,
            np.where(next_ord.ok & (next_ord.v == 2), untraced, _RUNNING), cpu, none, none,
            True)
    _queued(out, src, opens == _RUNNABLE, s, e, lost_in, sliced, then_state, then_cpu,
            next_cpu_prev_ts, next_run_ns, none, none, True)
    out.add(waits, src, s, np.where(woken, any_ts.v, e),
            np.where(lost_in & any_ts.ok & ~woken, _UNKNOWN, opens), cpu, waker["pid"],
            waker["tid"], True)
    _queued(out, src, waits & woken, any_ts.v, e, lost_in, sliced, then_state, then_cpu,
            next_cpu_prev_ts, next_run_ns, waker["pid"], waker["tid"], True)

    f = first_wake
    m = f.num_rows
    f_next_ord = _Col.of(_column(f, "next_ord"))
    f_lost = f_next_ord.ok & (f_next_ord.v == 0)
    f_next_cpu, f_cpu = _Col.of(_column(f, "next_cpu")), _Col.of(_column(f, "cpu"))
    _queued(out, n + np.arange(m, dtype=np.int64), np.ones(m, bool), _ints(f, "s"),
            _ints(f, "e"), f_lost, _on(f, sliced_nodes),
            np.where(f_lost, _UNKNOWN, _RUNNABLE).astype(np.int8),
            f_next_cpu.where(f_next_cpu.ok, f_cpu), _Col.of(_column(f, "next_cpu_prev_ts")),
            _Col.of(_column(f, "next_run_ns")), _Col.of(_column(f, "waker_pid")),
            _Col.of(_column(f, "waker_tid")), False)
    return out


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


def _on(t: pa.Table, nodes: pa.Array | None) -> np.ndarray:
    """Whether each row's node is in ``nodes`` (never null)."""
    if nodes is None or not len(nodes):
        return np.zeros(t.num_rows, bool)
    return np.asarray(pc.fill_null(pc.is_in(t["node"], nodes), False)
                      .to_numpy(zero_copy_only=False), bool)


def _reasons(off: pa.Table, off_thread: np.ndarray, b_thread: np.ndarray, s: np.ndarray,
             known: np.ndarray, tol_ns: int) -> np.ndarray:
    """For blocked intervals of threads ``b_thread`` starting at ``s``: the row of ``off``
    (the thread's latest ``offcpu`` row at or before ``s + tol_ns``) when that row is the
    same switch-out (starts within ``tol_ns`` of ``s``, ends after it), else -1."""
    b_key, o_key, b_group, o_group = _sorted_keys(
        b_thread, off_thread, np.minimum(s, np.iinfo(np.int64).max - tol_ns) + tol_ns,
        _ints(off, "ts_ns"))
    if not len(o_key):
        return np.full(len(s), -1, dtype=np.int64)
    order = np.argsort(o_key)
    at = np.searchsorted(o_key[order], b_key, side="right") - 1
    clipped = np.maximum(at, 0)
    row = np.where((at >= 0) & known & (o_group[order][clipped] == b_group),
                   order[clipped], -1)
    o_ts, o_dur = _Col.of(_column(off, "ts_ns")).take(row), _Col.of(
        _column(off, "dur_ns")).take(row)
    matched = o_ts.ok & o_dur.ok & (o_ts.v >= s - tol_ns) & (o_ts.v + o_dur.v > s)
    return np.where(matched, row, -1)


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
    sliced = pc.fill_null(pc.is_in(rows["node"], pc.unique(slices["node"])), False)
    running = pc.fill_null(pc.and_(pc.equal(rows["state"], "running"), sliced), False)
    runnable = pc.fill_null(pc.and_(pc.equal(rows["state"], "runnable"), sliced), False)
    segs, rest = rows.filter(running), rows.filter(pc.invert(pc.or_(running, runnable)))
    waits = _runnable_that_ran(slices, rows.filter(runnable))
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
    return pa.concat_tables([rest, ran, queued, unknown, waits])


# A run-queue segment in which the thread's slices show at least this much running is no
# single wait (a short wait of evidence capture keeps no row, see _runnable_that_ran)
RAN_IN_A_WAIT_NS = 1_000_000


def _runnable_that_ran(slices: pa.Table, segs: pa.Table) -> pa.Table:
    """Run-queue segments of nodes recorded with evidence capture, checked against the
    thread's slices.

    Under evidence capture a switch row is also written to bound another thread's wait
    (the switch that put it on the CPU, or took the CPU from it): a preemption of this
    thread and its later switch in can both be rows while everything between them (a
    short wait, a run of 200 ms, another short wait) left none. The pair reads as one
    run-queue wait. The slices say what the thread did inside: a slice's on-CPU time, less
    the part of the slice outside the segment, ran inside it. A segment in which the thread
    ran at least RAN_IN_A_WAIT_NS is runnable for at most the slices' run-queue waits, then
    running for what it ran, then 'unknown' (where the short waits lay is not recorded)."""
    if not segs.num_rows:
        return segs
    left, right = IntervalIndex(slices, "tid").pairs(segs, "tid")
    s, e = _ints(segs, "s"), _ints(segs, "e")
    a, b = _ints(slices, "s")[right], _ints(slices, "e")[right]
    oncpu = _ints(slices, "oncpu_ns")[right]
    inside = np.maximum(oncpu - np.maximum(s[left] - a, 0) - np.maximum(b - e[left], 0), 0)
    ran = np.minimum(np.bincount(left, weights=inside, minlength=len(s)).astype(np.int64),
                     e - s)
    runq = np.bincount(left, weights=_ints(slices, "runq_ns")[right],
                       minlength=len(s)).astype(np.int64)
    did_run = ran >= RAN_IN_A_WAIT_NS
    waited = s + np.minimum(runq, e - s - ran)
    cut = waited + ran
    no_waker = pa.nulls(len(s), pa.int64())

    def state(name: str) -> pa.Array:
        return pa.array(np.full(len(s), name, object), pa.string())

    return pa.concat_tables([
        _piece(segs, pa.array(~did_run)),
        _piece(segs, pa.array(did_run & (waited > s)), e=pa.array(waited, pa.int64())),
        _piece(segs, pa.array(did_run), s=pa.array(waited, pa.int64()),
               e=pa.array(cut, pa.int64()), state=state("running"), waker_pid=no_waker,
               waker_tid=no_waker),
        _piece(segs, pa.array(did_run & (cut < e)), s=pa.array(cut, pa.int64()),
               state=state("unknown"), waker_pid=no_waker, waker_tid=no_waker)])


def thread_intervals(con: duckdb.DuckDBPyConnection, range_end_ns: int, tol_ns: int,
                     sliced_nodes: pa.Array | None = None) -> pa.Table:
    """The rows of ``thread_intervals`` from ``t_sw`` and ``t_wk`` (and ``w_offcpu``);
    ``sliced_nodes``: the nodes recorded with evidence capture (``_segments``). Rows with
    ``e > s``; each blocked one gets the reason (and, when it has none, the waker) of its
    offcpu row (``_reasons``), else reason ``other``. Computed on integer codes in numpy;
    the strings (node, state, reason, prev_state) are taken once, at the end."""
    first_wake = con.sql(_FIRST_WAKE).to_arrow_table()
    sw, wk = _switches_and_wakeups(con)
    off = con.sql(_OFFCPU).to_arrow_table()
    (sw_thread, wk_thread, off_thread), sw_known = _thread_ids(sw, wk, off)
    x = _Switches(sw, wk, sw_thread, wk_thread, sw_known, range_end_ns)
    src, s, e, state, cpu_v, cpu_ok, wp_v, wp_ok, wt_v, wt_ok, own_prev = _segments(
        sw, x, first_wake, sliced_nodes).columns()
    at = np.flatnonzero(e > s)
    src, s, e, state, own_prev = src[at], s[at], e[at], state[at], own_prev[at]
    cpu, wpid, wtid = _Col(cpu_v[at], cpu_ok[at]), _Col(wp_v[at], wp_ok[at]), _Col(
        wt_v[at], wt_ok[at])
    blocked = state == _BLOCKED  # every blocked row comes from a switch row (src < n)
    b_src = src[blocked]
    row = np.full(len(s), -1, dtype=np.int64)
    row[blocked] = _reasons(off, off_thread, x.thread[b_src], s[blocked], x.known[b_src],
                            tol_ns)
    for waker, name in ((wpid, "waker_pid"), (wtid, "waker_tid")):
        from_off = _Col.of(_column(off, name)).take(row)
        filled = blocked & ~waker.ok & from_off.ok
        waker.v[filled], waker.ok[filled] = from_off.v[filled], True
    reasons = pc.dictionary_encode(_column(off, "wait_reason"))
    other = len(reasons.dictionary)
    r_code = np.asarray(reasons.indices.fill_null(other).to_numpy(zero_copy_only=False),
                        np.int32)
    code = np.where(row >= 0, r_code[np.maximum(row, 0)] if len(r_code) else other, other)
    reason = pa.DictionaryArray.from_arrays(
        pa.array(code.astype(np.int32), mask=~blocked),
        pa.concat_arrays([reasons.dictionary.cast(pa.string()), pa.array(["other"])]))

    f = first_wake
    source = {name: pa.concat_arrays([_column(sw, name).cast(INTERVAL_SCHEMA.field(name).type),
                                      _column(f, name).cast(INTERVAL_SCHEMA.field(name).type)])
              for name in ("node", "tid", "pid")}
    if x.n:  # positions in x's order to t_sw's rows
        src = np.where(src < x.n, x.order[np.minimum(src, x.n - 1)], src)
    prev = np.where(own_prev, src, -1)
    prev_state = _take(pa.concat_arrays([
        _column(sw, "prev_state").cast(pa.string()), pa.nulls(f.num_rows, pa.string())]), prev)
    index = pa.array(src)
    return pa.table({
        "node": source["node"].take(index), "tid": source["tid"].take(index),
        "pid": source["pid"].take(index), "s": pa.array(s, pa.int64()),
        "e": pa.array(e, pa.int64()),
        "state": pa.DictionaryArray.from_arrays(pa.array(state), pa.array(STATES))
        .cast(pa.string()),
        "reason": reason.cast(pa.string()), "cpu": cpu.arrow(pa.int32()),
        "waker_pid": wpid.arrow(), "waker_tid": wtid.arrow(), "prev_state": prev_state},
        schema=INTERVAL_SCHEMA)
