"""Prometheus metrics of one app instance (its own registry: several apps per process in
tests must not share counters), and the middleware that counts requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("kprobe_api_requests_total", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "kprobe_api_request_duration_seconds", "HTTP request latency", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r)
        self.sql_queries = Counter("kprobe_api_sql_queries_total", "SQL statements by outcome",
                                   ["outcome"], registry=r)
        self.live_clients = Gauge("kprobe_api_live_clients", "Connected live-stream clients",
                                  registry=r)
        self.live_messages = Counter("kprobe_api_live_messages_total",
                                     "Live-stream messages queued to clients", registry=r)
        self.live_dropped = Counter("kprobe_api_live_dropped_messages_total",
                                    "Live-stream messages dropped for slow clients",
                                    registry=r)
        self.live_polls = Counter("kprobe_api_live_polls_total", "Lake polls of the live hub",
                                  registry=r)
        self.replays = Counter("kprobe_api_replays_total", "Replays by final state",
                               ["state"], registry=r)
        self.analyses = Counter("kprobe_api_ondemand_analyses_total",
                                "On-demand window analyses by outcome (started, joined: "
                                "waited for one already running here, waited: for one "
                                "another process ran, busy: another process still ran it "
                                "at the bound, refused: at capacity, timed_out, failed)",
                                ["outcome"], registry=r)
        self.admitted = Gauge("kprobe_api_admitted_requests",
                              "Heavy requests admitted (running or queued), by kind",
                              ["kind"], registry=r)


class MetricsMiddleware:
    """Counts HTTP requests by route template (bounded label values), status and latency."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
