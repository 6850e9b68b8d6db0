"""Prometheus metrics of the agent, collected when scraped (never a counter bump per event).

Sources keep plain integer totals (the drain counts events per batch, the sink counts rows
and losses); this collector reads them at scrape time, so the hot path pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


@dataclass
class AgentCounters:
    """Totals the agent updates once per drain/flush."""

    events: dict[str, int] = field(default_factory=dict)  # source -> events drained
    # (source, reason) -> records the kernel lost (layouts.DropReason: ring_full, map_full...)
    kernel_drops: dict[tuple[str, str], int] = field(default_factory=dict)
    ring_fill: dict[str, float] = field(default_factory=dict)  # ring -> fill ratio at last drain
    # source -> records counted in the kernel instead of written (evidence capture: a
    # target's quick syscall), by design, not lost
    below_bound: dict[str, int] = field(default_factory=dict)
    flush_seconds_last: float = 0.0
    drain_gap_max_s: float = 0.0  # the longest time the rings went undrained
    flushes: int = 0
    clock_probe_processes: int = 0  # targets with their libc clock uprobes attached
    clock_probe_failures: int = 0  # targets whose uprobes could not be attached

    def add_events(self, source: str, n: int) -> None:
        self.events[source] = self.events.get(source, 0) + n


class AgentCollector(Collector):
    def __init__(
        self,
        counters: AgentCounters,
        sink_stats: Callable[[], object] | None = None,
        spool_bytes: Callable[[], int] | None = None,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        self.counters = counters
        self.sink_stats = sink_stats
        self.spool_bytes = spool_bytes
        self.queue_depth = queue_depth

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.counters
        events = CounterMetricFamily("kprobe_events", "Events drained from the kernel",
                                     labels=["source"])
        for source, n in sorted(c.events.items()):
            events.add_metric([source], n)
        yield events
        drops = CounterMetricFamily("kprobe_kernel_drops", "Records the kernel lost, by "
                                    "reason (ring_full, map_full, undated, no_owner)",
                                    labels=["source", "reason"])
        for (source, reason), n in sorted(c.kernel_drops.items()):
            drops.add_metric([source, reason], n)
        yield drops
        below = CounterMetricFamily("kprobe_records_below_bound", "Records counted in the "
                                    "kernel instead of written: evidence capture leaves them "
                                    "out by design (a target's quick syscall)",
                                    labels=["source"])
        for source, n in sorted(c.below_bound.items()):
            below.add_metric([source], n)
        yield below
        fill = GaugeMetricFamily("kprobe_ring_fill_ratio", "Ring buffer fill at last drain",
                                 labels=["ring"])
        for ring, ratio in sorted(c.ring_fill.items()):
            fill.add_metric([ring], ratio)
        yield fill
        yield GaugeMetricFamily("kprobe_flush_seconds", "Duration of the last flush",
                                value=c.flush_seconds_last)
        yield CounterMetricFamily("kprobe_flushes", "Flushes done", value=c.flushes)
        yield GaugeMetricFamily("kprobe_drain_gap_max_seconds", "The longest time the rings "
                                "went undrained (what they had to hold)",
                                value=c.drain_gap_max_s)
        yield GaugeMetricFamily("kprobe_clock_probe_processes", "Target processes whose libc "
                                "clock reads are recorded (uprobes attached, or with "
                                "--vdso-patch their vDSO rewritten)",
                                value=c.clock_probe_processes)
        yield CounterMetricFamily("kprobe_clock_probe_failures", "Target processes whose "
                                  "clock uprobes could not be attached, or whose vDSO could "
                                  "not be rewritten (their vDSO clock reads are not recorded)",
                                  value=c.clock_probe_failures)
        if self.sink_stats is not None:
            stats = self.sink_stats()
            rows = CounterMetricFamily("kprobe_lake_rows", "Rows committed to the lake",
                                       labels=["table"])
            for table, n in sorted(stats.committed_rows.items()):  # type: ignore[attr-defined]
                rows.add_metric([table], n)
            yield rows
            lost = CounterMetricFamily("kprobe_lost_rows", "Rows lost on the way to the lake",
                                       labels=["table", "reason"])
            for key, n in sorted(stats.lost_rows.items()):  # type: ignore[attr-defined]
                table, reason = key.split(":", 1)
                lost.add_metric([table, reason], n)
            yield lost
            yield CounterMetricFamily("kprobe_lake_errors", "Failed lake writes",
                                      value=stats.lake_errors)  # type: ignore[attr-defined]
            yield GaugeMetricFamily("kprobe_lake_commit_seconds", "Duration of the last commit",
                                    value=stats.last_flush_seconds)  # type: ignore[attr-defined]
        if self.spool_bytes is not None:
            yield GaugeMetricFamily("kprobe_spool_bytes", "Bytes waiting in the local spool",
                                    value=self.spool_bytes())
        if self.queue_depth is not None:
            yield GaugeMetricFamily("kprobe_lake_queue_batches", "Batches queued for the lake",
                                    value=self.queue_depth())


class MetricsServer:
    """``collector`` on http://host:port/metrics, served by a daemon thread until stop()
    (the agent's, and ``kprobe analyze --follow``'s)."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
