"""A bounded local spool for batches the lake could not take (S3 down, credentials expired).

A batch is spooled already prepared, i.e. with its writer id and sequence number, as one
Parquet file written to a temporary name and renamed (a crash never leaves half a file).
Uploading it later, even from a restarted agent, commits it under its original
``(writer_id, seq)``, so a batch that did land before the failure is recognised by the lake
and never duplicated. The spool is bounded in bytes: past the bound a batch is refused and
the caller counts it as lost.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from kprobe.lake import PreparedBatch

_NAME = re.compile(r"^(?P<table>[a-z_]+)__(?P<writer>[0-9A-Za-z_-]+)__(?P<seq>\d{12})\.parquet$")


@dataclass
class Spool:
    directory: Path
    max_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):  # a crash mid-write: never committed
            leftover.unlink(missing_ok=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*.parquet"))

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.parquet"))

    def put(self, batch: PreparedBatch) -> bool:
        """Store ``batch``; False when the spool is full (the caller counts the loss)."""
        name = f"{batch.table}__{batch.writer_id}__{batch.seq:012d}.parquet"
        target = self.directory / name
        tmp = target.with_suffix(".tmp")
        pq.write_table(batch.data, tmp, compression="zstd")
        if self.size_bytes() + tmp.stat().st_size > self.max_bytes:
            tmp.unlink()
            return False
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        return True

    def pending(self) -> Iterator[tuple[Path, PreparedBatch]]:
        """Spooled batches, oldest first per writer (sequence order matters to the lake)."""
        entries = []
        for path in self.directory.glob("*.parquet"):
            match = _NAME.match(path.name)
            if match:
                entries.append((match["writer"], int(match["seq"]), match["table"], path))
        for writer, seq, table, path in sorted(entries):
            data: pa.Table = pq.read_table(path)
            yield path, PreparedBatch(table, writer, seq, data)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def reject(self, path: Path) -> None:
        """Move a batch the lake refused for good out of the queue, kept for inspection."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
