"""The two per-thread look-ups of the timeline, vectorised with numpy (no Python loop per row).

For every switch row of a thread (``t_sw``) the timeline needs

- the thread's next switch row: where the segment ends, and whether that switch brings the
  thread in or takes it out again;
- the thread's first wakeup at or after it (``t_wk`` rows with a waker), and its first
  ``waking`` row at or after it.

In SQL that was a window sort and two ASOF joins over every switch row, the engine's largest
stage (2.9 of 13.6 CPU seconds in a 1 M-event window of ``bench_compute``). Here each row
gets one integer sort key (thread, time) and the answers are a shift of the sorted keys and
a ``searchsorted`` (about 0.9 CPU seconds for the same 1.1 M rows, the same answers:
``tests/unit/test_compute_thread_scan.py`` keeps the SQL as its oracle).

Ties (two rows of one thread at the same instant) are left in an unspecified order, as the
window and ASOF joins left them.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SWITCH_COLUMNS = "node, tid, pid, ts, cpu, opens, prev_state, ord"
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
    ``range_end_ns``), ``next_ord``, ``next_cpu``, and the first wakeup at or after ``ts``
    (``any_*``) and first ``waking`` row at or after it (``waking_*``), from ``t_wk``'s rows
    with a waker.

    Threads are (node, tid); a switch row ``s`` of a thread is followed by the row with the
    next (ts, ord); a wakeup counts from ``ts >= s`` on (as the ASOF joins did: a null node
    matches no wakeup)."""
    sw = con.sql(f"SELECT {_SWITCH_COLUMNS} FROM t_sw").to_arrow_table()
    wk = con.sql(f"SELECT {_WAKE_COLUMNS} FROM t_wk WHERE waker_tid IS NOT NULL"
                 ).to_arrow_table()
    sw_node, wk_node = _column(sw, "node"), _column(wk, "node")
    dictionary = pc.unique(pa.chunked_array([sw_node, wk_node]).combine_chunks()).drop_null()
    sw_code, sw_known = _node_codes(sw_node, dictionary)
    wk_code, _ = _node_codes(wk_node, dictionary)
    # thread = (node code, tid): tids are positive int32 (t_sw and t_wk keep tid > 0)
    sw_ts = _ints(sw, "ts")
    sw_key, wk_key, sw_group, wk_group = _sorted_keys(
        (sw_code << 32) | _ints(sw, "tid"), (wk_code << 32) | _ints(wk, "tid"), sw_ts,
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
    columns = {"s" if name == "ts" else name: _column(sw, name) for name in sw.column_names}
    columns["e"] = pa.array(end, pa.int64())
    columns["next_ord"] = _take(_column(sw, "ord"), following)
    columns["next_cpu"] = _take(_column(sw, "cpu"), following)
    for prefix, index in rows.items():
        for field in ("ts", "pid", "tid"):
            columns[f"{prefix}_{field}"] = _take(_column(wk, "ts" if field == "ts"
                                                         else f"waker_{field}"), index)
    return pa.table(columns)
