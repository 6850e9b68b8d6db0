"""The OTLP/gRPC receiver, for real: `kprobe otlp --grpc-port` and `kprobe record
--otlp-grpc-port` as processes, the OpenTelemetry SDK's own gRPC exporter, raw gRPC calls for
the hostile cases, and the lake read back with SQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from kprobe.capture_agent.errors import CaptureAgentError
from kprobe.capture_agent.otlp import OtlpGrpcServer, SpanSink
from kprobe.lake import LakeSettings, LakeWriter, connect, resolve
from tests.support import REPO, deadline_s, free_port, require_root

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
T0 = 1_767_225_600_000_000_000


def _kprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "kprobe", *args]


def _rows(lake: Path, sql: str) -> list[tuple[object, ...]]:
    con = connect(resolve(LakeSettings(lake=str(lake))), ["spans"])
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _wait_port(port: int, proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Until a gRPC channel to 127.0.0.1:port is ready (the server answers)."""
    deadline = time.monotonic() + deadline_s(timeout_s)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                assert time.monotonic() < deadline, "gRPC port never became ready"


def _wait_rows(lake: Path, sql: str, want: int, timeout_s: float = 60) -> list[tuple[object, ...]]:
    deadline = time.monotonic() + deadline_s(timeout_s)
    while True:
        try:
            rows = _rows(lake, sql)
        except Exception:  # the table is not there yet
            rows = []
        if len(rows) >= want:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} of {want} rows in the lake: {rows}"
        time.sleep(0.2)


def _sdk_export(port: int, compression: grpc.Compression | None = None) -> dict[str, str]:
    """A parent/child trace (the child failed) through the SDK's own gRPC exporter."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True,
                                compression=compression)
    results: list[SpanExportResult] = []
    export = exporter.export

    def counting(spans):  # type: ignore[no-untyped-def]
        result = export(spans)
        results.append(result)
        return result

    exporter.export = counting  # type: ignore[method-assign]
    provider = TracerProvider(resource=Resource.create({"service.name": "payments-grpc"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("kprobe.tests")
    with tracer.start_as_current_span(
        "POST /payments", kind=SpanKind.SERVER,
        attributes={"thread.id": threading.get_native_id(), "payment.id": "PAY-G1"},
    ) as parent, tracer.start_as_current_span("settlement.write", kind=SpanKind.CLIENT) as child:
        child.set_status(Status(StatusCode.ERROR, "timed out"))
    provider.shutdown()
    assert results == [SpanExportResult.SUCCESS, SpanExportResult.SUCCESS]
    return {"trace": f"{parent.get_span_context().trace_id:032x}",
            "parent": f"{parent.get_span_context().span_id:016x}",
            "child": f"{child.get_span_context().span_id:016x}"}


def _request(span_id: bytes, trace_id: bytes = b"\x01" * 16) -> bytes:
    span = Span(trace_id=trace_id, span_id=span_id, name="op",
                start_time_unix_nano=T0, end_time_unix_nano=T0 + 1000)
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        scope_spans=[ScopeSpans(spans=[span])])]).SerializeToString()


@pytest.fixture
def otlp_command(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int, Path]]:
    """`kprobe otlp` with HTTP and gRPC on free loopback ports; SIGTERM at the end."""
    lake = tmp_path / "lake"
    http_port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        _kprobe("otlp", "--lake", str(lake), "--port", str(http_port), "--grpc-port",
                str(grpc_port), "--flush-interval", "0.2"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_port(grpc_port, proc)
        yield proc, http_port, grpc_port, lake
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_sdk_grpc_export_lands_in_the_spans_table(
    otlp_command: tuple[subprocess.Popen[str], int, int, Path],
) -> None:
    """GIVEN `kprobe otlp --grpc-port` WHEN the SDK's gRPC exporter sends a trace, plain and
    gzip-compressed THEN every span is in the lake with its ids, service and status."""
    proc, _, grpc_port, lake = otlp_command
    plain = _sdk_export(grpc_port)
    gzipped = _sdk_export(grpc_port, grpc.Compression.Gzip)
    rows = _wait_rows(lake, "SELECT trace_id, span_id, service, status, kind FROM spans "
                      "ORDER BY trace_id, kind", 4)
    by_span = {r[1]: r for r in rows}
    for sent in (plain, gzipped):
        assert by_span[sent["parent"]][0] == sent["trace"]
        assert by_span[sent["parent"]][2] == "payments-grpc"
        assert by_span[sent["parent"]][4] == "SERVER"
        assert by_span[sent["child"]][3] == "ERROR"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "4 span(s) written" in err


def test_malformed_and_oversized_grpc_requests_are_refused_and_write_nothing(
    otlp_command: tuple[subprocess.Popen[str], int, int, Path],
) -> None:
    """GIVEN the receiver WHEN a call carries bytes that are not a request, a span with a
    5-byte id, or a message over the 16 MiB limit THEN INVALID_ARGUMENT / RESOURCE_EXHAUSTED,
    the server keeps serving, and only the one good request (the control) lands."""
    proc, _, grpc_port, lake = otlp_command
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        export = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.RpcError) as garbage:
            export(b"\xff\xff\xff\xff not protobuf", timeout=10)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as bad_id:
            export(_request(b"\x05" * 5), timeout=10)
        assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spanId must be 8 bytes" in (bad_id.value.details() or "")
        with pytest.raises(grpc.RpcError) as big:
            export(_request(b"\x03" * 8) + b"\x00" * (17 << 20), timeout=30)
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert export(_request(b"\x04" * 8), timeout=10) == b""  # the control
    assert _wait_rows(lake, "SELECT span_id FROM spans", 1) == [("04" * 8,)]
    assert proc.poll() is None


def test_full_buffer_answers_unavailable(tmp_path: Path) -> None:
    """GIVEN a sink that holds 2 spans and cannot flush WHEN a third arrives over gRPC THEN
    UNAVAILABLE (the SDK retries it), counted as refused."""
    writer = LakeWriter.from_settings(LakeSettings(lake=str(tmp_path / "lake")))
    sink = SpanSink(writer, max_buffer_rows=2)  # not started: nothing is flushed
    server = OtlpGrpcServer(sink, "127.0.0.1", 0).start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            export = channel.unary_unary(EXPORT)
            export(_request(b"\x01" * 8), timeout=10)
            export(_request(b"\x02" * 8), timeout=10)
            with pytest.raises(grpc.RpcError) as full:
                export(_request(b"\x03" * 8), timeout=10)
        assert full.value.code() == grpc.StatusCode.UNAVAILABLE
        assert sink.stats.refused_spans == 1 and sink.stats.accepted_spans == 2
    finally:
        server.stop(0)


def test_a_taken_port_is_a_one_line_error(tmp_path: Path) -> None:
    """GIVEN a gRPC receiver on a port WHEN a second one is started on it THEN it fails in one
    line, exit 2 (gRPC's default SO_REUSEPORT would let both bind and split the traffic)."""
    writer = LakeWriter.from_settings(LakeSettings(lake=str(tmp_path / "lake")))
    first = OtlpGrpcServer(SpanSink(writer), "127.0.0.1", 0).start()
    try:
        with pytest.raises(CaptureAgentError, match="cannot listen"):
            OtlpGrpcServer(SpanSink(writer), "127.0.0.1", first.port)
        result = subprocess.run(
            _kprobe("otlp", "--lake", str(tmp_path / "lake2"), "--port", str(free_port()),
                    "--grpc-port", str(first.port)),
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"kprobe otlp: cannot listen on 127.0.0.1:{first.port}")
        assert "Traceback" not in result.stderr and "add_port" not in result.stderr
    finally:
        first.stop(0)


def test_record_receives_grpc_spans_on_its_bind_address(tmp_path: Path) -> None:
    """GIVEN `kprobe record --otlp-host 0.0.0.0 --otlp-grpc-port P --metrics-host 0.0.0.0`
    WHEN the SDK exports over gRPC THEN the spans land in the agent's lake, and the metrics and
    receivers listen on the wildcard address (not loopback only)."""
    require_root()
    lake = tmp_path / "lake"
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    rec = subprocess.Popen(
        _kprobe("record", "--lake", str(lake), "--spool-dir", str(tmp_path / "spool"),
                "--families", "process", "--flush-interval", "0.5",
                "--otlp-host", "0.0.0.0", "--otlp-port", str(http_port),
                "--otlp-grpc-port", str(grpc_port),
                "--metrics-host", "0.0.0.0", "--metrics-port", str(metrics_port)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KPROBE_NODE": "grpc-node"})
    try:
        _wait_port(grpc_port, rec)
        listening = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
        for port in (http_port, grpc_port, metrics_port):  # the wildcard, state 0A (LISTEN)
            assert (f" 00000000:{port:04X} 00000000:0000 0A" in listening
                    or f" {'0' * 32}:{port:04X} {'0' * 32}:0000 0A" in listening), port
            assert f"0100007F:{port:04X} 00000000:0000 0A" not in listening, port
        sent = _sdk_export(grpc_port)
        rows = _wait_rows(lake, "SELECT span_id, node FROM spans", 2)
        assert {r[0] for r in rows} == {sent["parent"], sent["child"]}
        assert {r[1] for r in rows} == {"grpc-node"}
    finally:
        rec.send_signal(signal.SIGTERM)
        try:
            _, err = rec.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            rec.kill()
            _, err = rec.communicate()
    assert rec.returncode == 0, err
    assert f"OTLP/gRPC on 0.0.0.0:{grpc_port}" in err
