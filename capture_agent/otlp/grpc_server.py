"""The OTLP/gRPC trace receiver: ``opentelemetry.proto.collector.trace.v1.TraceService/Export``.

Many SDKs default to gRPC on port 4317. The request arrives as the same protobuf
``ExportTraceServiceRequest`` the HTTP receiver decodes (``decode_protobuf``), and goes into
the same ``SpanSink``: one buffer, one commit per flush, whichever protocol brought a span.

Status codes follow the OTLP specification: INVALID_ARGUMENT for a malformed request
(nothing of it is written, not retryable), RESOURCE_EXHAUSTED for a message over the size
limit (gRPC's own check), UNAVAILABLE when the span buffer is full (retryable: the SDK's
exporter backs off and sends again). gzip (``grpc-encoding: gzip``) is handled by gRPC.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from kprobe.capture_agent.errors import CaptureAgentError, OtlpDecodeError
from kprobe.capture_agent.otlp.decode import decode_protobuf
from kprobe.capture_agent.otlp.sink import SpanSink

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_EMPTY_RESPONSE: bytes = ExportTraceServiceResponse().SerializeToString()


class OtlpGrpcServer:
    """A gRPC server offering decoded spans to ``sink``; bound by the constructor."""

    def __init__(self, sink: SpanSink, host: str, port: int, *,
                 max_message_bytes: int = 16 * 1024 * 1024, workers: int = 4) -> None:
        self.sink = sink
        self.requests: Counter[str] = Counter()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc"),
            handlers=[grpc.method_handlers_generic_handler(SERVICE, {
                # no deserializer: the handler gets the raw bytes and decodes them itself
                "Export": grpc.unary_unary_rpc_method_handler(self._export),
            })],
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=workers * 16,
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if port:  # a taken port in one line of ours, before gRPC's own log lines about it
            from kprobe.capture_agent.otlp.server import listen_socket

            listen_socket(host, port).close()
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError as err:
            raise CaptureAgentError(f"cannot listen on {address} (OTLP/gRPC): {err}") from None
        if not bound:
            raise CaptureAgentError(f"cannot listen on {address} (OTLP/gRPC)")
        self.host = host
        self.port = int(bound)

    def start(self) -> OtlpGrpcServer:
        self._server.start()
        log.info("receiving OTLP/gRPC on %s:%d", self.host, self.port)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let running ones finish (up to ``grace_s``)."""
        self._server.stop(grace_s).wait()

    def _export(self, body: bytes, context: Any) -> bytes:
        try:
            spans = decode_protobuf(body)
        except OtlpDecodeError as err:
            self.requests["invalid_argument"] += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if not self.sink.offer(spans):
            self.requests["unavailable"] += 1
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"span buffer full ({self.sink.max_buffer_rows} spans): "
                          "the lake is behind, retry")
        self.requests["ok"] += 1
        return _EMPTY_RESPONSE
