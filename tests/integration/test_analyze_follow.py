"""``kprobe analyze --follow`` and ``--export-otlp`` for real: a recording agent (real BPF,
its OTLP receiver), the follower as a process, the OpenTelemetry SDK sending a failed
operation, ``kprobe explain`` as the only other command, and ``kprobe otlp`` into a second
lake as the OTLP receiver the findings go to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from kprobe.lake import LakeSettings, connect, resolve
from tests.support import REPO, deadline_s, free_port, require_root


def _kprobe(*args: str) -> list[str]:
    return [sys.executable, "-m", "kprobe", *args]


@contextmanager
def _process(args: list[str], log: Path, env: dict[str, str] | None = None
             ) -> Iterator[subprocess.Popen[str]]:
    """The command with its output in ``log`` (read while it runs: a pipe nobody reads
    would fill and stop it); SIGTERM at the end."""
    out = log.open("w")
    proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=deadline_s(120))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


def _wait_port(port: int, proc: subprocess.Popen[str], timeout_s: float = 90) -> None:
    import socket

    deadline = time.monotonic() + deadline_s(timeout_s)
    while True:
        assert proc.poll() is None, f"exited {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"port {port} never opened"
            time.sleep(0.2)


def _explain(lake: Path, txn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_kprobe("explain", "--lake", str(lake), "--format", "json", txn),
                          cwd=REPO, capture_output=True, text=True, timeout=deadline_s(120))


def _send_failure(port: int) -> str:
    """A payment whose settlement fails, on this thread, through the SDK's HTTP exporter."""
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
    provider = TracerProvider(resource=Resource.create({"service.name": "payments"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("kprobe.tests")
    tid = threading.get_native_id()
    with tracer.start_as_current_span(
            "POST /payments", kind=SpanKind.SERVER,
            attributes={"thread.id": tid, "payment.id": "PAY-F1"}) as parent:
        with tracer.start_as_current_span("settlement.write",
                                          attributes={"thread.id": tid}) as child:
            time.sleep(0.05)
            child.set_status(Status(StatusCode.ERROR, "settlement timed out"))
        parent.set_status(Status(StatusCode.ERROR, "payment failed"))
    provider.shutdown()
    return f"{parent.get_span_context().trace_id:032x}"


def test_a_failure_recorded_while_following_is_explained_and_exported(tmp_path: Path) -> None:
    """GIVEN `kprobe record` (real BPF, OTLP receiver) and `kprobe analyze --follow
    --export-otlp` to a second receiver, WHEN a failed payment is sent while both run, THEN
    `kprobe explain` finds it with no other command, and its explanation arrives at the
    receiver as spans of the payment's own trace."""
    require_root()
    lake, found = tmp_path / "lake", tmp_path / "findings"
    otlp_port, sink_port, metrics_port = free_port(), free_port(), free_port()
    record = _kprobe("record", "--lake", str(lake), "--spool-dir", str(tmp_path / "spool"),
                     "--families", "sched,process", "--flush-interval", "0.5",
                     "--otlp-port", str(otlp_port), "--no-metrics")
    sink = _kprobe("otlp", "--lake", str(found), "--port", str(sink_port),
                   "--flush-interval", "0.2")
    follow = _kprobe("analyze", "--follow", "--lake", str(lake), "--window", "5s",
                     "--grace", "3s", "--poll", "0.5s", "--format", "json",
                     "--export-otlp", f"http://127.0.0.1:{sink_port}",
                     "--metrics-port", str(metrics_port))
    logs = {name: tmp_path / f"{name}.log" for name in ("record", "sink", "follow")}
    with _process(record, logs["record"], {"KPROBE_NODE": "follow-node"}) as rec, \
            _process(sink, logs["sink"]) as receiver, \
            _process(follow, logs["follow"]) as follower:
        _wait_port(otlp_port, rec)
        _wait_port(sink_port, receiver)
        _wait_port(metrics_port, follower)
        trace = _send_failure(otlp_port)
        # control: right after the failure its window has not closed, nothing explains it
        assert _explain(lake, trace).returncode == 2
        deadline = time.monotonic() + deadline_s(180)
        while (result := _explain(lake, trace)).returncode != 0:
            assert follower.poll() is None, logs["follow"].read_text()[-3000:]
            assert time.monotonic() < deadline, (result.stderr, logs["follow"].read_text())
            time.sleep(0.5)
        [txn] = json.loads(result.stdout)["transactions"]
        assert txn["trace_id"] == trace and txn["failed"] is True
        # the findings, as spans of the same trace at the receiver
        con_settings = resolve(LakeSettings(lake=str(found)))
        while True:
            try:
                con = connect(con_settings, ["spans"])
                rows = con.execute("SELECT trace_id, name, parent_span_id, attributes "
                                   "FROM spans WHERE name = 'kprobe.explanation'").fetchall()
                con.close()
            except Exception:  # noqa: BLE001 - the table is not there yet
                rows = []
            if rows:
                break
            assert time.monotonic() < deadline, ("no finding reached the receiver",
                                                 logs["follow"].read_text()[-3000:],
                                                 logs["sink"].read_text()[-2000:])
            time.sleep(0.5)
        assert {r[0] for r in rows} == {trace}
        attrs = json.loads(rows[0][3])
        assert attrs["kprobe.failure"].startswith("ERROR: payments")
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                         timeout=10).read().decode()
        assert "kprobe_analysis_windows_total" in metrics
        assert "kprobe_analysis_exported_failures_total" in metrics
    assert follower.returncode == 0, logs["follow"].read_text()[-3000:]


def _payment_lake(lake: Path) -> None:
    """The engine's memcg-reclaim payment (W3C ids: trace a1…), and a healthy trace."""
    from tests.unit.test_compute_scenario import payment_scenario

    sc = payment_scenario()
    for row in sc.rows["spans"]:
        row["trace_id"] = row["trace_id"].replace("t", "a")
    sc.span("b2", "e", None, "payment-handler", "GET /health", -5000, -4990, pid=100,
            tid=101, kind="SERVER")
    sc.write(lake)


def _spans(lake: Path) -> list[dict[str, object]]:
    try:
        con = connect(resolve(LakeSettings(lake=str(lake))), ["spans"])
    except Exception:  # noqa: BLE001 - not created yet
        return []
    try:
        cur = con.execute("SELECT trace_id, span_id, parent_span_id, name, start_ns, end_ns, "
                          "attributes, events FROM spans")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def test_export_otlp_sends_the_kernel_chain_on_the_failed_trace(tmp_path: Path) -> None:
    """GIVEN an analysed failed payment (memcg reclaim driven by a batch job) and a healthy
    trace, WHEN `kprobe analyze --export-otlp` sends to `kprobe otlp`, THEN the receiver's
    lake holds the explanation under the failed span and the reclaim over its own times
    under the settlement write, and nothing of the healthy trace."""
    from tests.unit.test_compute_scenario import T0

    lake, found = tmp_path / "lake", tmp_path / "findings"
    _payment_lake(lake)
    port = free_port()
    with _process(_kprobe("otlp", "--lake", str(found), "--port", str(port),
                          "--flush-interval", "0.2"), tmp_path / "sink.log") as receiver:
        _wait_port(port, receiver)
        run = subprocess.run(
            _kprobe("analyze", "--lake", str(lake), "--from", "2026-01-01T13:59:00Z",
                    "--to", "2026-01-01T14:00:00Z", "--executor", "local", "--format",
                    "json", "--export-otlp", f"http://127.0.0.1:{port}"),
            cwd=REPO, capture_output=True, text=True, timeout=deadline_s(300))
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["exported"] == 1
        deadline = time.monotonic() + deadline_s(60)
        while len(spans := _spans(found)) < 2:
            assert time.monotonic() < deadline, spans
            time.sleep(0.3)
    by_name = {str(s["name"]): s for s in spans}
    assert set(by_name) == {"kprobe.explanation", "kprobe.kernel memory_pressure"}
    trace = "a1".ljust(32, "0")
    assert {s["trace_id"] for s in spans} == {trace}  # the healthy trace: nothing
    explanation = by_name["kprobe.explanation"]
    assert explanation["parent_span_id"] == "a".ljust(16, "0")  # the failed payment
    attrs = json.loads(str(explanation["attributes"]))
    assert attrs["kprobe.root_cause.kind"] == "memory_pressure"
    assert attrs["kprobe.root_cause.driver"].startswith("batch job PID 4721")
    assert attrs["kprobe.business_id"] == "98721"
    events = json.loads(str(explanation["events"]))
    assert any("memcg reclaim 790 ms" in e["name"] for e in events)
    kernel = by_name["kprobe.kernel memory_pressure"]
    assert kernel["parent_span_id"] == "c".ljust(16, "0")  # settlement.write suffered it
    assert (kernel["start_ns"], kernel["end_ns"]) == (T0 - 740_000_000, T0 + 50_000_000)
    k_attrs = json.loads(str(kernel["attributes"]))
    assert k_attrs["kprobe.driver.pid"] == 4721 and k_attrs["kprobe.driver.comm"] == "batch-job"


def test_export_otlp_bad_endpoints_are_one_line(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _payment_lake(lake)
    base = _kprobe("analyze", "--lake", str(lake), "--from", "2026-01-01T13:59:00Z",
                   "--to", "2026-01-01T14:00:00Z", "--executor", "local")
    for endpoint, words in (("ftp://collector:21", "not an OTLP/HTTP endpoint"),
                            ("http://user:pw@collector:4318", "no query, fragment or"),
                            (f"http://127.0.0.1:{free_port()}", "cannot send to OTLP")):
        run = subprocess.run([*base, "--export-otlp", endpoint], cwd=REPO,
                             capture_output=True, text=True, timeout=deadline_s(300))
        assert run.returncode == 2, (endpoint, run.stderr)
        assert words in run.stderr and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
