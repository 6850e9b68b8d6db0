"""Replay benchmarks on recordings made by the real agent (run as root from the repository
root; figures only, no assertions):

    sudo .venv/bin/python -m tests.bench.bench_replay [N]

1. Cost per served syscall (goal <= 20 us): ``replay_loop`` doing 0 and N iterations of
   one syscall, recorded by ``kprobe run --payloads``, each replayed a few times; the
   difference of the best wall times divided by N (sandbox and process start-up cancel).
   The clock case is clock_gettime through libc and the vDSO: a uprobe records it, the
   patched vDSO traps it in the replay.
2. A recording that mostly waited (a Python process sleeping 10 x 200 ms between small
   reads): replay wall time as a fraction of the recorded time (goal <= 0.2): waits pass
   in virtual time.
3. Recording size of a Python service (an HTTP server answering 20 requests, started 3
   times into one lake), complete either way: reads of regular files by identity with each
   file version stored once (the default, ``--file-reads identity``), or by their bytes with
   a cap that holds them whole (``--file-reads bytes --payload-cap 1M``: every start stores
   every .pyc again). Bytes on disk of tables syscall_data and blobs, and each replay exact.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kprobe.lake import LakeSettings, connect, resolve
from kprobe.replay_sandbox.engine import replay
from kprobe.replay_sandbox.lake_source import load

REPO = Path(__file__).resolve().parents[2]


def record(lake: Path, *command: str) -> tuple[int, float]:
    """(pid, recorded seconds from exec to exit) of ``command`` run under the agent (the
    defaults: payloads, reads of files by identity)."""
    subprocess.run([sys.executable, "-m", "kprobe", "run", "--payloads", "--lake", str(lake),
                    "--no-otlp", "--no-metrics", "--spool-dir", str(lake.parent / "spool"),
                    "--", *command], check=True, capture_output=True, cwd=REPO)
    con = connect(resolve(LakeSettings(lake=str(lake))))
    # the command's exec: the first of a target (the agent records syscalls of targets
    # only; the processes table holds every exec on the node, a neighbour's too)
    pid, start, end = con.execute("""
        SELECT e.pid, e.ts_ns, x.ts_ns FROM processes e JOIN processes x USING (pid)
        WHERE e.kind = 'exec' AND x.kind = 'exit'
          AND e.pid IN (SELECT DISTINCT pid FROM syscalls)
        ORDER BY e.ts_ns LIMIT 1""").fetchone()
    return int(pid), (end - start) / 1e9


def best_wall(lake: Path, pid: int, repeats: int = 5) -> float:
    recording = load(resolve(LakeSettings(lake=str(lake))), pid, _node(lake))
    best = float("inf")
    for _ in range(repeats):
        report = replay(recording)
        assert report.status == "completed", report.render_text()
        best = min(best, report.stats["wall_s"])
    return best


def _node(lake: Path) -> str:
    con = connect(resolve(LakeSettings(lake=str(lake))))
    return str(con.execute("SELECT node FROM processes LIMIT 1").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=20_000,
                        help="iterations of the loop in part 1 (default 20000)")
    n = parser.parse_args().n
    if os.geteuid() != 0:
        sys.exit("bench_replay: needs root")
    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        program = str(tmp / "replay_loop")
        subprocess.run(["gcc", "-O2", "-o", program,
                        str(REPO / "tests" / "programs" / "replay_loop.c")], check=True)
        print(f"1. cost per served syscall (N = {n}; goal <= 20 us)")
        for what, label in (("getppid", "getppid (result only)"),
                            ("read", "read 64 bytes (result + memory write)"),
                            ("clock", "clock_gettime via libc + vDSO")):
            costs = []
            for count in (0, n):
                lake = tmp / f"{what}-{count}" / "lake"
                pid, _ = record(lake, program, str(count), what)
                costs.append(best_wall(lake, pid))
            print(f"   {label:40s} {(costs[1] - costs[0]) / n * 1e6:6.2f} us "
                  f"(start-up {costs[0] * 1e3:.1f} ms; load {load_average()})")
        lake = tmp / "waits" / "lake"
        code = ("import time, os\n"
                "for i in range(10):\n"
                "    time.sleep(0.2)\n"
                "    os.read(os.open('/etc/hostname', os.O_RDONLY), 64)\n")
        pid, recorded_s = record(lake, "/usr/bin/python3", "-c", code)
        started = time.monotonic()
        wall = best_wall(lake, pid, repeats=3)
        print(f"2. mostly waiting: recorded {recorded_s:.2f} s, replayed in {wall:.3f} s "
              f"(engine) / {time.monotonic() - started:.2f} s for 3 runs: fraction "
              f"{wall / recorded_s:.3f} (goal <= 0.2; load {load_average()})")
        print("3. recording size of a Python service (20 requests, started 3 times), complete:")
        for label, options in (("files by identity, stored once (default)", ()),
                               ("files by their bytes, --payload-cap 1M",
                                ("--file-reads", "bytes", "--payload-cap", "1M"))):
            lake = tmp / f"service-{options[:1]}" / "lake"
            pids = [service(lake, options) for _ in range(3)]
            sizes = {t: table_bytes(lake, t) for t in ("syscall_data", "blobs")}
            exact = all(replay(load(resolve(LakeSettings(lake=str(lake))), pid, _node(lake)))
                        .status == "completed" for pid in pids)
            print(f"   {label:42s} syscall_data {sizes['syscall_data'] / 1e6:6.2f} MB + blobs "
                  f"{sizes['blobs'] / 1e6:5.2f} MB = {sum(sizes.values()) / 1e6:6.2f} MB "
                  f"({sum(sizes.values()) / 3e6:.2f} MB per start); 3 replays exact: {exact}")
    return 0


def service(lake: Path, options: tuple[str, ...]) -> int:
    """Start the settlement service under the agent, send it 20 requests, stop it; its pid."""
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "kprobe", "run", "--payloads", *options,
                              "--lake", str(lake), "--no-otlp", "--no-metrics", "--spool-dir",
                              str(lake.parent / "spool"), "--", "/usr/bin/python3",
                              str(REPO / "tests" / "programs" / "replay_settlement_server.py"),
                              str(port), "--slow-ms", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"ready"
        for n in range(20):
            body = f"PAY-{n} 50000.00".encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(b"POST /settle HTTP/1.0\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                while conn.recv(65536):
                    pass
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    con = connect(resolve(LakeSettings(lake=str(lake))))
    return int(con.execute("""SELECT pid FROM syscall_data WHERE nr = 59 AND arg_index = 1
                              ORDER BY ts_ns DESC LIMIT 1""").fetchone()[0])


def load_average() -> str:
    """The 1-minute load average: printed next to each timing (the machine is shared)."""
    return f"{os.getloadavg()[0]:.2f}"


def table_bytes(lake: Path, table: str) -> int:
    """Bytes the table's Parquet files take on disk."""
    return sum(p.stat().st_size for p in (lake / "v1" / table).rglob("*.parquet"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
