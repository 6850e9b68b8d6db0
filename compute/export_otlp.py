"""Explained failures back to the tracing system, as spans on their own traces (OTLP/HTTP).

For each failed transaction of an analysed window, ``explain`` gives the failure, its
ranked causes and the kernel lines under the operations that suffered them. They go to the
endpoint as spans of the failure's own trace, so Jaeger, Tempo or Grafana show the kernel
chain next to the application's spans:

- ``kprobe.explanation``, a child of the failed operation over its time: the failure, the
  root cause (kind, words, delay, driver) and the other causes as attributes; every line of
  the chain as a span event at its own time;
- ``kprobe.kernel <cause>``, a child of each operation that suffered a cause, over the
  kernel episode's own times (``memcg reclaim 790 ms``, its driver's pid, comm and role).

Span ids are derived from the trace and what the span says, so a window analysed again
(late rows) sends the same ids; an explanation already sent unchanged is not sent again.
Encoded with the OpenTelemetry protobuf classes, posted as ``application/x-protobuf`` to
``{endpoint}/v1/traces`` (an endpoint given with a path is used as it is).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from kprobe import lake
from kprobe.compute.errors import ExportError, NotFound
from kprobe.compute.explain import explain
from kprobe.compute.graph import store
from kprobe.compute.settings import ComputeSettings

SCOPE = "kprobe.explain"
_HEX = set("0123456789abcdef")


def endpoint_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; anything else is refused."""
    parsed = urllib.parse.urlsplit(endpoint.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ExportError(f"not an OTLP/HTTP endpoint: {endpoint[:100]!r} "
                          "(like http://collector:4318)")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ExportError(f"OTLP endpoint {endpoint[:100]!r}: no query, fragment or "
                          "credentials in the URL")
    path = parsed.path if parsed.path not in ("", "/") else "/v1/traces"
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))


class FindingsExporter:
    """Sends explained failures to one OTLP/HTTP endpoint."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        self.url = endpoint_url(endpoint)
        self.timeout_s = timeout_s
        self._sent: dict[str, str] = {}  # trace id -> digest of what was sent for it

    def export_window(self, location: lake.LakeLocation, window_id: str,
                      settings: ComputeSettings) -> int:
        """Send the window's explained failures not yet sent as they are; returns how many."""
        request = ExportTraceServiceRequest()
        resource = request.resource_spans.add()
        resource.resource.CopyFrom(_resource())
        scope = resource.scope_spans.add()
        scope.scope.CopyFrom(InstrumentationScope(name=SCOPE))
        digests: dict[str, str] = {}
        for result in failed_transactions(location, window_id, settings):
            spans = finding_spans(result)
            digest = hashlib.sha256(b"".join(s.SerializeToString(deterministic=True)
                                             for s in spans)).hexdigest()
            if self._sent.get(result["trace_id"]) == digest:
                continue
            scope.spans.extend(spans)
            digests[result["trace_id"]] = digest
        if not digests:
            return 0
        self.send(request)
        self._sent.update(digests)
        return len(digests)

    def send(self, request: ExportTraceServiceRequest) -> None:
        data = request.SerializeToString()
        post = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/x-protobuf", "User-Agent": "kprobe-analyze"})
        try:
            with urllib.request.urlopen(post, timeout=self.timeout_s) as answer:  # noqa: S310
                answer.read()
        except urllib.error.HTTPError as err:
            raise ExportError(f"OTLP endpoint {self.url} answered {err.code} {err.reason}"
                              ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ExportError(f"cannot send to OTLP endpoint {self.url}: {reason}") from None


def failed_transactions(location: lake.LakeLocation, window_id: str,
                        settings: ComputeSettings) -> list[dict[str, Any]]:
    """The explanations (as JSON data) of the traces with a failed operation in a window."""
    [info] = store.select_snapshots(location, window_ids=[window_id])
    with store.open_snapshot(location, info, settings) as reader:
        rows = reader.rows("""
            MATCH (s:Span) WHERE s.failed AND s.origin = 'otel' AND s.owned
            RETURN DISTINCT s.trace_id AS trace_id""", {})
    found = []
    # only W3C trace ids can go back on their trace (32 hex digits, not all zero)
    traces = {r["trace_id"] for r in rows if _is_hex(r["trace_id"], 32)}
    for trace_id in sorted(traces):
        try:
            results = explain(location, trace_id, settings, window_ids=[window_id])
        except NotFound:
            continue
        for result in results:
            data = _as_data(result)
            if data.get("failed") and data.get("failure"):
                found.append(data)
    return found


def _as_data(result: Any) -> dict[str, Any]:
    """An explanation as plain JSON data (typed models and dicts alike)."""
    if hasattr(result, "model_dump"):
        return dict(result.model_dump(mode="json"))
    return dict(json.loads(json.dumps(result, default=str)))


def finding_spans(result: dict[str, Any]) -> list[Span]:
    """The spans that carry one explained failure (see the module's docstring)."""
    trace_id = result["trace_id"]
    failure = result["failure"]
    failed_span = _span_id(failure["span"])
    end = int(failure["ts_ns"])
    start = end - int(failure.get("dur_ns") or 0)
    root = failure.get("root_cause") or {}
    attrs: dict[str, Any] = {
        "kprobe.window": result.get("window"),
        "kprobe.failure": _text(failure),
        "kprobe.failure.kind": failure.get("failure_kind"),
        "kprobe.failure.over_ns": failure.get("over_ns"),
        "kprobe.root_cause.kind": root.get("kind"),
        "kprobe.root_cause.name": root.get("name"),
        "kprobe.root_cause.delay_ns": root.get("delay_ns"),
        "kprobe.root_cause.driver": root.get("driver"),
        "kprobe.root_cause.sufficient": root.get("sufficient"),
        "kprobe.other_causes": [c.get("name") for c in failure.get("other_causes") or []],
        "kprobe.business_id": result.get("business_id"),
        "kprobe.concept": result.get("concept"),
    }
    explanation = _span(trace_id, f"{trace_id}|explanation", failed_span,
                        "kprobe.explanation", start, end, attrs)
    for step in result.get("steps") or []:
        event = explanation.events.add()
        event.time_unix_nano = int(step["ts_ns"])
        event.name = _text(step)
        event.attributes.extend(_attributes({"kprobe.step": step.get("kind"),
                                             "kprobe.cause": step.get("cause"),
                                             "kprobe.delay_ns": step.get("delay_ns")}))
    spans = [explanation]
    for step in result.get("steps") or []:
        if step.get("kind") != "kernel":
            continue
        episode = step.get("episode") or {}
        driver = step.get("driver") or {}
        s_start = int(episode.get("start_ns") or step["ts_ns"])
        s_end = int(episode.get("end_ns") or s_start + int(step.get("delay_ns") or 0))
        identity = f"{trace_id}|{step['span']}|{step.get('cause')}|{step.get('target')}"
        # under the operation that suffered it; a waited-for thread's (a holder span,
        # no OTLP id) hangs under the explanation
        suffered = step["span"].rsplit(":", 1)[-1].lower()
        parent = bytes.fromhex(suffered) if _is_hex(suffered, 16) else explanation.span_id
        spans.append(_span(trace_id, identity, parent,
                           f"kprobe.kernel {step.get('cause')}", s_start, max(s_end, s_start), {
                               "kprobe.cause": step.get("cause"),
                               "kprobe.suffered_by": step["span"],
                               "kprobe.label": step.get("label") or step.get("line"),
                               "kprobe.detail": step.get("detail"),
                               "kprobe.delay_ns": step.get("delay_ns"),
                               "kprobe.episode.id": episode.get("id"),
                               "kprobe.episode.kind": episode.get("subkind")
                               or episode.get("kind"),
                               "kprobe.driver.pid": driver.get("pid"),
                               "kprobe.driver.comm": driver.get("comm"),
                               "kprobe.driver.role": driver.get("role"),
                               "kprobe.driver.cgroup": driver.get("cgroup"),
                           }))
    return spans


def _text(step: dict[str, Any]) -> str:
    """A step in words: its label and detail (or the rendered line of older data)."""
    if step.get("label"):
        detail = step.get("detail")
        return f"{step['label']}" + (f" <- {detail}" if detail else "")
    return str(step.get("line") or step.get("kind") or "")


def _is_hex(text: str | None, digits: int) -> bool:
    return (text is not None and len(text) == digits and set(text.lower()) <= _HEX
            and set(text) != {"0"})


def _span_id(span_key: str) -> bytes:
    """The 8-byte id of the engine's span key ``trace_id:span_id``."""
    hex_id = span_key.rsplit(":", 1)[-1].lower()
    if not _is_hex(hex_id, 16):
        raise ExportError(f"span {span_key[:60]!r} has no OTLP span id")
    return bytes.fromhex(hex_id)


def _span(trace_id: str, identity: str, parent: bytes, name: str, start: int, end: int,
          attrs: dict[str, Any]) -> Span:
    span = Span(trace_id=bytes.fromhex(trace_id), parent_span_id=parent, name=name,
                kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start,
                end_time_unix_nano=end,
                span_id=hashlib.sha256(identity.encode()).digest()[:8])
    span.attributes.extend(_attributes(attrs))
    return span


def _attributes(values: dict[str, Any]) -> Iterable[KeyValue]:
    for key, value in values.items():
        if value is None or value == []:
            continue
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, list):
            any_value = AnyValue()
            any_value.array_value.values.extend(AnyValue(string_value=str(v)) for v in value)
        else:
            any_value = AnyValue(string_value=str(value))
        yield KeyValue(key=key, value=any_value)


def _resource() -> Resource:
    return Resource(attributes=list(_attributes({"service.name": "kprobe",
                                                 "telemetry.sdk.name": "kprobe"})))

