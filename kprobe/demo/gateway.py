"""The payment gateway: ``POST /payments`` checks the payment with the risk service, then
has the settlement service write it to the ledger, within a settlement timeout.

    python -m kprobe.demo.gateway --port 8080 --risk 127.0.0.1:8081 \\
        --settlement 127.0.0.1:8082 --settlement-timeout-ms 750

Answers: 200 ``{"status": "settled", ...}``; 504 when settlement did not answer within the
timeout (``"settlement timed out after 750 ms"``; the ledger may still commit it later,
which is why a timeout is an incident and not a retry); 422 when risk declines; 502/503
when a service fails or is down.

One process, one thread, and nothing but its inputs decides what it does: requests are
served one at a time (``HTTPServer``), spans are exported synchronously, calls use a new
``http.client`` connection each with a socket timeout, and every id comes from the client.
The replay sandbox relies on this to re-run the process from its recorded syscalls, and
to re-run it with another ``--settlement-timeout-ms``.
"""

from __future__ import annotations

import os
from datetime import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from kprobe.demo.service import (
    JsonHandler,
    base_parser,
    clearing_attributes,
    parse_address,
    parse_cutoffs,
    payment_attributes,
    post_json,
    serve,
    thread_id,
    tracer,
)

SERVICE = "payment-gateway"
RISK_TIMEOUT_S = 5.0


class Gateway(JsonHandler):
    tracer: trace.Tracer
    risk: tuple[str, int]
    settlement: tuple[str, int]
    settlement_timeout_ms: int
    cutoffs: list[time]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        payment = self.read_payment("/payments")
        if payment is None:
            return
        payment_id, amount = str(payment["payment_id"]), int(payment["amount"])
        attributes = {**payment_attributes(payment), **self.peer_attributes(),
                      **clearing_attributes(self.cutoffs), "http.request.method": "POST",
                      "url.path": self.path}
        with self.tracer.start_as_current_span(
                "POST /payments", kind=SpanKind.SERVER, context=self.trace_context(),
                attributes=attributes) as span:
            status, answer = self.pay(payment, payment_id, amount, span)
            span.set_attribute("http.response.status_code", status)
            self.send_json(status, answer)

    def pay(self, payment: dict[str, Any], payment_id: str, amount: int,
            span: trace.Span) -> tuple[int, dict[str, Any]]:
        """Risk check, then settlement; (HTTP status, answer) for the client."""
        try:
            code, risk = self.call("risk-service", self.risk, "/score", payment,
                                   RISK_TIMEOUT_S)
        except OSError as err:
            return self.fail(span, 503, payment_id, f"risk service unavailable: {err}")
        if code != 200 or not risk.get("approved"):
            return self.fail(span, 422, payment_id,
                             f"risk check declined (score {risk.get('score')})")
        timeout_ms = self.settlement_timeout_ms
        try:
            code, settled = self.call("settlement-service", self.settlement, "/postings",
                                      payment, timeout_ms / 1000, timeout_ms=timeout_ms)
        except TimeoutError:
            return self.fail(span, 504, payment_id,
                             f"settlement timed out after {timeout_ms} ms")
        except OSError as err:
            return self.fail(span, 503, payment_id, f"settlement service unavailable: {err}")
        if code != 200:
            return self.fail(span, 502, payment_id,
                             f"settlement failed: {settled.get('error', code)}")
        return 200, {"payment_id": payment_id, "status": "settled", "amount": amount,
                     "currency": payment.get("currency", "INR"),
                     "entries": settled.get("entries"), "risk_score": risk.get("score")}

    def call(self, peer: str, address: tuple[str, int], path: str, payment: dict[str, Any],
             timeout_s: float, **attributes: Any) -> tuple[int, dict[str, Any]]:
        """One HTTP call in a CLIENT span named by its route; a timeout or refusal fails
        the span and raises. (The settlement route is ``/postings``, not ``/settle``: the
        domain rules make any span named "settle…" a settlement write, and the write is the
        settlement service's own span, not this call.)"""
        with self.tracer.start_as_current_span(
                f"POST {path}", kind=SpanKind.CLIENT, record_exception=False,
                set_status_on_exception=False,
                attributes={"thread.id": thread_id(), "peer.service": peer,
                            "http.request.method": "POST", "server.address": address[0],
                            "server.port": address[1],
                            "url.full": f"http://{address[0]}:{address[1]}{path}",
                            **attributes}) as span:
            try:
                code, answer = post_json(address, path, payment, timeout_s)
            except TimeoutError:
                span.set_attribute("error.type", "timeout")
                span.set_status(Status(StatusCode.ERROR,
                                       f"{peer} timed out after {timeout_s * 1000:.0f} ms"))
                raise
            except OSError as err:
                span.set_attribute("error.type", type(err).__name__)
                span.set_status(Status(StatusCode.ERROR, f"{peer} unavailable: {err}"))
                raise
            span.set_attribute("http.response.status_code", code)
            if code >= 400:
                span.set_status(Status(StatusCode.ERROR, f"{peer} answered {code}"))
            return code, answer

    @staticmethod
    def fail(span: trace.Span, status: int, payment_id: str,
             reason: str) -> tuple[int, dict[str, Any]]:
        span.set_status(Status(StatusCode.ERROR, reason))
        return status, {"payment_id": payment_id, "status": "failed", "error": reason}


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__)
    p.add_argument("--risk", type=parse_address, required=True, metavar="HOST:PORT")
    p.add_argument("--settlement", type=parse_address, required=True, metavar="HOST:PORT")
    p.add_argument("--settlement-timeout-ms", type=int, default=750, metavar="MS",
                   help="how long to wait for settlement before answering 504 (default 750)")
    args = p.parse_args(argv)
    Gateway.tracer, _ = tracer(SERVICE)
    Gateway.risk, Gateway.settlement = args.risk, args.settlement
    Gateway.settlement_timeout_ms = args.settlement_timeout_ms
    Gateway.cutoffs = parse_cutoffs(args.clearing_cutoffs)
    print(f"{SERVICE} pid {os.getpid()} on 127.0.0.1:{args.port}", flush=True)
    serve(Gateway, args.port)


if __name__ == "__main__":
    main()
