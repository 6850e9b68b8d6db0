"""The agent's path to the lake: a bounded queue, one committing thread, a spool for outages.

Producers (the ring-buffer drain, the OTLP receiver) hand over Arrow tables and never block:
when the queue is full the batch is refused and its rows are counted as lost. The committing
thread prepares each batch once (fixing its writer id and sequence number) and commits it;
if the lake is unavailable the prepared batch goes to the local spool, and from then on
every batch goes there too until the spool has drained in order, because the lake's
idempotency check (``txn`` version >= seq means "already landed") relies on per-table order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

import pyarrow as pa

from kprobe.capture_agent.spool import Spool
from kprobe.lake import LakeError, LakeUnavailable, LakeWriter, PreparedBatch

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class SinkStats:
    committed_rows: Counter[str] = field(default_factory=Counter)
    committed_batches: int = 0
    spooled_batches: int = 0
    unspooled_batches: int = 0
    lost_rows: Counter[str] = field(default_factory=Counter)  # key: "table:reason"
    lake_errors: int = 0
    last_error: str = ""
    last_flush_seconds: float = 0.0


class LakeSink:
    def __init__(
        self,
        writer: LakeWriter,
        spool: Spool | None = None,
        *,
        max_queue_batches: int = 256,
        retry_interval_s: float = 2.0,
    ) -> None:
        self.writer = writer
        self.spool = spool
        self.retry_interval_s = retry_interval_s
        self.stats = SinkStats()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue_batches)
        self._thread = threading.Thread(target=self._loop, name="lake-sink", daemon=True)
        self._lock = threading.Lock()
        self._reported_loss: Counter[str] = Counter()

    # -- producer side ------------------------------------------------------------------
    def start(self) -> LakeSink:
        self._thread.start()
        return self

    def submit(self, table: str, data: pa.Table) -> bool:
        """Queue ``data`` for ``table``; False (rows counted as lost) if the queue is full."""
        if data.num_rows == 0:
            return True
        try:
            self._queue.put_nowait((table, data))
            return True
        except queue.Full:
            self._count_loss(table, "queue_full", data.num_rows)
            return False

    def stop(self, timeout_s: float = 60.0) -> None:
        """Commit (or spool) everything queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def queued(self) -> int:
        return self._queue.qsize()

    def take_new_losses(self) -> dict[tuple[str, str], int]:
        """Losses counted since the last call, as {(table, reason): rows} for the lost table."""
        with self._lock:
            new = self.stats.lost_rows - self._reported_loss
            self._reported_loss = Counter(self.stats.lost_rows)
        return {tuple(key.split(":", 1)): n for key, n in new.items()}  # type: ignore[misc]

    # -- committing thread --------------------------------------------------------------
    def _loop(self) -> None:
        last_retry = 0.0
        while True:
            try:
                item = self._queue.get(timeout=self.retry_interval_s)
            except queue.Empty:
                item = None
            if item is None or time.monotonic() - last_retry >= self.retry_interval_s:
                last_retry = time.monotonic()
                self._drain_spool()
            if item is _STOP:
                self._drain_spool()
                return
            if item is not None:
                table, data = cast(tuple[str, pa.Table], item)
                try:
                    batch = self.writer.prepare(table, data)
                except LakeError as err:  # a producer bug: count it, keep the agent alive
                    log.error("batch for %s rejected: %s", table, err)
                    self._count_loss(table, "rejected", data.num_rows)
                    continue
                self._handle(batch)

    def _handle(self, batch: PreparedBatch) -> None:
        if self.spool is not None and len(self.spool) and not self._drain_spool():
            self._to_spool(batch)  # keep per-table order behind what is already spooled
            return
        started = time.monotonic()
        try:
            self.writer.commit(batch)
        except LakeUnavailable as err:
            self.stats.lake_errors += 1
            self.stats.last_error = str(err)
            log.warning("lake write failed, spooling: %s", err)
            self._to_spool(batch)
            return
        except LakeError as err:  # the lake refused this batch itself: retrying cannot help
            self.stats.lake_errors += 1
            self.stats.last_error = str(err)
            log.error("lake refused a batch of %s: %s", batch.table, err)
            self._count_loss(batch.table, "rejected", batch.data.num_rows)
            return
        self.stats.last_flush_seconds = time.monotonic() - started
        self.stats.committed_batches += 1
        self.stats.committed_rows[batch.table] += batch.data.num_rows

    def _to_spool(self, batch: PreparedBatch) -> None:
        if self.spool is not None and self.spool.put(batch):
            self.stats.spooled_batches += 1
        else:
            self._count_loss(batch.table, "spool_full", batch.data.num_rows)

    def _drain_spool(self) -> bool:
        """Upload spooled batches in order; True when the spool is empty afterwards."""
        if self.spool is None:
            return True
        for path, batch in self.spool.pending():
            try:
                self.writer.commit(batch)
            except LakeUnavailable as err:
                self.stats.lake_errors += 1
                self.stats.last_error = str(err)
                return False
            except LakeError as err:  # refused for good: keep the file aside, count it
                log.error("spooled batch %s refused by the lake: %s", path.name, err)
                self.spool.reject(path)
                self._count_loss(batch.table, "rejected", batch.data.num_rows)
                continue
            self.spool.remove(path)
            self.stats.unspooled_batches += 1
            self.stats.committed_rows[batch.table] += batch.data.num_rows
        return True

    def count_loss(self, table: str, reason: str, rows: int) -> None:
        """Count rows lost before reaching the sink (e.g. unreadable records)."""
        self._count_loss(table, reason, rows)

    def _count_loss(self, table: str, reason: str, rows: int) -> None:
        with self._lock:
            self.stats.lost_rows[f"{table}:{reason}"] += rows
