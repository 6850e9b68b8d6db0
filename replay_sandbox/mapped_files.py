"""Files a recorded program maps into memory, and whether they changed since.

A mapping is not recorded byte by byte: the replay maps the file as it is on this machine
now (``Policy.MAP``). When that file changed since the recording (a library or
``/etc/ld.so.cache`` after a package upgrade, a data file rewritten, a recording replayed
on another machine), the program reads other bytes than it did, and the replay may take
another path: the dynamic loader, for one, then looks for a library elsewhere. The
recording holds what the program's own ``fstat`` of each mapped file saw (size, mtime);
``changed_notes`` names every mapped file that differs now, so a divergence that follows
is read against its likely cause, not against a mystery.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

_OPENS = frozenset({2, 257, 437})  # open, openat, openat2
_CLOSE = 3
_FSTAT = 5
_NEWFSTATAT = 262
AT_EMPTY_PATH = 0x1000
# struct stat on x86-64: st_size at 48, st_mtim (seconds, nanoseconds) at 88
_STAT_SIZE = 144
_SIZE_AT = 48
_MTIME_AT = 88


class _Row(Protocol):
    pid: int
    nr: int
    ret: int
    args: tuple[int, ...]
    outs: list[tuple[int, int, bytes]]
    open_for_real: bool


R = TypeVar("R", bound=_Row)


def recorded_stats(rows: Iterable[R], path_of: Callable[[R], str | None]
                   ) -> dict[str, tuple[int, int]]:
    """``path -> (size, mtime_ns)`` the program's first fstat of each file it maps saw.

    ``rows``: the recorded calls in time order, their data attached; ``path_of``: the file
    an open opened."""
    open_paths: dict[tuple[int, int], str] = {}  # (pid, fd) -> path
    stats: dict[str, tuple[int, int]] = {}
    for row in rows:
        if row.nr in _OPENS and row.open_for_real and row.ret >= 0:
            path = path_of(row)
            if path is not None and path.startswith("/"):
                open_paths[(row.pid, row.ret)] = path
        elif row.nr == _CLOSE:
            open_paths.pop((row.pid, row.args[0] & 0xFFFF_FFFF), None)
        elif row.ret == 0 and (row.nr == _FSTAT or (
                row.nr == _NEWFSTATAT and row.args[3] & AT_EMPTY_PATH)):
            path = open_paths.get((row.pid, row.args[0] & 0xFFFF_FFFF))
            if path is None or path in stats:
                continue
            buffer_arg = 1 if row.nr == _FSTAT else 2
            stat = next((d for arg, offset, d in row.outs
                         if arg == buffer_arg and offset == 0 and len(d) >= _STAT_SIZE), None)
            if stat is None:  # recorded without payloads: nothing to compare with
                continue
            (size,) = struct.unpack_from("<q", stat, _SIZE_AT)
            seconds, nanoseconds = struct.unpack_from("<qq", stat, _MTIME_AT)
            stats[path] = (size, seconds * 1_000_000_000 + nanoseconds)
    return stats


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def changed_notes(stats: Mapping[str, tuple[int, int]]) -> list[str]:
    """One note per mapped file whose size or mtime here differs from the recording's."""
    notes = []
    for path, (size, mtime_ns) in sorted(stats.items()):
        try:
            now = os.stat(path)
        except OSError as err:
            notes.append(f"{path}, which the program mapped, cannot be read here "
                         f"({err.strerror or err}): the replay cannot map what it mapped")
            continue
        if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
            notes.append(
                f"{path}, which the program maps, changed since the recording ({size:,} "
                f"bytes modified {_when(mtime_ns)}, now {now.st_size:,} bytes modified "
                f"{_when(now.st_mtime_ns)}): the replay maps the file as it is now, so the "
                "program may read other bytes there and take another path")
    return notes
