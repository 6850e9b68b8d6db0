"""One analysis of a window at a time, across processes: a lock file per window.

``compute.analysis.run_window`` holds the window's lock while it analyses and publishes, so
``kprobe analyze``, ``kprobe analyze --follow``, Ray tasks and the API's on-demand analysis
(query_api/ondemand.py) never analyse one window twice at once; a second caller waits for
the first (``blocking``) or, the API, learns at once that it is running (``WindowBusy``).
``compute.analysis.write_edges`` holds the lake's ``causal_edges`` lock while it replaces
windows' edges (never while holding a window's lock: no lock order to get wrong).

Where the lock lives: a ``file://`` lake keeps it beside the snapshots
(``{lake}/graphs/.locks/{window id}.lock``), so every process on every host that mounts the
lake shares it (``flock`` is advisory and, on NFS, only as good as the mount's lock
support). An ``s3://`` lake cannot hold an ``flock``: the lock is a file under
``graph_cache_dir`` keyed by the lake's root, so it serialises the processes of one host
only (stated in the API reference). The lock is released by the kernel when its holder
exits, crashed or not: a stale lock cannot block a window forever.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kprobe import lake
from kprobe.compute.errors import ComputeError
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window

LOCKS_DIR = ".locks"  # under graphs/: list_snapshots skips names starting with "."


class WindowBusy(ComputeError):
    """Another process (or thread) is analysing this window now."""


def lock_path(location: lake.LakeLocation, name: str, settings: ComputeSettings | None = None
              ) -> Path:
    """The lock file ``name`` (a window id, or ``causal_edges``) of the lake."""
    if location.scheme == "file":
        base = location.local_path / "graphs" / LOCKS_DIR
    else:
        key = hashlib.sha256(location.root.encode("utf-8")).hexdigest()[:16]
        base = (settings or ComputeSettings()).graph_cache_dir / LOCKS_DIR / key
    return base / f"{name}.lock"


@contextmanager
def window_lock(location: lake.LakeLocation, window: Window, settings: ComputeSettings, *,
                blocking: bool = True) -> Iterator[None]:
    """Hold ``window``'s analysis lock; ``blocking=False`` raises WindowBusy if it is held."""
    with _held(lock_path(location, window.id, settings), blocking,
               f"window {window.id} is being analysed by another process"):
        yield


@contextmanager
def edges_lock(location: lake.LakeLocation, settings: ComputeSettings | None = None
               ) -> Iterator[None]:
    """Held while a process replaces windows' rows of ``causal_edges`` (delete, then
    append): two processes' replacements of one window never interleave into duplicates,
    and their Delta commits to the table never race."""
    with _held(lock_path(location, "causal_edges", settings), True, ""):
        yield


@contextmanager
def _held(path: Path, blocking: bool, busy: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``. The holder removes the file before it lets go (no
    file per window piles up), so a waiter that then gets the lock on the removed file tries
    again on a new one: the lock is held only on the file that is at the path."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ComputeError(f"cannot open the analysis lock {path}: "
                               f"{err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise WindowBusy(busy) from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the previous holder removed it: lock the one at the path now
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)  # releases the lock


def is_busy(location: lake.LakeLocation, window: Window, settings: ComputeSettings) -> bool:
    """Whether some process holds ``window``'s lock now (a probe: takes and drops it)."""
    try:
        with window_lock(location, window, settings, blocking=False):
            return False
    except WindowBusy:
        return True
