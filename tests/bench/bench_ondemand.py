"""Time of an explanation whose window nobody analysed (on-demand analysis by the API).

    flock /work/notes/heavy.lock .venv/bin/python -m tests.bench.bench_ondemand [--rounds 3]

Records (as root, with the real agent) the lock scenario of tests/e2e (a thread holding the
ledger lock makes payments miss a 50 ms deadline), then per round: a fresh copy of the lake
without graph snapshots, ``kprobe serve`` on loopback, and

- cold: ``GET /v1/transactions/{late payment}/explain``, which analyses the window;
- warm: the same request again (answered from the snapshot the first one published).

Prints the figures (p50 and max over the rounds) and the load average; asserts none.
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

import httpx

from kprobe.query_api.auth import add_token
from tests.e2e.scenarios.harness import record
from tests.support import REPO, free_port, wait_healthy

KPROBE = [sys.executable, "-P", "-m", "kprobe"]


def _serve(lake: Path, tokens: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([*KPROBE, "serve", "--lake", str(lake), "--tokens-file",
                             str(tokens), "--port", str(port), "--analyze-timeout", "600"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, log, seconds=60)
    except AssertionError as err:
        proc.kill()
        raise SystemExit(f"kprobe serve did not start: {err}") from None
    return proc, base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ondemand-"))
    try:
        run = record(tmp, "lock", "--ops", "20", "--deadline-ms", "50", "--interval-ms", "150")
        late = run.truth.missed()
        if not late:
            raise SystemExit("no payment missed its deadline: nothing to explain")
        payment = late[0].payment_id
        tokens = tmp / "tokens.json"
        token = add_token(tokens, "bench", ["read"])
        cold: list[float] = []
        warm: list[float] = []
        for i in range(args.rounds):
            lake = tmp / f"lake-{i}"
            shutil.copytree(run.lake, lake, ignore=shutil.ignore_patterns("graphs"))
            proc, base = _serve(lake, tokens, tmp / f"serve-{i}.log")
            try:
                with httpx.Client(base_url=base, timeout=600,
                                  headers={"Authorization": f"Bearer {token}"}) as client:
                    for into in (cold, warm):
                        started = time.perf_counter()
                        answer = client.get(f"/v1/transactions/{payment}/explain")
                        into.append(time.perf_counter() - started)
                        if answer.status_code != 200:
                            raise SystemExit(f"explain: {answer.status_code} {answer.text}")
                    window = answer.json()["transactions"][0]["window"]
            finally:
                proc.terminate()
                proc.wait(30)
            manifest = json.loads((lake / "graphs" / window / "manifest.json").read_text())
            print(f"round {i + 1}: window {window} ({manifest['inputs']['owned_spans']} "
                  f"owned spans): cold {cold[-1]:.2f} s, warm {warm[-1] * 1e3:.0f} ms",
                  flush=True)
        load = os.getloadavg()
        print(f"on-demand explain, {args.rounds} rounds: cold p50 {statistics.median(cold):.2f}"
              f" s (max {max(cold):.2f} s), warm p50 {statistics.median(warm) * 1e3:.0f} ms "
              f"(max {max(warm) * 1e3:.0f} ms); load average {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
