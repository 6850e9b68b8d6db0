"""Ring drain throughput of the sched sensor (root and `make bpf`; prints numbers, asserts
nothing; exits non-zero when it cannot run).

    sudo .venv/bin/python -m tests.bench.bench_ringbuf_drain

1. burst: fill a 16 MiB ring without draining, then time one ``drain()`` (numpy copy of
   the whole batch): the drain's own rate.
2. sustained: tests/programs/switch_storm while a loop drains every 20 ms: events per
   second reaching user space, kernel drops, and the storm's slowdown with the sensor on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kprobe.capture_agent.families import sched
from kprobe.capture_agent.sensor import Sensor, object_path

REPO = Path(__file__).resolve().parents[2]


def _storm(binary: Path, rounds: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(binary), str(rounds)], check=True)
    return time.perf_counter() - t0


def main() -> int:
    if os.geteuid() != 0:
        sys.exit("bench_ringbuf_drain: needs root")
    if not object_path(sched.FAMILY.object_file).exists():
        sys.exit(f"bench_ringbuf_drain: {object_path(sched.FAMILY.object_file)} missing "
                 "(run `make bpf`)")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["make", "-s", "-C", str(REPO / "tests/programs"), f"OUT={tmp}"],
                       check=True)
        storm = Path(tmp) / "switch_storm"

        # 1. burst
        config = sched.SchedConfig(sched_ring_bytes=16 << 20)
        with Sensor(sched.sensor_spec(config)) as sensor:
            ring = sensor.ring("sched_events")
            proc = subprocess.Popen([str(storm), "10000000"])
            while ring.fill() < 0.95 and proc.poll() is None:
                time.sleep(0.01)
            proc.kill()
            proc.wait()
            t0 = time.perf_counter()
            batch = ring.drain()
            dt = time.perf_counter() - t0
        print(f"burst: {len(batch)} records ({batch.nbytes / 1e6:.1f} MB) drained in "
              f"{dt * 1e3:.2f} ms = {len(batch) / dt / 1e6:.1f} M events/s")

        # 2. sustained
        rounds = 200_000
        bare = _storm(storm, rounds)
        config = sched.SchedConfig(sched_ring_bytes=8 << 20)
        with Sensor(sched.sensor_spec(config)) as sensor:
            ring = sensor.ring("sched_events")
            proc = subprocess.Popen([str(storm), str(rounds)])
            t0 = time.perf_counter()
            drained, drain_s = 0, 0.0
            while proc.poll() is None:
                ring.wait(0.02)
                d0 = time.perf_counter()
                drained += len(ring.drain())
                drain_s += time.perf_counter() - d0
            elapsed = time.perf_counter() - t0
            drained += len(ring.drain())
            drops = sum(sensor.drops().values())
        print(f"sustained: {drained} events in {elapsed:.2f} s = {drained / elapsed / 1e3:.0f} k"
              f" events/s delivered, drops {drops}, drain busy {drain_s / elapsed:.1%};"
              f" storm {bare:.2f} s bare vs {elapsed:.2f} s with the sensor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
