"""The OTLP/HTTP receiver, for real: uvicorn on a free loopback port, the OpenTelemetry SDK's
own OTLP exporter, httpx for hand-made requests, and a local Delta lake read back with SQL."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from kprobe.capture_agent.otlp import (
    OtlpSettings,
    SpanSink,
    build_server,
    decode_protobuf,
    listen_socket,
)
from kprobe.lake import LakeLocation, LakeSettings, LakeWriter, connect, resolve
from tests.support import REPO, free_port

T0 = 1_767_225_600_000_000_000
PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}


@dataclass
class Receiver:
    url: str
    location: LakeLocation
    writer: LakeWriter
    sink: SpanSink
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def traces(self) -> str:
        return f"{self.url}/v1/traces"

    def wait_committed(self, spans: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sink.stats.committed_spans < spans:
            assert time.monotonic() < deadline, f"not committed in time: {self.sink.stats}"
            time.sleep(0.02)

    def rows(self, sql: str = "SELECT * FROM spans ORDER BY start_ns") -> list[dict[str, Any]]:
        con = connect(self.location, ["spans"])
        try:
            cursor = con.execute(sql)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            con.close()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(30)
            assert not self.thread.is_alive()


@pytest.fixture
def start_receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Start receivers (uvicorn in a thread, its own socket); all are stopped at the end."""
    started: list[Receiver] = []

    def start(lake: str | None = None, **overrides: Any) -> Receiver:
        settings = OtlpSettings(**{"port": free_port(), "flush_interval_s": 0.1, **overrides})
        lake_settings = LakeSettings(lake=lake or str(tmp_path / "lake"), node="n1")
        writer = LakeWriter.from_settings(lake_settings)
        server, sink = build_server(settings, writer)
        sock = listen_socket(settings.host, settings.port)

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                sock.close()

        thread = threading.Thread(target=serve, name="otlp-receiver", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        receiver = Receiver(f"http://{settings.host}:{settings.port}", resolve(lake_settings),
                            writer, sink, server, thread)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def _sdk_spans(endpoint: str, compression: Compression) -> dict[str, Any]:
    """Export a parent/child trace and an error span with the real SDK; return what we sent."""
    resource = Resource.create({"service.name": "payments", "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, compression=compression))
    )
    tracer = provider.get_tracer("kprobe.tests")
    tid = threading.get_native_id()
    with tracer.start_as_current_span(
        "POST /payments", kind=SpanKind.SERVER,
        attributes={"thread.id": tid, "payment.id": "PAY-1", "payment.amount": 50_000,
                    "client.address": "10.1.0.7", "client.port": 40000,
                    "server.address": "ledger", "server.port": 8080},
    ) as parent, tracer.start_as_current_span(
        "settlement.write", kind=SpanKind.CLIENT,
        attributes={"thread.id": tid, "net.peer.name": "db.internal", "net.peer.port": 5432,
                    "network.peer.address": "10.1.0.9"},
    ) as child:
        child.set_status(Status(StatusCode.ERROR, "disk full"))
        child.add_event("retry", {"attempt": 2})
    provider.shutdown()
    return {"tid": tid, "parent": parent.get_span_context(), "child": child.get_span_context()}


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_export_lands_in_the_spans_table(
    start_receiver: Callable[..., Receiver], compression: Compression
) -> None:
    """GIVEN the receiver WHEN the OpenTelemetry SDK exports a trace over OTLP/HTTP THEN every
    span lands with hex ids, its parent link, pid, tid, network columns and attributes."""
    receiver = start_receiver()
    sent = _sdk_spans(receiver.traces, compression)
    receiver.wait_committed(2)

    parent, child = receiver.rows("SELECT * FROM spans ORDER BY start_ns, name")
    assert parent["name"] == "POST /payments" and child["name"] == "settlement.write"
    assert parent["trace_id"] == f"{sent['parent'].trace_id:032x}" == child["trace_id"]
    assert parent["span_id"] == f"{sent['parent'].span_id:016x}"
    assert child["span_id"] == f"{sent['child'].span_id:016x}"
    assert child["parent_span_id"] == parent["span_id"] and parent["parent_span_id"] is None
    for row in (parent, child):
        assert (row["service"], row["pid"], row["tid"]) == ("payments", os.getpid(), sent["tid"])
        assert row["dur_ns"] == row["end_ns"] - row["start_ns"] > 0
        assert row["node"] == "n1" and row["batch_id"].startswith(receiver.writer.writer_id)
    assert (parent["kind"], parent["status"]) == ("SERVER", "UNSET")
    assert (child["kind"], child["status"], child["status_message"]) == (
        "CLIENT", "ERROR", "disk full")
    assert (parent["client_address"], parent["client_port"]) == ("10.1.0.7", 40000)
    assert (parent["server_address"], parent["server_port"]) == ("ledger", 8080)
    assert (child["server_address"], child["server_port"]) == ("db.internal", 5432)
    assert (child["peer_address"], child["peer_port"]) == ("10.1.0.9", 5432)
    assert json.loads(parent["attributes"])["payment.amount"] == 50_000
    assert json.loads(parent["resource"])["process.pid"] == os.getpid()
    (event,) = json.loads(child["events"])
    assert event["name"] == "retry" and event["attributes"] == {"attempt": 2}
    # The SQL the demo runs works on what landed.
    (amount,) = receiver.rows(
        "SELECT json_extract(attributes, '$.\"payment.amount\"')::BIGINT AS a FROM spans "
        "WHERE parent_span_id IS NULL")
    assert amount == {"a": 50_000}


def test_json_request_round_trips(start_receiver: Callable[..., Receiver]) -> None:
    receiver = start_receiver()
    body = {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "web"}},
            {"key": "process.pid", "value": {"intValue": "321"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
            "name": "GET /", "kind": 2, "startTimeUnixNano": str(T0),
            "endTimeUnixNano": str(T0 + 1000),
            "attributes": [{"key": "thread.id", "value": {"intValue": "9"}}],
        }]}],
    }]}
    with httpx.Client() as client:
        response = client.post(receiver.traces, json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    receiver.wait_committed(1)
    (row,) = receiver.rows()
    assert (row["trace_id"], row["span_id"]) == ("5b8efff798038103d269b633813fc60c",
                                                 "eee19b7ec3c1b174")
    assert (row["service"], row["pid"], row["tid"], row["kind"]) == ("web", 321, 9, "SERVER")


def _request(*span_ids: bytes) -> bytes:
    spans = [Span(trace_id=b"\x01" * 16, span_id=sid, name="op", start_time_unix_nano=T0)
             for sid in span_ids]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()


def test_malformed_requests_get_400_with_the_reason_and_write_nothing(
    start_receiver: Callable[..., Receiver],
) -> None:
    """GIVEN a table holding one batch WHEN malformed requests arrive (one with a valid span
    before the bad one) THEN each gets 400 + google.rpc.Status and the table is unchanged."""
    receiver = start_receiver()
    with httpx.Client() as client:
        assert client.post(receiver.traces, content=_request(b"\x02" * 8),
                           headers=PROTOBUF).status_code == 200
        receiver.wait_committed(1)
        before = receiver.rows("SELECT count(*) AS n, max(batch_id) AS b FROM spans")

        garbage = client.post(receiver.traces, content=b"\xff\xff\xff\xff", headers=PROTOBUF)
        half_bad = client.post(receiver.traces, content=_request(b"\x03" * 8, b"\x04"),
                               headers=PROTOBUF)
        bad_json = client.post(receiver.traces, content=b'{"resourceSpans": 1}', headers=JSON)
        bad_gzip = client.post(receiver.traces, content=b"nope",
                               headers={**PROTOBUF, "content-encoding": "gzip"})
    for response in (garbage, half_bad, bad_gzip):
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/x-protobuf"
    assert status_pb2.Status.FromString(garbage.content).message.startswith(
        "invalid OTLP protobuf: Error parsing message")
    assert status_pb2.Status.FromString(half_bad.content).message == (
        "resourceSpans[0].scopeSpans[0].spans[1].spanId must be 8 bytes (16 hex digits), got 1")
    assert status_pb2.Status.FromString(bad_gzip.content).code == 3  # INVALID_ARGUMENT
    assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
    assert bad_json.json()["message"].startswith("invalid OTLP JSON:")

    receiver.stop()  # flushes whatever is held
    assert receiver.rows("SELECT count(*) AS n, max(batch_id) AS b FROM spans") == before
    assert receiver.sink.stats.accepted_spans == 1


def test_oversized_bodies_get_413(start_receiver: Callable[..., Receiver]) -> None:
    receiver = start_receiver(max_body_bytes=64 * 1024)
    big = _request(*(i.to_bytes(8, "big") for i in range(1, 5000)))
    assert len(big) > 64 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is applied while streaming
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]

    with httpx.Client() as client:
        declared = client.post(receiver.traces, content=big, headers=PROTOBUF)
        streamed = client.post(receiver.traces, content=chunks(), headers=PROTOBUF)
        bomb = client.post(receiver.traces, content=gzip.compress(bytes(1_000_000)),
                           headers={**PROTOBUF, "content-encoding": "gzip"})
        json_big = client.post(receiver.traces, content=b" " * 100_000 + b"{}", headers=JSON)
        fits = client.post(receiver.traces, content=gzip.compress(big[:30_000]),
                           headers={**PROTOBUF, "content-encoding": "gzip"})
    for response in (declared, streamed, bomb):
        assert response.status_code == 413
        assert "exceeds the limit of 65536 bytes" in status_pb2.Status.FromString(
            response.content).message
    assert json_big.status_code == 413 and "limit" in json_big.json()["message"]
    assert fits.status_code == 400  # a truncated request: decoded, then refused
    assert receiver.sink.stats.accepted_spans == 0


def test_unsupported_content_type_or_encoding_gets_415(
    start_receiver: Callable[..., Receiver],
) -> None:
    receiver = start_receiver()
    with httpx.Client() as client:
        text = client.post(receiver.traces, content=b"hello",
                           headers={"content-type": "text/plain"})
        brotli = client.post(receiver.traces, content=_request(b"\x02" * 8),
                             headers={**PROTOBUF, "content-encoding": "br"})
        wrong_method = client.get(receiver.traces)
        health = client.get(f"{receiver.url}/healthz")
    assert text.status_code == 415 and "unsupported Content-Type" in text.json()["message"]
    assert brotli.status_code == 415
    assert "Content-Encoding 'br'" in status_pb2.Status.FromString(brotli.content).message
    assert wrong_method.status_code == 405
    assert health.status_code == 200 and health.json()["requests"]["415"] == 2


def test_full_buffer_answers_503_and_counts_refused_and_dropped_spans(
    start_receiver: Callable[..., Receiver],
) -> None:
    """GIVEN a lake that cannot be written (a path under /proc) WHEN spans keep coming THEN
    the buffer fills, further requests get 503 + Retry-After, and every span is counted."""
    receiver = start_receiver(lake="/proc/kprobe-no-such-lake", max_buffer_rows=2,
                              shutdown_timeout_s=0.2)
    with httpx.Client() as client:
        first = client.post(receiver.traces, content=_request(b"\x02" * 8, b"\x03" * 8),
                            headers=PROTOBUF)
        second = client.post(receiver.traces, content=_request(b"\x04" * 8), headers=PROTOBUF)
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert status_pb2.Status.FromString(second.content).code == 14  # UNAVAILABLE
    deadline = time.monotonic() + 10
    while receiver.sink.stats.failed_flushes == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    receiver.stop()
    stats = receiver.sink.stats
    assert (stats.accepted_spans, stats.refused_spans, stats.committed_spans) == (2, 1, 0)
    assert stats.dropped_spans == {"shutdown": 2}
    assert "lake unavailable" in stats.last_error


def test_failed_flush_retries_the_same_batch_once_the_lake_is_back(tmp_path: Path) -> None:
    """GIVEN a sink whose lake is unreachable WHEN flushes fail and the lake comes back THEN
    the batch prepared first is the one committed, once, with spans that came later after it."""
    good = resolve(LakeSettings(lake=str(tmp_path / "lake")))
    writer = LakeWriter(resolve(LakeSettings(lake="/proc/kprobe-no-such-lake")), "n1", "w1")
    sink = SpanSink(writer, flush_interval_s=0.05)
    assert sink.offer(decode_protobuf(_request(b"\x02" * 8, b"\x03" * 8)))
    assert sink.flush() is True  # failed: still held
    assert sink.flush() is True
    assert sink.stats.failed_flushes == 2 and sink.held_rows == 2
    assert sink.offer(decode_protobuf(_request(b"\x04" * 8)))
    writer.location = good  # the lake is reachable again
    assert sink.flush() is False
    assert sink.stats.committed_batches == 2 and sink.held_rows == 0
    con = connect(good, ["spans"])
    try:
        rows = con.execute("SELECT batch_id, span_id FROM spans ORDER BY span_id").fetchall()
    finally:
        con.close()
    assert rows == [("w1-1", "02" * 8), ("w1-1", "03" * 8), ("w1-2", "04" * 8)]


def _kprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "kprobe", *args]


def test_kprobe_otlp_command_flushes_on_sigterm(tmp_path: Path) -> None:
    """GIVEN `kprobe otlp` running WHEN a span arrives and SIGTERM follows at once THEN the
    span is in the lake and the command exits 0 with a summary."""
    port = free_port()
    lake = tmp_path / "lake"
    proc = subprocess.Popen(
        _kprobe("otlp", "--lake", str(lake), "--port", str(port), "--flush-interval", "60"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with httpx.Client() as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None and time.monotonic() < deadline
                try:
                    client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            response = client.post(f"http://127.0.0.1:{port}/v1/traces",
                                   content=_request(b"\x02" * 8), headers=PROTOBUF)
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped; 1 span(s) written in 1 commit(s)" in err
    con = connect(resolve(LakeSettings(lake=str(lake))), ["spans"])
    try:
        assert con.execute("SELECT span_id FROM spans").fetchall() == [("02" * 8,)]
    finally:
        con.close()


def test_kprobe_otlp_with_an_unreachable_lake_is_a_one_line_error() -> None:
    result = subprocess.run(
        _kprobe("otlp", "--lake", "/proc/kprobe-no-such-lake", "--port", str(free_port())),
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("kprobe otlp: lake unavailable")
    assert result.stderr.count("\n") == 1
