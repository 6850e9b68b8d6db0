"""Overlap joins against the sorted in-memory index give exactly the rows of the bucketed
SQL join (compute.sql.overlap_join) they replace."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from kprobe.compute.interval_index import IntervalIndex, overlap
from kprobe.compute.sql import overlap_join

BUCKET = 1_000
SELECT = ("l.k, l.node, l.tid, greatest(l.s, r.s) AS s, least(l.e, r.e) AS e, r.v, "
          "r.e AS ie")


def _intervals(rng: np.random.Generator, n: int, disjoint: bool) -> pa.Table:
    """Right rows on a few (node, tid): disjoint per thread like thread_intervals, or
    overlapping and nested; a null node and a null tid now and then."""
    tid = rng.integers(1, 8, n)
    if disjoint:
        s = np.sort(rng.choice(200_000, n, replace=False)).astype(np.int64)
        order = np.argsort(tid, kind="stable")
        tid = tid[order]
        e = s + rng.integers(1, 4_000, n)
        # cut each at the next start of the same thread
        same = np.r_[tid[1:] == tid[:-1], False]
        nxt = np.r_[s[1:], 0]
        e = np.where(same & (nxt < e), nxt, e)
        keep = e > s
        s, e, tid = s[keep], e[keep], tid[keep]
        n = len(s)
    else:
        s = rng.integers(0, 200_000, n).astype(np.int64)
        e = s + rng.integers(1, 20_000, n)
    nodes = np.array(["a", "b"], dtype=object)[rng.integers(0, 2, n)]
    return pa.table({
        "node": pa.array(nodes, pa.string(), mask=rng.random(n) < 0.02),
        "tid": pa.array(tid, pa.int64(), mask=rng.random(n) < 0.02),
        "s": pa.array(s, pa.int64()), "e": pa.array(e, pa.int64()),
        "v": pa.array(np.arange(n), pa.int64())})


def _left(rng: np.random.Generator, n: int) -> pa.Table:
    """Spans: any length, some empty or reversed (e <= s), a tid no int32 holds, nulls."""
    s = rng.integers(-5_000, 210_000, n)
    e = s + rng.integers(-100, 30_000, n)
    tid = rng.integers(0, 9, n)
    tid[rng.random(n) < 0.02] = 1 << 40
    nodes = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, n)]
    return pa.table({
        "k": pa.array(np.arange(n), pa.int64()),
        "node": pa.array(nodes, pa.string(), mask=rng.random(n) < 0.02),
        "tid": pa.array(tid, pa.int64(), mask=rng.random(n) < 0.02),
        "s": pa.array(s, pa.int64(), mask=rng.random(n) < 0.02),
        "e": pa.array(e, pa.int64())})


def _same(con: duckdb.DuckDBPyConnection, a: str, b: str) -> None:
    for x, y in ((a, b), (b, a)):
        extra = con.execute(f"SELECT count(*) FROM ({x} EXCEPT ALL {y})").fetchall()[0][0]
        assert extra == 0


@pytest.mark.parametrize("disjoint", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_same_rows_as_the_bucketed_join(seed: int, disjoint: bool) -> None:
    rng = np.random.default_rng(seed)
    con = duckdb.connect()
    right = _intervals(rng, 4_000, disjoint)
    con.register("rt", right)
    con.register("lt", _left(rng, 1_500))
    oracle = overlap_join("lt", "rt", ("node", "tid"), BUCKET, select=SELECT)
    with overlap(con, "SELECT * FROM lt", IntervalIndex(right, "tid"), "tid",
                 select=SELECT) as got:
        _same(con, got, oracle)
        rows = con.execute(f"SELECT count(*) FROM ({got})").fetchall()[0][0]
    assert rows > 1_000  # the control: the join found plenty


def test_a_where_clause_and_an_empty_side() -> None:
    rng = np.random.default_rng(5)
    con = duckdb.connect()
    right = _intervals(rng, 500, True)
    con.register("rt", right)
    con.register("lt", _left(rng, 300))
    oracle = overlap_join("lt", "rt", ("node", "tid"), BUCKET, select=SELECT, where="r.v > 100")
    with overlap(con, "SELECT * FROM lt", IntervalIndex(right, "tid"), "tid",
                 select=SELECT, where="r.v > 100") as got:
        _same(con, got, oracle)
    with overlap(con, "SELECT * FROM lt WHERE false", IntervalIndex(right, "tid"), "tid",
                 select=SELECT) as got:
        assert con.execute(f"SELECT count(*) FROM ({got})").fetchall()[0][0] == 0
    with overlap(con, "SELECT * FROM lt", IntervalIndex(right.slice(0, 0), "tid"), "tid",
                 select=SELECT) as got:
        assert con.execute(f"SELECT count(*) FROM ({got})").fetchall()[0][0] == 0
