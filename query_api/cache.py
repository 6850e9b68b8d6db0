"""Answers of the causal routes (explain, trace graph) kept per process, as encoded JSON.

An explanation is a pure function of the transaction asked for and the graph snapshots it
was read from; a snapshot never changes once published (a re-analysis publishes a new one
with a new ``created_ns``). So the key is the request plus the identity of every snapshot
the request selects, listed *before* computing: an answer computed from a snapshot newer
than its key is at worst recomputed, never served for a newer snapshot. Listing snapshots
costs a manifest read per window (microseconds locally); computing an explanation opens a
graph database and runs ~9 Cypher queries (~50 ms here, holding the GIL for most of it).

The cache keeps the service stateless: it is a per-process memo of data in the lake, and
any replica computes the same answer from the same snapshots.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from pydantic import BaseModel

from kprobe.compute.graph.store import SnapshotInfo


def snapshots_key(snapshots: Sequence[SnapshotInfo]) -> tuple[tuple[str, str, int], ...]:
    """What identifies the content of these snapshots."""
    return tuple((s.window_id, s.uri, int(s.manifest.get("created_ns") or 0))
                 for s in snapshots)


def encode_answer(model: type[BaseModel], document: dict[str, Any]) -> bytes:
    """``document`` as the route's response model would serialise it, as JSON bytes."""
    data = model.model_validate(document).model_dump(mode="json")
    return json.dumps(data, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


class _Pending:
    """An answer being computed by one request while others wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: bytes | None = None


class AnswerCache:
    """A bounded LRU map from a key to an encoded answer; thread-safe. Concurrent misses of
    one key compute it once: after a re-analysis, 50 clients asking for the same
    explanation would otherwise open the graph 50 times at once."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._data: OrderedDict[Hashable, bytes] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        with self._lock:
            found = self._data.get(key)
            if found is not None:
                self._data.move_to_end(key)
                self.hits += 1
                return found
            pending = self._pending.get(key)
            owner = pending is None
            if pending is None:
                pending = self._pending[key] = _Pending()
                self.misses += 1
        if not owner:
            pending.done.wait()
            if pending.value is not None:
                with self._lock:
                    self.hits += 1
                return pending.value
            return compute()  # the first computation failed: fail (or not) on our own
        try:
            value = compute()
            pending.value = value
            self._put(key, value)
            return value
        finally:
            with self._lock:
                del self._pending[key]
            pending.done.set()

    def _put(self, key: Hashable, value: bytes) -> None:
        if self.entries <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.entries:
                self._data.popitem(last=False)
