"""A realistic request/response service for the capture-overhead benchmark: payment
authorisation over HTTP/1.1 keep-alive, a forked worker process per connection (Python's
stdlib server; pre-fork servers such as gunicorn's sync workers have the same shape, and
threads would serialise on the GIL, whose hand-offs made throughput jump between two
regimes from run to run).

Each POST /authorize carries a JSON payment; the service parses it, checks the account's
limit and velocity over its recent payments, signs the decision with HMAC-SHA256, appends
it to a ledger file (write, no fsync: the journal is another service's job) and answers
with JSON. Nothing sleeps. Prints "ready <port>" once listening; stops on SIGTERM.

    python tests/programs/authorize_server.py LEDGER_PATH
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sys
import threading
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ForkingMixIn

KEY = b"kprobe-bench-signing-key"
LIMIT_PAISE = 50_000_00 * 100
VELOCITY_WINDOW = 20


class Ledger:
    """One per worker process: its own view of recent payments; appends to the shared file
    (one write per decision, O_APPEND: lines never interleave)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 (the process's lifetime)
        self.recent: dict[str, deque[int]] = defaultdict(lambda: deque(maxlen=VELOCITY_WINDOW))

    def decide(self, payment: dict[str, object]) -> dict[str, object]:
        account = str(payment["account"])
        amount = int(payment["amount_paise"])  # type: ignore[call-overload]
        recent = self.recent[account]
        velocity = sum(recent)
        approved = 0 < amount <= LIMIT_PAISE and velocity + amount <= 4 * LIMIT_PAISE
        recent.append(amount if approved else 0)
        decision = {"payment_id": payment["payment_id"], "account": account,
                    "amount_paise": amount, "approved": approved, "velocity_paise": velocity}
        body = json.dumps(decision, sort_keys=True).encode()
        decision["signature"] = hmac.new(KEY, body, hashlib.sha256).hexdigest()
        self.file.write(body + b"\n")
        return decision


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two sends: no 40 ms ACK wait
    ledger: Ledger

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length", "0"))
        try:
            payment = json.loads(self.rfile.read(length))
            reply = json.dumps(self.ledger.decide(payment)).encode()
            status = 200
        except (ValueError, KeyError, TypeError) as err:
            reply, status = json.dumps({"error": str(err)}).encode(), 400
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class Server(ForkingMixIn, HTTPServer):
    block_on_close = False
    max_children = 64


def main() -> None:
    Handler.ledger = Ledger(sys.argv[1])
    server = Server(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
