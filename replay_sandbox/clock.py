"""Virtual time: clock values served to the replayed program.

Each thread carries ``now_ns`` (its virtual time, epoch ns) and ``shift_ns`` (virtual minus
recorded time at its position in the recording). Without injections the shift stays 0 and
every clock read returns what the recording returned. An injected delay raises the shift
of the thread that suffers it; waiting for external data lowers it again (the outside world
was not delayed), never below 0.

Clock reads that the recording does not contain (an eBPF recording cannot see vDSO reads)
are synthesized from the thread's virtual time, a microsecond apart.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

NS = 1_000_000_000
SYNTH_STEP_NS = 1_000

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME_ID = 2
CLOCK_THREAD_CPUTIME_ID = 3
CLOCK_MONOTONIC_RAW = 4
CLOCK_REALTIME_COARSE = 5
CLOCK_MONOTONIC_COARSE = 6
CLOCK_BOOTTIME = 7
CLOCK_REALTIME_ALARM = 8
CLOCK_BOOTTIME_ALARM = 9
CLOCK_TAI = 11

_WALL = frozenset({CLOCK_REALTIME, CLOCK_REALTIME_COARSE, CLOCK_REALTIME_ALARM, CLOCK_TAI})
_MONO = frozenset({CLOCK_MONOTONIC, CLOCK_MONOTONIC_RAW, CLOCK_MONOTONIC_COARSE,
                   CLOCK_BOOTTIME, CLOCK_BOOTTIME_ALARM})
# A process that started this long after boot, when nothing better is known.
_DEFAULT_UPTIME_NS = 1_000 * NS


def is_shifted(clock_id: int) -> bool:
    """Wall and monotonic clocks move with virtual time; CPU-time clocks do not."""
    return clock_id in _WALL or clock_id in _MONO


def pack_timespec(ns: int) -> bytes:
    return struct.pack("<qq", ns // NS, ns % NS)


def unpack_timespec(data: bytes) -> int:
    sec, nsec = struct.unpack_from("<qq", data)
    return int(sec) * NS + int(nsec)


def pack_timeval(ns: int) -> bytes:
    return struct.pack("<qq", ns // NS, (ns % NS) // 1000)


def unpack_timeval(data: bytes) -> int:
    sec, usec = struct.unpack_from("<qq", data)
    return int(sec) * NS + int(usec) * 1000


class ClockDomains:
    """Converts between epoch time (the lake's time base) and each clock's own values."""

    def __init__(self, process_start_ns: int, mono_to_epoch_ns: int | None = None) -> None:
        self.mono_to_epoch_ns = (mono_to_epoch_ns if mono_to_epoch_ns is not None
                                 else process_start_ns - _DEFAULT_UPTIME_NS)
        self.learned = mono_to_epoch_ns is not None

    def learn(self, clock_id: int, value_ns: int, epoch_ns: int) -> None:
        """A recorded monotonic read at ``epoch_ns`` pins the offset (once)."""
        if not self.learned and clock_id in _MONO:
            self.mono_to_epoch_ns = epoch_ns - value_ns
            self.learned = True

    def value(self, clock_id: int, epoch_ns: int, cpu_ns: int = 0) -> int:
        if clock_id in _WALL:
            return epoch_ns + (37 * NS if clock_id == CLOCK_TAI else 0)
        if clock_id in _MONO:
            return epoch_ns - self.mono_to_epoch_ns
        return cpu_ns  # CPU-time clocks: the virtual CPU time used

    def to_epoch(self, clock_id: int, value_ns: int) -> int:
        if clock_id in _MONO:
            return value_ns + self.mono_to_epoch_ns
        if clock_id == CLOCK_TAI:
            return value_ns - 37 * NS
        return value_ns


def timeout_ns(kind: str, raw_arg: int,
               read: Callable[[int, int], bytes] | None) -> int | None:
    """A wait's timeout in ns from its argument: None = wait forever.

    ``kind`` is ms (an int argument), timeval or timespec (a pointer, NULL = forever);
    ``read(addr, n)`` reads tracee memory.
    """
    if kind == "ms":
        value = raw_arg & 0xFFFF_FFFF
        value = value - (1 << 32) if value >= 1 << 31 else value
        return None if value < 0 else value * 1_000_000
    if not raw_arg or read is None:
        return None
    data = read(raw_arg, 16)
    return unpack_timeval(data) if kind == "timeval" else unpack_timespec(data)
