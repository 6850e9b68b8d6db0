"""A small real payment workload in one process: receive, risk-check, and settle payments
into SQLite (the first demo workload; ``kprobe demo`` now runs ``kprobe.demo``'s services).

Run as its own process (``python tests/programs/ledger_workload.py --ledger PATH``). Each
payment is a trace of real work: a risk check over recent ledger rows and a settlement write
committed with fsync (SQLite ``synchronous=FULL``). Spans are exported over OTLP/HTTP by
the real OpenTelemetry SDK, with the resource attribute ``process.pid`` and ``thread.id``
on each span so kprobe can lay them over kernel events. Nothing here sleeps to fake time.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import threading
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

RISK_LIMIT_INR = 200_000


def _tracer(endpoint: str, service: str) -> tuple[trace.Tracer, TracerProvider]:
    resource = Resource.create({"service.name": service, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider.get_tracer("kprobe.demo"), provider


def _open_ledger(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # every commit is fsynced, as a ledger must be
    db.execute(
        "CREATE TABLE IF NOT EXISTS ledger (payment_id TEXT PRIMARY KEY, amount INTEGER, "
        "currency TEXT, status TEXT)"
    )
    return db


def run(endpoint: str, ledger: Path, payments: int, seed: int) -> int:
    tracer, provider = _tracer(endpoint, "payment-demo")
    db = _open_ledger(ledger)
    rng = random.Random(seed)
    failures = 0
    tid = threading.get_native_id()
    for i in range(payments):
        payment_id = f"PAY-{seed:04d}-{i:05d}"
        amount = rng.choice([1_200, 50_000, 75_000, 250_000, 9_999])
        with tracer.start_as_current_span(
            "POST /payments", kind=SpanKind.SERVER,
            attributes={"payment.id": payment_id, "payment.amount": amount,
                        "payment.currency": "INR", "thread.id": tid},
        ) as payment:
            with tracer.start_as_current_span(
                "risk.check", attributes={"payment.id": payment_id, "thread.id": tid}
            ) as risk:
                (exposure,) = db.execute(
                    "SELECT coalesce(sum(amount), 0) FROM ledger WHERE status = 'settled'"
                ).fetchone()
                approved = amount < RISK_LIMIT_INR
                risk.set_attribute("risk.exposure", int(exposure))
                risk.set_attribute("risk.approved", approved)
                if not approved:  # a declined check is a failed check, not a passed one
                    risk.set_status(Status(StatusCode.ERROR, "risk limit exceeded"))
            if not approved:
                failures += 1
                payment.set_status(Status(StatusCode.ERROR, "risk limit exceeded"))
                continue
            with tracer.start_as_current_span(
                "settlement.write", kind=SpanKind.CLIENT,
                attributes={"payment.id": payment_id, "db.system": "sqlite", "thread.id": tid},
            ), db:
                db.execute("INSERT INTO ledger VALUES (?, ?, 'INR', 'settled')",
                           (payment_id, amount))
    provider.shutdown()  # flushes every span to the receiver
    db.close()
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    parser.add_argument("--endpoint", required=default is None,
                        default=f"{default}/v1/traces" if default else None,
                        help="OTLP/HTTP traces URL (default: $OTEL_EXPORTER_OTLP_ENDPOINT)")
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--payments", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    failures = run(args.endpoint, args.ledger, args.payments, args.seed)
    print(f"{args.payments} payments, {failures} refused by the risk check")


if __name__ == "__main__":
    main()
