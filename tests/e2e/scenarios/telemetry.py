"""What every scenario service shares: the OpenTelemetry tracer and the ground-truth record.

A service names each operation a payment (``payment.id``) with a deadline attribute
(``kprobe.deadline_ms``, one of the domain rules' deadline attributes) and the thread that
ran it (``thread.id``); the agent's OTLP receiver (``kprobe run`` sets
``OTEL_EXPORTER_OTLP_ENDPOINT``) stores the spans next to the kernel's rows. Each operation's
measured duration goes into the ground truth, so the test knows which ones missed their
deadline without asking the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind


@dataclass
class Operation:
    payment_id: str
    trace_id: str
    span_id: str
    tid: int
    start_ns: int
    end_ns: int
    deadline_ms: float
    # the kernel's own accounting of the thread over the operation (/proc/thread-self/
    # schedstat): time on a CPU, and time runnable but waiting for one (-1: not available)
    oncpu_ns: int = -1
    runqueue_ns: int = -1

    @property
    def dur_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def late_without_runqueue(self) -> bool:
        """Still late with its run-queue wait taken out: something other than waiting for a
        CPU (a neighbour on this shared machine, say) made it late."""
        return self.dur_ns - max(self.runqueue_ns, 0) > self.deadline_ms * 1e6

    @property
    def missed(self) -> bool:
        return self.dur_ns > self.deadline_ms * 1e6


@dataclass
class GroundTruth:
    """What really happened: written by the service, read by the test."""

    scenario: str
    pid: int
    operations: list[Operation] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # holder tid, ports, cgroup...

    def save(self, path: Path) -> None:
        data = asdict(self)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        data = json.loads(path.read_text())
        ops = [Operation(**op) for op in data.pop("operations")]
        return cls(operations=ops, **data)

    def missed(self) -> list[Operation]:
        return [op for op in self.operations if op.missed]


class _Deferred(SpanProcessor):
    """Keeps finished spans until ``export`` is called (from the caller's thread): a
    single-threaded service exports between its operations, never inside one."""

    def __init__(self, exporter: OTLPSpanExporter) -> None:
        self.exporter = exporter
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)

    def export(self) -> None:
        if self.spans:
            self.exporter.export(self.spans)
            self.spans = []

    def shutdown(self) -> None:
        self.export()
        self.exporter.shutdown()  # type: ignore[no-untyped-call]


class Service:
    """A tracer exporting to the agent, and operations recorded as ground truth.

    ``thread_ids=False``: spans carry no ``thread.id`` (most SDKs set none); the engine
    maps them by socket or as the process's only thread. ``single_thread=True``: no
    exporter thread (spans are exported by ``flush``, between operations)."""

    def __init__(self, scenario: str, truth_path: Path, service_name: str, *,
                 thread_ids: bool = True, single_thread: bool = False) -> None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            raise SystemExit("OTEL_EXPORTER_OTLP_ENDPOINT is not set: run under `kprobe run`")
        resource = Resource.create({"service.name": service_name, "process.pid": os.getpid()})
        self.provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")
        self.deferred = _Deferred(exporter) if single_thread else None
        self.provider.add_span_processor(self.deferred or BatchSpanProcessor(exporter))
        self.thread_ids = thread_ids
        self.tracer = self.provider.get_tracer("kprobe.e2e.scenarios")
        self.truth = GroundTruth(scenario, os.getpid())
        self.truth_path = truth_path
        self._lock = threading.Lock()

    @contextmanager
    def operation(self, number: int, deadline_ms: float, name: str = "POST /payments",
                  **attributes: Any) -> Iterator[trace.Span]:
        """One payment: a SERVER span with its id, deadline and thread, timed for the truth."""
        tid = threading.get_native_id()
        payment_id = f"PAY-{self.truth.scenario}-{os.getpid()}-{number:04d}"
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.SERVER,
            attributes={"payment.id": payment_id, "kprobe.deadline_ms": deadline_ms,
                        **({"thread.id": tid} if self.thread_ids else {}), **attributes},
        ) as span:
            cpu0, wait0 = schedstat()
            start = time.time_ns()
            try:
                yield span
            finally:
                end = time.time_ns()
                cpu1, wait1 = schedstat()
                ctx = span.get_span_context()
                with self._lock:
                    self.truth.operations.append(Operation(
                        payment_id, f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", tid,
                        start, end, deadline_ms, cpu1 - cpu0 if cpu0 >= 0 else -1,
                        wait1 - wait0 if wait0 >= 0 else -1))

    def child(self, name: str, kind: SpanKind = SpanKind.INTERNAL,
              **attributes: Any) -> Any:
        """A child span on the calling thread (context manager)."""
        ids = {"thread.id": threading.get_native_id()} if self.thread_ids else {}
        return self.tracer.start_as_current_span(name, kind=kind,
                                                 attributes={**ids, **attributes})

    def flush(self) -> None:
        """Export the finished spans now (single-threaded services, between operations)."""
        if self.deferred is not None:
            self.deferred.export()

    def finish(self) -> None:
        """Export every span, then write the ground truth (the test waits for both)."""
        self.provider.shutdown()
        self.truth.save(self.truth_path)


def schedstat() -> tuple[int, int]:
    """(ns on a CPU, ns runnable waiting for one) of the calling thread, by the kernel."""
    try:
        on_cpu, waited, _slices = Path("/proc/thread-self/schedstat").read_text().split()
    except (OSError, ValueError):
        return -1, -1
    return int(on_cpu), int(waited)


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--truth", type=Path, required=True, help="where to write the ground truth")
    p.add_argument("--ops", type=int, default=12, help="operations to run")
    p.add_argument("--deadline-ms", type=float, default=100.0)
    p.add_argument("--interval-ms", type=float, default=100.0,
                   help="time between operations (the arrival rate, not a delay)")
    p.add_argument("--cgroup", action="append", default=[],
                   help="a cgroup directory to run in (repeatable: one per hierarchy)")
    return p


def best_cpu_ms(work: Callable[[int], object], runs: int) -> float:
    """One unit of work's own cost (ms): the least of ``runs`` calls ``work(i)``, in this
    thread's CPU time, user and kernel (other load on the machine does not inflate it)."""
    best = float("inf")
    for i in range(runs):
        started = time.thread_time_ns()
        work(i)
        best = min(best, (time.thread_time_ns() - started) / 1e6)
    return best


def pace(interval_ms: float, started: float) -> None:
    """Wait for the next operation's arrival time (between operations, never inside one)."""
    left = interval_ms / 1e3 - (time.monotonic() - started)
    if left > 0:
        time.sleep(left)


def join_cgroups(paths: list[str]) -> None:
    """Move this process into cgroups (the service is deployed in them)."""
    for path in paths:
        Path(path, "cgroup.procs").write_text(str(os.getpid()))


def pin_to_cpu(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
