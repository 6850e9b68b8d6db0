"""Admission of heavy requests (SQL statements, timelines): a few run, a bounded queue
waits, the rest are refused at once with 503 + Retry-After; and no client takes every slot.

Without it every request took a thread of the server's shared pool and a DuckDB database
of its own: 50 concurrent statements on 2 cores ran 50 at once, each slower than the last,
and starved the other routes of threads. Here at most ``running`` statements run, on
threads of their own; up to ``queued`` more wait on the event loop (holding no thread), at
most ``wait_s``; one more than that is an ``Overloaded`` error, so a client learns right
away to back off or try another replica.

Fairness: each request belongs to a principal (its token's name). One principal runs at
most ``running_per_principal`` statements at once and keeps at most
``queued_per_principal`` waiting (one more is 429 Too Many Requests). When a slot frees,
it goes to the waiting principal running the fewest statements (ties: the longest
waiting), not simply to the oldest request: a client that queued 60 statements does not
make another client's ``SELECT 42`` wait behind them (measured before: 5.1 s, and 30 s
with 40 queued; see the README).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from kprobe.query_api.errors import Overloaded, TooManyRequests

T = TypeVar("T")


# DuckDB's own worker threads yield the CPU to the event loop (/healthz, routing). The
# threads that call DuckDB from Python are left alone: they hold the GIL between calls, and
# a lowered GIL holder made the event loop wait longer, not shorter (measured under a
# machine load of 14: /healthz max 2.1-2.2 s with them at nice 5, 0.6-1.2 s without).
STATEMENT_NICE = 5


def lower_priority(tids: list[int] | None = None) -> None:
    """Lower the scheduling priority of these threads (default: the calling one) so the
    event loop thread, which answers health checks and routes requests, gets a core first
    when statements keep every core busy. Best effort: a thread that is gone is skipped."""
    for tid in tids if tids is not None else [threading.get_native_id()]:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < STATEMENT_NICE:
                os.setpriority(os.PRIO_PROCESS, tid, STATEMENT_NICE)
        except OSError:
            pass


class Admission:
    """Bounded concurrency, bounded waiting, and fair shares for one kind of request.

    Everything but the work itself runs on the event loop, so no lock is needed.
    """

    def __init__(self, what: str, running: int, queued: int, wait_s: float,
                 retry_after_s: int = 1, running_per_principal: int | None = None,
                 queued_per_principal: int | None = None) -> None:
        self.what = what
        self.running = running
        self.queued = queued
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.running_per_principal = running_per_principal or max(1, running // 2)
        self.queued_per_principal = queued if queued_per_principal is None else \
            queued_per_principal
        self.admitted = 0  # running + waiting
        self._active = 0
        self._active_by: defaultdict[str, int] = defaultdict(int)
        self._waiting: defaultdict[str, deque[tuple[int, asyncio.Future[None]]]] = \
            defaultdict(deque)
        self._arrivals = itertools.count()
        # anyio primitives belong to the event loop that first uses them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: anyio.CapacityLimiter | None = None

    async def run(self, work: Callable[[], T], principal: str = "anonymous") -> T:
        """``work()`` on a thread of this admission once ``principal`` has a slot."""
        threads = self._primitives()
        if self.admitted >= self.running + self.queued:
            raise self._overloaded(f"{self.admitted} {self.what} requests already running "
                                   "or queued on this replica")
        if not self._may_start(principal) and \
                len(self._waiting[principal]) >= self.queued_per_principal:
            raise TooManyRequests(
                f"token {principal!r} already has {self._active_by[principal]} {self.what} "
                f"requests running and {len(self._waiting[principal])} waiting on this "
                f"replica; retry in {self.retry_after_s} s",
                {"Retry-After": str(self.retry_after_s)})
        self.admitted += 1
        try:
            if self._may_start(principal) and not self._anyone_waiting():
                self._start(principal)
            else:
                await self._wait_turn(principal)
            try:
                return await anyio.to_thread.run_sync(work, limiter=threads)
            finally:
                self._finish(principal)
        finally:
            self.admitted -= 1

    # -- slots --------------------------------------------------------------------------------
    def _may_start(self, principal: str) -> bool:
        return (self._active < self.running
                and self._active_by[principal] < self.running_per_principal)

    def _anyone_waiting(self) -> bool:
        return any(self._waiting.values())

    def _start(self, principal: str) -> None:
        self._active += 1
        self._active_by[principal] += 1

    def _finish(self, principal: str) -> None:
        self._active -= 1
        self._active_by[principal] -= 1
        if not self._active_by[principal]:
            del self._active_by[principal]
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters: the principal running the fewest first."""
        while self._active < self.running:
            eligible = [(self._active_by[who], queue[0][0], who)
                        for who, queue in self._waiting.items()
                        if queue and self._active_by[who] < self.running_per_principal]
            if not eligible:
                return
            _, _, who = min(eligible)
            _, future = self._waiting[who].popleft()
            if not self._waiting[who]:
                del self._waiting[who]
            if future.done():  # gave up meanwhile
                continue
            self._start(who)
            future.set_result(None)

    async def _wait_turn(self, principal: str) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (next(self._arrivals), future)
        self._waiting[principal].append(entry)
        self._dispatch()
        try:
            with anyio.move_on_after(self.wait_s):
                await asyncio.shield(future)
        except BaseException:
            self._withdraw(principal, entry)
            raise
        if future.done() and not future.cancelled():
            return  # granted (perhaps just as the wait ran out)
        self._withdraw(principal, entry)
        raise self._overloaded(f"no {self.what} slot of this replica came free within "
                               f"{self.wait_s:g} s")

    def _withdraw(self, principal: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        """Leave the queue; a slot granted meanwhile is given back."""
        _, future = entry
        if future.done() and not future.cancelled():
            self._finish(principal)
            return
        future.cancel()
        queue = self._waiting.get(principal)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self._waiting[principal]

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(f"{why}; retry in {self.retry_after_s} s",
                          {"Retry-After": str(self.retry_after_s)})

    def _primitives(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        if self._threads is None or self._loop is not loop:
            self._loop = loop
            # never contended: a caller holds a slot before it asks for a thread
            self._threads = anyio.CapacityLimiter(self.running)
        return self._threads
