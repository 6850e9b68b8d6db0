"""``runqueue_in_reclaim`` looks reclaim intervals up in memory: the same rows as the SQL
overlap join it replaced (kept here as the oracle), on random rows."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from kprobe.compute import causes
from kprobe.compute.causes.memory import runqueue_in_reclaim
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import merged, overlap_join


def _oracle(con: duckdb.DuckDBPyConnection, settings: ComputeSettings) -> list[tuple]:
    """The first version: two bucketed SQL overlap joins against the merged reclaim rows."""
    bucket = settings.join_bucket_ns
    reclaim = merged("mem_reclaim", ("node", "tid", "episode_id"))
    left = "(SELECT * FROM c_holders WHERE followed AND e > s)"
    own = overlap_join(left, reclaim, ("node", "tid"), bucket,
                       select="l.span_key, l.holder_tid, 'own' AS whose, r.episode_id,"
                              " (least(l.e, r.e) - greatest(l.s, r.s)) * l.share AS ns")
    held = overlap_join(left, reclaim, (("node", "node"), ("holder_tid", "tid")), bucket,
                        select="l.span_key, l.holder_tid, 'holder' AS whose, r.episode_id,"
                               " (least(l.e, r.e) - greatest(l.s, r.s)) * l.share AS ns")
    return con.execute(f"""
        SELECT span_key, holder_tid, whose, episode_id, round(sum(ns))::BIGINT
        FROM ({own} UNION ALL {held}) GROUP BY ALL ORDER BY ALL""").fetchall()


def _tables(seed: int) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    n, m = 3000, 400
    s = rng.integers(0, 2_000_000_000, n)
    holders = pa.table({
        "span_key": rng.choice([f"s{i}" for i in range(50)], n), "node": rng.choice(
            ["n1", "n2"], n), "cpu": rng.integers(0, 4, n),
        "holder_tid": pa.array(np.where(rng.random(n) < 0.05, None, rng.integers(1, 30, n)),
                               pa.int64()),
        "holder_pid": rng.integers(1, 30, n), "s": s,
        "e": s + rng.integers(-1_000, 40_000_000, n),  # some empty or reversed
        "share": np.where(rng.random(n) < 0.7, 1.0, rng.random(n)),
        "tid": pa.array(np.where(rng.random(n) < 0.05, None, rng.integers(1, 30, n)),
                        pa.int64()),
        "followed": rng.random(n) < 0.8})
    rs = rng.integers(0, 2_000_000_000, m)
    reclaim = pa.table({  # overlapping rows on one thread too (merged per episode)
        "node": rng.choice(["n1", "n2", "n3"], m), "tid": rng.integers(1, 40, m),
        "s": rs, "e": rs + rng.integers(1, 80_000_000, m),
        "episode_id": rng.choice(["mem:a", "mem:b", "mem:c"], m)})
    return {"c_holders": holders, "mem_reclaim": reclaim}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reclaim_lookups_equal_the_sql_join(seed: int) -> None:
    con = duckdb.connect()
    causes.create_tables(con)
    for name, table in _tables(seed).items():
        con.register(f"_{name}", table)
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _{name}")
    # _drivers' inputs: no allocation rows, so no drivers
    con.execute("CREATE TEMP TABLE w_mem (node VARCHAR, ts_ns BIGINT, pid BIGINT, "
                "kind VARCHAR, count BIGINT, memcg BIGINT)")
    settings = ComputeSettings()
    runqueue_in_reclaim(con, settings, "c_holders")
    got = con.execute("SELECT span_key, holder_tid, whose, episode_id, ns "
                      "FROM runqueue_reclaim ORDER BY ALL").fetchall()
    want = _oracle(con, settings)
    assert got == want
    assert {w for _, _, w, _, _ in got} == {"own", "holder"} and len(got) > 100
