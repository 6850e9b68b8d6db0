"""OTLP span receivers into the lake's ``spans``: HTTP (``POST /v1/traces``, protobuf or JSON)
and gRPC (``TraceService/Export``), sharing one sink.

Runs alone as ``kprobe otlp``; the capture agent can host the same app with its own sink.
"""

from kprobe.capture_agent.otlp.decode import (
    decode_json,
    decode_protobuf,
    decode_request,
    decompress,
)
from kprobe.capture_agent.otlp.grpc_server import OtlpGrpcServer
from kprobe.capture_agent.otlp.server import (
    OtlpSettings,
    build_server,
    create_app,
    create_sink,
    listen_socket,
    run_receiver,
)
from kprobe.capture_agent.otlp.sink import SpanSink, SpanSinkStats

__all__ = [
    "OtlpGrpcServer",
    "OtlpSettings",
    "SpanSink",
    "SpanSinkStats",
    "build_server",
    "create_app",
    "create_sink",
    "decode_json",
    "decode_protobuf",
    "decode_request",
    "decompress",
    "listen_socket",
    "run_receiver",
]
