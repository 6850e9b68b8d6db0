"""The live stream: new lake rows and new failures, pushed to WebSocket clients.

One ``LiveHub`` per replica polls the lake while anyone listens: each table some client
wants follows the table with a ``lake.TableTail`` (a table nobody wants is not polled, and
starts afresh when a client asks for it), which reads only the data files of new commits.
A commit that is not an append (compaction, retention, a re-analysis replacing edges)
rewrites rows already sent: they are not sent again, and clients get a ``notice``.

Back-pressure: every client has a bounded queue of messages. When it is full, further
messages for that client are dropped (and not even converted to JSON) and counted; the
client receives ``{"type": "dropped", "messages": n, "rows": m}`` before its next message.
The server never holds more than ``queue size`` messages per client.

Messages (JSON objects):
    subscribed  the filters in force; sent once the baseline is taken, so every commit
                after it is delivered
    events      {"table", "version", "rows": [...]}; at most ``rows_per_message`` rows
    failures    new ``spans`` rows with status ERROR
    dropped     messages and rows dropped since the last message
    notice      a table was rewritten (its rewritten rows are not resent)
    heartbeat   after 15 s without anything else
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kprobe.lake import TABLE_NAMES, Appended, LakeError, LakeLocation, TableTail
from kprobe.query_api.metrics import ApiMetrics
from kprobe.query_api.payload_scope import strip_rows
from kprobe.query_api.settings import ApiSettings
from kprobe.query_api.sql import json_column

log = logging.getLogger(__name__)

FAILURE = "failure"
KINDS: tuple[str, ...] = (*TABLE_NAMES, FAILURE)
# syscall_data carries captured payload bytes: only sent to clients that ask for it.
DEFAULT_KINDS = frozenset(k for k in KINDS if k != "syscall_data")
_PID_COLUMNS = {"sched": ("prev_pid", "next_pid", "wakee_pid", "waker_pid")}
_FAILURE_COLUMNS = ("trace_id", "span_id", "parent_span_id", "service", "name", "start_ns",
                    "end_ns", "dur_ns", "status", "status_message", "pid", "tid", "node")


@dataclass(frozen=True)
class Filters:
    nodes: frozenset[str] | None = None
    pids: frozenset[int] | None = None
    kinds: frozenset[str] = DEFAULT_KINDS
    payloads: bool = False  # the client's token has the payloads scope: sensitive columns

    def describe(self) -> dict[str, Any]:
        return {"node": sorted(self.nodes) if self.nodes else None,
                "pid": sorted(self.pids) if self.pids else None,
                "kind": sorted(self.kinds)}


@dataclass(eq=False)
class Subscriber:
    filters: Filters
    queue: asyncio.Queue[dict[str, Any]]
    dropped_messages: int = 0
    dropped_rows: int = 0

    def take_dropped(self) -> dict[str, Any] | None:
        if not self.dropped_messages:
            return None
        notice = {"type": "dropped", "messages": self.dropped_messages,
                  "rows": self.dropped_rows}
        self.dropped_messages = self.dropped_rows = 0
        return notice


@dataclass
class NewRows:
    table: str
    version: int
    rows: pa.Table | None = None
    notice: str | None = None


@dataclass
class _Tail:
    """One table followed for the subscribers."""

    tail: TableTail
    idle: bool = False  # skipped by polls because no subscriber wanted it


class LiveHub:
    def __init__(self, location: LakeLocation, settings: ApiSettings,
                 metrics: ApiMetrics) -> None:
        self.location = location
        self.settings = settings
        self.metrics = metrics
        self.subscribers: set[Subscriber] = set()
        self._tails: dict[str, _Tail] | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._poll_lock = threading.Lock()  # baseline and polls never overlap
        # how many subscribers want each table (only those are polled)
        self._interest: Counter[str] = Counter()
        self._interest_lock = threading.Lock()

    # -- subscriptions ----------------------------------------------------------------------
    async def subscribe(self, filters: Filters) -> Subscriber:
        async with self._start_lock:
            if self._tails is None:
                self._tails = await asyncio.to_thread(self._baseline)
            await asyncio.to_thread(self._watch, _tables(filters.kinds))
            sub = Subscriber(filters, asyncio.Queue(self.settings.live_queue_messages))
            self.subscribers.add(sub)
            self.metrics.live_clients.set(len(self.subscribers))
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run(), name="kprobe-live-poll")
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            with self._interest_lock:
                self._interest.subtract(_tables(sub.filters.kinds))
        self.metrics.live_clients.set(len(self.subscribers))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self.subscribers.clear()

    # -- polling ----------------------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.settings.live_poll_interval_s
        while True:
            await asyncio.sleep(interval)
            if not self.subscribers:
                async with self._start_lock:
                    if not self.subscribers:
                        # nobody listens: the next subscriber takes a fresh baseline
                        self._tails = None
                        return
                continue
            try:
                batches = await asyncio.to_thread(self._poll)
                # taken after the poll: a client that subscribed while it ran may get rows
                # committed just before it subscribed, never miss one committed after
                subs = list(self.subscribers)
                deliveries = await asyncio.to_thread(self._prepare, batches, subs)
            except LakeError as err:
                log.warning("live stream: %s", err)
                continue
            except Exception:  # noqa: BLE001 - one failed poll must not end the stream
                log.exception("live stream poll failed")
                continue
            for sub, messages, dropped, dropped_rows in deliveries:
                sub.dropped_messages += dropped
                sub.dropped_rows += dropped_rows
                self.metrics.live_dropped.inc(dropped)
                for message in messages:
                    try:
                        sub.queue.put_nowait(message)
                        self.metrics.live_messages.inc()
                    except asyncio.QueueFull:
                        sub.dropped_messages += 1
                        sub.dropped_rows += len(message.get("rows", ()))
                        self.metrics.live_dropped.inc()

    def _baseline(self) -> dict[str, _Tail]:
        with self._poll_lock:
            tails = {table: _Tail(TableTail(self.location, table)) for table in TABLE_NAMES}
            for tail in tails.values():
                self._take_baseline(tail)
            return tails

    def _watch(self, tables: set[str]) -> None:
        """Count a new subscriber's tables as wanted; a table no poll looked at while
        nobody wanted it starts afresh, so what came meanwhile is sent to no one. Under the
        poll lock: no poll in flight can still treat these tables as unwanted."""
        with self._poll_lock:
            with self._interest_lock:
                self._interest.update(tables)
            for tail in (self._tails or {}).values():
                if tail.idle and tail.tail.table in tables:
                    self._take_baseline(tail)

    def _take_baseline(self, tail: _Tail) -> None:
        tail.tail.reset()
        tail.idle = False

    def _poll(self) -> list[NewRows]:
        """New rows of the tables some subscriber wants; the others are not even asked
        (on an object store, every table polled is one listing per poll)."""
        with self._poll_lock:
            self.metrics.live_polls.inc()
            with self._interest_lock:
                wanted = {table for table, count in self._interest.items() if count > 0}
            out: list[NewRows] = []
            for tail in (self._tails or {}).values():
                if tail.tail.table not in wanted:
                    tail.idle = True
                    continue
                if tail.idle:  # wanted again: what came meanwhile belongs to nobody
                    self._take_baseline(tail)
                    continue
                found = _new_rows(tail.tail)
                if found is not None:
                    out.append(found)
            return out

    # -- fan-out ------------------------------------------------------------------------------
    def _prepare(self, batches: list[NewRows], subs: Iterable[Subscriber]
                 ) -> list[tuple[Subscriber, list[dict[str, Any]], int, int]]:
        size = self.settings.live_rows_per_message
        out = []
        for sub in subs:
            free = sub.queue.maxsize - sub.queue.qsize()
            messages: list[dict[str, Any]] = []
            dropped = dropped_rows = 0
            for batch in batches:
                for kind, rows in _selected(batch, sub.filters):
                    if rows is None:
                        candidate: list[tuple[int, int]] = [(0, 0)]
                    else:
                        candidate = [(i, min(size, rows.num_rows - i))
                                     for i in range(0, rows.num_rows, size)]
                    for offset, length in candidate:
                        if len(messages) >= free:
                            dropped += 1
                            dropped_rows += length
                            continue
                        messages.append(_message(kind, batch, rows, offset, length))
            out.append((sub, messages, dropped, dropped_rows))
        return out


def _tables(kinds: Iterable[str]) -> set[str]:
    """The lake tables behind subscribed kinds (failures come from ``spans``)."""
    return {"spans" if kind == FAILURE else kind for kind in kinds}


def _new_rows(tail: TableTail) -> NewRows | None:
    change = tail.poll()
    if change is None:
        return None
    if isinstance(change, Appended):
        return NewRows(tail.table, change.version, change.rows)
    return NewRows(tail.table, change.version, notice=f"{tail.table} was rewritten "
                   "(compaction, retention or re-analysis); its rows are not resent")


def _selected(batch: NewRows, filters: Filters) -> list[tuple[str, pa.Table | None]]:
    """(kind, rows) this subscriber gets from a batch: events and/or failures."""
    if batch.rows is None:
        return [("notice", None)] if batch.table in filters.kinds else []
    rows = batch.rows
    if filters.nodes is not None:
        rows = rows.filter(pc.is_in(rows["node"], pa.array(sorted(filters.nodes))))
    if filters.pids is not None:
        columns = _PID_COLUMNS.get(batch.table) or (("pid",) if "pid" in rows.column_names
                                                     else ())
        if not columns:
            return []
        wanted = pa.array(sorted(filters.pids), pa.int64())
        mask = None
        for column in columns:
            hit = pc.fill_null(pc.is_in(rows[column].cast(pa.int64()), wanted), False)
            mask = hit if mask is None else pc.or_(mask, hit)
        rows = rows.filter(mask)
    out: list[tuple[str, pa.Table | None]] = []
    if rows.num_rows and batch.table in filters.kinds:
        out.append(("events", rows if filters.payloads else strip_rows(batch.table, rows)))
    if batch.table == "spans" and FAILURE in filters.kinds and rows.num_rows:
        failed = rows.filter(pc.fill_null(pc.equal(rows["status"], "ERROR"), False))
        if failed.num_rows:
            out.append(("failures", failed.select(
                [c for c in _FAILURE_COLUMNS if c in failed.column_names])))
    return out


def _message(kind: str, batch: NewRows, rows: pa.Table | None, offset: int,
             length: int) -> dict[str, Any]:
    if kind == "notice" or rows is None:
        return {"type": "notice", "table": batch.table, "version": batch.version,
                "message": batch.notice}
    part = rows.slice(offset, length)
    columns = [json_column(col, f.type) for col, f in zip(part.columns, part.schema)]
    names = part.column_names
    records = [dict(zip(names, values)) for values in zip(*columns)]
    message: dict[str, Any] = {"type": kind, "version": batch.version, "rows": records}
    if kind == "events":
        message["table"] = batch.table
    return message
