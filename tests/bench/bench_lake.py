"""Lake throughput and latency on synthetic events (run by hand; prints figures, asserts none).

    .venv/bin/python -m tests.bench.bench_lake [--rows 10000000] [--batch 1000000] [--s3]

Writes ``--rows`` syscall rows (2 nodes, ~500 pids with a skewed distribution, timestamps
over 2 hours so each node has 3 hour partitions) and 10,000 spans to a local lake, and with
``--s3`` to a SeaweedFS lake started by tests/s3server.py. Then measures, per lake:

- append rate (rows/s), split into conform (``LakeWriter.prepare``) and commit;
- a partition-pruned query (one node, one hour, one pid): median latency;
- a range join of the spans against the syscalls by node, pid and time interval, written
  plainly and with an extra equality on a 100 ms time bucket: median latency of each.

Goals (DESIGN): append >= 1.5 M rows/s locally, pruned query <= 50 ms, join <= 1.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from kprobe import lake
from tests.s3server import S3Server

HOUR_NS = 3_600_000_000_000
T0 = 1_767_225_600_000_000_000 + HOUR_NS // 2  # 2026-01-01T00:30Z: 2 h span -> 3 hours
SPAN_NS = 2 * HOUR_NS
NODES = ("node-a", "node-b")
PIDS = np.arange(1000, 1500, dtype=np.int32)  # ~500 processes
SYSCALLS = [
    (0, "read"),
    (1, "write"),
    (7, "poll"),
    (202, "futex"),
    (232, "epoll_wait"),
    (44, "sendto"),
    (45, "recvfrom"),
    (3, "close"),
    (257, "openat"),
    (74, "fsync"),
]
SPANS = 10_000
HOT_PID = int(PIDS[3])

PRUNED_SQL = (
    "select count(*), avg(dur_ns) from syscalls"
    " where node = 'node-a' and hour = '2026-01-01T01' and pid = {pid}"
)
JOIN_SQL = (
    "select sp.span_id, count(s.ts_ns) as events, sum(s.dur_ns) as syscall_ns"
    " from spans sp join syscalls s"
    " on s.node = sp.node and s.pid = sp.pid and s.ts_ns between sp.start_ns and sp.end_ns"
    " group by sp.span_id"
)
# The same join with an equality on a coarse time bucket as well: a span is expanded into
# the buckets it overlaps (one or two for spans shorter than a bucket), so the hash join
# pairs a span only with its process's events in the same bucket instead of with all of
# them. Same result; each event lies in exactly one bucket, so nothing is counted twice.
BUCKET_NS = 100_000_000
BUCKETED_JOIN_SQL = (
    "with sb as (select span_id, node, pid, start_ns, end_ns,"
    f" unnest(range(start_ns // {BUCKET_NS}, end_ns // {BUCKET_NS} + 1)) as bucket from spans)"
    " select sb.span_id, count(s.ts_ns) as events, sum(s.dur_ns) as syscall_ns"
    " from sb join syscalls s"
    " on s.node = sb.node and s.pid = sb.pid"
    f" and s.ts_ns // {BUCKET_NS} = sb.bucket"
    " and s.ts_ns between sb.start_ns and sb.end_ns"
    " group by sb.span_id"
)


def pid_weights() -> np.ndarray:
    """A few busy processes and a long tail, as on a real host (Zipf-like)."""
    w: np.ndarray = 1.0 / np.arange(1, len(PIDS) + 1) ** 0.8
    return w / float(w.sum())


def syscall_batches(rows: int, batch: int, seed: int = 1) -> Iterator[tuple[str, pa.Table]]:
    """(node, batch) pairs, time-ordered per node like an agent's flushes."""
    rng = np.random.default_rng(seed)
    weights = pid_weights()
    names = pa.array([n for _, n in SYSCALLS])
    comms = pa.array([f"svc-{p % 37}" for p in PIDS])
    per_node = rows // len(NODES)
    for start in range(0, per_node, batch):
        n = min(batch, per_node - start)
        for node in NODES:
            ts = T0 + (start + np.arange(n, dtype=np.int64)) * (SPAN_NS // per_node)
            ts += rng.integers(0, SPAN_NS // per_node, n)
            pid_idx = rng.choice(len(PIDS), n, p=weights)
            sc = rng.integers(0, len(SYSCALLS), n)
            yield (
                node,
                pa.table(
                    {
                        "ts_ns": ts,
                        "dur_ns": rng.lognormal(8.0, 1.5, n).astype(np.int64),
                        "pid": PIDS[pid_idx],
                        "tid": PIDS[pid_idx] + rng.integers(0, 8, n, dtype=np.int32),
                        "cpu": rng.integers(0, 2, n, dtype=np.int32),
                        "comm": comms.take(pa.array(pid_idx)),
                        "nr": np.array([s for s, _ in SYSCALLS], np.int32)[sc],
                        "name": names.take(pa.array(sc)),
                        "ret": rng.integers(-11, 4096, n, dtype=np.int64),
                        "fd": rng.integers(0, 64, n, dtype=np.int64),
                        "seq": np.arange(start, start + n, dtype=np.int64),
                    }
                ),
            )


def spans_table(count: int, node: str, seed: int = 2) -> pa.Table:
    rng = np.random.default_rng(seed)
    start = T0 + rng.integers(0, SPAN_NS, count, dtype=np.int64)
    dur = rng.lognormal(16.0, 1.0, count).astype(np.int64)  # median ~9 ms
    return pa.table(
        {
            "trace_id": [f"{i:032x}" for i in range(count)],
            "span_id": [f"{node[-1]}{i:015x}" for i in range(count)],
            "service": ["payments"] * count,
            "name": ["authorize"] * count,
            "kind": ["SERVER"] * count,
            "start_ns": start,
            "end_ns": start + dur,
            "dur_ns": dur,
            "status": ["OK"] * count,
            "pid": PIDS[rng.choice(len(PIDS), count, p=pid_weights())],
        }
    )


def append_all(settings_for: Callable[[str], lake.LakeSettings], rows: int, batch: int) -> None:
    writers = {node: lake.LakeWriter.from_settings(settings_for(node)) for node in NODES}
    for w in writers.values():
        w.ensure_tables(["syscalls", "spans"])
    conform_s = commit_s = 0.0
    total = 0
    started = time.perf_counter()
    for node, data in syscall_batches(rows, batch):
        t0 = time.perf_counter()
        prepared = writers[node].prepare("syscalls", data)
        t1 = time.perf_counter()
        writers[node].commit(prepared)
        t2 = time.perf_counter()
        conform_s += t1 - t0
        commit_s += t2 - t1
        total += data.num_rows
    wall = conform_s + commit_s
    print(
        f"  append: {total:,} rows in {wall:.2f} s = {total / wall / 1e6:.2f} M rows/s"
        f"  (conform {conform_s:.2f} s, commit {commit_s:.2f} s;"
        f" {total // batch} commits of {batch:,}; generation excluded,"
        f" loop wall {time.perf_counter() - started:.1f} s)"
    )
    spans_per_node = SPANS // len(NODES)
    for i, node in enumerate(NODES):
        writers[node].append("spans", spans_table(spans_per_node, node, seed=10 + i))


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float, object]:
    result = fn()  # warm-up (first open of the files, caches)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), result


def queries(location: lake.LakeLocation, runs: int) -> None:
    t0 = time.perf_counter()
    con = lake.connect(location, ["syscalls", "spans"])
    print(f"  connect (open 2 tables): {(time.perf_counter() - t0) * 1e3:.0f} ms")
    sql = PRUNED_SQL.format(pid=HOT_PID)
    med, best, res = timed(lambda: con.sql(sql).fetchall(), runs)
    print(f"  pruned query: median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms -> {res}")
    med, best, _ = timed(
        lambda: lake.connect(location, ["syscalls"]).sql(sql).fetchall(), max(3, runs // 2)
    )
    print(f"  pruned query incl. connect: median {med * 1e3:.1f} ms, best {best * 1e3:.1f} ms")
    answers = []
    for label, join_sql in (("range join", JOIN_SQL), ("bucketed range join", BUCKETED_JOIN_SQL)):
        med, best, res = timed(
            lambda sql=join_sql: con.sql(sql).to_arrow_table(),  # type: ignore[misc]
            max(3, runs // 2),
        )
        assert isinstance(res, pa.Table)
        answers.append(sorted(res.to_pylist(), key=lambda r: r["span_id"]))
        events = pa.compute.sum(res["events"]).as_py()
        print(
            f"  {label} {SPANS:,} spans x syscalls: median {med:.2f} s, best {best:.2f} s"
            f" -> {res.num_rows:,} spans with events, {events:,} span-events"
        )
    print(f"  both joins give the same answer: {answers[0] == answers[1]}")


def dataset_facts(location: lake.LakeLocation) -> None:
    from deltalake import DeltaTable

    dt = DeltaTable(location.for_deltalake("syscalls"), storage_options=location.storage_options)
    adds = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
    size = sum(adds["size_bytes"])
    print(f"  syscalls: {len(adds['path'])} files, {size / 1e6:.0f} MB, version {dt.version()}")


def run(
    label: str, settings_for: Callable[[str], lake.LakeSettings], args: argparse.Namespace
) -> None:
    print(f"{label}:")
    append_all(settings_for, args.rows, args.batch)
    location = lake.resolve(settings_for(NODES[0]))
    dataset_facts(location)
    queries(location, args.runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1_000_000, help="rows per commit")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per query")
    parser.add_argument("--s3", action="store_true", help="also on SeaweedFS")
    parser.add_argument("--no-local", action="store_true", help="skip the local lake")
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-lake-", dir=args.dir) as tmp:
        work = Path(tmp)
        print(f"{args.rows:,} syscall rows, {len(NODES)} nodes, {len(PIDS)} pids, {SPANS:,} spans")
        if not args.no_local:
            root = work / "lake"
            run("local disk", lambda node: lake.LakeSettings(lake=str(root), node=node), args)
        if args.s3:
            t0 = time.perf_counter()
            with S3Server.start(work / "seaweedfs") as s3:
                print(f"(SeaweedFS ready in {time.perf_counter() - t0:.1f} s)")
                run("SeaweedFS S3", lambda node: s3.lake_settings("bench", node=node), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
