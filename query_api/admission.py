"""Admission of heavy requests (SQL statements): a few run, a bounded queue waits, the
rest are refused at once with 503 + Retry-After.

Without it every request took a thread of the server's shared pool and a DuckDB database
of its own: 50 concurrent statements on 2 cores ran 50 at once, each slower than the last,
and starved the other routes of threads. Here at most ``running`` statements run, on
threads of their own; up to ``queued`` more wait on the event loop (holding no thread) in
arrival order, at most ``wait_s``; one more than that is an ``Overloaded`` error, so a
client learns right away to back off or try another replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

from query_api.errors import Overloaded

T = TypeVar("T")


class Admission:
    """Bounded concurrency and a bounded FIFO queue for one kind of request."""

    def __init__(self, what: str, running: int, queued: int, wait_s: float,
                 retry_after_s: int = 1) -> None:
        self.what = what
        self.running = running
        self.queued = queued
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.admitted = 0  # running + waiting; only touched on the event loop
        # anyio primitives belong to the event loop that first uses them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: anyio.CapacityLimiter | None = None
        self._threads: anyio.CapacityLimiter | None = None

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a thread of this admission once a slot is free."""
        slots, threads = self._primitives()
        if self.admitted >= self.running + self.queued:
            raise self._refusal(f"{self.admitted} {self.what} requests already running or "
                                "queued on this replica")
        self.admitted += 1
        try:
            with anyio.move_on_after(self.wait_s) as waiting:
                await slots.acquire()  # FIFO: waiters are served in arrival order
            if waiting.cancelled_caught:
                raise self._refusal(f"no {self.what} slot of this replica came free within "
                                    f"{self.wait_s:g} s")
            try:
                return await anyio.to_thread.run_sync(work, limiter=threads)
            finally:
                slots.release()
        finally:
            self.admitted -= 1

    def _refusal(self, why: str) -> Overloaded:
        return Overloaded(f"{why}; retry in {self.retry_after_s} s",
                          {"Retry-After": str(self.retry_after_s)})

    def _primitives(self) -> tuple[anyio.CapacityLimiter, anyio.CapacityLimiter]:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._threads is None or self._loop is not loop:
            self._loop = loop
            self._slots = anyio.CapacityLimiter(self.running)
            # never contended: a caller holds a slot before it asks for a thread
            self._threads = anyio.CapacityLimiter(self.running)
        return self._slots, self._threads
