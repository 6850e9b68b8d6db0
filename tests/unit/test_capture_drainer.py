"""The drain thread's longest gap between two drains (``RingDrainer.max_gap_s``, reported as
``drain_gap_max_s`` and ``kprobe_drain_gap_max_seconds``): how long the rings had to hold
what the kernel wrote. A stub reader stands for a ring (the real rings: tests/integration)."""

from __future__ import annotations

import os
import time

import numpy as np

from kprobe.capture_agent.drainer import RingDrainer


class _Reader:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        self.drains = 0

    def fileno(self) -> int:
        return self._r

    def drain_slots(self) -> np.ndarray:
        self.drains += 1
        return np.empty(0, dtype=np.dtype([("rec", np.uint8, 8)]))

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


def _gap_after(stall_s: float) -> float:
    reader = _Reader()
    drainer = RingDrainer([("sched/events", reader)], interval_s=0.02).start()  # type: ignore[list-item]
    try:
        deadline = time.monotonic() + 5
        while reader.drains < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        if stall_s:
            with drainer._lock:  # the drain thread waits here, as for a CPU or the GIL
                time.sleep(stall_s)
        time.sleep(0.1)
        return drainer.max_gap_s
    finally:
        drainer.stop()
        reader.close()


def test_a_stalled_drain_is_reported_as_the_gap_the_rings_had_to_hold() -> None:
    assert _gap_after(0.4) >= 0.4
    # the control: undisturbed, the gap is about the drain interval
    assert _gap_after(0.0) < 0.3
