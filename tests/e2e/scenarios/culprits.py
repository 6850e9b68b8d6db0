"""The culprits: separate real processes that inject a fault by doing real work.

    python -m tests.e2e.scenarios.culprits allocator --mb 384 --cgroup PATH
    python -m tests.e2e.scenarios.culprits hog --threads 3 --cpu 1 [--cgroup PATH]
    python -m tests.e2e.scenarios.culprits writer --file PATH --mb 64
    python -m tests.e2e.scenarios.culprits pg-locker --port P --row 1 --hold-ms 250
    python -m tests.e2e.scenarios.culprits upstream --port P --cpu 1 --work-ms 10

Each prints one line ``ready <pid> <tid>...`` on stdout once the fault is in full effect
(the allocator has filled its working set once, the hogs spin, the writer has synced once),
then runs until killed. The test starts them, reads that line, and records the pid as the
ground truth of the culprit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import threading
from pathlib import Path

import numpy as np

PAGE = 4096


def _ready(tids: list[int]) -> None:
    print("ready", os.getpid(), *tids, flush=True)


def allocator(mb: int, cgroups: list[str], cpu: int | None = None) -> None:
    """A batch job in the service's memory cgroup cycling ``mb`` MiB of anonymous memory:
    more than the limit, so each pass pushes pages out (to zram swap) and faults them back.
    In the services' CPU cgroup too when given one: on a shared machine a starved batch job
    allocates less than the service it is meant to squeeze. Pinned to ``cpu`` when given (a
    memory fault without a CPU one: the service elsewhere)."""
    for cgroup in cgroups:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    pages = np.zeros((mb << 20) // 8, dtype=np.int64)
    stride = PAGE // 8
    pages[::stride] += 1
    _ready([threading.get_native_id()])
    while True:
        pages[::stride] += 1


def _spin(data: bytes, started: threading.Barrier) -> None:
    started.wait()
    while True:
        hashlib.sha256(data).digest()  # releases the GIL: the threads really run at once


def hog(threads: int, cpu: int | None, cgroup: str | None) -> None:
    """A process whose threads burn CPU (hashing), pinned to ``cpu`` (all threads)."""
    if cgroup:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    data = os.urandom(1 << 20)
    barrier = threading.Barrier(threads + 1)
    workers = [threading.Thread(target=_spin, args=(data, barrier), daemon=True)
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    _ready([w.native_id or 0 for w in workers])
    threading.Event().wait()


def writer(path: Path, mb: int, chunk_kb: int) -> None:
    """Buffered rewrites of a ``mb`` MiB file with an fdatasync after each pass: the disk
    stays busy with this process's writeback, and other processes' fsyncs queue behind it."""
    chunk = os.urandom(chunk_kb << 10)
    chunks = (mb << 10) // chunk_kb
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    passes = 0
    while True:
        for i in range(chunks):
            os.pwrite(fd, chunk, i * len(chunk))
        os.fdatasync(fd)
        passes += 1
        if passes == 1:
            _ready([threading.get_native_id()])


def pg_locker(port: int, row: int, hold_ms: float, every_ms: float, compute: bool) -> None:
    """A batch session that keeps taking one account row's lock (UPDATE in an open
    transaction) and, holding it, computes in this client for ``hold_ms`` before COMMIT
    (or sleeps, ``compute`` false): a payment updating that row waits in postgres for the
    lock, i.e. for this process."""
    import time

    from tests.e2e.scenarios.servers import Postgres

    db = Postgres(port)
    data = os.urandom(1 << 20)
    _ready([threading.get_native_id()])
    while True:
        started = time.monotonic()
        db.query(f"BEGIN; UPDATE accounts SET balance = balance WHERE id = {row}")
        while compute and time.monotonic() - started < hold_ms / 1e3:
            hashlib.sha256(data).digest()
        if not compute:
            time.sleep(hold_ms / 1e3)
        db.query("COMMIT")
        left = every_ms / 1e3 - (time.monotonic() - started)
        if left > 0:
            time.sleep(left)


def upstream(port: int, cpu: int | None, work_ms: float) -> None:
    """An uninstrumented HTTP upstream pricing each request on CPU (``work_ms`` of this
    thread's CPU time), answering with its own run-queue wait for the request (schedstat)."""
    import http.server
    import json
    import time

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    def schedstat() -> tuple[int, int]:
        on_cpu, waited, _ = Path("/proc/thread-self/schedstat").read_text().split()
        return int(on_cpu), int(waited)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            cpu0, wait0 = schedstat()
            started = time.monotonic()
            digest = hashlib.sha256()
            while (schedstat()[0] - cpu0) < work_ms * 1e6:
                digest.update(b"x" * 4096)
            cpu1, wait1 = schedstat()
            body = json.dumps({"runqueue_ns": wait1 - wait0, "oncpu_ns": cpu1 - cpu0,
                               "wall_ns": int((time.monotonic() - started) * 1e9),
                               "pid": os.getpid(), "tid": threading.get_native_id()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    _ready([threading.get_native_id()])
    server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    a = sub.add_parser("allocator")
    a.add_argument("--mb", type=int, required=True)
    a.add_argument("--cgroup", action="append", default=[])
    a.add_argument("--cpu", type=int, default=None)
    h = sub.add_parser("hog")
    h.add_argument("--threads", type=int, default=3)
    h.add_argument("--cpu", type=int, default=None)
    h.add_argument("--cgroup", default=None)
    w = sub.add_parser("writer")
    w.add_argument("--file", type=Path, required=True)
    w.add_argument("--mb", type=int, default=64)
    w.add_argument("--chunk-kb", type=int, default=256)
    k = sub.add_parser("pg-locker")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--row", type=int, default=1)
    k.add_argument("--hold-ms", type=float, default=250)
    k.add_argument("--every-ms", type=float, default=300)
    k.add_argument("--hold-by", choices=("compute", "sleep"), default="compute")
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, required=True)
    u.add_argument("--cpu", type=int, default=None)
    u.add_argument("--work-ms", type=float, default=10)
    args = p.parse_args()
    if args.kind == "pg-locker":
        pg_locker(args.port, args.row, args.hold_ms, args.every_ms, args.hold_by == "compute")
    elif args.kind == "upstream":
        upstream(args.port, args.cpu, args.work_ms)
    elif args.kind == "allocator":
        allocator(args.mb, args.cgroup, args.cpu)
    elif args.kind == "hog":
        hog(args.threads, args.cpu, args.cgroup)
    else:
        writer(args.file, args.mb, args.chunk_kb)


if __name__ == "__main__":
    main()
