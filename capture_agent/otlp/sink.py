"""A bounded buffer of decoded spans, flushed to the lake as one Delta commit per flush.

The receiver's request handlers call ``offer`` (never blocks); one thread flushes when the
buffer holds ``flush_rows`` spans, every ``flush_interval_s``, and on ``stop``. A full
buffer refuses the request (the server answers 503 + Retry-After, so the sender retries).

A flush concatenates what is buffered and *prepares* it once (fixing its writer id and
sequence number). If the commit fails because the lake is unavailable, that same prepared
batch is kept and retried before anything newer is prepared: the lake's idempotency check
(``txn`` version >= seq means "already landed") then makes a retried commit that had in fact
landed a no-op, and keeps per-table order. Spans the lake refuses for good, or that are still
unflushed when ``stop`` gives up, are counted as dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from kprobe.lake import LakeError, LakeUnavailable, LakeWriter, PreparedBatch

log = logging.getLogger(__name__)

TABLE = "spans"


@dataclass
class SpanSinkStats:
    """Counters since start. Every span offered ends up in exactly one of them eventually."""

    accepted_spans: int = 0  # taken into the buffer
    refused_spans: int = 0  # buffer full: answered 503, the sender may retry
    committed_spans: int = 0
    committed_batches: int = 0
    failed_flushes: int = 0  # commit attempts that raised (the batch is kept and retried)
    dropped_spans: Counter[str] = field(default_factory=Counter)  # reason -> spans lost
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted_spans": self.accepted_spans,
            "refused_spans": self.refused_spans,
            "committed_spans": self.committed_spans,
            "committed_batches": self.committed_batches,
            "failed_flushes": self.failed_flushes,
            "dropped_spans": dict(self.dropped_spans),
            "last_error": self.last_error,
        }


class SpanSink:
    def __init__(
        self,
        writer: LakeWriter,
        *,
        flush_rows: int = 10_000,
        flush_interval_s: float = 1.0,
        max_buffer_rows: int = 200_000,
    ) -> None:
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows
        self.stats = SpanSinkStats()
        self._buffer: list[pa.Table] = []
        self._buffer_rows = 0
        self._held_rows = 0  # buffered + pending: what counts against max_buffer_rows
        self._pending: PreparedBatch | None = None  # prepared, not committed yet
        self._lock = threading.Lock()  # buffer and counters
        self._wake = threading.Condition(self._lock)
        self._flush_lock = threading.Lock()  # one flush at a time
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- producer side ------------------------------------------------------------------
    def offer(self, spans: pa.Table) -> bool:
        """Buffer ``spans``; False (spans counted as refused) when the buffer is full.

        A request larger than the whole buffer is still taken when the buffer is empty, so
        it cannot be refused forever (its size is bounded by the body limit).
        """
        n = spans.num_rows
        if n == 0:
            return True
        with self._lock:
            if self._held_rows and self._held_rows + n > self.max_buffer_rows:
                self.stats.refused_spans += n
                return False
            self._buffer.append(spans)
            self._buffer_rows += n
            self._held_rows += n
            self.stats.accepted_spans += n
            if self._buffer_rows >= self.flush_rows:
                self._wake.notify()
        return True

    @property
    def held_rows(self) -> int:
        """Spans accepted and not yet committed or dropped."""
        with self._lock:
            return self._held_rows

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> SpanSink:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="otlp-span-sink", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Flush what is held (retrying while the lake is unavailable, up to ``timeout_s``);
        whatever is still held then is counted as dropped ("shutdown")."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        deadline = time.monotonic() + timeout_s
        while self.flush() and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        with self._flush_lock, self._lock:
            if self._held_rows:
                log.error("stopping with %d span(s) not written to the lake", self._held_rows)
                self.stats.dropped_spans["shutdown"] += self._held_rows
                self._buffer, self._buffer_rows, self._held_rows = [], 0, 0
                self._pending = None

    # -- flushing -----------------------------------------------------------------------
    def flush(self) -> bool:
        """Commit the pending batch, then (if that worked) everything buffered.

        Returns True when spans are still held because a commit failed (retry later).
        """
        with self._flush_lock:
            if self._pending is None and not self._prepare():
                return False
            if not self._commit():
                return True
            if self._prepare():  # spans that arrived while the failed batch was retried
                return not self._commit()
            return False

    def _prepare(self) -> bool:
        """Move the buffer into one prepared batch; False when there is nothing to flush."""
        with self._lock:
            tables, rows = self._buffer, self._buffer_rows
            self._buffer, self._buffer_rows = [], 0
        if not tables:
            return False
        try:
            self._pending = self.writer.prepare(TABLE, pa.concat_tables(tables))
        except LakeError as err:  # a decoder bug: count it, keep the receiver alive
            log.error("span batch rejected before commit: %s", err)
            self._drop(rows, "rejected", err)
            return False
        return True

    def _commit(self) -> bool:
        batch = self._pending
        assert batch is not None
        rows = batch.data.num_rows
        try:
            self.writer.commit(batch)
        except LakeUnavailable as err:
            with self._lock:
                self.stats.failed_flushes += 1
                self.stats.last_error = str(err)
            log.warning("span flush failed, will retry the same batch: %s", err)
            return False
        except LakeError as err:  # the lake refused this batch itself: retrying cannot help
            with self._lock:
                self.stats.failed_flushes += 1
            log.error("the lake refused a span batch of %d row(s): %s", rows, err)
            self._pending = None
            self._drop(rows, "rejected", err)
            return True
        self._pending = None
        with self._lock:
            self._held_rows -= rows
            self.stats.committed_spans += rows
            self.stats.committed_batches += 1
        return True

    def _drop(self, rows: int, reason: str, err: Exception) -> None:
        with self._lock:
            self._held_rows -= rows
            self.stats.dropped_spans[reason] += rows
            self.stats.last_error = str(err)

    def _loop(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            with self._lock:
                while not self._stopping:
                    now = time.monotonic()
                    if now >= next_flush:
                        break
                    if self._buffer_rows >= self.flush_rows and self._pending is None:
                        break
                    self._wake.wait(next_flush - now)
                if self._stopping:
                    return  # stop() flushes, with its own deadline
            try:
                self.flush()
            except Exception:  # never let the flushing thread die silently
                log.exception("unexpected error while flushing spans")
            next_flush = time.monotonic() + self.flush_interval_s
