"""Memory scenario service: each payment builds a fresh ledger batch buffer in memory.

The service runs in a memory cgroup (``--cgroup``). Each payment maps a fresh anonymous
buffer (``--batch-mb``), fills it with its entries and checksums it, then unmaps it: every
page is a new charge against the cgroup's limit. When a co-located allocator keeps the
cgroup at its limit, each charge makes the kernel reclaim in this thread (memcg reclaim),
swapping other pages out to zram first.

Its deadline is a multiple of one batch's own cost without pressure, measured at start-up
before the service joins its cgroup (``--deadline-factor``): how much slower reclaim makes a
batch depends on the machine (CI saw 55-71 ms under the same fault that takes 100-300 ms
here, from ~13 ms without it), so a fixed deadline in milliseconds tests the machine, not
the engine.
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np

from tests.e2e.scenarios.telemetry import (
    Service,
    best_cpu_ms,
    join_cgroups,
    pace,
    parser,
    pin_to_cpu,
)


def build_batch(size: int, seed: int) -> int:
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        entries = np.frombuffer(buf, dtype=np.int64)
        entries[:] = seed  # touches (and charges) every page
        total = int(entries[::512].sum())
        del entries  # the mapping cannot close while a view of it exists
        return total
    finally:
        buf.close()


def calibrate(size: int) -> float:
    """One batch's cost without memory pressure (ms): the best of a few builds, in this
    thread's CPU time (user and kernel: the page faults are the cost), outside the cgroup."""
    return best_cpu_ms(lambda i: build_batch(size, i), 5)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch-mb", type=int, default=4)
    p.add_argument("--deadline-factor", type=float, default=None,
                   help="deadline = this x one batch's own cost (overrides --deadline-ms)")
    p.add_argument("--cpu", type=int, default=None,
                   help="pin the service to this CPU (after calibrating)")
    args = p.parse_args()
    size = args.batch_mb << 20
    own_ms = calibrate(size)
    deadline_ms = (round(args.deadline_factor * own_ms, 1) if args.deadline_factor
                   else args.deadline_ms)
    join_cgroups(args.cgroup)
    pin_to_cpu(args.cpu)
    service = Service("memory", args.truth, "payment-batcher")
    service.truth.facts.update({"own_ms": own_ms, "deadline_ms": deadline_ms,
                                "pid": os.getpid(), "cpu": args.cpu})
    build_batch(size, 0)  # warm: numpy, the exporter, first-touch of the code paths
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, deadline_ms), service.child("ledger.batch.build"):
            build_batch(size, i)
        pace(args.interval_ms, started)
    service.finish()


if __name__ == "__main__":
    main()
