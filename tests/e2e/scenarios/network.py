"""Network scenario service: each payment posts its entry to a ledger service over TCP.

    python -m tests.e2e.scenarios.network --truth T --port P      the payment service
    python -m tests.e2e.scenarios.network --serve P               the ledger (a child)

The ledger is a separate, uninstrumented process listening on 127.0.0.1:P; the payment
service keeps one connection to it and makes one request/response exchange per payment
inside a CLIENT span that names both ends of the connection (``client.port``,
``server.port``), as an instrumented HTTP/gRPC client would. The fault (an iptables rule
dropping a share of what arrives on loopback for port P) is the test's: a lost segment is
resent by TCP's timers (a tail-loss probe, then the retransmission timeout, 200 ms minimum).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from opentelemetry.trace import SpanKind

from tests.e2e.scenarios.telemetry import Service, join_cgroups, pace, parser

REQUEST = 256
RESPONSE = 128


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def serve(port: int) -> None:
    """The ledger: accept connections, answer each fixed-size request."""
    listener = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request = _exactly(conn, REQUEST)
                conn.sendall(request[:RESPONSE])
        except ConnectionError:
            conn.close()


def main() -> None:
    if "--serve" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--serve", type=int, required=True)
        serve(p.parse_args().serve)
        return
    p = parser(__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--decoy-port", type=int, default=None,
                   help="a second ledger: another thread keeps calling it (its own lossy "
                        "connection, never the payments')")
    args = p.parse_args()
    join_cgroups(args.cgroup)
    service = Service("network", args.truth, "payment-gateway")
    ledger = subprocess.Popen([sys.executable, "-m", "tests.e2e.scenarios.network",
                               "--serve", str(args.port)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    decoy = None
    stop = threading.Event()
    if args.decoy_port:
        decoy = subprocess.Popen([sys.executable, "-m", "tests.e2e.scenarios.network",
                                  "--serve", str(args.decoy_port)], stdout=subprocess.PIPE,
                                 text=True, cwd=Path(__file__).resolve().parents[3])
        assert decoy.stdout is not None and decoy.stdout.readline().strip() == "listening"
        caller = threading.Thread(target=_decoy_calls, args=(args.decoy_port, stop))
        caller.start()
    try:
        assert ledger.stdout is not None and ledger.stdout.readline().strip() == "listening"
        sock = socket.create_connection(("127.0.0.1", args.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        laddr, lport = sock.getsockname()[:2]
        service.truth.facts.update({"ledger_pid": ledger.pid, "client_port": lport,
                                    "server_port": args.port})
        for i in range(args.ops):
            started = time.monotonic()
            with service.operation(i, args.deadline_ms), service.child(
                    "ledger.post", kind=SpanKind.CLIENT, **{
                        "server.address": "127.0.0.1", "server.port": args.port,
                        "client.address": laddr, "client.port": lport}):
                sock.sendall(f"{i:08d}".encode().ljust(REQUEST, b" "))
                _exactly(sock, RESPONSE)
            pace(args.interval_ms, started)
        sock.close()
    finally:
        stop.set()
        ledger.kill()
        ledger.wait()
        if decoy is not None:
            decoy.kill()
            decoy.wait()
    service.finish()


def _decoy_calls(port: int, stop: threading.Event) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not stop.wait(0.02):
        sock.sendall(b"decoy".ljust(REQUEST, b" "))
        _exactly(sock, RESPONSE)
    sock.close()


if __name__ == "__main__":
    main()
