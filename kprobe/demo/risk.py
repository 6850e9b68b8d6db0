"""The risk service: ``POST /score`` scores a payment and approves or declines it.

    python -m kprobe.demo.risk --port 8081

Real work of a few milliseconds per payment: the payer's velocity (what it sent recently)
and a device fingerprint check (key stretching of the payer and payee ids, as a fraud model's
feature hashing would), then a score from 0 to 999. Payments above the single-payment limit
(10 lakh INR) or scoring 900+ are declined.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict, deque

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from kprobe.demo.service import JsonHandler, base_parser, payment_attributes, serve, tracer

SERVICE = "risk-service"
LIMIT_INR = 1_000_000
FINGERPRINT_ROUNDS = 3_000  # ~2-4 ms of hashing here
VELOCITY_WINDOW = 50


def score(payer: str, payee: str, amount: int, recent: deque[int]) -> int:
    """0 (safe) to 999: amount against the payer's recent ones, and a fingerprint hash."""
    fingerprint = hashlib.pbkdf2_hmac("sha256", payer.encode(), payee.encode(),
                                      FINGERPRINT_ROUNDS)
    typical = sorted(recent)[len(recent) // 2] if recent else amount
    unusual = min(amount / max(typical, 1), 10.0)  # 1 = as usual, 10 = ten times more
    return int(min(999, 60 * unusual + fingerprint[0] % 100))


class Risk(JsonHandler):
    tracer: trace.Tracer
    history: defaultdict[str, deque[int]] = defaultdict(lambda: deque(maxlen=VELOCITY_WINDOW))

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/score":
            self.send_json(404, {"error": f"no route {self.path}"})
            return
        try:
            payment = self.read_json()
            amount, payer = int(payment["amount"]), str(payment.get("payer", "?"))
            payee = str(payment.get("payee", "?"))
        except (ValueError, KeyError, TypeError) as err:
            self.send_json(400, {"error": f"bad payment: {err}"})
            return
        with self.tracer.start_as_current_span(
                "risk.check", kind=SpanKind.SERVER, context=self.trace_context(),
                attributes={**payment_attributes(payment), **self.peer_attributes()}) as span:
            value = score(payer, payee, amount, self.history[payer])
            approved = amount <= LIMIT_INR and value < 900
            self.history[payer].append(amount)
            span.set_attribute("risk.score", value)
            span.set_attribute("risk.approved", approved)
            if not approved:  # a declined check is a failed check, not a passed one
                span.set_status(Status(StatusCode.ERROR, f"risk check declined ({value})"))
            self.send_json(200, {"payment_id": payment.get("payment_id"), "score": value,
                                 "approved": approved})


def main(argv: list[str] | None = None) -> None:
    args = base_parser(__doc__).parse_args(argv)
    Risk.tracer, _ = tracer(SERVICE)
    print(f"{SERVICE} pid {os.getpid()} on 127.0.0.1:{args.port}", flush=True)
    serve(Risk, args.port)


if __name__ == "__main__":
    main()
