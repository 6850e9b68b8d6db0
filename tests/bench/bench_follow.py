"""Lag of continuous analysis: from a failure to its explanation (run by hand; prints only).

    .venv/bin/python -m tests.bench.bench_follow [--nodes 3] [--rate 10000] [--seconds 240]
                                                 [--window 60s] [--grace 10s] [--keep DIR]

Simulates ``--nodes`` agents writing to one local lake in real time, as an agent does: every
second each node commits its kernel rows (``--rate`` events/s: scheduler switches, off-CPU
intervals, TCP events; numpy-generated, timestamps of that second), then its flush marker
(``agent_meta`` kind ``flush``). Every ``--every`` seconds each node has a failed payment:
a server span over its deadline while its thread waits in memcg reclaim (written with the
flush after it ended, as an application exporting each span at its end would).

``kprobe analyze --follow`` runs as its own process on the lake. A checker asks
``compute.explain`` for each failure (by trace id, restricted to its window) until it
answers; the lag is the wall time from the failure's end to the first answer. Prints the
lag's p50/p95/max, the follower's window analysis times, and the events written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from kprobe.compute.errors import ComputeError
from kprobe.compute.explain import explain
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, LakeUnavailable, LakeWriter, resolve
from kprobe.lake.schema import spec

NS = 1_000_000_000
MS = 1_000_000
REPO = Path(__file__).resolve().parents[2]
THREADS = 200
CPUS = 4


@dataclass
class Failure:
    trace_id: str
    node: str
    end_ns: int  # when it failed (its span's end)
    explained_ns: int | None = None


def _table(name: str, columns: dict[str, object]) -> pa.Table:
    schema = spec(name).payload_schema
    return pa.table({f.name: columns[f.name] for f in schema if f.name in columns},
                    schema=pa.schema([f for f in schema if f.name in columns]))


def kernel_rows(rng: np.random.Generator, t0: int, t1: int, rate: int) -> dict[str, pa.Table]:
    """A node's kernel rows of [t0, t1) at ``rate``/s: 70 % switches, 20 % off-CPU, 10 % TCP."""
    count = max(1, int(rate * (t1 - t0) / NS))
    n_sched, n_off = int(count * 0.7), int(count * 0.2)
    n_net = count - n_sched - n_off
    ts = np.sort(rng.integers(t0, t1, n_sched))
    tids = rng.integers(1000, 1000 + THREADS, (2, n_sched))
    sched = _table("sched", {
        "ts_ns": ts, "cpu": rng.integers(0, CPUS, n_sched).astype(np.int32),
        "kind": np.full(n_sched, "switch"), "prev_pid": tids[0] // 10 * 10,
        "prev_tid": tids[0], "prev_comm": np.full(n_sched, "svc"),
        "prev_state": np.where(rng.random(n_sched) < 0.5, "S", "R"),
        "next_pid": tids[1] // 10 * 10, "next_tid": tids[1],
        "next_comm": np.full(n_sched, "svc")})
    off_tid = rng.integers(1000, 1000 + THREADS, n_off)
    offcpu = _table("offcpu", {
        "ts_ns": np.sort(rng.integers(t0, t1, n_off)),
        "dur_ns": rng.integers(MS, 20 * MS, n_off), "pid": off_tid // 10 * 10,
        "tid": off_tid, "cpu": rng.integers(0, CPUS, n_off).astype(np.int32),
        "comm": np.full(n_off, "svc"), "state": np.full(n_off, "S"),
        "wait_reason": rng.choice(["futex", "socket", "sleep"], n_off)})
    net_tid = rng.integers(1000, 1000 + THREADS, n_net)
    net = _table("net", {
        "ts_ns": np.sort(rng.integers(t0, t1, n_net)), "pid": net_tid // 10 * 10,
        "tid": net_tid, "comm": np.full(n_net, "svc"),
        "kind": rng.choice(["send", "recv"], n_net), "saddr": np.full(n_net, "10.0.0.1"),
        "sport": rng.integers(30000, 40000, n_net).astype(np.int32),
        "daddr": np.full(n_net, "10.0.0.2"), "dport": np.full(n_net, 5432, np.int32),
        "bytes": rng.integers(64, 4096, n_net)})
    return {"sched": sched, "offcpu": offcpu, "net": net}


def failure_rows(rng: np.random.Generator, node_index: int, end_ns: int
                 ) -> tuple[str, dict[str, pa.Table]]:
    """A 300 ms payment over its 250 ms deadline, its thread in memcg reclaim for 250 ms."""
    trace = f"{node_index + 1:02x}" + rng.bytes(15).hex()
    start = end_ns - 300 * MS
    tid = 1000 + node_index
    spans = _table("spans", {
        "trace_id": [trace], "span_id": [rng.bytes(8).hex()], "service": ["payments"],
        "name": ["POST /payments"], "kind": ["SERVER"], "start_ns": [start],
        "end_ns": [end_ns], "dur_ns": [300 * MS], "status": ["ERROR"],
        "status_message": ["deadline exceeded"], "pid": np.array([tid // 10 * 10], np.int32),
        "tid": [tid], "attributes": [json.dumps({"payment.id": trace[:12],
                                                  "kprobe.deadline_ms": 250})],
        "resource": ["{}"], "events": ["[]"]})
    mem = _table("mem", {
        "ts_ns": [start + 20 * MS], "dur_ns": [250 * MS], "pid": [tid // 10 * 10],
        "tid": [tid], "comm": ["svc"], "kind": ["memcg_reclaim"], "nr_reclaimed": [64],
        "memcg": [7]})
    return trace, {"spans": spans, "mem": mem}


def _commit(writer: LakeWriter, table: str, rows: pa.Table, retries: list[str]) -> None:
    """As the agent's sink: a batch the lake refused for a moment is committed again (its
    transaction id makes the retry land once); the bench counts each retry."""
    batch = writer.prepare(table, rows)
    for _ in range(20):
        try:
            writer.commit(batch)
            return
        except LakeUnavailable as err:
            retries.append(str(err))
            time.sleep(0.2)
    raise LakeUnavailable(f"{table}: 20 retries failed")


def node_loop(lake: Path, node_index: int, rate: int, every_s: float, stop: threading.Event,
              failures: list[Failure], written: list[int], lock: threading.Lock,
              retries: list[str]) -> None:
    """One simulated agent: each second its rows, then its flush marker."""
    node = f"sim{node_index}"
    writer = LakeWriter.from_settings(LakeSettings(lake=str(lake), node=node))
    rng = np.random.default_rng(node_index)
    next_failure = time.time() + every_s * (node_index + 1) / 3
    last = time.time_ns()
    while not stop.is_set():
        flushed_at = time.time_ns()  # this flush holds every row before this
        tables = kernel_rows(rng, last, flushed_at, rate)
        last = flushed_at
        if time.time() >= next_failure:
            next_failure += every_s
            trace, rows = failure_rows(rng, node_index, flushed_at - MS)
            for name, table in rows.items():
                tables[name] = (pa.concat_tables([tables[name], table])
                                if name in tables else table)
            with lock:
                failures.append(Failure(trace, node, flushed_at - MS))
        for name, table in tables.items():
            _commit(writer, name, table, retries)
        _commit(writer, "agent_meta", pa.table({"ts_ns": [flushed_at], "kind": ["flush"],
                                                "boot_id": [node]}), retries)
        with lock:
            written[node_index] += sum(t.num_rows for t in tables.values())
        stop.wait(max(0.0, 1.0 - (time.time_ns() - flushed_at) / NS))
    _commit(writer, "agent_meta", pa.table({"ts_ns": [time.time_ns()], "kind": ["stop"],
                                            "boot_id": [node]}), retries)


def checker(lake: Path, failures: list[Failure], stop: threading.Event,
            lock: threading.Lock) -> None:
    location = resolve(LakeSettings(lake=str(lake)))
    settings = ComputeSettings()
    while not stop.is_set():
        with lock:
            pending = [f for f in failures if f.explained_ns is None]
        for failure in pending:
            try:
                explain(location, failure.trace_id, settings,
                        start_ns=failure.end_ns - 400 * MS, end_ns=failure.end_ns)
            except ComputeError:
                continue
            failure.explained_ns = time.time_ns()
        stop.wait(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rate", type=int, default=10_000, help="events/s per node")
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--every", type=float, default=5.0, help="s between failures/node")
    parser.add_argument("--window", default="60s")
    parser.add_argument("--grace", default="10s")
    parser.add_argument("--poll", default="1s")
    parser.add_argument("--keep", type=Path, default=None, help="lake directory to keep")
    args = parser.parse_args()

    lake = args.keep or Path(tempfile.mkdtemp(prefix="bench-follow-"))
    for n in range(args.nodes):  # tables exist before the follower looks
        LakeWriter.from_settings(LakeSettings(lake=str(lake), node=f"sim{n}")).ensure_tables()
    follow_log = lake.parent / f"{lake.name}-follow.jsonl"
    log = follow_log.open("w")
    follower = subprocess.Popen(
        [sys.executable, "-m", "kprobe", "analyze", "--follow", "--lake", str(lake),
         "--window", args.window, "--grace", args.grace, "--poll", args.poll,
         "--format", "json"], cwd=REPO, stdout=log, stderr=subprocess.DEVNULL,
        env={**os.environ, "KPROBE_COMPUTE_GRAPH_CACHE_DIR": str(lake.parent / "graphs")})
    stop, lock = threading.Event(), threading.Lock()
    failures: list[Failure] = []
    written = [0] * args.nodes
    retries: list[str] = []
    threads = [threading.Thread(target=node_loop, args=(lake, n, args.rate, args.every, stop,
                                                        failures, written, lock, retries),
                                daemon=True)
               for n in range(args.nodes)]
    check_stop = threading.Event()
    check = threading.Thread(target=checker, args=(lake, failures, check_stop, lock),
                             daemon=True)
    started = time.monotonic()
    for t in [*threads, check]:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(60)
    writing = time.monotonic() - started
    load = os.getloadavg()
    # let the follower close the last windows the failures are in
    deadline = time.monotonic() + 180
    while any(f.explained_ns is None for f in failures) and time.monotonic() < deadline:
        time.sleep(1)
    check_stop.set()
    check.join(60)
    follower.send_signal(signal.SIGTERM)
    try:
        follower.wait(300)  # it finishes the window it is analysing
    except subprocess.TimeoutExpired:
        follower.kill()
        follower.wait()
    log.close()

    lags = sorted((f.explained_ns - f.end_ns) / NS for f in failures if f.explained_ns)
    windows = [json.loads(line) for line in follow_log.read_text().splitlines()
               if line.startswith("{")]
    seconds = [w["seconds"] for w in windows]
    print(f"nodes {args.nodes} x {args.rate} events/s for {args.seconds:.0f} s "
          f"({sum(written):,} rows written, {sum(written) / writing:,.0f}/s overall); "
          f"window {args.window}, grace {args.grace}, poll {args.poll}; cpus {os.cpu_count()}, "
          f"load average {load[0]:.1f} at the end of writing")
    print(f"failures: {len(failures)}, explained: {len(lags)}; commits retried after the "
          f"lake refused them: {len(retries)}" + (f" (first: {retries[0][:160]})"
                                                   if retries else ""))
    if lags:
        print(f"lag failure -> explanation: p50 {statistics.median(lags):.1f} s, "
              f"p95 {lags[min(len(lags) - 1, int(0.95 * len(lags)))]:.1f} s, "
              f"min {lags[0]:.1f} s, max {lags[-1]:.1f} s")
    if seconds:
        print(f"windows analysed: {len(windows)} "
              f"({sum(1 for w in windows if w.get('reanalysed'))} again for late rows); "
              f"analysis per window: median {statistics.median(seconds):.1f} s, "
              f"max {max(seconds):.1f} s")
    if args.keep is None:
        shutil.rmtree(lake, ignore_errors=True)
        shutil.rmtree(lake.parent / "graphs", ignore_errors=True)
        follow_log.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
