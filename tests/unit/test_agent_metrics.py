"""Agent metrics are read at scrape time from plain totals, over real HTTP on loopback."""

from __future__ import annotations

import urllib.request

from kprobe.capture_agent.lake_sink import SinkStats
from kprobe.capture_agent.metrics import AgentCollector, AgentCounters, MetricsServer


def test_scrape_shows_events_drops_fill_and_lake_state() -> None:
    counters = AgentCounters()
    counters.add_events("sched", 10)
    counters.add_events("sched", 5)
    counters.kernel_drops[("sched_switch", "ring_full")] = 3
    counters.ring_fill["sched"] = 0.25
    counters.clock_probe_processes, counters.clock_probe_failures = 4, 1
    stats = SinkStats()
    stats.committed_rows["sched"] = 15
    stats.lost_rows["sched:queue_full"] = 2
    server = MetricsServer(AgentCollector(counters, lambda: stats, lambda: 4096, lambda: 1),
                           "127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics").read().decode()
    finally:
        server.stop()
    assert 'kprobe_events_total{source="sched"} 15.0' in body
    assert 'kprobe_kernel_drops_total{reason="ring_full",source="sched_switch"} 3.0' in body
    assert 'kprobe_ring_fill_ratio{ring="sched"} 0.25' in body
    assert 'kprobe_lost_rows_total{reason="queue_full",table="sched"} 2.0' in body
    assert "kprobe_spool_bytes 4096.0" in body
    assert "kprobe_clock_probe_processes 4.0" in body
    assert "kprobe_clock_probe_failures_total 1.0" in body
