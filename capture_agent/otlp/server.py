"""The OTLP/HTTP trace receiver: ``POST /v1/traces`` (protobuf or JSON) into the lake.

Responses follow the OTLP/HTTP specification: success is an ExportTraceServiceResponse and
a failure a ``google.rpc.Status``, each in the encoding of the request; 400 for a malformed
request (nothing of it is written), 413 for a body over the limit, 415 for a content type or
encoding we do not speak, 503 + Retry-After when the span buffer is full.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pyarrow as pa
import uvicorn
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kprobe.capture_agent.errors import (
    CaptureAgentError,
    OtlpBodyTooLarge,
    OtlpDecodeError,
    OtlpError,
    OtlpOverloaded,
    OtlpUnsupportedMedia,
)
from kprobe.capture_agent.otlp.decode import Encoding, decode_request, decompress, media_type
from kprobe.capture_agent.otlp.grpc_server import OtlpGrpcServer
from kprobe.capture_agent.otlp.sink import SpanSink, SpanSinkStats
from kprobe.lake import LakeWriter

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
# After the limit is crossed the rest of the body is still read (and discarded) up to this
# much more, so the sender gets its 413 instead of a reset connection mid-upload.
_DRAIN_BYTES = 64 * 1024 * 1024

_STATUS: dict[type[OtlpError], tuple[int, int]] = {  # error -> (HTTP status, google.rpc code)
    OtlpDecodeError: (400, code_pb2.INVALID_ARGUMENT),
    OtlpBodyTooLarge: (413, code_pb2.INVALID_ARGUMENT),
    OtlpUnsupportedMedia: (415, code_pb2.INVALID_ARGUMENT),
    OtlpOverloaded: (503, code_pb2.UNAVAILABLE),
}


class OtlpSettings(BaseSettings):
    """The receiver's settings, from ``KPROBE_OTLP_*``."""

    model_config = SettingsConfigDict(env_prefix="KPROBE_OTLP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=4318, ge=0, le=65535)
    # OTLP/gRPC on this port of the same host as well (None: HTTP only; 0: any free port)
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    flush_interval_s: float = Field(default=1.0, gt=0)
    flush_rows: int = Field(default=10_000, gt=0)
    max_buffer_rows: int = Field(default=200_000, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, ge=0)


def create_sink(settings: OtlpSettings, writer: LakeWriter) -> SpanSink:
    return SpanSink(
        writer,
        flush_rows=settings.flush_rows,
        flush_interval_s=settings.flush_interval_s,
        max_buffer_rows=settings.max_buffer_rows,
    )


def create_app(settings: OtlpSettings, sink: SpanSink, *, manage_sink: bool = True) -> Starlette:
    """The ASGI app. With ``manage_sink`` its lifespan starts the sink and flushes it on
    shutdown; a host that owns the sink (the capture agent) passes False."""
    requests: Counter[str] = Counter()
    retry_after_s = max(1, math.ceil(settings.flush_interval_s))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if manage_sink:
            sink.start()
        try:
            yield
        finally:
            if manage_sink:
                await run_in_threadpool(sink.stop, settings.shutdown_timeout_s)

    async def export_traces(request: Request) -> Response:
        try:
            encoding = media_type(request.headers.get("content-type"))
            body = await _read_body(request, settings.max_body_bytes)
        except OtlpUnsupportedMedia:
            await _drain(request)  # so the sender reads our 415 rather than a reset
            raise
        except ClientDisconnect:
            requests["client_disconnected"] += 1
            return Response(status_code=400)
        spans = await run_in_threadpool(
            _decode, body, request.headers.get("content-encoding"), encoding,
            settings.max_body_bytes,
        )
        if not sink.offer(spans):
            raise OtlpOverloaded(
                f"span buffer full ({sink.max_buffer_rows} spans): the lake is behind, retry",
                retry_after_s,
            )
        requests["ok"] += 1
        if encoding == "protobuf":
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type=_PROTOBUF)
        return Response(b"{}", media_type=_JSON)

    async def healthz(request: Request) -> Response:
        return JSONResponse({
            "status": "ok",
            "held_spans": sink.held_rows,
            "requests": dict(requests),
            "spans": sink.stats.as_dict(),
        })

    async def otlp_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OtlpError)
        status, code = _STATUS.get(type(exc), (400, code_pb2.INVALID_ARGUMENT))
        requests[str(status)] += 1
        headers = {}
        if isinstance(exc, OtlpOverloaded):
            headers["Retry-After"] = str(exc.retry_after_s)
        message = status_pb2.Status(code=code, message=str(exc))
        if _wants_protobuf(request):
            return Response(message.SerializeToString(), status, headers, media_type=_PROTOBUF)
        body = json_format.MessageToJson(message, indent=None).encode()
        return Response(body, status, headers, media_type=_JSON)

    app = Starlette(
        routes=[
            Route(TRACES_PATH, export_traces, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={OtlpError: otlp_error},
        lifespan=lifespan,
    )
    app.state.sink = sink
    app.state.requests = requests
    return app


def _decode(
    body: bytes, content_encoding: str | None, encoding: Encoding, limit: int
) -> pa.Table:
    return decode_request(decompress(body, content_encoding, limit), encoding)


def _wants_protobuf(request: Request) -> bool:
    try:
        return media_type(request.headers.get("content-type")) == "protobuf"
    except OtlpUnsupportedMedia:
        return False


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) more than ``limit`` bytes while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise OtlpDecodeError(f"invalid Content-Length {declared!r}") from None
        if length > limit + _DRAIN_BYTES:  # too big to be worth draining
            raise OtlpBodyTooLarge(f"body of {length} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > limit + _DRAIN_BYTES:
            break
    if size > limit:
        raise OtlpBodyTooLarge(f"body exceeds the limit of {limit} bytes")
    return b"".join(chunks)


async def _drain(request: Request) -> None:
    size = 0
    with contextlib.suppress(ClientDisconnect):
        async for chunk in request.stream():
            size += len(chunk)
            if size > _DRAIN_BYTES:
                break


# -- running it ---------------------------------------------------------------------------
def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket; a one-line CaptureAgentError when the address is unusable."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise CaptureAgentError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise CaptureAgentError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def build_server(
    settings: OtlpSettings, writer: LakeWriter, sink: SpanSink | None = None
) -> tuple[uvicorn.Server, SpanSink]:
    """A uvicorn server for the receiver (not started) and its sink. Without ``sink`` the
    server owns a new one (started and flushed by its lifespan); a given sink is the
    caller's to start and stop (shared with the gRPC receiver)."""
    owned = sink is None
    sink = sink or create_sink(settings, writer)
    config = uvicorn.Config(
        create_app(settings, sink, manage_sink=owned),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="none",  # no websockets here; also keeps their deprecation warnings away
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    return uvicorn.Server(config), sink


def run_receiver(
    settings: OtlpSettings,
    writer: LakeWriter,
    host: str | None = None,
    port: int | None = None,
) -> SpanSinkStats:
    """Serve until SIGINT/SIGTERM, flush what is held, return the span counters.

    SIGTERM is an orderly stop: after the final flush this returns normally. SIGINT is
    re-raised by uvicorn after the flush (KeyboardInterrupt), as a Ctrl+C should be.
    """
    if host is not None or port is not None:
        settings = settings.model_copy(
            update={k: v for k, v in (("host", host), ("port", port)) if v is not None}
        )
    sock = listen_socket(settings.host, settings.port)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("receiving OTLP/HTTP on http://%s:%d%s", bound_host, bound_port, TRACES_PATH)
    if settings.grpc_port is None:
        server, sink = build_server(settings, writer)
        try:
            with _sigterm_returns():
                server.run(sockets=[sock])
        finally:
            sock.close()
        return sink.stats
    # Both protocols into one sink: the gRPC server stops taking calls before the final flush
    sink = create_sink(settings, writer)
    try:
        grpc_server = OtlpGrpcServer(sink, settings.host, settings.grpc_port,
                                     max_message_bytes=settings.max_body_bytes)
    except BaseException:
        sock.close()
        raise
    server, _ = build_server(settings, writer, sink)
    sink.start()
    grpc_server.start()
    try:
        with _sigterm_returns():
            server.run(sockets=[sock])
    finally:
        sock.close()
        grpc_server.stop()
        sink.stop(settings.shutdown_timeout_s)
    return sink.stats


@contextlib.contextmanager
def _sigterm_returns() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once shut down; for SIGTERM make that
    a no-op so the caller can report and exit 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
