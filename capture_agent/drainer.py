"""Draining every ring often, flushing to the lake seldom.

Rings are drained by one thread every ``interval_s`` (100 ms), and at once when the
kernel wakes a ring that went over its fill threshold (``event_submit`` in common.h forces
a wakeup per record while a ring stays that full: an IPI each, so a ring must not be left
full for a whole flush interval). Drained batches wait in memory until the flush takes
them; the flush interval then decides only how often the lake gets a commit.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Sequence

import numpy as np

from kprobe.capture_agent.ringbuf import RingReader


class RingDrainer:
    def __init__(self, readers: Sequence[tuple[str, RingReader]], interval_s: float = 0.1):
        self.readers = list(readers)
        self.interval_s = interval_s
        self._pending: dict[str, list[np.ndarray]] = {key: [] for key, _ in self.readers}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._epoll = select.epoll()
        for _, reader in self.readers:
            # edge-triggered: only a forced wakeup (ring over threshold) ends the wait early
            self._epoll.register(reader.fileno(), select.EPOLLIN | select.EPOLLET)
        self._thread = threading.Thread(target=self._loop, name="ring-drain", daemon=True)
        self.wakeups = 0
        # the longest time between two drains: what the rings had to hold (a drain thread
        # that gets no CPU, or no GIL, on a busy node is how a ring overflows)
        self.max_gap_s = 0.0
        self._last = time.monotonic()

    def start(self) -> RingDrainer:
        self._thread.start()
        return self

    def drain_now(self) -> None:
        with self._lock:
            now = time.monotonic()
            self.max_gap_s = max(self.max_gap_s, now - self._last)
            self._last = now
            for key, reader in self.readers:
                batch = reader.drain_slots()
                if len(batch):
                    self._pending[key].append(batch)

    def take(self) -> dict[str, np.ndarray]:
        """Everything drained so far (draining once more first), one array per ring.

        Batches wait as contiguous slots (header + record) and are joined as such, one
        memcpy of bytes; a view of the records is taken last (joining strided records,
        or structured slots, costs 3x more).
        """
        self.drain_now()
        with self._lock:  # joined outside the lock: the drain thread never waits on it
            pending, self._pending = self._pending, {key: [] for key, _ in self.readers}
        return {key: _join(batches)["rec"] for key, batches in pending.items() if batches}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._epoll.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._epoll.poll(self.interval_s):
                self.wakeups += 1
            self.drain_now()


def _join(batches: list[np.ndarray]) -> np.ndarray:
    """Contiguous slot arrays of one dtype -> one, joined as raw bytes."""
    if len(batches) == 1:
        return batches[0]
    return np.concatenate([b.view(np.uint8) for b in batches]).view(batches[0].dtype)
