"""HTTP API latency on a 10M-event lake (run by hand; prints figures, asserts none).

    .venv/bin/python -m tests.bench.bench_query_api [--rows 10000000] [--lake-dir DIR]
                                                   [--clients 50] [--requests 100]
                                                   [--workers 1] [--poll 0.5]

Builds (once; reused when ``--lake-dir`` already holds it) a local lake of ``--rows``
synthetic syscall rows (2 nodes, ~500 pids, 2 hours, 1M-row commits, as bench_lake.py)
plus the causal-engine tests' payment scenario, analysed into a graph snapshot. Starts
``kprobe serve`` on loopback and measures with real HTTP clients:

- explain (``GET /v1/transactions/98721/explain``), a typical SQL query (one node, one
  hour, per-syscall count and p99 duration), a pruned point query (one pid) and a user
  Cypher statement (run in a confined worker): p50 / p99, alone (sequential requests) and
  with ``--clients`` concurrent clients, each with its own token;
- the live stream: delay from a commit returning (``LakeWriter.append``) to the client
  receiving the row, with the server polling every ``--poll`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

from kprobe import lake
from kprobe.compute.analysis import run_window
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.query_api.auth import add_token
from tests.support import REPO, free_port, wait_healthy
from tests.unit.test_compute_scenario import (
    WINDOW_END,
    WINDOW_START,
    payment_scenario,
)

HOUR_NS = 3_600_000_000_000
T0 = 1_767_225_600_000_000_000 + HOUR_NS // 2  # 2026-01-01T00:30Z, 2 hours of syscalls
NODES = ("node-a", "node-b")
PIDS = np.arange(1000, 1500, dtype=np.int32)
NAMES = np.array(["read", "write", "poll", "futex", "epoll_wait", "sendto", "recvfrom",
                  "close", "openat", "fsync"])
TYPICAL_SQL = ("SELECT name, count(*) AS calls, quantile_cont(dur_ns, 0.99) AS p99_ns "
               "FROM syscalls WHERE node = 'node-a' AND hour = '2026-01-01T01' "
               "GROUP BY name ORDER BY calls DESC")
POINT_SQL = ("SELECT count(*), avg(dur_ns) FROM syscalls WHERE node = 'node-a' "
             "AND hour = '2026-01-01T01' AND pid = 1003")
MARKER = "bench-complete"


def build_lake(root: Path, rows: int) -> None:
    if (root / MARKER).exists():
        print(f"reusing {root}")
        return
    root.mkdir(parents=True, exist_ok=True)
    location = lake.resolve(lake.LakeSettings(lake=str(root)))
    rng = np.random.default_rng(7)
    started = time.perf_counter()
    batch = 1_000_000
    for node in NODES:
        writer = lake.LakeWriter(location, node)
        for _ in range(rows // len(NODES) // batch or 1):
            n = min(batch, rows // len(NODES))
            nr = rng.integers(0, len(NAMES), n)
            writer.append("syscalls", pa.table({
                "ts_ns": np.sort(T0 + rng.integers(0, 2 * HOUR_NS, n)),
                "dur_ns": rng.exponential(20_000, n).astype(np.int64),
                "pid": rng.choice(PIDS, n), "tid": rng.choice(PIDS, n), "cpu": nr % 2,
                "nr": nr.astype(np.int32), "name": NAMES[nr], "ret": np.zeros(n, np.int64)}))
    payment_scenario().write(root)
    run_window(location, Window(WINDOW_START, WINDOW_END),
               ComputeSettings(graph_cache_dir=root.parent / "graph-cache"))
    (root / MARKER).write_text("ok\n")
    print(f"built {rows:,} syscall rows + the payment scenario in "
          f"{time.perf_counter() - started:.0f} s")


def percentiles(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return (f"p50 {statistics.median(ms):7.1f} ms  p99 {p99:7.1f} ms  "
            f"(n={len(ms)})")


def measure(base: str, tokens: list[str], request: Callable[[httpx.Client], httpx.Response],
            clients: int, per_client: int) -> tuple[list[float], float]:
    """Each client with its own token (a token runs at most half the SQL slots: one token
    for 50 clients would measure its 429s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def worker(token: str) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                          timeout=120) as client:
            for _ in range(per_client):
                started = time.perf_counter()
                response = request(client)
                took = time.perf_counter() - started
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=worker, args=(tokens[i % len(tokens)],))
               for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        print(f"    {len(errors)} errors, first: {errors[0]}")
    return latencies, len(latencies) / wall


def live_delay(base: str, token: str, root: Path, samples: int) -> list[float]:
    from websockets.sync.client import connect

    writer = lake.LakeWriter(lake.resolve(lake.LakeSettings(lake=str(root))), "bench-live")
    delays = []
    url = base.replace("http", "ws") + "/v1/live?kind=lost&node=bench-live"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        for i in range(samples):
            writer.append("lost", {"ts_ns": [time.time_ns()], "source": ["bench"],
                                   "count": [i]})
            committed = time.perf_counter()
            while True:
                message = json.loads(ws.recv(timeout=30))
                if message["type"] == "events":
                    break
            delays.append(time.perf_counter() - committed)
            time.sleep(0.05 + (i % 7) * 0.03)  # land at different points of the poll cycle
    return delays


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--lake-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "kprobe-bench-api" / "lake")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests")
    parser.add_argument("--per-client", type=int, default=10)
    parser.add_argument("--poll", type=float, default=0.5, help="live poll interval (s)")
    parser.add_argument("--live-samples", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1, help="kprobe serve --workers")
    parser.add_argument("--cypher-isolation", choices=("sandbox", "none"), default="sandbox",
                        help="none: user Cypher in the server process (to see the cost)")
    args = parser.parse_args()
    root = args.lake_dir.resolve()
    build_lake(root, args.rows)
    tokens_file = root.parent / "tokens.json"
    tokens_file.unlink(missing_ok=True)
    tokens = [add_token(tokens_file, f"bench-{i}", ["read"]) for i in range(args.clients)]
    token = tokens[0]
    port = free_port()
    env = {**os.environ, "KPROBE_API_LIVE_POLL_INTERVAL_S": str(args.poll),
           "KPROBE_COMPUTE_GRAPH_CACHE_DIR": str(root.parent / "graph-cache"),
           "KPROBE_API_CYPHER_ISOLATION": args.cypher_isolation}
    log = root.parent / "serve.log"
    server = subprocess.Popen([sys.executable, "-P", "-m", "kprobe", "serve", "--lake",
                               str(root), "--tokens-file", str(tokens_file), "--port",
                               str(port), "--workers", str(args.workers)], env=env, cwd=REPO,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(server, base, log, seconds=30)
        cpus = os.cpu_count()
        print(f"kprobe serve ({args.workers} worker(s)) on {cpus} CPUs, lake {root}: "
              f"{args.rows:,} syscall rows in 2 nodes x 2 hours + 1 analysed window")
        cases: dict[str, Callable[[httpx.Client], httpx.Response]] = {
            "explain": lambda c: c.get("/v1/transactions/98721/explain"),
            "sql typical (1 node-hour, group by)": lambda c: c.post(
                "/v1/sql", json={"sql": TYPICAL_SQL}),
            "sql point (1 pid)": lambda c: c.post("/v1/sql", json={"sql": POINT_SQL}),
            # user Cypher runs in a confined worker process (query_api/cypher_worker.py)
            f"cypher (isolation {args.cypher_isolation})": lambda c: c.post(
                "/v1/graph/cypher", json={
                "cypher": "MATCH (s:Span) RETURN s.name AS name, count(*) AS n"}),
        }
        for name, request in cases.items():
            measure(base, [token], request, 1, 3)  # warm caches
            alone, _ = measure(base, [token], request, 1, args.requests)
            busy, rate = measure(base, tokens, request, args.clients, args.per_client)
            print(f"{name}")
            print(f"  alone:                 {percentiles(alone)}")
            print(f"  {args.clients} concurrent clients: {percentiles(busy)}  "
                  f"{rate:6.1f} req/s")
        delays = live_delay(base, token, root, args.live_samples)
        print(f"live stream, commit -> client (poll every {args.poll:g} s): "
              f"{percentiles(delays)}")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
