"""OTLP trace requests -> spans rows: ids as hex, pid/tid, attributes JSON, network columns,
OTLP/JSON per the specification, and malformed bodies refused whole with a clear reason."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from kprobe.capture_agent.errors import OtlpBodyTooLarge, OtlpDecodeError, OtlpUnsupportedMedia
from kprobe.capture_agent.otlp.decode import (
    SPANS_SCHEMA,
    decode_json,
    decode_protobuf,
    decode_request,
    decompress,
    media_type,
)
from kprobe.lake import TABLES, LakeSettings, LakeWriter

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
ROOT = bytes.fromhex("eee19b7ec3c1b174")
CHILD = bytes.fromhex("00f067aa0ba902b7")


def _value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[_value(x) for x in v]))
    if isinstance(v, dict):
        return AnyValue(kvlist_value=KeyValueList(values=_kvs(v)))
    return AnyValue(string_value=str(v))


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in attrs.items()]


def _span(span_id: bytes = ROOT, parent: bytes = b"", name: str = "op", kind: int = 1,
          attrs: dict[str, Any] | None = None, trace_id: bytes = TRACE, **kw: Any) -> Span:
    return Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=name,
                kind=kind, start_time_unix_nano=T0, end_time_unix_nano=T0 + 2_500,
                attributes=_kvs(attrs or {}), **kw)


def _request(*spans: Span, resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    res = {"service.name": "ledger", "process.pid": 4242} if resource is None else resource
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=_kvs(res)),
        scope_spans=[ScopeSpans(scope=InstrumentationScope(name="t"), spans=list(spans))],
    )])


def _rows(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    return decode_protobuf(request.SerializeToString()).to_pylist()


def _otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """The request as OTLP/JSON: the protobuf JSON mapping, but ids as hex, enums as ints."""
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(doc).encode()


# -- protobuf ------------------------------------------------------------------------------
def test_ids_are_hex_and_parent_links_child_to_root() -> None:
    rows = _rows(_request(
        _span(ROOT, name="POST /payments", kind=Span.SPAN_KIND_SERVER),
        _span(CHILD, parent=ROOT, name="risk.check", kind=Span.SPAN_KIND_INTERNAL),
    ))
    root, child = rows
    assert root["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert root["span_id"] == "eee19b7ec3c1b174" and root["parent_span_id"] is None
    assert child["span_id"] == "00f067aa0ba902b7" and child["parent_span_id"] == root["span_id"]
    assert (root["kind"], child["kind"]) == ("SERVER", "INTERNAL")
    assert root["start_ns"] == T0 and root["end_ns"] == T0 + 2_500 and root["dur_ns"] == 2_500


def test_service_pid_tid_status_events_and_resource() -> None:
    span = _span(
        attrs={"thread.id": 31337, "payment.id": "PAY-1"},
        status=Status(code=Status.STATUS_CODE_ERROR, message="risk limit exceeded"),
        events=[Span.Event(time_unix_nano=T0 + 1, name="retry", attributes=_kvs({"n": 2}))],
    )
    (row,) = _rows(_request(span))
    assert row["service"] == "ledger" and row["pid"] == 4242 and row["tid"] == 31337
    assert row["status"] == "ERROR" and row["status_message"] == "risk limit exceeded"
    assert json.loads(row["attributes"]) == {"thread.id": 31337, "payment.id": "PAY-1"}
    assert json.loads(row["resource"]) == {"service.name": "ledger", "process.pid": 4242}
    assert json.loads(row["events"]) == [
        {"time_ns": T0 + 1, "name": "retry", "attributes": {"n": 2}}
    ]


def test_pid_falls_back_to_a_span_attribute_and_missing_values_are_null() -> None:
    request = _request(_span(attrs={"process.pid": 99}), _span(CHILD),
                       resource={"service.name": "s"})
    with_pid, bare = _rows(request)
    assert with_pid["pid"] == 99 and with_pid["tid"] is None
    assert bare["pid"] is None and bare["attributes"] == "{}" and bare["events"] == "[]"
    assert bare["status"] == "UNSET" and bare["status_message"] is None


def test_attribute_values_of_every_type_become_json() -> None:
    attrs = {"s": "x", "i": -7, "b": True, "d": 1.5, "nan": float("nan"),
             "raw": b"\x00\xff", "list": [1, "two"], "map": {"k": [True]}}
    (row,) = _rows(_request(_span(attrs=attrs)))
    assert json.loads(row["attributes"]) == {
        "s": "x", "i": -7, "b": True, "d": 1.5, "nan": "nan",
        "raw": "AP8=", "list": [1, "two"], "map": {"k": [True]},
    }


@pytest.mark.parametrize(
    ("kind", "attrs", "expected"),
    [
        pytest.param(  # current semantic conventions, any kind
            Span.SPAN_KIND_CLIENT,
            {"client.address": "10.0.0.1", "client.port": 51000, "server.address": "db",
             "server.port": 5432, "network.peer.address": "10.0.0.9",
             "network.peer.port": 5432},
            ("10.0.0.1", 51000, "db", 5432, "10.0.0.9", 5432), id="current",
        ),
        pytest.param(  # old names on a client span: net.peer.* is the server
            Span.SPAN_KIND_CLIENT,
            {"net.peer.name": "db", "net.peer.port": 5432, "net.sock.peer.addr": "10.0.0.9"},
            (None, None, "db", 5432, "10.0.0.9", 5432), id="old-client",
        ),
        pytest.param(  # old names on a server span: net.peer.* is the client, net.host.* us
            Span.SPAN_KIND_SERVER,
            {"net.peer.ip": "10.0.0.1", "net.peer.port": 51000, "net.host.name": "api",
             "net.host.port": 8080, "net.sock.peer.port": "51000"},
            ("10.0.0.1", 51000, "api", 8080, "10.0.0.1", 51000), id="old-server",
        ),
        pytest.param(  # nonsense ports are dropped, not stored
            Span.SPAN_KIND_CLIENT, {"server.port": 70000, "network.peer.port": "http"},
            (None, None, None, None, None, None), id="bad-ports",
        ),
    ],
)
def test_network_attributes_from_current_and_old_names(
    kind: int, attrs: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    (row,) = _rows(_request(_span(kind=kind, attrs=attrs)))
    got = tuple(row[c] for c in ("client_address", "client_port", "server_address",
                                 "server_port", "peer_address", "peer_port"))
    assert got == expected


def test_table_matches_the_spans_schema_and_the_writer_accepts_it(tmp_path: Any) -> None:
    table = decode_protobuf(_request(_span(), _span(CHILD, parent=ROOT)).SerializeToString())
    assert table.schema == TABLES["spans"].payload_schema == SPANS_SCHEMA
    writer = LakeWriter.from_settings(LakeSettings(lake=str(tmp_path / "lake"), node="n1"))
    batch = writer.prepare("spans", table)  # conform only: no storage touched
    assert batch.data.num_rows == 2 and batch.data.column("hour")[0].as_py() == "2026-01-01T00"


def test_empty_request_is_an_empty_table() -> None:
    table = decode_protobuf(b"")
    assert table.num_rows == 0 and table.schema == SPANS_SCHEMA


# -- OTLP/JSON -----------------------------------------------------------------------------
def test_json_decodes_like_protobuf() -> None:
    request = _request(
        _span(ROOT, kind=Span.SPAN_KIND_SERVER, attrs={"thread.id": 7, "d": 0.25}),
        _span(CHILD, parent=ROOT, kind=Span.SPAN_KIND_CLIENT,
              attrs={"server.address": "db", "list": ["a", 1]},
              status=Status(code=Status.STATUS_CODE_OK)),
    )
    body = _otlp_json(request)
    assert b'"traceId": "5b8efff798038103d269b633813fc60c"' in body  # hex, not base64
    assert decode_json(body).equals(decode_protobuf(request.SerializeToString()))


def test_json_per_spec_example_uppercase_hex_string_ints_snake_case_unknown_fields() -> None:
    body = json.dumps({
        "resource_spans": [{  # original proto field names are accepted as well
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "my.service"}},
                {"key": "process.pid", "value": {"intValue": "1234"}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "my.library", "version": "1.0.0"},
                "spans": [{
                    "traceId": "5B8EFFF798038103D269B633813FC60C",
                    "spanId": "EEE19B7EC3C1B174",
                    "parentSpanId": "EEE19B7EC3C1B173",
                    "name": "I'm a server span",
                    "startTimeUnixNano": "1544712660000000000",
                    "endTimeUnixNano": 1544712661000000000,
                    "kind": "SPAN_KIND_SERVER",  # names are accepted; ints are the rule
                    "attributes": [{"key": "thread.id", "value": {"intValue": "5"}}],
                    "status": {"code": 2},
                    "someFutureField": {"x": 1},
                }],
            }],
        }],
    }).encode()
    (row,) = decode_json(body).to_pylist()
    assert row["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert row["parent_span_id"] == "eee19b7ec3c1b173"
    assert (row["service"], row["pid"], row["tid"]) == ("my.service", 1234, 5)
    assert (row["kind"], row["status"]) == ("SERVER", "ERROR")
    assert row["dur_ns"] == 1_000_000_000


# -- malformed requests --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xff\xff\xff", "invalid OTLP protobuf: Error parsing message"),
        (_request(_span(trace_id=b"\x01\x02\x03")).SerializeToString(),
         "resourceSpans[0].scopeSpans[0].spans[0].traceId must be 16 bytes (32 hex digits), "
         "got 3"),
        (_request(_span(trace_id=bytes(16))).SerializeToString(),
         "spans[0].traceId is all zeros"),
        (_request(_span(), _span(span_id=b"\x01")).SerializeToString(),
         "spans[1].spanId must be 8 bytes"),
        (_request(_span(parent=b"\x01\x02")).SerializeToString(), "parentSpanId must be 8"),
        (_request(Span(trace_id=TRACE, span_id=ROOT, start_time_unix_nano=2**64 - 1))
         .SerializeToString(), "timestamp beyond the year 2262"),
    ],
)
def test_malformed_protobuf_is_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError) as err:
        decode_protobuf(body)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00", "invalid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"resourceSpans": 5}', "invalid OTLP JSON"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
         "resourceSpans[0].scopeSpans[0].spans[0].traceId: not a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": 12}]}]}]}',
         "spans[0].spanId: expected a hex string"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "'
         + b"ab" * 16 + b'", "spanId": "' + b"cd" * 8 + b'", "startTimeUnixNano": "soon"}]}]}]}',
         "invalid OTLP JSON"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "' + b"cd" * 8
         + b'"}]}]}]}', "traceId must be 16 bytes"),
        (b"[" * 100_000, "invalid JSON"),
    ],
)
def test_malformed_json_is_refused_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(OtlpDecodeError) as err:
        decode_json(body)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- bodies --------------------------------------------------------------------------------
def test_gzip_bodies_and_their_decompressed_limit() -> None:
    raw = _request(_span()).SerializeToString()
    assert decompress(gzip.compress(raw), "gzip", len(raw)) == raw
    assert decompress(gzip.compress(raw) + gzip.compress(raw), "GZIP", 2 * len(raw)) == raw * 2
    assert decompress(raw, None, 1) == raw  # identity: the server checked the size already
    bomb = gzip.compress(bytes(10_000_000))
    with pytest.raises(OtlpBodyTooLarge, match="decompressed body exceeds the limit of 1000"):
        decompress(bomb, "gzip", 1000)
    with pytest.raises(OtlpDecodeError, match="invalid gzip body"):
        decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(OtlpDecodeError, match="truncated"):
        decompress(gzip.compress(raw)[:-12], "gzip", 1000)
    assert decompress(zlib.compress(raw), "deflate", len(raw)) == raw  # the SDK's Deflate
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decompress(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate", 1000) == raw
    with pytest.raises(OtlpBodyTooLarge):
        decompress(zlib.compress(bytes(10_000)), "deflate", 1000)
    with pytest.raises(OtlpUnsupportedMedia, match="Content-Encoding 'br'"):
        decompress(raw, "br", 1000)


def test_content_types() -> None:
    assert media_type("application/x-protobuf") == "protobuf"
    assert media_type("Application/JSON; charset=utf-8") == "json"
    for bad in (None, "", "text/plain", "application/grpc"):
        with pytest.raises(OtlpUnsupportedMedia, match="unsupported Content-Type"):
            media_type(bad)
    table = decode_request(b"{}", "json")
    assert isinstance(table, pa.Table) and table.num_rows == 0
