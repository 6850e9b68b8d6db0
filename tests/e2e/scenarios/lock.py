"""Lock scenario service: payments post to an in-memory ledger guarded by one mutex.

A snapshot thread of the same process periodically takes the ledger lock and checksums a
snapshot buffer while holding it (``--snapshot-mb`` hashed ``--rounds`` times, ~0.2 s here;
hashlib releases the GIL, so the
payment thread runs meanwhile and blocks on the lock itself, in the kernel, on a futex).
A payment arriving during a snapshot waits until the snapshot thread releases the lock: its
waker, and the ground truth's holder thread.
"""

from __future__ import annotations

import hashlib
import threading
import time

from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser


class Ledger:
    def __init__(self, snapshot_mb: int, rounds: int) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[int, int]] = []
        self.snapshot = bytes(snapshot_mb << 20)
        self.rounds = rounds
        self.snapshots = 0

    def post(self, number: int, amount: int) -> None:
        with self.lock:
            self.entries.append((number, amount))

    def take_snapshot(self) -> str:
        with self.lock:
            digest = hashlib.sha256()
            for _ in range(self.rounds):
                digest.update(self.snapshot)
            self.snapshots += 1
        return digest.hexdigest()


def snapshot_loop(ledger: Ledger, every_s: float, stop: threading.Event,
                  tids: list[int]) -> None:
    tids.append(threading.get_native_id())
    while not stop.wait(every_s):
        ledger.take_snapshot()


def decoy_lock_loop(stop: threading.Event, hold_s: float, tids: list[int]) -> None:
    """Two of these fight over a lock no payment takes (a stats table): a second
    contended lock, with its own long waits, that must never be blamed."""
    tids.append(threading.get_native_id())
    data = bytes(8 << 20)
    while not stop.is_set():
        with DECOY_LOCK:
            started = time.monotonic()
            while time.monotonic() - started < hold_s:
                hashlib.sha256(data).digest()


DECOY_LOCK = threading.Lock()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--snapshot-mb", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--snapshot-every-ms", type=float, default=200.0)
    p.add_argument("--decoy-lock-ms", type=float, default=0.0,
                   help="two threads fight over another lock, holding it this long")
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("lock", args.truth, "ledger-service")
    ledger = Ledger(args.snapshot_mb, args.rounds)
    stop = threading.Event()
    tids: list[int] = []
    decoy_tids: list[int] = []
    snapshots = threading.Thread(target=snapshot_loop, name="snapshot",
                                 args=(ledger, args.snapshot_every_ms / 1e3, stop, tids))
    snapshots.start()
    decoys = [threading.Thread(target=decoy_lock_loop, name=f"stats-{i}",
                               args=(stop, args.decoy_lock_ms / 1e3, decoy_tids))
              for i in range(2 if args.decoy_lock_ms else 0)]
    for decoy in decoys:
        decoy.start()
    try:
        for i in range(args.ops):
            started = time.monotonic()
            with service.operation(i, args.deadline_ms), service.child("ledger.post"):
                ledger.post(i, 1_000 + i)
            pace(args.interval_ms, started)
    finally:
        stop.set()
        snapshots.join()
        for decoy in decoys:
            decoy.join()
    service.truth.facts.update({"holder_tid": tids[0], "snapshots": ledger.snapshots,
                                "decoy_tids": decoy_tids})
    service.finish()


if __name__ == "__main__":
    main()
