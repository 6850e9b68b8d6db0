"""On-demand analysis: the window of a transaction nobody analysed yet, within a time bound.

An explanation is answered from the windows' graph snapshots. When the transaction is in
none (or its window's snapshot is older than spans that arrived since), the API analyses
that window itself, through the path every analysis takes (``run_window`` then
``write_edges``, as ``kprobe analyze`` and ``kprobe analyze --follow`` do), so the snapshot
lands where they put it and the next request and ``kprobe explain`` reuse it.

The decision, per window (``freshness``): no snapshot -> ``unanalysed``; a snapshot whose
manifest counted fewer or more owned spans than the lake holds now -> ``stale``; else
``fresh``. Only snapshots made within ``analyze_recheck_s`` of their window's end are
counted again (later ones are final: the follower's late horizon is over).

Bounds (``OnDemand``):

- single flight: one analysis per window in this process (a second request waits for the
  first's), and across processes the window's lock file (compute/window_lock.py): a
  request for a window another process is analysing waits for that analysis (within the
  bound) and is answered from its snapshot. A request whose look at the lock raced another
  process's taking it waits for that lock, finds the snapshot published since it asked,
  and does not analyse the window again (``compute.analysis.run_window_if``);
- admission: at most ``analyze_max_concurrent`` analyses at once in this process; one more
  is refused with 503 and Retry-After;
- time: a request waits ``analyze_timeout_s`` at most, then gets 503 "analysis of window W
  is running; retry after N s"; the analysis goes on in the background.

Node scope: a token limited to nodes (query_api/auth.py) reads only snapshots of windows of
those nodes, looks the transaction up in those nodes' spans only, and analyses a window of
exactly those nodes (``{window}@node``): nothing another node recorded is read or returned.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Literal

from kprobe import lake
from kprobe.compute.graph.store import SnapshotInfo
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import sql_str
from kprobe.compute.window import Window
from kprobe.query_api.errors import AnalysisRunning, Overloaded

S = 1_000_000_000
BUSY_POLL_S = 0.2  # how often a window another process analyses is looked at again
COUNT_TTL_S = 2.0  # how long a window's span count is reused
Freshness = Literal["fresh", "unanalysed", "stale"]


# -- which snapshots a caller may read, and whether they are current -------------------------
def visible(snapshots: Sequence[SnapshotInfo], nodes: tuple[str, ...] | None
            ) -> list[SnapshotInfo]:
    """The snapshots a caller limited to ``nodes`` may read (None: all): windows of those
    nodes only; a window of every node (``nodes == ()``) holds other nodes' rows."""
    if nodes is None:
        return list(snapshots)
    allowed = set(nodes)
    return [s for s in snapshots if s.window.nodes and set(s.window.nodes) <= allowed]


def freshness(snapshot: SnapshotInfo | None, owned_spans_now: int | None) -> Freshness:
    """``unanalysed`` without a snapshot; ``stale`` when the lake's count of the window's
    owned spans (None: not counted) differs from the one its analysis read."""
    if snapshot is None:
        return "unanalysed"
    recorded = (snapshot.manifest.get("inputs") or {}).get("owned_spans")
    if recorded is None or owned_spans_now is None:
        return "fresh"  # a snapshot made before manifests counted spans: not second-guessed
    return "stale" if int(recorded) != owned_spans_now else "fresh"


def needs_recheck(snapshot: SnapshotInfo, recheck_s: float) -> bool:
    """Whether spans may still arrive for the snapshot's window (made soon after its end)."""
    created = int(snapshot.manifest.get("created_ns") or 0)
    return created < snapshot.window.end_ns + int(recheck_s * S)


def window_for(start_ns: int, node: str | None, nodes: tuple[str, ...] | None,
               snapshots: Sequence[SnapshotInfo], window_ns: int) -> Window:
    """The window that owns a trace whose first span started at ``start_ns`` on ``node``:
    an existing snapshot's window that holds it (of exactly the caller's nodes when scoped;
    of every node or one holding ``node`` otherwise), else the aligned window of
    ``window_ns`` (``kprobe analyze``'s), of the caller's nodes (all when not scoped)."""
    for info in snapshots:
        if not info.window.contains(start_ns):
            continue
        if nodes is not None:
            if info.window.nodes == nodes:
                return info.window
        elif not info.window.nodes or (node is not None and node in info.window.nodes):
            return info.window
    first = start_ns // window_ns * window_ns
    return Window(first, first + window_ns, nodes or ())


# -- the lake side -----------------------------------------------------------------------------
def locate(db: lake.LakeDatabase, txn: str, nodes: tuple[str, ...] | None, lo_ns: int,
           hi_ns: int, id_attributes: Sequence[str], limit: int
           ) -> list[tuple[int, str | None]]:
    """(start of its first span, its node) of each trace ``txn`` names in the spans of
    ``nodes`` (all when None) that started in [lo_ns, hi_ns): by trace id, span id or a
    business-id attribute of the domain rules; at most ``limit`` traces."""
    scan = lake.scan("spans", nodes or (), lo_ns, hi_ns)
    by_attr = "".join(
        f" OR json_extract_string(attributes, {sql_str('$.' + _quoted(k))}) = $txn"
        for k in id_attributes)
    with db.session(["spans"]) as con:
        rows = con.execute(f"""
            WITH hits AS (SELECT DISTINCT trace_id FROM {scan}
                          WHERE trace_id = $txn OR span_id = $txn{by_attr})
            SELECT trace_id, min(start_ns) AS first, arg_min(node, start_ns) AS node
            FROM {scan} WHERE trace_id IN (SELECT trace_id FROM hits)
            GROUP BY trace_id ORDER BY first LIMIT {int(limit)}""",
                           {"txn": txn}).fetchall()
    return [(int(first), None if node is None else str(node)) for _, first, node in rows]


def owned_spans(db: lake.LakeDatabase, window: Window) -> int:
    """Spans the window owns now (those starting in it: what ``compute.window.load`` reads)."""
    with db.session(["spans"]) as con:
        row = con.execute(f"SELECT count(*) FROM "
                          f"{lake.scan('spans', window.nodes, window.start_ns, window.end_ns)}"
                          ).fetchone()
    return int(row[0]) if row else 0


def _quoted(key: str) -> str:
    return '"' + key.replace('"', "") + '"'


def id_attributes(settings: ComputeSettings) -> list[str]:
    """The attributes the domain rules take business ids from."""
    from kprobe.compute.domain import load_rules

    rules = load_rules(settings.rules_path)
    return sorted({k for c in rules.concepts for k in c.id_attributes})


# -- bounded, single-flight analyses -----------------------------------------------------------
@dataclass
class _Job:
    window: Window
    future: Future[None]
    started: float


class OnDemand:
    """Analyses of single windows for this process: one per window at a time, at most
    ``max_concurrent`` at once, each waited for ``timeout_s`` at most by a request.

    ``analyse(window, proceed)`` runs the analysis once it holds the window's lock and
    ``proceed()`` says so (False: another process published the window's snapshot after
    this request asked, so that analysis answers); ``busy(window)`` tells whether another
    process holds the window's lock; ``published_since(window, ns)`` whether a snapshot of
    the window was published at or after wall time ``ns``; ``count(outcome)`` is told every
    outcome (metrics)."""

    def __init__(self, analyse: Callable[[Window, Callable[[], bool]], None],
                 busy: Callable[[Window], bool],
                 published_since: Callable[[Window, int], bool], *,
                 max_concurrent: int, timeout_s: float,
                 count: Callable[[str], None] | None = None) -> None:
        self._analyse = analyse
        self._busy = busy
        self._published_since = published_since
        self.max_concurrent = max_concurrent
        self.timeout_s = timeout_s
        self._count = count or (lambda outcome: None)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent,
                                        thread_name_prefix="kprobe-analyze")
        self.last_seconds: float | None = None
        self._counts: dict[str, tuple[float, int]] = {}  # window id -> (when, owned spans)

    def owned_spans(self, db: lake.LakeDatabase, window: Window, ttl_s: float = COUNT_TTL_S
                    ) -> int:
        """``owned_spans`` of the lake, remembered ``ttl_s`` (a burst of explanations of one
        recent window counts its spans once, not once per request)."""
        now = time.monotonic()
        with self._lock:
            seen = self._counts.get(window.id)
        if seen is not None and now - seen[0] < ttl_s:
            return seen[1]
        count = owned_spans(db, window)
        with self._lock:
            if len(self._counts) > 1024:
                self._counts.clear()
            self._counts[window.id] = (now, count)
        return count

    @property
    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._jobs)

    def ensure(self, window: Window, wait_s: float | None = None) -> None:
        """Return once ``window`` is analysed: by this call, by one already running here, or
        by another process (waited for; its snapshot then answers). Overloaded at capacity;
        AnalysisRunning when the analysis took longer than the wait (it goes on); the
        analysis's own error if it failed here."""
        wait = self.timeout_s if wait_s is None else max(0.0, wait_s)
        began = time.monotonic()
        asked_ns = time.time_ns()
        waited = False
        while True:
            with self._lock:
                job = self._jobs.get(window.id)
                if job is not None:
                    self._count("joined")
                    break
                if not self._busy(window):
                    if waited:  # the other process finished: its snapshot answers
                        self._count("waited")
                        return
                    if len(self._jobs) >= self.max_concurrent:
                        self._count("refused")
                        retry = self._retry_after(min(j.started for j in self._jobs.values()))
                        raise Overloaded(
                            f"{len(self._jobs)} on-demand analyses already running on this "
                            f"replica (limit {self.max_concurrent}); retry after {retry} s",
                            {"Retry-After": str(retry)})
                    job = _Job(window, self._pool.submit(self._run, window, asked_ns),
                               time.monotonic())
                    self._jobs[window.id] = job
                    break
            # another process analyses it: wait for it within the bound, never run it twice
            left = wait - (time.monotonic() - began)
            if left <= 0:
                self._count("busy")
                retry = self._retry_after(began)
                raise AnalysisRunning(
                    f"analysis of window {window.id} is running in another process; "
                    f"retry after {retry} s", {"Retry-After": str(retry)})
            waited = True
            time.sleep(min(BUSY_POLL_S, left))
        try:
            job.future.result(timeout=wait)
        except FutureTimeout:
            self._count("timed_out")
            retry = self._retry_after(job.started)
            raise AnalysisRunning(
                f"analysis of window {window.id} is running; retry after {retry} s",
                {"Retry-After": str(retry)}) from None

    def _run(self, window: Window, asked_ns: int) -> None:
        started = time.monotonic()
        analysed = False

        def proceed() -> bool:
            # the window's lock is held: a snapshot published since the request asked came
            # from another process that took the lock first (the request's probe of the
            # lock and that process's taking it raced)
            nonlocal analysed
            analysed = not self._published_since(window, asked_ns)
            self._count("started" if analysed else "waited")
            return analysed

        try:
            self._analyse(window, proceed)
            if analysed:
                self.last_seconds = time.monotonic() - started
            with self._lock:
                self._counts.pop(window.id, None)
        except BaseException:
            self._count("failed")
            raise
        finally:
            with self._lock:
                self._jobs.pop(window.id, None)

    def _retry_after(self, started: float) -> int:
        """Seconds until an analysis that began at ``started`` should be done: the last one's
        duration (else the wait bound) less what has passed, at least 1."""
        expected = self.last_seconds if self.last_seconds is not None else self.timeout_s
        return max(1, math.ceil(expected - (time.monotonic() - started)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
