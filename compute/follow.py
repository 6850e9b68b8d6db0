"""Continuous analysis (``kprobe analyze --follow``): each window once it has closed, again
when late rows reach it.

The watermark. Every agent flush ends with a marker row in ``agent_meta`` (kind ``flush``,
``ts_ns`` = the moment the flush took what its rings had drained). The agent's one
committing thread commits (or spools) the marker after that flush's batches, so once a
node's marker for T is in the lake, so is every kernel row that node drained before T. The
watermark is the oldest newest-marker of the live nodes; a node whose newest row is a
``stop`` marker has finished (all its rows are in), one silent for ``node_timeout_ns`` is
left out (it cannot hold every window back), and with no live node the watermark is the
wall clock. A window ``[s, e)`` closes when the watermark reaches ``e + grace_ns``: spans
are exported by applications some seconds after they end, and page-allocation rows are
stamped at the end of their flush interval.

Late rows. Before a window is analysed its spans are counted (rows and newest end); a
window is analysed again, while it is younger than ``late_horizon_ns``, when

- its span count or newest span end changed (spans exported late, a parent that ended
  after the window closed);
- one of its spans ran past what the watermark covered when it was analysed, and the
  watermark has now passed that span's end (the kernel rows of its tail are in);
- a node that was left out (timed out) has since flushed past the window's end (it came
  back and drained its spool into the window).

Re-analysing replaces the window's graph snapshot and its ``causal_edges`` rows, so the
explanation of a failure is the newest one. Windows run in this process, or as Ray tasks
when the executor is ``ray`` (one cluster for the life of the follower).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kprobe import lake
from kprobe.compute.analysis import WindowOutput
from kprobe.compute.domain import Rules, load_rules
from kprobe.compute.errors import ComputeError
from kprobe.compute.ray_driver import Executor, analyze_windows, start_ray
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.sql import sql_list
from kprobe.compute.window import Window

log = logging.getLogger(__name__)

S = 1_000_000_000


@dataclass(frozen=True)
class FollowOptions:
    start_ns: int  # the first window is the one holding this instant
    window_ns: int
    grace_ns: int = 10 * S
    node_timeout_ns: int = 120 * S
    late_horizon_ns: int = 15 * 60 * S
    poll_s: float = 2.0
    late_check_s: float = 10.0  # how often analysed windows are checked for late rows
    nodes: tuple[str, ...] = ()
    executor: Executor = "local"
    max_attempts: int = 3  # a window whose analysis keeps failing is given up after this


@dataclass(frozen=True)
class Watermark:
    """Where the lake is complete up to, and the newest flush of every node seen."""

    ts_ns: int
    flushes: dict[str, int]  # node -> its newest flush marker seen by this follower
    live: tuple[str, ...]  # nodes that hold the watermark


@dataclass
class _Done:
    """What a window looked like when it was analysed."""

    window: Window
    spans: int
    max_end_ns: int
    watermark_ns: int
    flushes: dict[str, int]


@dataclass
class FollowStats:
    """Totals for the follower's metrics (read at scrape time)."""

    windows: int = 0
    reanalysed: int = 0
    failed: int = 0
    polls: int = 0
    poll_errors: int = 0
    watermark_ns: int = 0
    closed_until_ns: int = 0  # end of the newest window analysed
    last_seconds: float = 0.0
    pending: int = 0
    exported: int = 0  # explained failures sent to an OTLP endpoint
    export_errors: int = 0
    started_at: float = field(default_factory=time.time)


class Follower:
    """Polls the lake and analyses windows as they close (``step()`` is one poll)."""

    def __init__(self, location: lake.LakeLocation, settings: ComputeSettings,
                 options: FollowOptions, *, rules: Rules | None = None,
                 on_done: Callable[[WindowOutput, bool], None] | None = None) -> None:
        self.location = location
        self.settings = settings
        self.options = options
        self.rules = rules or load_rules(settings.rules_path)
        self.on_done = on_done
        self.db = lake.LakeDatabase(location, threads=1)
        self.next_start = options.start_ns // options.window_ns * options.window_ns
        self.done: dict[str, _Done] = {}
        self.attempts: dict[str, int] = {}
        self.known: dict[str, int] = {}  # node -> newest flush marker seen, over the run
        self._late_checked = float("-inf")
        self._retry: list[Window] = []
        self._stop = threading.Event()
        self.stats = FollowStats(closed_until_ns=self.next_start)

    # -- the watermark ------------------------------------------------------------------
    def watermark(self, now_ns: int | None = None) -> Watermark:
        now = time.time_ns() if now_ns is None else now_ns
        # the first poll learns every node of the late horizon; later ones read only the
        # markers that can make a node live (a few hundred tiny files, not the horizon's
        # thousands), older ones are remembered in ``known``
        since = now - (self.options.node_timeout_ns if self.stats.polls > 1 else
                       max(self.options.node_timeout_ns, self.options.late_horizon_ns))
        node_filter = (f"AND node IN {sql_list(self.options.nodes)}"
                       if self.options.nodes else "")
        with self.db.session(["agent_meta"]) as con:
            rows = con.execute(f"""
                SELECT node, max(ts_ns) FILTER (WHERE kind = 'flush'),
                       arg_max(kind, ts_ns), max(ts_ns)
                FROM agent_meta
                WHERE ts_ns >= {since} AND kind IN ('flush', 'start', 'stop') {node_filter}
                GROUP BY node""").fetchall()
        for node, flush, _, _ in rows:
            if flush is not None:
                self.known[str(node)] = max(int(flush), self.known.get(str(node), 0))
        flushes = dict(self.known)
        live = []
        marks = []
        for node, flush, last_kind, last_ts in rows:
            if last_kind == "stop" or int(last_ts) < now - self.options.node_timeout_ns:
                continue  # finished, or silent too long to hold every window back
            live.append(str(node))
            # a node that started but has not flushed yet holds the watermark at its start
            marks.append(int(flush) if flush is not None else int(last_ts))
        return Watermark(min(marks) if marks else now, flushes, tuple(sorted(live)))

    # -- one poll -----------------------------------------------------------------------
    def step(self, now_ns: int | None = None) -> list[WindowOutput]:
        """Analyse the windows that closed and those late rows reached; returns outputs."""
        self.stats.polls += 1
        mark = self.watermark(now_ns)
        self.stats.watermark_ns = mark.ts_ns
        closed: list[Window] = []
        width = self.options.window_ns
        while self.next_start + width + self.options.grace_ns <= mark.ts_ns:
            closed.append(Window(self.next_start, self.next_start + width, self.options.nodes))
            self.next_start += width
        late: list[Window] = []
        if self._retry or time.monotonic() - self._late_checked >= self.options.late_check_s:
            self._late_checked = time.monotonic()
            late = self._late(mark)
        todo = closed + [w for w in late if w.id not in {c.id for c in closed}]
        self.stats.pending = len(todo)
        if not todo:
            return []
        counts = self._span_counts(todo)
        outputs = self._analyse(todo)
        done_ids = {o.window.id for o in outputs}
        for window in todo:
            if window.id not in done_ids:
                continue
            spans, max_end = counts.get(window.start_ns, (0, window.end_ns))
            again = window.id in self.done
            self.done[window.id] = _Done(window, spans, max_end, mark.ts_ns, mark.flushes)
            self.stats.windows += 1
            self.stats.reanalysed += again
            self.stats.closed_until_ns = max(self.stats.closed_until_ns, window.end_ns)
        horizon = mark.ts_ns - self.options.late_horizon_ns
        self.done = {k: d for k, d in self.done.items() if d.window.end_ns >= horizon}
        self.stats.pending = 0
        return outputs

    def _analyse(self, windows: list[Window]) -> list[WindowOutput]:
        """On Ray, all at once; else (or when a window of the batch failed) each window on
        its own, so one that fails does not hold back the others."""
        started = time.perf_counter()
        if self.options.executor == "ray" and len(windows) > 1:
            try:
                outputs, _ = analyze_windows(
                    self.location, windows, self.settings, rules=self.rules, executor="ray",
                    on_done=lambda o: self.on_done(o, o.window.id in self.done)
                    if self.on_done else None)
                self.stats.last_seconds = time.perf_counter() - started
                return outputs
            except (ComputeError, lake.LakeError) as err:
                log.warning("a window of %d failed on Ray (%s): one by one", len(windows), err)
        outputs = []
        for window in windows:
            if self._stop.is_set():  # stopping: the rest would only delay the exit
                break
            try:
                [output], _ = analyze_windows(self.location, [window], self.settings,
                                              rules=self.rules, executor=self.options.executor)
            except (ComputeError, lake.LakeError) as err:
                tries = self.attempts.get(window.id, 0) + 1
                self.attempts[window.id] = tries
                self.stats.failed += 1
                if tries >= self.options.max_attempts:
                    log.error("window %s: %s (given up after %d attempts)", window.id, err,
                              tries)
                    self.done[window.id] = _Done(window, -1, window.end_ns, 0, {})
                    self.attempts.pop(window.id, None)
                else:
                    log.warning("window %s: %s (will retry)", window.id, err)
                    self._retry.append(window)
                continue
            self.attempts.pop(window.id, None)
            outputs.append(output)
            if self.on_done:
                self.on_done(output, window.id in self.done)
        self.stats.last_seconds = time.perf_counter() - started
        return outputs

    def _late(self, mark: Watermark) -> list[Window]:
        """Analysed windows that rows arrived for since (see the module's docstring)."""
        retry, self._retry = self._retry, []
        if not self.done:
            return retry
        done = sorted(self.done.values(), key=lambda d: d.window.start_ns)
        counts = self._span_counts([d.window for d in done if d.spans >= 0])
        late = list(retry)
        for d in done:
            if d.spans < 0:  # given up
                continue
            spans, max_end = counts.get(d.window.start_ns, (0, d.window.end_ns))
            grew = (spans, max_end) != (d.spans, d.max_end_ns)
            tail = (d.max_end_ns + self.options.grace_ns > d.watermark_ns
                    and d.max_end_ns + self.options.grace_ns <= mark.ts_ns)
            # a node known then, behind the window's end then, past it now
            returned = any(node in d.flushes and ts >= d.window.end_ns > d.flushes[node]
                           for node, ts in mark.flushes.items())
            if grew or tail or returned:
                late.append(d.window)
        return late

    def _span_counts(self, windows: list[Window]) -> dict[int, tuple[int, int]]:
        """Window start -> (spans starting in it, their newest end), one query for all."""
        if not windows:
            return {}
        width = self.options.window_ns
        lo = min(w.start_ns for w in windows)
        hi = max(w.end_ns for w in windows)
        node_filter = (f"AND node IN {sql_list(self.options.nodes)}"
                       if self.options.nodes else "")
        with self.db.session(["spans"]) as con:
            rows = con.execute(f"""
                SELECT {lo} + (start_ns - {lo}) // {width} * {width} AS w, count(*),
                       max(greatest(coalesce(end_ns, start_ns), start_ns))
                FROM spans WHERE start_ns >= {lo} AND start_ns < {hi} {node_filter}
                GROUP BY w""").fetchall()
        wanted = {w.start_ns for w in windows}
        return {int(w): (int(n), max(int(end), w + width)) for w, n, end in rows
                if int(w) in wanted}

    # -- the loop -----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; a lake that cannot be read is retried, not fatal."""
        self._stop = stop
        ray_started = False
        if self.options.executor == "ray":
            ray_started = start_ray(self.settings)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except lake.LakeError as err:
                    self.stats.poll_errors += 1
                    log.warning("cannot read the lake: %s (retrying)", err)
                stop.wait(self.options.poll_s)
        finally:
            self.db.close()
            if ray_started:
                import ray

                ray.shutdown()
