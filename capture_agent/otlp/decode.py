"""OTLP trace requests (protobuf or OTLP/JSON, optionally gzipped) -> rows of ``spans``.

One pass over the request builds a Python list per column and a single Arrow table at the
end. A loop per span is unavoidable here (protobuf messages are objects), so the loop body
stays flat: dictionary lookups, no helper objects per span.

A request is decoded whole or refused whole: any invalid span makes it an OtlpDecodeError
naming the span, so nothing of a malformed request is ever written.

OTLP/JSON follows the specification's departures from the protobuf JSON mapping: trace and
span ids are hex strings (not base64), keys are lowerCamelCase (the original snake_case
names are accepted too), enums are integers (names are accepted), unknown fields are
ignored, and 64-bit integers may be numbers or strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Literal, NoReturn

import pyarrow as pa
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from kprobe.capture_agent.errors import OtlpBodyTooLarge, OtlpDecodeError, OtlpUnsupportedMedia
from kprobe.lake import one_line
from kprobe.lake.schema import TABLES

Encoding = Literal["protobuf", "json"]

SPANS_SCHEMA: pa.Schema = TABLES["spans"].payload_schema

# Indexed by the protobuf enum value (Span.SpanKind, Status.StatusCode).
KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES = ("UNSET", "OK", "ERROR")
_PEER_IS_CLIENT_KINDS = frozenset((2, 5))  # SERVER, CONSUMER

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
_PORT_MAX = 65535

# Network attributes, current semantic conventions first, then the names they replaced.
# Which side an old ``net.peer.*`` / ``net.host.*`` name describes depends on the span kind:
# on a server (or consumer) span the peer is the client; on any other span it is the server.
CLIENT_ADDRESS_KEYS = ("client.address", "http.client_ip", "client.socket.address")
CLIENT_PORT_KEYS = ("client.port", "client.socket.port")
SERVER_ADDRESS_KEYS = ("server.address",)
SERVER_PORT_KEYS = ("server.port",)
PEER_ADDRESS_KEYS = ("network.peer.address", "net.sock.peer.addr", "net.peer.ip")
PEER_PORT_KEYS = ("network.peer.port", "net.sock.peer.port")
_OLD_SERVER_SIDE_ADDRESS = ("net.host.name", "net.host.ip")  # on server/consumer spans
_OLD_SERVER_SIDE_PORT = ("net.host.port",)
_OLD_PEER_NAME = ("net.peer.name", "net.peer.ip")  # client on server spans, else server
_OLD_PEER_PORT = ("net.peer.port",)
_NETWORK_KEYS = frozenset(
    CLIENT_ADDRESS_KEYS + CLIENT_PORT_KEYS + SERVER_ADDRESS_KEYS + SERVER_PORT_KEYS
    + PEER_ADDRESS_KEYS + PEER_PORT_KEYS + _OLD_SERVER_SIDE_ADDRESS + _OLD_SERVER_SIDE_PORT
    + _OLD_PEER_NAME + _OLD_PEER_PORT
)
_NO_NETWORK = (None, None, None, None, None, None)

_EMPTY_OBJECT = "{}"
_EMPTY_ARRAY = "[]"

_dumps: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


# -- bodies -------------------------------------------------------------------------------
def media_type(content_type: str | None) -> Encoding:
    """The OTLP encoding named by a Content-Type header; OtlpUnsupportedMedia otherwise."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime in ("application/x-protobuf", "application/protobuf"):
        return "protobuf"
    if mime == "application/json":
        return "json"
    raise OtlpUnsupportedMedia(
        f"unsupported Content-Type {content_type or '(none)'!r}: "
        "use application/x-protobuf or application/json"
    )


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``gzip`` or ``deflate`` Content-Encoding, refusing output over ``max_bytes``.

    OTLP names gzip; deflate (zlib format, or raw as some clients send it) is what the
    Python SDK's ``Compression.Deflate`` sends, so it is accepted too.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return _inflate(body, 16 + zlib.MAX_WBITS, max_bytes, "gzip")
    if encoding == "deflate":
        try:
            return _inflate(body, zlib.MAX_WBITS, max_bytes, "deflate")
        except OtlpDecodeError:
            return _inflate(body, -zlib.MAX_WBITS, max_bytes, "deflate")
    raise OtlpUnsupportedMedia(
        f"unsupported Content-Encoding {content_encoding!r}: use gzip, deflate or none"
    )


def _inflate(body: bytes, wbits: int, max_bytes: int, name: str) -> bytes:
    out: list[bytes] = []
    size = 0
    data = body
    while data:  # a gzip body may hold several members back to back
        inflater = zlib.decompressobj(wbits=wbits)
        try:
            chunk = inflater.decompress(data, max_bytes - size + 1)
        except zlib.error as err:
            raise OtlpDecodeError(f"invalid {name} body: {err}") from None
        size += len(chunk)
        if size > max_bytes or inflater.unconsumed_tail:
            raise OtlpBodyTooLarge(f"decompressed body exceeds the limit of {max_bytes} bytes")
        if not inflater.eof:
            raise OtlpDecodeError(f"invalid {name} body: truncated")
        out.append(chunk)
        data = inflater.unused_data if wbits > 16 else b""
    return b"".join(out)


def decode_request(body: bytes, encoding: Encoding) -> pa.Table:
    """An ExportTraceServiceRequest (protobuf bytes or OTLP/JSON bytes) as ``spans`` rows."""
    if encoding == "protobuf":
        return decode_protobuf(body)
    return decode_json(body)


def decode_protobuf(body: bytes) -> pa.Table:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as err:
        raise OtlpDecodeError(f"invalid OTLP protobuf: {one_line(err)}") from None
    return spans_table(request)


def decode_json(body: bytes) -> pa.Table:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError
        raise OtlpDecodeError(f"invalid JSON: {one_line(err)}") from None
    if not isinstance(document, dict):
        raise OtlpDecodeError("invalid OTLP JSON: the body must be a JSON object")
    _hex_ids_to_base64(document)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError) as err:
        raise OtlpDecodeError(f"invalid OTLP JSON: {one_line(err)}") from None
    return spans_table(request)


# -- OTLP/JSON ids ------------------------------------------------------------------------
def _items(parent: dict[str, Any], camel: str, snake: str) -> Iterable[tuple[str, Any]]:
    for key in (camel, snake):
        if key in parent:
            yield key, parent[key]


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """Rewrite OTLP/JSON hex ids in place to the base64 the protobuf JSON parser expects.

    Only well-formed parts of the tree are touched; anything else is left for the parser,
    which reports it.
    """
    for rs_key, resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for r, rs in _enumerate_dicts(resource_spans):
            for ss_key, scope_spans in _items(rs, "scopeSpans", "scope_spans"):
                for s, ss in _enumerate_dicts(scope_spans):
                    for p, span in _enumerate_dicts(ss.get("spans")):
                        where = f"{rs_key}[{r}].{ss_key}[{s}].spans[{p}]"
                        _rewrite_ids(span, where, ("traceId", "trace_id", "spanId", "span_id",
                                                   "parentSpanId", "parent_span_id"))
                        for _, links in _items(span, "links", "links"):
                            for k, link in _enumerate_dicts(links):
                                _rewrite_ids(link, f"{where}.links[{k}]",
                                             ("traceId", "trace_id", "spanId", "span_id"))


def _enumerate_dicts(value: Any) -> Iterable[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


def _rewrite_ids(obj: dict[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise OtlpDecodeError(f"{where}.{key}: expected a hex string, got {value!r:.40}")
        try:
            raw = binascii.unhexlify(value)
        except (binascii.Error, ValueError):
            raise OtlpDecodeError(f"{where}.{key}: not a hex string: {value!r:.40}") from None
        obj[key] = base64.b64encode(raw).decode("ascii")


# -- the span loop --------------------------------------------------------------------------
def spans_table(request: ExportTraceServiceRequest) -> pa.Table:
    """Rows of ``spans`` (payload columns, in schema order) for every span of ``request``."""
    trace_ids: list[str] = []
    span_ids: list[str] = []
    parent_ids: list[str | None] = []
    services: list[str | None] = []
    names: list[str] = []
    kinds: list[str] = []
    starts: list[int] = []
    ends: list[int | None] = []
    durations: list[int | None] = []
    statuses: list[str] = []
    status_messages: list[str | None] = []
    pids: list[int | None] = []
    tids: list[int | None] = []
    client_addresses: list[str | None] = []
    client_ports: list[int | None] = []
    server_addresses: list[str | None] = []
    server_ports: list[int | None] = []
    peer_addresses: list[str | None] = []
    peer_ports: list[int | None] = []
    attributes_json: list[str] = []
    resources_json: list[str] = []
    events_json: list[str] = []

    for r, resource_spans in enumerate(request.resource_spans):
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        service = service if isinstance(service, str) else None
        resource_pid = _int_in(resource.get("process.pid"), _INT32_MAX)
        resource_json = _dumps(resource) if resource else _EMPTY_OBJECT
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            for p, span in enumerate(scope_spans.spans):
                trace_id = span.trace_id
                span_id = span.span_id
                parent_id = span.parent_span_id
                if len(trace_id) != 16 or not any(trace_id):
                    _bad_id(r, s, p, "traceId", trace_id, 16)
                if len(span_id) != 8 or not any(span_id):
                    _bad_id(r, s, p, "spanId", span_id, 8)
                if parent_id and len(parent_id) != 8:
                    _bad_id(r, s, p, "parentSpanId", parent_id, 8)
                start = span.start_time_unix_nano
                end = span.end_time_unix_nano
                if start > _INT64_MAX or end > _INT64_MAX:
                    raise OtlpDecodeError(
                        f"{_where(r, s, p)}: timestamp beyond the year 2262 "
                        f"(start {start}, end {end})"
                    )
                attrs = _attributes(span.attributes) if span.attributes else {}
                kind = span.kind
                status = span.status

                trace_ids.append(trace_id.hex())
                span_ids.append(span_id.hex())
                parent_ids.append(parent_id.hex() if parent_id and any(parent_id) else None)
                services.append(service)
                names.append(span.name)
                kinds.append(KIND_NAMES[kind] if 0 <= kind < 6 else str(kind))
                starts.append(start)
                ends.append(end or None)
                durations.append(end - start if end else None)
                statuses.append(
                    STATUS_NAMES[status.code] if 0 <= status.code < 3 else str(status.code)
                )
                status_messages.append(status.message or None)

                if attrs:
                    pids.append(
                        resource_pid if resource_pid is not None
                        else _int_in(attrs.get("process.pid"), _INT32_MAX)
                    )
                    tids.append(_int_in(attrs.get("thread.id"), _INT64_MAX))
                    network = (
                        _NO_NETWORK if _NETWORK_KEYS.isdisjoint(attrs)
                        else _network(attrs, kind in _PEER_IS_CLIENT_KINDS)
                    )
                    client_addresses.append(network[0])
                    client_ports.append(network[1])
                    server_addresses.append(network[2])
                    server_ports.append(network[3])
                    peer_addresses.append(network[4])
                    peer_ports.append(network[5])
                    attributes_json.append(_dumps(attrs))
                else:
                    pids.append(resource_pid)
                    tids.append(None)
                    client_addresses.append(None)
                    client_ports.append(None)
                    server_addresses.append(None)
                    server_ports.append(None)
                    peer_addresses.append(None)
                    peer_ports.append(None)
                    attributes_json.append(_EMPTY_OBJECT)
                resources_json.append(resource_json)
                events_json.append(_events(span.events) if span.events else _EMPTY_ARRAY)

    columns = (
        trace_ids, span_ids, parent_ids, services, names, kinds, starts, ends, durations,
        statuses, status_messages, pids, tids, client_addresses, client_ports,
        server_addresses, server_ports, peer_addresses, peer_ports, attributes_json,
        resources_json, events_json,
    )
    return pa.Table.from_arrays(
        [pa.array(values, field.type) for values, field in zip(columns, SPANS_SCHEMA, strict=True)],
        schema=SPANS_SCHEMA,
    )


# -- values ---------------------------------------------------------------------------------
def _attributes(key_values: Any) -> dict[str, Any]:
    """Repeated KeyValue -> plain dict (a later duplicate key wins)."""
    return {kv.key: _value(kv.value) for kv in key_values}


def _value(value: Any) -> Any:
    """An AnyValue as JSON-ready Python: bytes as base64, non-finite doubles as strings."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    result = getattr(value, which)
    if which == "string_value" or which == "int_value" or which == "bool_value":
        return result
    if which == "double_value":
        return result if math.isfinite(result) else str(result)
    if which == "array_value":
        return [_value(item) for item in result.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in result.values}
    if which == "bytes_value":
        return base64.b64encode(result).decode("ascii")
    return None


def _events(events: Any) -> str:
    return _dumps([
        {"time_ns": event.time_unix_nano, "name": event.name,
         "attributes": _attributes(event.attributes)}
        for event in events
    ])


def _network(
    attrs: dict[str, Any], peer_is_client: bool
) -> tuple[str | None, int | None, str | None, int | None, str | None, int | None]:
    """(client address, client port, server address, server port, peer address, peer port).

    ``peer_is_client``: a server or consumer span, where old ``net.peer.*`` names describe
    the client and ``net.host.*`` the server; on other spans ``net.peer.*`` is the server.
    """
    old_peer = _first(attrs, _OLD_PEER_NAME)
    old_peer_port = _port(_first(attrs, _OLD_PEER_PORT))
    if peer_is_client:
        old_client, old_client_port = old_peer, old_peer_port
        old_server = _first(attrs, _OLD_SERVER_SIDE_ADDRESS)
        old_server_port = _port(_first(attrs, _OLD_SERVER_SIDE_PORT))
    else:
        old_client, old_client_port = None, None
        old_server, old_server_port = old_peer, old_peer_port
    return (
        _str(_first(attrs, CLIENT_ADDRESS_KEYS) or old_client),
        _port(_first(attrs, CLIENT_PORT_KEYS)) or old_client_port,
        _str(_first(attrs, SERVER_ADDRESS_KEYS) or old_server),
        _port(_first(attrs, SERVER_PORT_KEYS)) or old_server_port,
        _str(_first(attrs, PEER_ADDRESS_KEYS)),
        _port(_first(attrs, PEER_PORT_KEYS)) or old_peer_port,
    )


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int_in(value: Any, maximum: int) -> int | None:
    """A non-negative integer attribute (also given as a decimal string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= maximum:
        return value
    return None


def _port(value: Any) -> int | None:
    return _int_in(value, _PORT_MAX)


def _where(r: int, s: int, p: int) -> str:
    return f"resourceSpans[{r}].scopeSpans[{s}].spans[{p}]"


def _bad_id(r: int, s: int, p: int, field: str, value: bytes, size: int) -> NoReturn:
    if len(value) == size:
        reason = "is all zeros (an invalid id)"
    else:
        reason = f"must be {size} bytes ({2 * size} hex digits), got {len(value)}"
    raise OtlpDecodeError(f"{_where(r, s, p)}.{field} {reason}")
