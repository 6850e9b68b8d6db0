"""Timing-fuzz throughput in replays per minute (run as root from the repository root; figures
only, no assertions):

    .venv/bin/python -m tests.bench.bench_replay_fuzz [--runs N] [--no-ray]

The workload is the timeout story: a payment client (three HTTP settlements, 750 ms
timeout, one thread) against a settlement server that answers PAY-1 after 650 ms,
recorded by the real agent (``kprobe run --payloads``). Then:

1. one replay in this process (best of 3): the floor of a fuzz replay's cost;
2. a campaign of ``--runs`` perturbed replays with each executor: in this process
   (``inline``), 1 and 2 worker processes, and Ray actors on a local 2-CPU cluster on
   127.0.0.1 (unless ``--no-ray``), ``--repeat`` times, interleaved. The pool (or
   cluster) is started before the clock starts and timed apart. Shrinking and threshold
   replays count too: the figure is all replays of the campaign over its wall time;
3. best and median replays/min per executor.

The machine has 2 vCPUs shared with other work: figures vary between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kprobe.lake import LakeSettings, connect, resolve
from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.fuzz import FuzzConfig, FuzzReport, fuzz
from kprobe.replay_sandbox.fuzz_pool import Job, Kind, Pool, open_pool
from kprobe.replay_sandbox.lake_source import load
from kprobe.replay_sandbox.perturb import Expectation
from kprobe.replay_sandbox.recording import Recording
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"


def record_client(tmp: Path) -> Recording:
    """The client recorded by the agent against a live server; its recording."""
    lake = tmp / "lake"
    port = free_port()
    server = subprocess.Popen([sys.executable, str(PROGRAMS / "replay_settlement_server.py"),
                               str(port), "--slow-ms", "650"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        subprocess.run([sys.executable, "-m", "kprobe", "run", "--payloads", "--payload-cap",
                        "1M", "--lake", str(lake), "--no-otlp", "--no-metrics",
                        "--spool-dir", str(tmp / "spool"), "--", "/usr/bin/python3",
                        str(PROGRAMS / "replay_payment_client.py"), str(port), "750"],
                       check=True, capture_output=True, cwd=REPO)
    finally:
        server.kill()
        server.wait(timeout=10)
    con = connect(resolve(LakeSettings(lake=str(lake))))
    # the client's exec: the first of a target (syscalls are recorded for targets only;
    # the processes table holds every exec on the node, a neighbour's too)
    pid, node = con.execute("""SELECT pid, node FROM processes WHERE kind = 'exec'
                               AND pid IN (SELECT DISTINCT pid FROM syscalls)
                               ORDER BY ts_ns LIMIT 1""").fetchone()
    return load(resolve(LakeSettings(lake=str(lake))), int(pid), str(node))


def campaign(recording: Recording, kind: Kind, workers: int, runs: int) -> tuple[float,
                                                                                 FuzzReport]:
    """(seconds to start the pool, the campaign's report)."""
    options = ReplayOptions(mode="whatif")
    started = time.perf_counter()
    pool: Pool = open_pool(kind, workers, recording, options, Expectation())
    try:
        if kind != "inline":  # workers start (and import the engine) on their first job
            pool.run([Job(())] * pool.workers)
        start_s = time.perf_counter() - started
        report = fuzz(recording, options, FuzzConfig(runs=runs, seed=1), pool=pool)
    finally:
        pool.close()
    return start_s, report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_replay_fuzz: needs root")
    with tempfile.TemporaryDirectory() as tmp_text:
        recording = record_client(Path(tmp_text))
    walls = []
    for _ in range(3):
        report = replay(recording, ReplayOptions(mode="whatif"))
        assert report.status == "completed", report.render_text()
        walls.append(report.stats["wall_s"])
    print(f"1. one replay of the payment client ({recording.trapped_rows} trapped rows): "
          f"best {min(walls) * 1e3:.0f} ms = {60 / min(walls):.0f} replays/min on one CPU")
    print(f"2. fuzz campaigns of {args.runs} perturbed replays (seed 1), all replays counted")
    setups: list[tuple[Kind, int]] = [("inline", 1), ("processes", 1), ("processes", 2)]
    if not args.no_ray:
        setups.append(("ray", 2))
    rates: dict[tuple[Kind, int], list[float]] = {setup: [] for setup in setups}
    for _ in range(args.repeat):  # interleaved: the load of this shared machine drifts
        for kind, workers in setups:
            start_s, report = campaign(recording, kind, workers, args.runs)
            total = sum(report.replays.values())
            rates[(kind, workers)].append(total / report.wall_s * 60)
            flips = ", ".join(f"{len(f.runs)} runs -> {len(f.perturbations)} perturbation(s)"
                              for f in report.flips) or "none"
            print(f"   {kind:9s} x{workers}: {total:3d} replays in {report.wall_s:5.1f} s = "
                  f"{rates[(kind, workers)][-1]:5.0f} replays/min (pool start {start_s:.1f} s;"
                  f" flips: {flips})")
    print("3. replays/min, best and median of the repeats:")
    for (kind, workers), values in rates.items():
        print(f"   {kind:9s} x{workers}: best {max(values):5.0f}, median "
              f"{statistics.median(values):5.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
