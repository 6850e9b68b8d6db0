"""Prometheus metrics of ``kprobe analyze --follow``, read from its totals at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kprobe.compute.follow import FollowStats

NS = 1e9


class FollowCollector(Collector):
    def __init__(self, stats: FollowStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.stats
        yield GaugeMetricFamily(
            "kprobe_analysis_watermark_timestamp_seconds",
            "Time up to which every live agent's rows are in the lake (its flush markers)",
            value=s.watermark_ns / NS)
        yield GaugeMetricFamily(
            "kprobe_analysis_closed_until_timestamp_seconds",
            "End of the newest window analysed", value=s.closed_until_ns / NS)
        yield GaugeMetricFamily(
            "kprobe_analysis_lag_seconds",
            "Wall clock minus the end of the newest window analysed",
            value=max(0.0, time.time() - s.closed_until_ns / NS))
        yield GaugeMetricFamily("kprobe_analysis_pending_windows",
                                "Windows closed or late, not yet analysed", value=s.pending)
        yield GaugeMetricFamily("kprobe_analysis_last_seconds",
                                "Duration of the last poll's analyses", value=s.last_seconds)
        yield CounterMetricFamily("kprobe_analysis_windows", "Window analyses done",
                                  value=s.windows)
        yield CounterMetricFamily("kprobe_analysis_reanalysed_windows",
                                  "Window analyses redone because late rows arrived",
                                  value=s.reanalysed)
        yield CounterMetricFamily("kprobe_analysis_failed_windows",
                                  "Window analyses that failed", value=s.failed)
        yield CounterMetricFamily("kprobe_analysis_polls", "Lake polls", value=s.polls)
        yield CounterMetricFamily("kprobe_analysis_poll_errors",
                                  "Lake polls that could not read the lake",
                                  value=s.poll_errors)
        yield CounterMetricFamily("kprobe_analysis_exported_failures",
                                  "Explained failures sent to the OTLP endpoint",
                                  value=s.exported)
        yield CounterMetricFamily("kprobe_analysis_export_errors",
                                  "Exports to the OTLP endpoint that failed",
                                  value=s.export_errors)
