"""Interval overlap look-ups against one big table kept sorted in memory (numpy).

Every chain level overlaps its spans with ``thread_intervals`` (the decomposition, what a
waited-for thread did): as a bucketed SQL join (``compute.sql.overlap_join``) each level
cut most of that 1.4 M-row table into time buckets again, 0.3-0.5 CPU seconds per join in a
1 M-event window of ``bench_compute`` even for a level of a few thousand spans. Here the
table is sorted once by (key, start), with the running maximum of the ends per key; the
intervals a left row overlaps are then one contiguous run per key, found by two binary
searches, so a join costs what its left side and its answer cost.

The answer is the same rows as ``overlap_join``: pairs with equal keys (a null key matches
nothing) where ``r.s < l.e AND r.e > l.s``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INT32 = 1 << 31
_names = count()


def _int_key(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """An integer key as int64 in [0, 2^32) and whether it can match (not null, in int32)."""
    values = np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), np.int64)
    ok = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    ok &= (values >= -_INT32) & (values < _INT32)
    return np.where(ok, values + _INT32, 0), ok


def _bisect(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, target: np.ndarray,
            strict: bool) -> np.ndarray:
    """Per row, the first index in [lo, hi) whose value is >= target (> when ``strict``),
    else hi; ``values`` ascend within each range."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        value = values[np.where(active, mid, 0)]
        right = active & ((value <= target) if strict else (value < target))
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


class IntervalIndex:
    """``table`` (columns ``node``, the integer ``key``, ``s``, ``e`` and any others) in the
    order of (node, key, s), for overlap joins on (node, key)."""

    def __init__(self, table: pa.Table, key: str) -> None:
        self.key = key
        nodes = table.column("node").combine_chunks()
        self.nodes = pc.unique(nodes).drop_null()
        group, ok = self._groups(nodes, table.column(key).combine_chunks())
        s = np.asarray(table.column("s").to_numpy(), np.int64)
        e = np.asarray(table.column("e").to_numpy(), np.int64)
        order = np.lexsort((s, group))
        self.order = order[ok[order]]  # sorted position -> row; a null key matches nothing
        self.table = table
        self.group, self.s, self.e = group[self.order], s[self.order], e[self.order]
        # the running maximum of the ends within each group: ascending, so a binary search
        # finds the first interval that may reach past a given instant
        starts = np.r_[0, np.flatnonzero(np.diff(self.group)) + 1]
        running = self.e.copy()
        if len(running):
            # offset each group above the previous one so one accumulate never crosses groups
            rank = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(running)]))
            low = int(self.e.min())
            span = int(self.e.max()) - low + 1
            if len(starts) * span < (1 << 62):
                shifted = rank * span + (self.e - low)
                running = np.maximum.accumulate(shifted) - rank * span + low
            else:  # per group (few groups when the range is that long)
                for a, b in zip(starts, np.r_[starts[1:], len(running)]):
                    running[a:b] = np.maximum.accumulate(self.e[a:b])
        self.reach = running

    def _groups(self, nodes: pa.Array, keys: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        codes = pc.index_in(nodes, value_set=self.nodes)
        node_ok = np.asarray(codes.is_valid().to_numpy(zero_copy_only=False), bool)
        code = np.asarray(pc.fill_null(codes, 0).to_numpy(zero_copy_only=False), np.int64)
        key, key_ok = _int_key(keys)
        return (code << 32) | key, node_ok & key_ok

    def pairs(self, left: pa.Table, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers (in ``left``, in ``self.table``) of the overlapping pairs; ``left``
        has ``node``, ``key``, ``s`` and ``e``."""
        group, ok = self._groups(left.column("node").combine_chunks(),
                                 left.column(key).combine_chunks())
        s_col, e_col = left.column("s").combine_chunks(), left.column("e").combine_chunks()
        ok &= np.asarray(s_col.is_valid().to_numpy(zero_copy_only=False), bool)
        ok &= np.asarray(e_col.is_valid().to_numpy(zero_copy_only=False), bool)
        s = np.asarray(pc.fill_null(s_col, 0).to_numpy(zero_copy_only=False), np.int64)
        e = np.asarray(pc.fill_null(e_col, 0).to_numpy(zero_copy_only=False), np.int64)
        first = np.searchsorted(self.group, group, side="left")
        last = np.searchsorted(self.group, group, side="right")
        last = np.where(ok, last, first)
        lo = _bisect(self.reach, first, last, s, strict=True)  # first reach > l.s
        hi = _bisect(self.s, lo, last, e, strict=False)  # first start >= l.e
        counts = np.maximum(hi - lo, 0)
        left_rows = np.repeat(np.arange(len(counts)), counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        right_rows = np.repeat(lo, counts) + offsets
        keep = self.e[right_rows] > s[left_rows]
        return left_rows[keep], self.order[right_rows[keep]]


@dataclass(frozen=True)
class TimelineIndex:
    """The window's timelines sorted in memory (built by ``timeline.build``)."""

    threads: IntervalIndex  # thread_intervals, on (node, tid)
    cpus: IntervalIndex  # cpu_intervals, on (node, cpu)


@contextmanager
def overlap(con: duckdb.DuckDBPyConnection, left_sql: str, index: IntervalIndex,
            left_key: str, *, select: str, where: str = "") -> Iterator[str]:
    """A query for ``SELECT {select} FROM left l JOIN index r`` where the intervals
    overlap on equal (node, key), usable while the context is open (``l.x`` and ``r.x`` as
    in ``compute.sql.overlap_join``)."""
    left = con.sql(left_sql).to_arrow_table()
    li, ri = index.pairs(left, left_key)
    n = next(_names)
    lname, rname = f"_ov_left_{n}", f"_ov_right_{n}"
    con.register(lname, left.take(pa.array(li)))
    con.register(rname, index.table.take(pa.array(ri)))
    try:
        extra = f"WHERE {where}" if where else ""
        yield f"SELECT {select} FROM {lname} l POSITIONAL JOIN {rname} r {extra}"
    finally:
        con.unregister(lname)
        con.unregister(rname)
