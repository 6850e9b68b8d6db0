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
import time
from collections.abc import Mapping


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
