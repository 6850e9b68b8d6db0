"""CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns) to Unix-epoch nanoseconds.

The offset is measured by paired clock reads: monotonic, realtime, monotonic. The pair
whose two monotonic reads are closest (the smallest bracket) bounds the realtime read
best; its offset is ``realtime - midpoint(monotonic)`` and its error at most half the
bracket. The agent samples at start and periodically (NTP slews realtime) and keeps the
samples in ``agent_meta``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ClockSample:
    mono_to_epoch_ns: int  # add to a CLOCK_MONOTONIC time to get epoch ns
    bracket_ns: int  # width of the best pair's monotonic bracket (error <= half of it)
    taken_at_ns: int  # epoch ns of the sample

    def to_epoch(self, mono_ns: np.ndarray) -> np.ndarray:
        """Vectorised conversion of monotonic ns (uint64/int64) to epoch ns (int64)."""
        return mono_ns.astype(np.int64, copy=False) + np.int64(self.mono_to_epoch_ns)


def sample_offset(pairs: int = 16) -> ClockSample:
    """Measure the monotonic -> epoch offset from ``pairs`` bracketed reads."""
    mono = time.clock_gettime_ns
    best: tuple[int, int, int] | None = None  # bracket, offset, realtime
    for _ in range(max(1, pairs)):
        before = mono(time.CLOCK_MONOTONIC)
        real = time.time_ns()
        after = mono(time.CLOCK_MONOTONIC)
        bracket = after - before
        if best is None or bracket < best[0]:
            best = (bracket, real - (before + after) // 2, real)
    assert best is not None
    return ClockSample(mono_to_epoch_ns=best[1], bracket_ns=best[0], taken_at_ns=best[2])
