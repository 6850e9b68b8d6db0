"""Disk scenario service: each payment appends its settlement record to a journal and fsyncs.

A settlement is durable only once ``fsync`` returns; on an idle disk that is a few
milliseconds. The culprit (a writer rewriting a large file with ``fdatasync`` after each
pass) keeps the same disk busy, and the fsync waits behind its writeback.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser

RECORD = 512


def settle(fd: int, number: int) -> None:
    record = f"{number:08d} settled".encode().ljust(RECORD - 1, b".") + b"\n"
    os.write(fd, record)
    os.fsync(fd)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--journal", type=Path, required=True)
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("disk", args.truth, "settlement-writer")
    fd = os.open(args.journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        settle(fd, -1)  # the file exists on disk before the first payment
        for i in range(args.ops):
            started = time.monotonic()
            with service.operation(i, args.deadline_ms), service.child("settlement.write"):
                settle(fd, i)
            pace(args.interval_ms, started)
    finally:
        os.close(fd)
    service.finish()


if __name__ == "__main__":
    main()
