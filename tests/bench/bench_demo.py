"""The incident demo, run N times in a row (root; prints, asserts nothing):

    sudo .venv/bin/python -m tests.bench.bench_demo [--runs 10] [--keep DIR]

Each run is ``python -m kprobe demo --lake DIR/run-K --format json``: the real incident
staged on this machine, recorded, analysed, explained and replayed. Per run it prints the
settlement write of the ₹50,000 payment (its span), the gateway's answer, how many ₹50,000
payments were sent until one timed out, the headline root cause of the payment (the root
span's) and whether its driver is the batch job's real pid, the share of the write kprobe
attributed to it, the healthy writes before the batch job, and whether the exact replay
failed as in production and the what-if (a longer timeout) succeeded. Then the summary the
README quotes: the same headline in how many runs of N, and the write's spread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def one_run(lake: Path) -> tuple[dict[str, Any] | None, str, float]:
    """The demo's JSON report (None when it failed), its last stderr line, its wall time."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kprobe", "demo", "--lake", str(lake), "--format", "json"],
        capture_output=True, text=True, timeout=900, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    wall = time.perf_counter() - started
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode != 0 or not proc.stdout.strip():
        return None, last, wall
    return json.loads(proc.stdout), last, wall


def headline(report: dict[str, Any]) -> tuple[str, bool]:
    """(the payment's root-cause kind, whether its driver is the batch job's pid)."""
    cause = report.get("root_cause") or {}
    return str(cause.get("kind")), report.get("culprit_pid") == report.get("batch_job_pid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--keep", type=Path, default=None, help="keep the lakes here")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="kprobe-bench-demo-", dir="/var/tmp"))
    print(f"{args.runs} runs of `kprobe demo` on Linux {os.uname().release}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the start")
    print(f"{'run':>3} {'write ms':>8} {'gateway':>8} {'sent':>4} {'headline':<16} "
          f"{'driver=batch':>12} {'attributed':>10} {'healthy median':>14} {'replays':>8} "
          f"{'wall s':>6}")
    writes, same, failed_runs = [], 0, 0
    try:
        for k in range(1, args.runs + 1):
            report, last, wall = one_run(work / f"run-{k}")
            if report is None:
                failed_runs += 1
                print(f"{k:>3} demo failed: {last}")
                continue
            kind, by_batch = headline(report)
            write = float(report["settlement_span_ms"])
            writes.append(write)
            same += int(kind == "memory_pressure" and by_batch)
            share = float(report["attributed_delay_ms"]) / write
            replay = report["replay"]
            replays = ("ok" if replay["exact_fails_as_in_production"]
                       and replay["what_if_succeeds"] else "differ")
            print(f"{k:>3} {write:>8.0f} {report['incident_payment']['status']:>8} "
                  f"{len(report['incident_attempts']):>4} {kind:<16} {str(by_batch):>12} "
                  f"{share:>9.1%} {report['healthy_ms']['median']:>11.1f} ms {replays:>8} "
                  f"{wall:>6.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"headline 'memory pressure driven by the batch job' in {same} of {args.runs} runs"
          f" ({failed_runs} runs failed); load {os.getloadavg()[0]:.1f} at the end")
    if writes:
        print(f"settlement write under pressure: {min(writes):.0f}-{max(writes):.0f} ms, "
              f"median {statistics.median(writes):.0f} (the gateway's timeout: 750 ms)")


if __name__ == "__main__":
    main()
