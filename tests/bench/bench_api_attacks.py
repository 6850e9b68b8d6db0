"""The query API under the denial-of-service attacks of issue 14 (run by hand; prints
figures, asserts none).

    sudo .venv/bin/python -m tests.bench.bench_api_attacks [--lake DIR] [--base URL]

Starts ``kprobe serve`` over ``--lake`` (default: records the ledger workload with the real
agent into a temporary lake, as tests/security does), or measures a server already running
at ``--base`` (tokens ``reader`` and ``reader2`` from ``--tokens``: how the figures of the
code before the fix were taken). For each attack it prints what the attacker got and
``/healthz`` latency polled from another process while the attack ran:

- ``SELECT repeat('x',300000000)`` and a million rows;
- one token sending 40 slow statements, another token's ``SELECT 42`` (its own process);
- 300 connections sending a header line a second, 300 idle connections.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.security.api_server import HealthProbe, record_lake, serve

_VICTIM = r"""
import sys, time, httpx
started = time.perf_counter()
answer = httpx.post(sys.argv[1] + "/v1/sql", json={"sql": "SELECT 42"},
                    headers={"Authorization": "Bearer " + sys.argv[2]}, timeout=120)
print(answer.status_code, round(time.perf_counter() - started, 3))
"""


def attacks(base: str, reader: str, reader2: str, port: int) -> None:
    auth = {"Authorization": f"Bearer {reader}"}
    probe = HealthProbe(base)
    started = time.perf_counter()
    answer = httpx.post(f"{base}/v1/sql", json={"sql": "SELECT repeat('x',300000000)"},
                        headers=auth, timeout=300)
    print(f"SELECT repeat('x',300000000): {answer.status_code}, {len(answer.content):,} "
          f"bytes after {time.perf_counter() - started:.1f} s; {probe.stop().describe()}")

    probe = HealthProbe(base)
    started = time.perf_counter()
    answer = httpx.post(f"{base}/v1/sql", json={"sql": "SELECT * FROM range(1000000)",
                                                "max_rows": 10_000_000},
                        headers=auth, timeout=300)
    print(f"a million rows: {answer.status_code}, {answer.headers.get('x-kprobe-row-count')} "
          f"rows, {len(answer.content):,} bytes after {time.perf_counter() - started:.1f} s; "
          f"{probe.stop().describe()}")

    results: list[object] = []

    def hog() -> None:
        try:
            results.append(httpx.post(f"{base}/v1/sql", headers=auth, timeout=120, json={
                "sql": "SELECT count(*) FROM range(10000000000000)", "timeout_s": 6}
            ).status_code)
        except httpx.HTTPError as err:
            results.append(type(err).__name__)

    probe = HealthProbe(base)
    hogs = [threading.Thread(target=hog) for _ in range(40)]
    for thread in hogs:
        thread.start()
    time.sleep(1)
    victim = subprocess.run([sys.executable, "-c", _VICTIM, base, reader2],
                            capture_output=True, text=True, timeout=300).stdout.split()
    for thread in hogs:
        thread.join()
    print(f"one token's 40 slow statements: another token's SELECT 42 {victim[0]} after "
          f"{victim[1]} s; the hog got {dict(Counter(map(str, results)))}; "
          f"{probe.stop().describe()}")

    probe = HealthProbe(base)
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    for sock in slow + idle:
        sock.setblocking(False)
    for sock in slow:
        sock.send(b"GET /v1/tables HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    open_slow = set(range(300))
    while open_slow and time.monotonic() - started < 30:
        for i in list(open_slow):
            try:
                slow[i].send(b"X-Slow: 1\r\n")
            except OSError:
                open_slow.discard(i)
        time.sleep(1)

    def closed(sock: socket.socket) -> bool:
        try:
            return sock.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    idle_closed = sum(closed(sock) for sock in idle)
    for sock in slow + idle:
        sock.close()
    print(f"300 trickling connections: {300 - len(open_slow)} closed by the server within "
          f"{time.monotonic() - started:.0f} s; 300 idle: {idle_closed} closed; "
          f"{probe.stop().describe()}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", type=Path, help="a recorded lake (default: record one)")
    parser.add_argument("--base", help="measure a server already running at this URL")
    parser.add_argument("--tokens", type=Path, help="with --base: JSON {name: token} with "
                        "reader and reader2")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"{len(__import__('os').sched_getaffinity(0))} CPUs, load average {' '.join(load)}")
    if args.base:
        tokens = json.loads(args.tokens.read_text())
        attacks(args.base, tokens["reader"], tokens["reader2"],
                int(args.base.rsplit(":", 1)[1]))
        return 0
    with tempfile.TemporaryDirectory(prefix="kprobe-bench-attacks-") as tmp:
        lake = args.lake or record_lake(Path(tmp)).lake
        with serve(lake, Path(tmp) / "serve") as server:
            attacks(server.base, server.tokens["reader"], server.tokens["reader2"],
                    server.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
