"""What the demo's services share: the OpenTelemetry tracer, a JSON-over-HTTP server, the
clearing schedule, and outgoing calls.

Each service is one process with one thread: ``http.server.HTTPServer`` answers one request
at a time, and spans are exported by ``SimpleSpanProcessor`` synchronously when they end
(no background thread). The replay sandbox re-runs such a process syscall by syscall, and
a second thread would make the order of those syscalls depend on the scheduler.

Spans go to ``$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces`` (the agent's receiver) with the
resource attributes ``service.name`` and ``process.pid``; every span also names its thread
(``thread.id``) so kprobe lays it over the kernel's rows for that thread without guessing.
Without the variable, spans are made and dropped (the service still works).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, time, timedelta
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import TCPServer
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

CURRENCY = "INR"
DEFAULT_CUTOFFS = "14:00,16:30"  # compute/domain_rules.yaml, clearing.cutoffs (UTC)


def tracer(service: str) -> tuple[trace.Tracer, TracerProvider]:
    """A tracer exporting every span synchronously to the agent's OTLP/HTTP receiver."""
    # Resource(...), not Resource.create(...): create() runs the resource detectors on a
    # thread pool, a second thread in a process meant to have one (see the module doc)
    resource = Resource({"service.name": service, "process.pid": os.getpid(),
                         "telemetry.sdk.language": "python"})
    provider = TracerProvider(resource=resource)
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").rstrip("/")
    if endpoint:
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=5)))
    return provider.get_tracer("kprobe.demo"), provider


def thread_id() -> int:
    return threading.get_native_id()


def payment_attributes(payment: Mapping[str, Any]) -> dict[str, Any]:
    """The business attributes of a payment's server spans (and its thread). The
    gateway's client spans carry none: the domain rules make any span with ``payment.id``
    that matches no other concept a Payment."""
    return {"payment.id": str(payment["payment_id"]), "payment.amount": int(payment["amount"]),
            "payment.currency": str(payment.get("currency") or CURRENCY),
            "thread.id": thread_id()}


def clearing_attributes(cutoffs: list[time], now: datetime | None = None) -> dict[str, Any]:
    """The clearing window a payment is due in: the next cutoff of the schedule (UTC), as
    ``clearing.window`` (its time of day) and ``clearing.cutoff`` (the instant, ISO 8601)."""
    if not cutoffs:
        return {}
    now = now or datetime.now(UTC)
    for day in (0, 1):
        for cutoff in sorted(cutoffs):
            at = datetime.combine(now.date() + timedelta(days=day), cutoff, tzinfo=UTC)
            if at > now:
                return {"clearing.window": cutoff.strftime("%H:%M UTC"),
                        "clearing.cutoff": at.isoformat().replace("+00:00", "Z")}
    return {}


def parse_cutoffs(text: str) -> list[time]:
    return [time.fromisoformat(part.strip()) for part in text.split(",") if part.strip()]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host or "127.0.0.1", int(port)


def post_json(address: tuple[str, int], path: str, body: Mapping[str, Any],
              timeout_s: float) -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON on a new connection; (status, decoded answer). The current
    trace context travels in the ``traceparent`` header, and the current span learns the
    connection's local end (``client.address``/``client.port``). ``TimeoutError`` when a
    connect, send or receive waits longer than ``timeout_s``."""
    headers: dict[str, str] = {"Content-Type": "application/json"}
    propagate.inject(headers)
    conn = HTTPConnection(address[0], address[1], timeout=timeout_s)
    try:
        conn.connect()
        if conn.sock is not None:
            local = conn.sock.getsockname()
            trace.get_current_span().set_attributes(
                {"client.address": local[0], "client.port": local[1]})
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else {}
    finally:
        conn.close()


class JsonHandler(BaseHTTPRequestHandler):
    """One JSON request, one JSON answer, then the connection closes (HTTP/1.0)."""

    server_version = "kprobe-demo/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        pass  # no access log: one line per payment on stderr is noise here

    def read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        data = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    def read_payment(self, route: str) -> dict[str, Any] | None:
        """The payment POSTed to ``route``; None once a 404 or 400 has been answered."""
        if self.path != route:
            self.send_json(404, {"error": f"no route {self.path}"})
            return None
        try:
            payment = self.read_json()
            str(payment["payment_id"])
            int(payment["amount"])
        except (ValueError, KeyError, TypeError) as err:
            self.send_json(400, {"error": f"bad payment: {err}"})
            return None
        return payment

    def send_json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def trace_context(self) -> Any:
        """The caller's trace context, from its ``traceparent`` header."""
        return propagate.extract(dict(self.headers.items()))

    def peer_attributes(self) -> dict[str, Any]:
        """Both ends of this request's connection (spans meet ``net`` rows by 4-tuple)."""
        client_host, client_port = self.client_address[:2]
        address = self.server.server_address
        assert isinstance(address, tuple)  # AF_INET: (host, port)
        server_host, server_port = address[0], address[1]
        return {"client.address": client_host, "client.port": client_port,
                "server.address": str(server_host), "server.port": server_port}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/healthz":
            self.send_json(200, {"ok": True})
        else:
            self.send_json(404, {"error": f"no route {self.path}"})


class LoopbackHTTPServer(HTTPServer):
    """``HTTPServer`` without the reverse DNS lookup of its own address at bind time
    (``socket.getfqdn``: /etc/hosts, maybe a resolver, for nothing on loopback)."""

    def server_bind(self) -> None:
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


def serve(handler: type[JsonHandler], port: int, host: str = "127.0.0.1") -> None:
    """Answer requests one at a time on this thread until SIGTERM or SIGINT, then exit
    cleanly (status 0). A signal in the middle of a request interrupts it: stop an idle
    service."""
    server = LoopbackHTTPServer((host, port), handler)
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever(poll_interval=3600)  # shutdown() is never called: no wakeups
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def base_parser(description: str | None, port_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=port_required, help="port on 127.0.0.1")
    p.add_argument("--clearing-cutoffs", default=DEFAULT_CUTOFFS, metavar="HH:MM,...",
                   help="clearing cutoffs of the day, UTC (default: %(default)s)")
    return p
