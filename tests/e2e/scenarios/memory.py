"""Memory scenario service: each payment builds a fresh ledger batch buffer in memory.

The service runs in a memory cgroup (``--cgroup``). Each payment maps a fresh anonymous
buffer (``--batch-mb``), fills it with its entries and checksums it, then unmaps it: every
page is a new charge against the cgroup's limit. When a co-located allocator keeps the
cgroup at its limit, each charge makes the kernel reclaim in this thread (memcg reclaim),
swapping other pages out to zram first.
"""

from __future__ import annotations

import mmap
import time

import numpy as np

from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser


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


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch-mb", type=int, default=4)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("memory", args.truth, "payment-batcher")
    size = args.batch_mb << 20
    build_batch(size, 0)  # warm: numpy, the exporter, first-touch of the code paths
    for i in range(args.ops):
        started = time.monotonic()
        with service.operation(i, args.deadline_ms), service.child("ledger.batch.build"):
            build_batch(size, i)
        pace(args.interval_ms, started)
    service.finish()


if __name__ == "__main__":
    main()
