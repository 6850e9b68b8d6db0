"""The nightly reconciliation batch job: a memory-hungry process in the settlement service's
memory cgroup.

    python -m kprobe.demo.batch_job --mb 384 [--cgroup /sys/fs/cgroup/memory/kprobe-demo-…]

It loads a day of ledger records (``--mb`` MiB of anonymous memory, more than the cgroup's
limit) and reconciles them pass after pass, updating every record. Every pass touches every
page, so the kernel keeps swapping the coldest pages out (to zram: real compression work)
and faulting them back in, and the group stays at its limit: whoever charges a page in the
group next, the settlement service included, has to reclaim first.

The records are realistic rather than zero (zero pages cost zram nothing): account ids,
amounts in paise, timestamps and status codes, which compress about 3:1. It prints
``ready <pid> <swept MiB>`` once every record has been written, then ``pass <n> <seconds>``
after each pass, and runs until killed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

RECORD_FIELDS = 8  # int64 fields per 64-byte record: account, counterparty, amount, ts, ...
PAGE = 4096


def load_records(mb: int, seed: int) -> np.ndarray:
    """``mb`` MiB of ledger records, written once (every page charged to the cgroup)."""
    rng = np.random.default_rng(seed)
    records = np.empty(((mb << 20) // (8 * RECORD_FIELDS), RECORD_FIELDS), dtype=np.int64)
    chunk = 1 << 16  # records per step: a few MiB of temporaries at a time
    start_ts = 1_700_000_000_000
    for lo in range(0, len(records), chunk):
        part = records[lo:lo + chunk]
        n = len(part)
        part[:, 0] = rng.integers(10**9, 10**9 + 5_000_000, n)  # account
        part[:, 1] = rng.integers(10**9, 10**9 + 5_000_000, n)  # counterparty
        part[:, 2] = rng.integers(100, 5_000_000_00, n)  # amount, paise
        part[:, 3] = start_ts + np.arange(lo, lo + n)  # booking time, ms
        part[:, 4] = rng.integers(0, 4, n)  # status
        part[:, 5:] = 0  # reconciliation result, filled by the passes
    return records


def reconcile_pass(records: np.ndarray, n: int) -> int:
    """One pass over every record: mark it reconciled and accumulate the running balance.
    Walks the array in page-sized strides so every page is read and written."""
    chunk = 1 << 15
    total = 0
    for lo in range(0, len(records), chunk):
        part = records[lo:lo + chunk]
        part[:, 5] = n
        part[:, 6] += part[:, 2] & 0xFF
        total += int(part[::64, 2].sum())
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, required=True, help="MiB of records to reconcile")
    p.add_argument("--cgroup", default=None, help="cgroup directory to join first")
    p.add_argument("--seed", type=int, default=20240229)
    args = p.parse_args(argv)
    if args.cgroup:
        Path(args.cgroup, "cgroup.procs").write_text(str(os.getpid()))
    records = load_records(args.mb, args.seed)
    print("ready", os.getpid(), args.mb, flush=True)
    n = 0
    while True:
        n += 1
        started = time.monotonic()
        reconcile_pass(records, n)
        print("pass", n, f"{time.monotonic() - started:.2f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
